"""A converted SNN as a NIR graph (https://neuroir.org), built from its fx graph.

What is written (docs/interop.md):

* every node carries its input and output shapes (without the batch dimension), so
  ``nir.NIRGraph``'s type check passes;
* ``IFNeuron`` -> ``nir.IF`` with full-shape ``r`` (ones), ``v_threshold`` and ``v_reset``
  (zeros); what NIR does not say is in the node's metadata (:data:`IF_METADATA` keys):
  subtractive reset, the ``>=`` spike condition, one spike per step, ``dt = 1``, the initial
  potential ``v_init`` (absolute, full shape) and ann2snn's per-channel fraction of it;
* Conv2d -> ``nir.Conv2d``, Linear -> ``nir.Affine`` (a zero bias where the layer has none),
  ``Scale`` -> ``nir.Scale`` (full shape), Flatten/view -> ``nir.Flatten``;
* average pooling -> ``nir.SumPool2d``, its ``1 / k`` folded into the weights of the
  Conv/Affine/Scale that consume it (through Flatten); exact when ``k`` is a power of two;
* residual additions -> fan-in (NIR sums the inputs of a node);
* the readout: the last Affine layer feeds ``nir.Output``; the graph's metadata says the
  SNN's output is its time average over ``T`` steps and that the input is presented as a
  constant current at every step.

What NIR cannot carry (max pooling in any form, per-channel affine maps with no layer to
fold into, other functions) is refused with ONE :class:`NIRExportError` that lists every such
node.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ann2snn._version import __version__
from ann2snn.runtime.affine import ChannelAffine
from ann2snn.runtime.neuron import IFNeuron, RepeatInTime, Scale
from ann2snn.runtime.pooling import AMax, GatedMaxPool, SpikingMaxPool
from ann2snn.runtime.temporal import reset_state, set_steps

__all__ = ["GRAPH_METADATA_KEYS", "IF_METADATA", "NIRExportError", "to_nir", "write_nir"]

#: Metadata keys on every ``nir.IF`` node written by ann2snn.
IF_METADATA = (
    "reset_mode",  # "subtract": v -= v_threshold on a spike (NIR describes reset to v_reset)
    "spike_condition",  # ">=": a spike when v >= v_threshold (NIR's is v > v_threshold)
    "max_spikes_per_step",  # 1
    "dt",  # 1.0: one discrete step, v += r * I[t]
    "v_init",  # the membrane potential before the first step, full shape
    "ann2snn_v_init_fraction",  # v_init / v_threshold per channel (ann2snn's own form)
    "static_input",  # True where the neuron's input current is the same every step
)
#: Metadata keys on the graph written by ann2snn.
GRAPH_METADATA_KEYS = (
    "producer",
    "neuron_model",
    "reset_mode",
    "spike_condition",
    "max_spikes_per_step",
    "dt",
    "timesteps",
    "input_encoding",
    "readout",
    "folded_average_pools",
)

_MAX_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    SpikingMaxPool,
    GatedMaxPool,
    AMax,
)
_PASS_THROUGH = (nn.Identity, nn.Dropout, RepeatInTime)


class NIRExportError(ValueError):
    """The SNN holds nodes NIR cannot express; the message lists every one of them."""


def _flat_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """The converted graph (static prefix + time loop) inlined into one graph over ``gm``."""
    graph = fx.Graph()
    env: Dict[fx.Node, Any] = {}

    def inline(sub: fx.GraphModule, prefix: str, inputs: List[Any]) -> Any:
        local: Dict[fx.Node, Any] = {}
        it = iter(inputs)
        result = None
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                local[node] = next(it)
            elif node.op == "output":
                result = fx.map_arg(node.args[0], lambda n: local[n])
            else:
                new = graph.node_copy(node, lambda n: local[n])
                if node.op in ("call_module", "get_attr"):
                    new.target = f"{prefix}.{node.target}"
                    new.meta["ann2snn_name"] = str(node.target)  # the NIR node's name
                local[node] = new
        return result

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
        elif node.op == "call_module" and node.target in ("static_prefix", "time_loop"):
            args = [env[a] for a in node.args]
            env[node] = inline(gm.get_submodule(str(node.target)), str(node.target), args)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") == "_getitem":
            values, index = node.args
            env[node] = env[values][index]
        elif node.op == "output":
            graph.output(fx.map_arg(node.args[0], lambda n: env[n]))
        else:
            raise NIRExportError(f"unexpected node {node.name} at the top of the spiking graph")
    return fx.GraphModule(gm, graph)


def _shape(node: fx.Node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(s) for s in meta.shape[1:])


def _full(value: torch.Tensor, shape: Tuple[int, ...]) -> np.ndarray:
    """A scalar or per-channel (dim 0 of ``shape``) tensor broadcast to ``shape``."""
    v = value.detach().float().cpu()
    if v.numel() > 1:
        v = v.reshape((-1,) + (1,) * (len(shape) - 1))
    else:
        v = v.reshape(())
    return np.ascontiguousarray(v.expand(shape).numpy().astype(np.float32))


def _pair(v: Any) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v), dtype=np.int64)


def _is_flatten(node: fx.Node, mod: Optional[nn.Module]) -> bool:
    if isinstance(mod, nn.Flatten):
        return True
    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
        return True
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape")


def _average_pool(node: fx.Node, mod: Optional[nn.Module], in_shape) -> Optional[Tuple]:
    """``(kernel, stride, padding)`` of a 2-d average pooling that is a sum pooling divided by
    the window size, or None when ``node`` is no such pooling."""
    if isinstance(mod, nn.AvgPool2d):
        if mod.ceil_mode or mod.divisor_override is not None:
            return None
        if _pair(mod.padding).any() and not mod.count_include_pad:
            return None
        stride = mod.stride if mod.stride is not None else mod.kernel_size
        return _pair(mod.kernel_size), _pair(stride), _pair(mod.padding)
    adaptive = isinstance(mod, nn.AdaptiveAvgPool2d) or (
        node.op == "call_function" and node.target is F.adaptive_avg_pool2d
    )
    if adaptive and in_shape is not None and len(in_shape) == 3:
        out = mod.output_size if mod is not None else node.args[1]
        out = _pair(out)
        h, w = in_shape[1:]
        out = np.array([h if o is None else o for o in out[:1]] + [w if out[1] is None else out[1]])
        if h % out[0] or w % out[1]:
            return None
        kernel = np.array([h // out[0], w // out[1]], dtype=np.int64)
        return kernel, kernel.copy(), np.zeros(2, dtype=np.int64)
    return None


def _is_add(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (operator.add, torch.add):
        return False
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    return len(tensors) == 2 == len(node.args) and not node.kwargs


def to_nir(snn: Any, timesteps: int = 32) -> Any:
    """The NIR graph of a converted SNN (a ``SpikingModel``); see the module docstring.

    Args:
        snn: a :class:`ann2snn.SpikingModel`.
        timesteps: the number of steps ``T`` recorded in the metadata (the readout's average).

    Raises:
        NIRExportError: listing every node NIR cannot express.
        ImportError: when the ``nir`` package is not installed (``pip install ann2snn[nir]``).
    """
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export needs the 'nir' package: pip install 'ann2snn[nir]'") from exc

    input_shape = snn.meta.get("input_shape")
    if not input_shape:
        raise NIRExportError("the SNN does not record its input shape (meta['input_shape'])")
    flat = _flat_graph(snn.graph_module)
    param = next(snn.graph_module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros((1, *input_shape), device=device)
    reset_state(flat)
    set_steps(flat, 1)
    try:
        with torch.no_grad():
            ShapeProp(flat).propagate(example)
    finally:
        reset_state(flat)
    modules = dict(flat.named_modules())

    nodes: Dict[str, Any] = {}
    edges: List[Tuple[str, str]] = []
    sources: Dict[fx.Node, List[str]] = {}  # fx node -> the NIR nodes whose sum it is
    divisor: Dict[fx.Node, int] = {}  # fx node -> the sum pooling divisor not yet folded
    refused: List[str] = []
    folded: List[str] = []
    names: Dict[str, int] = {}

    def name_of(node: fx.Node) -> str:
        base = str(node.meta.get("ann2snn_name", node.name)).replace(".", "_")
        base = base if not base[:1].isdigit() else f"layer_{base}"
        count = names.get(base, 0)
        names[base] = count + 1
        return base if not count else f"{base}_{count}"

    def refuse(node: fx.Node, what: str) -> None:
        where = node.target if node.op == "call_module" else node.name
        refused.append(f"{where}: {what}")

    def add_node(node: fx.Node, nir_node: Any, inputs: List[fx.Node]) -> None:
        name = name_of(node)
        nodes[name] = nir_node
        for inp in inputs:
            for src in sources.get(inp, []):
                if (src, name) in edges:
                    refuse(node, "the same input twice (NIR edges are unique)")
                edges.append((src, name))
        sources[node] = [name]

    def take_divisor(node: fx.Node, inputs: List[fx.Node]) -> int:
        return int(math.prod(divisor.get(i, 1) for i in inputs))

    output_node: Optional[fx.Node] = None
    for node in flat.graph.nodes:
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        inputs = [a for a in node.all_input_nodes if _shape(a) is not None or a.op == "placeholder"]
        shape = _shape(node)
        in_shape = _shape(inputs[0]) if inputs else None
        if node.op == "placeholder":
            shape = tuple(int(s) for s in input_shape)
            nodes["input"] = nir.Input(input_type={"input": np.array(shape)})
            sources[node] = ["input"]
            continue
        if node.op == "output":
            output_node = node.args[0] if isinstance(node.args[0], fx.Node) else None
            continue
        if shape is None:  # sizes and other non-tensor values (x.size(0) of a view)
            continue
        k = take_divisor(node, inputs)
        if isinstance(mod, _PASS_THROUGH):
            sources[node] = list(sources.get(inputs[0], []))
            divisor[node] = k
        elif _is_add(node):
            ks = {divisor.get(i, 1) for i in inputs}
            if len(ks) > 1:
                refuse(node, "an addition of branches with different average-pool factors")
            sources[node] = [s for i in inputs for s in sources.get(i, [])]
            divisor[node] = ks.pop()
        elif isinstance(mod, IFNeuron):
            if k != 1:
                refuse(node, "an average pooling feeds IF neurons directly (no weights to fold)")
            thr = mod.threshold.detach().float().cpu()
            if mod.v_init_channels is None:
                frac = torch.full((thr.numel(),), float(mod.v_init))
            else:
                frac = mod.v_init_channels.detach().float().cpu().reshape(-1)
            like = torch.zeros((1, *shape))
            v0 = mod.initial_potential(like.to(thr.device)).expand(like.shape)[0].cpu()
            meta = {
                "reset_mode": "subtract",
                "spike_condition": ">=",
                "max_spikes_per_step": 1,
                "dt": 1.0,
                "v_init": np.ascontiguousarray(v0.float().numpy()),
                "ann2snn_v_init_fraction": frac.numpy().astype(np.float32),
                "static_input": bool(mod.static_input),
            }
            add_node(
                node,
                nir.IF(
                    r=np.ones(shape, dtype=np.float32),
                    v_threshold=_full(thr, shape),
                    v_reset=np.zeros(shape, dtype=np.float32),
                    metadata=meta,
                ),
                inputs,
            )
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                refuse(node, f"Conv2d with padding {mod.padding!r} / mode {mod.padding_mode!r}")
                continue
            w = mod.weight.detach().float().cpu()
            w = w / k if k != 1 else w
            bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels)
            conv = nir.Conv2d(
                input_shape=tuple(in_shape[1:]),
                weight=w.numpy().copy(),
                stride=tuple(mod.stride),
                padding=tuple(mod.padding),
                dilation=tuple(mod.dilation),
                groups=int(mod.groups),
                bias=bias.detach().float().cpu().numpy().copy(),
                metadata={"ann2snn_avgpool_divisor": k} if k != 1 else {},
            )
            add_node(node, conv, inputs)
        elif isinstance(mod, nn.Linear):
            w = mod.weight.detach().float().cpu()
            w = w / k if k != 1 else w
            bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_features)
            affine = nir.Affine(
                weight=w.numpy().copy(),
                bias=bias.detach().float().cpu().numpy().copy(),
                metadata={"ann2snn_avgpool_divisor": k} if k != 1 else {},
            )
            affine.input_type = {"input": np.array(in_shape)}
            affine.output_type = {"output": np.array(shape)}
            add_node(node, affine, inputs)
        elif isinstance(mod, Scale):
            scale = _full(mod.scale, shape)
            if k != 1:
                scale = (torch.from_numpy(scale) / k).numpy()
            add_node(node, nir.Scale(scale=scale), inputs)
        elif _is_flatten(node, mod):
            if len(shape) != 1:
                refuse(node, f"a reshape to {shape} (only a flatten to one dimension)")
                continue
            add_node(
                node, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0), inputs
            )
            divisor[node] = k
        elif (pool := _average_pool(node, mod, in_shape)) is not None:
            kernel, stride, padding = pool
            sp = nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding)
            sp.input_type = {"input": np.array(in_shape)}
            sp.output_type = {"output": np.array(shape)}
            add_node(node, sp, inputs)
            divisor[node] = k * int(np.prod(kernel))
            folded.append(sources[node][0])
        elif isinstance(mod, _MAX_POOLS) or (
            node.op == "call_function" and "max_pool" in getattr(node.target, "__name__", "")
        ):
            refuse(
                node, f"max pooling ({type(mod).__name__ if mod else node.target}); NIR has none"
            )
        elif isinstance(mod, ChannelAffine):
            refuse(node, "a per-channel affine map (BatchNorm) with no layer to fold it into")
        else:
            what = type(mod).__name__ if mod is not None else f"{node.op} {node.target}"
            refuse(node, f"{what} has no NIR counterpart")

    if output_node is not None and not refused:
        producer = nodes.get(sources.get(output_node, [""])[0])
        if len(sources.get(output_node, [])) != 1 or not isinstance(producer, nir.Affine):
            refuse(output_node, "the readout is not one Linear layer (NIR's output is its Affine)")
        if divisor.get(output_node, 1) != 1:
            refuse(output_node, "an average pooling feeds the output (no weights to fold)")
    elif output_node is None:
        refused.append("output: the SNN has not one tensor output")
    if refused:
        raise NIRExportError(
            f"{len(refused)} node(s) cannot be expressed in NIR:\n  - "
            + "\n  - ".join(refused)
            + "\nNIR has no max pooling: convert an average-pooling model (docs/interop.md)."
        )
    out_shape = _shape(output_node)
    nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    for src in sources[output_node]:
        edges.append((src, "output"))
    metadata = {
        "producer": f"ann2snn {__version__}",
        "neuron_model": "IF: v += r*I[t]; spike if v >= v_threshold; v -= v_threshold on spike",
        "reset_mode": "subtract",
        "spike_condition": ">=",
        "max_spikes_per_step": 1,
        "dt": 1.0,
        "timesteps": int(timesteps),
        "input_encoding": "constant current: the input is presented unchanged at every step",
        "readout": "the output is the time average over the steps of the last Affine layer",
        "folded_average_pools": ",".join(folded),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_nir(snn: Any, path: Any, timesteps: int = 32) -> Any:
    """Export ``snn`` (see :func:`to_nir`) and write it with ``nir.write``; returns the graph."""
    import nir

    graph = to_nir(snn, timesteps=timesteps)
    nir.write(path, graph)
    return graph
