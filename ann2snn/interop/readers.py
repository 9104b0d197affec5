"""A NIR graph loaded into Norse, sinabs or snnTorch, with ann2snn's IF semantics made exact.

NIR's ``IF`` resets to ``v_reset``, fires on ``v > v_threshold`` and has no initial state;
ann2snn's IF subtracts the threshold, fires on ``v >= v_threshold``, at most once a step, from
``v_init`` (the node's metadata says so, docs/interop.md). Each reader here loads the graph
with the tool's own ``from_nir`` and then patches, after loading, what the tool cannot be
told through NIR (every patch is listed in :attr:`NIRReader.patches`):

* :func:`to_norse`: Norse's ``IAFCell`` keeps its module, parameters and state, but its step
  function is replaced by the exact step (``v += I; s = v >= thr; v -= s * thr``) and its
  initial state is ``v_init``; ``Flatten`` gets NIR's batch-less dims shifted by one.
* :func:`to_sinabs`: sinabs' ``IAFSqueeze`` gets a one-spike ``>=`` spike function,
  subtractive reset (its own ``MembraneSubtract``), no lower bound on ``v`` (its ``-thr``
  clamp is removed) and ``v_mem = v_init`` before the first step.
* :func:`to_snntorch`: snnTorch's ``Leaky`` gets ``beta = 1``, subtractive reset and a
  ``>=`` spike function; its arithmetic order differs from ours, so it is near, not exact.

The graph is executed by the tool's own executor (nirtorch's ``GraphExecutor`` for Norse and
sinabs, an fx graph for snnTorch), layer by layer as the tool built it. For Norse and sinabs
the executor's node order is replaced by a topological order of the NIR graph: its own
depth-first order can run a residual fan-in node before one of its inputs, which then
contributes the previous step's value (Norse) or nothing (sinabs).

:meth:`NIRReader.spike_trains` runs the module step by step on a static input (presented
unchanged at every step) and returns every IF node's spikes ``[T, B, ...]`` and the output
node's value at every step, in the form of :func:`ann2snn.interop.spikes.spike_trains`.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ann2snn.interop.nir_import import topological_order

__all__ = ["NIRReader", "NIRScale", "to_norse", "to_sinabs", "to_snntorch"]


def _graph(source: Any) -> Any:
    import nir

    return source if isinstance(source, nir.NIRGraph) else nir.read(str(source))


def _sanitize(name: str) -> str:
    return name.replace(".", "_")  # nirtorch's sanitize_name


def _v_init(node: Any) -> torch.Tensor:
    """The IF node's initial potential, full shape (its ``v_init`` metadata, else 0)."""
    md = dict(node.metadata or {})
    thr = np.asarray(node.v_threshold, dtype=np.float32)
    if "v_init" in md:
        v0 = np.asarray(md["v_init"], dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(v0, thr.shape)).copy())
    return torch.zeros(thr.shape)


class NIRScale(nn.Module):
    """``nir.Scale`` (``x * scale``), for readers that have no mapping for it."""

    def __init__(self, scale: Any) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _load(graph: Any, tool_map: Callable[[Any], Optional[nn.Module]]) -> Tuple[nn.Module, int]:
    """``nirtorch.load`` with the tool's own node mapping (what its ``from_nir`` does), plus
    :class:`NIRScale` for ``nir.Scale`` nodes the tool does not map; the module and the number
    of Scale nodes added."""
    import nir
    import nirtorch

    added = 0

    def model_map(node: Any) -> Optional[nn.Module]:
        nonlocal added
        mod = tool_map(node)
        if mod is None and isinstance(node, nir.Scale):
            added += 1
            return NIRScale(node.scale)
        return mod

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load's deprecation
        module = nirtorch.load(graph, model_map)
    return module, added


def _fix_execution_order(executor: Any, graph: Any) -> bool:
    """Replace nirtorch's depth-first execution order with a topological order of ``graph``;
    True when the order changed (a fan-in node used to run before one of its inputs)."""
    rank = {_sanitize(n): i for i, n in enumerate(topological_order(graph.nodes, graph.edges))}
    old = list(executor.execution_order)
    new = sorted(old, key=lambda node: rank[node.name])
    executor.execution_order = new
    return [n.name for n in new] != [n.name for n in old]


class NIRReader:
    """A NIR graph loaded into another tool: :attr:`module` is the tool's own module.

    Attributes:
        tool: ``"norse"``, ``"sinabs"`` or ``"snntorch"``.
        module: the module the tool's ``from_nir`` built (patched in place).
        graph: the ``nir.NIRGraph`` it was built from.
        if_nodes: the names of the graph's IF nodes, in topological order.
        neurons: IF node name -> the tool's neuron module for it.
        patches: what was changed after loading, one line each.
        exact: whether the patched semantics are ann2snn's exactly (False for snnTorch).
    """

    tool = ""
    exact = True

    def __init__(self, module: nn.Module, graph: Any) -> None:
        import nir

        self.module = module
        self.graph = graph
        order = topological_order(graph.nodes, graph.edges)
        self.if_nodes = [n for n in order if isinstance(graph.nodes[n], nir.IF)]
        self.neurons: Dict[str, nn.Module] = {}
        self.patches: List[str] = []

    def _spikes_of(self, output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output

    def _reset(self, x: torch.Tensor) -> None:
        """Prepare the neurons' state for a new run on ``x`` (the initial potential)."""

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def spike_trains(self, x: torch.Tensor, timesteps: int) -> Dict[str, torch.Tensor]:
        """IF node name -> its spikes ``[T, B, ...]`` (bool), in topological order, and
        ``"output"`` -> the output node's value at every step ``[T, B, ...]``, for the static
        input ``x`` presented at every one of ``timesteps`` steps."""
        record: Dict[str, List[torch.Tensor]] = {name: [] for name in self.if_nodes}
        handles = []
        for name, mod in self.neurons.items():

            def hook(m, inputs, out, name=name):
                record[name].append(self._spikes_of(out).detach() != 0)

            handles.append(mod.register_forward_hook(hook))
        outputs = []
        try:
            self._reset(x)
            for _ in range(timesteps):
                outputs.append(self._step(x).detach())
        finally:
            for h in handles:
                h.remove()
        trains = {name: torch.stack(chunks) for name, chunks in record.items()}
        trains["output"] = torch.stack(outputs)
        return trains


# ----------------------------------------------------------------------------------- Norse


def _norse_exact_step(input_tensor, state, p, dt=0.001):
    """ann2snn's IF step on Norse's state: ``v += I; s = v >= thr; v -= s * thr``."""
    from norse.torch.functional.iaf import IAFFeedForwardState

    v = state.v + input_tensor
    z = torch.ge(v, p.v_th).to(v.dtype)
    v = v - z * p.v_th
    return z, IAFFeedForwardState(v=v)


class _NorseInitialState:
    def __init__(self, v_init: torch.Tensor) -> None:
        self.v_init = v_init

    def __call__(self, input_tensor: torch.Tensor) -> Any:
        from norse.torch.functional.iaf import IAFFeedForwardState

        v = self.v_init.to(input_tensor.device, input_tensor.dtype)
        return IAFFeedForwardState(v=v.expand_as(input_tensor).clone())


class _NorseReader(NIRReader):
    tool = "norse"

    def _reset(self, x: torch.Tensor) -> None:
        self._state = None

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        out, self._state = self.module(x, self._state)
        return out


def to_norse(source: Any) -> NIRReader:
    """Load a NIR graph (a path or a ``nir.NIRGraph``) with ``norse.torch.from_nir`` and make
    its IF neurons ann2snn's exactly (module docstring). Any batch size; residual graphs run
    (execution order fixed)."""
    import nir
    from norse.torch.module.iaf import IAFCell
    from norse.torch.utils.import_nir import _import_norse_module

    graph = _graph(source)
    module, scales = _load(graph, _import_norse_module)  # norse.torch.from_nir's defaults
    reader = _NorseReader(module, graph)
    if scales:
        reader.patches.append(f"{scales} Scale node(s) (norse maps none): x * scale")
    for name in reader.if_nodes:
        cell = getattr(module, _sanitize(name))
        if not isinstance(cell, IAFCell):  # pragma: no cover - depends on norse
            raise TypeError(f"norse mapped IF node {name} to {type(cell).__name__}")
        cell.activation = _norse_exact_step
        cell.activation_sparse = None
        cell.state_fallback = _NorseInitialState(_v_init(graph.nodes[name]))
        reader.neurons[name] = cell
    reader.patches.append(
        f"{len(reader.if_nodes)} IAFCell(s): step function replaced by the exact step "
        "(subtract reset, >=, one spike a step); initial state v_init"
    )
    flat = 0
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Flatten):
            mod = getattr(module, _sanitize(name))
            mod.start_dim = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
            mod.end_dim = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
            flat += 1
    if flat:
        reader.patches.append(f"{flat} Flatten(s): NIR's batch-less dims shifted by one")
    if _fix_execution_order(module, graph):
        reader.patches.append("execution order: topological (a fan-in ran before its input)")
    return reader


# ----------------------------------------------------------------------------------- sinabs


class _GreaterEqualSingleSpike:
    """A sinabs spike function: one spike a step where ``v_mem >= threshold`` (no gradient)."""

    required_states = ["v_mem"]

    @staticmethod
    def apply(v_mem: torch.Tensor, spike_threshold: Any, surrogate_grad_fn: Any = None):
        return torch.ge(v_mem, spike_threshold).to(v_mem.dtype)


class _SinabsReader(NIRReader):
    tool = "sinabs"

    def _reset(self, x: torch.Tensor) -> None:
        batch = x.shape[0]
        for name, layer in self.neurons.items():
            layer.batch_size, layer.num_timesteps = batch, 1  # one step a call
            v0 = _v_init(self.graph.nodes[name]).to(x.device)
            layer.v_mem = v0.expand((batch, *v0.shape)).clone()

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out


def to_sinabs(source: Any, batch_size: int = 1) -> NIRReader:
    """Load a NIR graph (a path or a ``nir.NIRGraph``) with ``sinabs.from_nir`` and make its
    IF neurons ann2snn's exactly (module docstring). sinabs' squeeze layers need a batch size
    at load (``batch_size``); :meth:`NIRReader.spike_trains` sets it to each input's and runs
    one step a call. Residual graphs run (execution order fixed).

    sinabs 3.1.3 pins ``nir<=1.0.4``, which cannot read files written by nir 1.0.8: the file is
    read here with the installed ``nir`` and sinabs gets the in-memory graph."""
    from sinabs.activation import MembraneSubtract
    from sinabs.layers import IAFSqueeze
    from sinabs.nir import _import_sinabs_module

    graph = _graph(source)
    module, scales = _load(  # what sinabs.nir.from_nir does
        graph, partial(_import_sinabs_module, batch_size=batch_size, num_timesteps=None)
    )
    reader = _SinabsReader(module, graph)
    if scales:
        reader.patches.append(f"{scales} Scale node(s) (sinabs maps none): x * scale")
    for name in reader.if_nodes:
        layer = getattr(module, _sanitize(name))
        if not isinstance(layer, IAFSqueeze):  # pragma: no cover - depends on sinabs
            raise TypeError(f"sinabs mapped IF node {name} to {type(layer).__name__}")
        layer.spike_fn = _GreaterEqualSingleSpike
        layer.reset_fn = MembraneSubtract()
        layer.min_v_mem = None
        reader.neurons[name] = layer
    reader.patches.append(
        f"{len(reader.if_nodes)} IAFSqueeze(s): one spike a step on >= (spike_fn), "
        "MembraneSubtract reset, no -thr clamp (min_v_mem=None), v_mem = v_init at the start"
    )
    if _fix_execution_order(module, graph):
        reader.patches.append("execution order: topological (a fan-in ran before its input)")
    return reader


# --------------------------------------------------------------------------------- snnTorch


def _snntorch_ge(mem_shift: torch.Tensor) -> torch.Tensor:
    """A spike where ``v - thr >= 0`` (snnTorch's default fires on ``> 0``); no gradient."""
    return torch.ge(mem_shift, 0).to(mem_shift.dtype)


class _SnnTorchReader(NIRReader):
    tool = "snntorch"
    exact = False

    def _reset(self, x: torch.Tensor) -> None:
        self._state = None
        for name, leaky in self.neurons.items():
            v0 = _v_init(self.graph.nodes[name]).to(x.device)
            leaky.mem = v0.expand((x.shape[0], *v0.shape)).clone()

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x) if self._state is None else self.module(x, self._state)
        if isinstance(out, tuple):
            out, self._state = out
        return out


def to_snntorch(source: Any) -> NIRReader:
    """Load a NIR graph (a path or a ``nir.NIRGraph``) the way ``snntorch.import_from_nir``
    does (``nirtorch.nir_to_torch`` with snnTorch's node mapping), with IF nodes mapped to
    snnTorch's ``Leaky`` set as near to ann2snn's IF as its parameters allow: ``beta = 1``
    (snnTorch's mapping uses 0.9), the full-shape threshold (its mapping asserts one per
    layer), ``reset_mechanism="subtract"``, ``reset_delay=False``, a ``>=`` spike function and
    ``mem = v_init`` before the first step. ``Leaky`` still computes ``mem + I - r * thr`` with
    ``r`` the previous step's spike test, which differs from ann2snn's IF where the potential
    stays at or above the threshold after a spike (inputs above threshold); it is near, not
    exact (docs/interop.md gives the counts). Any batch size; residual graphs run (fx, in
    topological order)."""
    import nir
    import nirtorch
    import snntorch as snn
    from snntorch.import_nir import _nir_to_snntorch_module, _replace_rnn_subgraph_with_nirgraph

    graph = _graph(source)
    leakies: Dict[str, nn.Module] = {}

    def map_if(node: Any) -> nn.Module:
        thr = torch.as_tensor(np.asarray(node.v_threshold, dtype=np.float32))
        leaky = snn.Leaky(
            beta=1.0,
            threshold=thr,
            spike_grad=_snntorch_ge,
            init_hidden=True,
            reset_mechanism="subtract",
            reset_delay=True,
        )
        leakies[id(node)] = leaky
        return leaky

    def snntorch_map(node: Any) -> nn.Module:
        return _nir_to_snntorch_module(node, init_hidden=True)

    node_map = {  # snntorch.import_from_nir's, with IF replaced and Scale added
        nir.Affine: snntorch_map,
        nir.Linear: snntorch_map,
        nir.Conv2d: snntorch_map,
        nir.Flatten: snntorch_map,
        nir.AvgPool2d: snntorch_map,
        nir.IF: map_if,
        nir.Scale: lambda node: NIRScale(node.scale),
    }
    graph = _replace_rnn_subgraph_with_nirgraph(graph)
    module = nirtorch.nir_to_torch(graph, node_map)
    reader = _SnnTorchReader(module, graph)
    for name in reader.if_nodes:
        reader.neurons[name] = leakies[id(graph.nodes[name])]
    reader.patches.append(
        f"{len(reader.if_nodes)} IF node(s) mapped to snn.Leaky(beta=1, full-shape threshold, "
        "subtract reset, reset_delay=False, spike on >=), mem = v_init at the start"
    )
    scales = sum(isinstance(n, nir.Scale) for n in graph.nodes.values())
    if scales:
        reader.patches.append(f"{scales} Scale node(s) (snnTorch maps none): x * scale")
    flat = sum(isinstance(n, nir.Flatten) for n in graph.nodes.values())
    return reader if not flat else _shift_flatten(reader, module, graph)


def _shift_flatten(reader: NIRReader, module: nn.Module, graph: Any) -> NIRReader:
    """snnTorch maps ``nir.Flatten`` to ``nn.Flatten(start_dim, end_dim)`` (torch dims):
    shift NIR's batch-less dims by one."""
    import nir

    count = 0
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Flatten):
            mod = module.get_submodule(name.replace(".", "_"))
            mod.start_dim = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
            mod.end_dim = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
            count += 1
    reader.patches.append(f"{count} Flatten(s): NIR's batch-less dims shifted by one")
    return reader
