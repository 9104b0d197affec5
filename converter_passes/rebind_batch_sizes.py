"""Read batch sizes from the tensor being reshaped, not from another tensor.

``b = x.size(0)`` at the top of ``forward`` and ``y.view(b, -1)`` later is a common way
to write a flatten. In the spiking graph ``x`` (the input) is computed once per sample
batch while ``y`` carries ``steps`` time steps stacked along the batch dimension, so ``b``
is no longer ``y``'s leading size and the reshape mixes time into features. Where the
ANN's two tensors have the same leading size, the reshape reads ``y.size(0)`` instead:
the same value in the ANN, the right one in the SNN.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx

from ann2snn.tracing import finish

_RESHAPE_METHODS = ("view", "reshape", "expand")


def _leading_size_of(node: Any) -> Optional[fx.Node]:
    """The tensor ``S`` when ``node`` computes ``S.size(0)`` / ``S.shape[0]``, else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2:
        return node.args[0] if node.args[1] == 0 else None
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        source = node.args[0]
        if not isinstance(source, fx.Node):
            return None
        if source.op == "call_method" and source.target == "size" and len(source.args) == 1:
            return source.args[0]
        if source.op == "call_function" and source.target is getattr:
            return source.args[0] if source.args[1] == "shape" else None
    return None


def _leading_dim(node: fx.Node) -> Optional[int]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def _is_reshape(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    return node.op == "call_function" and node.target is torch.reshape


def rebind_batch_sizes(gm: fx.GraphModule) -> fx.GraphModule:
    """Make ``y.view(x.size(0), ...)`` read ``y.size(0)`` where both sizes agree.

    Needs recorded shapes (``ShapeProp``) to check that the two leading sizes are equal.

    Returns:
        ``gm``, rewritten.
    """
    for node in list(gm.graph.nodes):
        if not _is_reshape(node) or len(node.args) < 2:
            continue
        target = node.args[0]
        sizes = node.args[1] if isinstance(node.args[1], (tuple, list)) else None
        first = sizes[0] if sizes is not None and sizes else node.args[1]
        source = _leading_size_of(first)
        if source is None or source is target or not isinstance(target, fx.Node):
            continue
        if _leading_dim(source) is None or _leading_dim(source) != _leading_dim(target):
            continue
        with gm.graph.inserting_before(node):
            own = gm.graph.call_method("size", (target, 0))
        if sizes is not None:
            node.args = (target, type(sizes)((own,) + tuple(sizes[1:]))) + tuple(node.args[2:])
        else:
            node.args = (target, own) + tuple(node.args[2:])
        _erase_if_unused(gm, first)
    return finish(gm)


def _erase_if_unused(gm: fx.GraphModule, node: fx.Node) -> None:
    """Erase ``node`` and the size reads feeding it once nothing reads them."""
    while (
        isinstance(node, fx.Node) and not node.users and node.op in ("call_function", "call_method")
    ):
        feeding = node.args[0] if node.target is operator.getitem else None
        gm.graph.erase_node(node)
        node = feeding
