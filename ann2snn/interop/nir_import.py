"""A NIR graph run with ann2snn's own modules and kernels, as a ``SpikingModel``.

``from_nir`` reads IF / Affine / Linear / Conv2d / SumPool2d / AvgPool2d / Flatten / Scale
graphs, ann2snn's own exports and other tools' (docs/interop.md). The graph is rebuilt from
torch layers and :class:`ann2snn.runtime.neuron.IFNeuron` in float32 and split into a static
prefix and a time loop exactly as ``convert`` does, so an exported SNN read back gives the
same spikes, bit for bit.

IF neurons always run with ann2snn's semantics (subtract reset, spike on ``>=``, one spike a
step). A graph from another tool says nothing of these (NIR describes reset to ``v_reset``
and a strict ``>``); such a graph is run with ann2snn's semantics and a warning says so.
"""

from __future__ import annotations

import keyword
import operator
import warnings
from collections import defaultdict, deque
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import fx, nn

from ann2snn.runtime.neuron import IFNeuron, Scale
from ann2snn.runtime.spiking_model import SpikingModel

__all__ = ["NIRImportError", "from_nir"]


class NIRImportError(ValueError):
    """The NIR graph holds nodes ann2snn cannot run; the message lists every one."""


def _tensor(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32).clone()


def _per_channel(a: Any, what: str, problems: List[str], name: str) -> Optional[torch.Tensor]:
    """A full-shape array that is constant over all but its first dimension, as ``[C]``."""
    t = _tensor(a)
    if t.dim() <= 1:
        return t.reshape(-1)
    flat = t.reshape(t.shape[0], -1)
    if not torch.equal(flat, flat[:, :1].expand_as(flat)):
        problems.append(f"{name}: {what} varies within a channel (ann2snn keeps one per channel)")
        return None
    return flat[:, 0].contiguous()


def topological_order(nodes: Dict[str, Any], edges: List[Any]) -> List[str]:
    """The node names of a NIR graph in a topological order (Kahn's algorithm, ties in
    node order); NIRImportError for a cycle. Shared with the readers (interop.readers)."""
    succ, indeg = defaultdict(list), {n: 0 for n in nodes}
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    ready = deque(n for n in nodes if indeg[n] == 0)
    order = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if len(order) != len(nodes):
        raise NIRImportError("the NIR graph has a cycle (recurrent graphs are not supported)")
    return order


def from_nir(source: Any) -> SpikingModel:
    """A :class:`SpikingModel` that runs a NIR graph with ann2snn's kernels.

    Args:
        source: a path to a NIR file, or a ``nir.NIRGraph``.

    Raises:
        NIRImportError: listing every node that cannot run (other neuron models, recurrent
            graphs, thresholds or reset potentials ann2snn's IF neuron cannot hold).
    """
    import nir

    graph = source if isinstance(source, nir.NIRGraph) else nir.read(str(source))
    nodes, edges = dict(graph.nodes), [tuple(e) for e in graph.edges]
    meta = dict(graph.metadata or {})
    preds: Dict[str, List[str]] = defaultdict(list)
    for a, b in edges:
        preds[b].append(a)

    root = nn.Module()
    fg = fx.Graph()
    env: Dict[str, fx.Node] = {}
    problems: List[str] = []
    input_shape: Optional[List[int]] = None
    output: Optional[fx.Node] = None
    foreign_if = False

    def attr_name(name: str) -> str:
        safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "node"
        return f"n_{safe}" if safe[0].isdigit() or keyword.iskeyword(safe) else safe

    for name in topological_order(nodes, edges):
        node = nodes[name]
        ins = [env[p] for p in preds[name] if p in env]
        x: Optional[fx.Node] = ins[0] if ins else None
        for other in ins[1:]:  # NIR sums the inputs of a node
            x = fg.call_function(operator.add, (x, other))
        key = attr_name(name)

        def module(m: nn.Module, arg: Optional[fx.Node] = x, key: str = key) -> fx.Node:
            root.add_module(key, m)
            return fg.call_module(key, (arg,))

        if isinstance(node, nir.Input):
            input_shape = [int(s) for s in np.asarray(node.input_type["input"]).reshape(-1)]
            env[name] = fg.placeholder("input")
            continue
        if x is None:
            problems.append(f"{name}: {type(node).__name__} has no input")
            continue
        if isinstance(node, nir.Output):
            output = x
        elif isinstance(node, nir.Conv2d):
            w = _tensor(node.weight)
            pad = node.padding
            conv = nn.Conv2d(
                w.shape[1] * int(node.groups),
                w.shape[0],
                tuple(w.shape[2:]),
                stride=tuple(np.atleast_1d(node.stride).tolist()) * (2 // np.size(node.stride)),
                padding=pad
                if isinstance(pad, str)
                else tuple(np.atleast_1d(pad).tolist()) * (2 // np.size(pad)),
                dilation=tuple(np.atleast_1d(node.dilation).tolist())
                * (2 // np.size(node.dilation)),
                groups=int(node.groups),
                bias=node.bias is not None,
            )
            with torch.no_grad():
                conv.weight.copy_(w)
                if node.bias is not None:
                    conv.bias.copy_(_tensor(node.bias).reshape(-1))
            env[name] = module(conv)
        elif isinstance(node, (nir.Affine, nir.Linear)):
            w = _tensor(node.weight)
            bias = getattr(node, "bias", None)
            lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if bias is not None:
                    lin.bias.copy_(_tensor(bias).reshape(-1))
            env[name] = module(lin)
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            pool = nn.AvgPool2d(
                tuple(int(k) for k in np.atleast_1d(node.kernel_size)),
                tuple(int(s) for s in np.atleast_1d(node.stride)),
                tuple(int(p) for p in np.atleast_1d(node.padding)),
                # a sum pooling is an average pooling with divisor 1 (sums of spikes are exact)
                divisor_override=1 if isinstance(node, nir.SumPool2d) else None,
            )
            env[name] = module(pool)
        elif isinstance(node, nir.Flatten):
            start, end = int(node.start_dim), int(node.end_dim)  # NIR dims exclude the batch
            env[name] = module(
                nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
            )
        elif isinstance(node, nir.Scale):
            scale = _per_channel(node.scale, "the scale", problems, name)
            if scale is not None:
                env[name] = module(Scale(scale))
        elif isinstance(node, nir.IF):
            md = dict(node.metadata or {})
            thr = _per_channel(node.v_threshold, "v_threshold", problems, name)
            if node.v_reset is not None and np.any(np.asarray(node.v_reset) != 0):
                problems.append(f"{name}: v_reset is not 0 (ann2snn resets by subtraction)")
            if thr is None or torch.any(thr <= 0):
                if thr is not None:
                    problems.append(f"{name}: v_threshold is not positive")
                continue
            if md.get("reset_mode") != "subtract" or md.get("spike_condition") != ">=":
                foreign_if = True
            neuron = IFNeuron(thr if thr.numel() > 1 else float(thr), v_init=0.0)
            if "ann2snn_v_init_fraction" in md:
                frac = _tensor(md["ann2snn_v_init_fraction"]).reshape(-1)
                if frac.numel() == 1:
                    neuron.v_init = float(frac)
                else:
                    neuron.v_init_channels = frac
            elif "v_init" in md:
                v0 = _per_channel(md["v_init"], "v_init", problems, name)
                if v0 is not None:
                    neuron.v_init_channels = (v0 / thr).expand(thr.numel()).contiguous()
            arg = x
            r = np.asarray(node.r, dtype=np.float32)
            if np.any(r != 1):
                r_scale = _per_channel(r, "r", problems, name)
                if r_scale is None:
                    continue
                arg = module(Scale(r_scale), x, f"{key}_r")
            env[name] = module(neuron, arg)
        else:
            problems.append(
                f"{name}: {type(node).__name__} (ann2snn runs IF, Affine, Linear, "
                "Conv2d, SumPool2d, AvgPool2d, Flatten and Scale nodes)"
            )
    if input_shape is None:
        problems.append("the graph has no Input node")
    if output is None:
        problems.append("the graph has no Output node")
    if problems:
        raise NIRImportError(
            f"{len(problems)} problem(s) in the NIR graph:\n  - " + "\n  - ".join(problems)
        )
    if foreign_if:
        warnings.warn(
            "the NIR graph's IF neurons do not say they reset by subtraction and fire on >=; "
            "they run with ann2snn's IF semantics (docs/interop.md)",
            stacklevel=2,
        )
    fg.output(output)
    from ann2snn.converter_passes.hoist_static_prefix import hoist_static_prefix

    flat = fx.GraphModule(root, fg, "FromNIR")
    gm = hoist_static_prefix(flat, torch.zeros((1, *input_shape)))
    snn_meta = {
        "input_shape": input_shape,
        "source": "nir",
        "nir_producer": str(meta.get("producer", "unknown")),
    }
    if "timesteps" in meta:
        snn_meta["timesteps"] = int(meta["timesteps"])
    return SpikingModel(gm, ann=None, meta=snn_meta).eval()
