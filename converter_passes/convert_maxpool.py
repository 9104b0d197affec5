"""Max pooling in spiking graphs: where it can move before the neurons, and what replaces it.

Max pooling is the one nonlinearity besides the activation that a converted network keeps.
Pooling spikes step by step over-counts (a window spikes whenever any unit spikes), so the
method is a choice, measured on the Fashion-MNIST max-pooling model in
``docs/architectures.md``:

``'auto'`` (default)
    pool before the neuron where the pooled activation's input is the same at every step
    (the first layers, computed once), which is exact and cheaper; everywhere else
    ``'cumulative'``.
``'cumulative'``
    :class:`ann2snn.runtime.pooling.SpikingMaxPool`: pool the running input sum and difference it
    over time; the output's time average is exactly the max pooling of the input's.
``'gate'``
    :class:`ann2snn.runtime.pooling.GatedMaxPool`: pass the spikes of the unit with the largest
    running spike count of its window.
``'current'``
    ``activation -> maxpool`` becomes ``maxpool -> activation`` everywhere (ReLU and max
    commute, so the ANN is unchanged): neurons integrate the pooled input current, which
    is exact for static inputs and over-estimates fluctuating ones; other pools see spikes.
``'spikes'``
    keep max pooling on spikes, step by step (the naive method, for comparison).
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Set

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.config import MAXPOOL_METHODS, ConversionConfig, check_maxpool_method
from ann2snn.converter_passes.op_support import kind_of
from ann2snn.errors import ConversionError
from ann2snn.runtime.neuron import Activation, IFNeuron
from ann2snn.runtime.pooling import INDEXED_POOLS, AMax, GatedMaxPool, SpikingMaxPool
from ann2snn.tracing import add_submodule, describe_node, finish, is_module, replace_submodule

DEFAULT_MAXPOOL: str = ConversionConfig.default("maxpool")

_MODULE_POOLS = INDEXED_POOLS + (AMax,)
_WINDOW_FUNCTIONS = {
    F.max_pool1d: nn.MaxPool1d,
    F.max_pool2d: nn.MaxPool2d,
    F.max_pool3d: nn.MaxPool3d,
    torch.max_pool1d: nn.MaxPool1d,
    torch.max_pool2d: nn.MaxPool2d,
    torch.max_pool3d: nn.MaxPool3d,
}
_ADAPTIVE_FUNCTIONS = {
    F.adaptive_max_pool1d: nn.AdaptiveMaxPool1d,
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
    F.adaptive_max_pool3d: nn.AdaptiveMaxPool3d,
}
_WINDOW_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def is_maxpool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for max-pooling nodes (module, functional or ``amax`` form)."""
    return node.op in ("call_module", "call_function", "call_method") and (
        kind_of(gm, node) == "maxpool"
    )


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def pool_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The max pooling ``node`` computes, as a module applied to its first argument.

    Raises:
        ConversionError: for pooling that also returns indices or reduces the batch dim.
    """
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if getattr(mod, "return_indices", False):
            raise ConversionError(f"{describe_node(gm, node)}: max pooling with return_indices")
        return copy.deepcopy(mod)
    target = node.target
    if target in _WINDOW_FUNCTIONS:
        values = {n: _arg(node, i + 1, n, None) for i, n in enumerate(_WINDOW_ARGS)}
        if values["return_indices"]:
            raise ConversionError(f"{describe_node(gm, node)}: max pooling with return_indices")
        stride = values["stride"]
        return _WINDOW_FUNCTIONS[target](
            values["kernel_size"],
            stride=None if stride in (None, [], ()) else stride,
            padding=values["padding"] or 0,
            dilation=values["dilation"] or 1,
            ceil_mode=bool(values["ceil_mode"]),
        )
    if target in _ADAPTIVE_FUNCTIONS:
        if _arg(node, 2, "return_indices", False):
            raise ConversionError(f"{describe_node(gm, node)}: max pooling with return_indices")
        return _ADAPTIVE_FUNCTIONS[target](_arg(node, 1, "output_size", None))
    if target is torch.amax or target == "amax":
        dim = _arg(node, 1, "dim", ())
        try:
            return AMax(dim, bool(_arg(node, 2, "keepdim", False)))
        except ValueError as exc:
            raise ConversionError(f"{describe_node(gm, node)}: {exc}") from exc
    raise ConversionError(f"{describe_node(gm, node)}: not a max pooling ann2snn can convert")


def _pool_input(node: fx.Node) -> Optional[fx.Node]:
    arg = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
    return arg if isinstance(arg, fx.Node) else None


def _downstream_of(gm: fx.GraphModule, cls: type) -> Set[fx.Node]:
    """Nodes whose value depends on the output of a ``cls`` module (order: graph order)."""
    below: Set[fx.Node] = set()
    for node in gm.graph.nodes:
        if is_module(gm, node, cls) or any(a in below for a in node.all_input_nodes):
            below.add(node)
    return below


def pool_before_neurons(gm: fx.GraphModule, method: str = DEFAULT_MAXPOOL) -> fx.GraphModule:
    """Rewrite ``activation -> maxpool`` as ``maxpool -> activation`` where ``method`` says.

    ReLU-family activations are monotone, so they commute with max pooling and the ANN's
    function is unchanged; the neurons then integrate pooled input currents. ``'current'``
    moves every such pool, ``'auto'`` only those whose activation input is computed before
    any activation (static over time in the SNN, where pooling first is exact), other
    methods none. The activation must feed only the pool. Run before calibration.

    Args:
        method: a key of :data:`MAXPOOL_METHODS`.

    Returns:
        ``gm``, rewritten.
    """
    check_maxpool_method(method)
    if method not in ("auto", "current"):
        return gm
    dynamic = _downstream_of(gm, Activation)
    for pool in list(gm.graph.nodes):
        if not is_maxpool(gm, pool):
            continue
        act = _pool_input(pool)
        if act is None or not is_module(gm, act, Activation) or len(act.users) != 1:
            continue
        source = act.args[0]
        if not isinstance(source, fx.Node):
            continue
        if method == "auto" and source in dynamic:
            continue
        for user in list(pool.users):
            user.replace_input_with(pool, act)
        pool.replace_input_with(act, source)
        act.args = (pool,)
        pool.append(act)  # the activation now runs after the pool
        if "tensor_meta" in pool.meta:  # both now produce the pooled shape
            act.meta["tensor_meta"] = pool.meta["tensor_meta"]
    return finish(gm)


def convert_maxpool(gm: fx.GraphModule, method: str = DEFAULT_MAXPOOL) -> fx.GraphModule:
    """Replace the max pooling of spike trains by the module ``method`` names.

    Pools whose input does not depend on any IF neuron are left alone: they see the same
    value at every step and are computed once. Run after ``replace_relu_with_if``.

    Args:
        method: a key of :data:`MAXPOOL_METHODS`; ``'spikes'`` and ``'current'`` keep
            max pooling on spikes.

    Returns:
        ``gm``, rewritten.

    Raises:
        ConversionError: for a pooling form the method cannot handle.
    """
    check_maxpool_method(method)
    if method in ("spikes", "current"):
        return gm
    cls = GatedMaxPool if method == "gate" else SpikingMaxPool
    dynamic = _downstream_of(gm, IFNeuron)
    for node in list(gm.graph.nodes):
        if not is_maxpool(gm, node) or node not in dynamic:
            continue
        source = _pool_input(node)
        try:
            spiking = cls(pool_module(gm, node))
        except TypeError as exc:
            raise ConversionError(f"{describe_node(gm, node)}: {exc}") from exc
        if node.op == "call_module" and _used_once(gm, str(node.target)):
            replace_submodule(gm, str(node.target), spiking)
            node.args, node.kwargs = (source,), {}
            continue
        name = add_submodule(gm, f"{node.name}_spiking", spiking)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (source,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    return finish(gm)


def _used_once(gm: fx.GraphModule, target: str) -> bool:
    count = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)
    return count == 1


__all__ = [
    "DEFAULT_MAXPOOL",
    "MAXPOOL_METHODS",
    "check_maxpool_method",
    "convert_maxpool",
    "is_maxpool",
    "pool_before_neurons",
    "pool_module",
]
