"""Split a spiking graph into a static prefix computed once and a per-chunk time loop."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ann2snn.runtime.neuron import IFNeuron, RepeatInTime
from ann2snn.tracing import add_submodule, is_module


def static_nodes(gm: fx.GraphModule) -> set:
    """Nodes whose value is the same at every time step (computed before any IF neuron)."""
    static = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            static.add(node)
        elif node.op == "output" or is_module(gm, node, IFNeuron):
            continue
        elif all(inp in static for inp in node.all_input_nodes):
            static.add(node)
    return static


def _is_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape")


def _largest_activation(gm: fx.GraphModule) -> int:
    sizes = [
        int(torch.Size(n.meta["tensor_meta"].shape[1:]).numel())
        for n in gm.graph.nodes
        if _is_tensor(n) and len(n.meta["tensor_meta"].shape) > 0
    ]
    return max(sizes, default=1)


def hoist_static_prefix(
    gm: fx.GraphModule, example_input: Optional[torch.Tensor] = None
) -> fx.GraphModule:
    """Return a GraphModule with submodules ``static_prefix`` and ``time_loop``.

    ``static_prefix(*inputs)`` computes, once per input, every value that does not change
    over time and returns those the time loop needs. ``time_loop(*values)`` processes one
    chunk of ``steps`` time steps with activations shaped ``[steps * B, ...]``; IF neurons
    whose input is static read it as a time-broadcast view (never materialized), other
    consumers get it through :class:`RepeatInTime`. Calling the result runs one chunk.

    Args:
        example_input: a small input batch used to record shapes (``tensor_meta``).
    """
    if example_input is not None:
        ShapeProp(gm).propagate(example_input)
        for m in gm.modules():
            if isinstance(m, IFNeuron):
                m.reset()
    static = static_nodes(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    boundary: List[fx.Node] = sorted(
        {
            inp
            for n in gm.graph.nodes
            if n not in static
            for inp in n.all_input_nodes
            if inp in static and inp.op != "get_attr"
        },
        key=order.get,
    )

    static_graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node in static:
            env[node] = static_graph.node_copy(node, lambda n: env[n])
    static_graph.output(tuple(env[b] for b in boundary))

    loop_graph = fx.Graph()
    loop_env: Dict[fx.Node, fx.Node] = {}
    repeated: Dict[fx.Node, fx.Node] = {}
    for b in boundary:
        loop_env[b] = loop_graph.placeholder(b.name)
        loop_env[b].meta = dict(b.meta)

    def repeated_value(b: fx.Node) -> fx.Node:
        if b not in repeated:
            name = add_submodule(gm, f"{b.name}_repeat", RepeatInTime())
            repeated[b] = loop_graph.call_module(name, (loop_env[b],))
        return repeated[b]

    for node in gm.graph.nodes:
        if node in static and node.op != "get_attr":
            continue
        if node.op == "get_attr":
            continue  # copied on demand below
        if is_module(gm, node, IFNeuron):
            neuron = gm.get_submodule(str(node.target))
            neuron.static_input = node.args[0] in static
            loop_env[node] = loop_graph.node_copy(node, lambda n: _lookup(n, loop_env, loop_graph))
            continue

        def arg_map(n: fx.Node) -> fx.Node:
            if n in static and n.op != "get_attr" and _is_tensor(n):
                return repeated_value(n)
            return _lookup(n, loop_env, loop_graph)

        loop_env[node] = loop_graph.node_copy(node, arg_map)
    if not boundary and not any(n not in static for n in gm.graph.nodes if n.op != "output"):
        raise ValueError("the graph has no input")

    static_gm = fx.GraphModule(gm, static_graph, "StaticPrefix")
    loop_gm = fx.GraphModule(gm, loop_graph, "TimeLoop")
    root = nn.Module()
    root.static_prefix = static_gm
    root.time_loop = loop_gm
    top = fx.Graph()
    inputs = [top.placeholder(n.name) for n in gm.graph.nodes if n.op == "placeholder"]
    values = top.call_module("static_prefix", tuple(inputs))
    args = tuple(top.call_function(_getitem, (values, i)) for i in range(len(boundary)))
    top.output(top.call_module("time_loop", args))
    out = fx.GraphModule(root, top, type(gm).__name__)
    out.meta["largest_activation"] = _largest_activation(gm)
    out.graph.lint()
    out.recompile()
    return out


def _getitem(values, i):
    return values[i]


def _lookup(n: fx.Node, env: Dict[fx.Node, fx.Node], graph: fx.Graph) -> fx.Node:
    if n not in env:
        if n.op != "get_attr":
            raise KeyError(n.name)
        env[n] = graph.get_attr(str(n.target))
    return env[n]
