"""BatchNorms that no preceding Conv/Linear absorbed: fold them forward, else fix them as affine.

``fold_batchnorm`` folds ``Conv/Linear -> BatchNorm``. A BatchNorm after anything else (a
concatenation in DenseNet, an addition, the input) is a fixed per-channel affine map in
eval mode. When its only consumer is a Conv without padding or a Linear, the map folds
into that layer's weights (with zero padding it would not: the padding zeros would have to
be mapped too); otherwise it becomes a :class:`ann2snn.runtime.affine.ChannelAffine`, which is
linear over time like BatchNorm but has no training mode.
"""

from __future__ import annotations

import copy
from typing import Tuple

import torch
from torch import fx, nn

from ann2snn.runtime.affine import ChannelAffine, batchnorm_affine
from ann2snn.tracing import finish, is_module, replace_submodule

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def affine_into_next_layer(
    layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``layer(x * scale + shift)`` as one layer (per input channel).

    Args:
        layer: a Conv1d/2d/3d without padding (any groups) or a Linear.
        scale: per input channel factors.
        shift: per input channel offsets.

    Returns:
        ``(weight, bias)`` of the folded layer.
    """
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    scale, shift = scale.to(w.dtype), shift.to(w.dtype)
    if isinstance(layer, nn.Linear):
        return w * scale.reshape(1, -1), b + w @ shift
    groups = layer.groups
    out_c, in_per_group = w.shape[0], w.shape[1]

    def per_output(t: torch.Tensor) -> torch.Tensor:  # [C_in] -> [C_out, C_in / groups]
        return t.reshape(groups, in_per_group).repeat_interleave(out_c // groups, dim=0)

    spatial = (1,) * (w.dim() - 2)
    weight = w * per_output(scale).reshape((out_c, in_per_group) + spatial)
    bias = b + (w.sum(dim=tuple(range(2, w.dim()))) * per_output(shift)).sum(1)
    return weight, bias


def _no_padding(layer: nn.Module) -> bool:
    padding = layer.padding
    if isinstance(padding, str):
        return padding == "valid"
    return all(p == 0 for p in padding)


def _used_once(gm: fx.GraphModule, target: str) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) == 1


def _forward_target(gm: fx.GraphModule, bn_node: fx.Node, channels: int):
    """The Conv/Linear node that can absorb ``bn_node``, or None."""
    if len(bn_node.users) != 1:
        return None
    user = next(iter(bn_node.users))
    if not user.args or user.args[0] is not bn_node or len(user.args) != 1 or user.kwargs:
        return None
    if not is_module(gm, user, _CONV + (nn.Linear,)) or not _used_once(gm, str(user.target)):
        return None
    layer = gm.get_submodule(str(user.target))
    if isinstance(layer, nn.Linear):
        meta = bn_node.meta.get("tensor_meta")
        two_d = meta is not None and hasattr(meta, "shape") and len(meta.shape) == 2
        return user if two_d and layer.in_features == channels else None
    return user if _no_padding(layer) and layer.in_channels == channels else None


def fold_affine_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold each remaining eval-mode BatchNorm into the next layer, or make it affine.

    Run after ``fold_batchnorm``.

    Returns:
        ``gm`` without BatchNorm modules.

    Raises:
        ValueError: for a BatchNorm without running statistics (``check_supported``
            refuses those first).
    """
    for bn_node in list(gm.graph.nodes):
        if not is_module(gm, bn_node, _BN):
            continue
        bn = gm.get_submodule(str(bn_node.target))
        scale, shift = batchnorm_affine(bn)
        target = _forward_target(gm, bn_node, scale.numel())
        if target is not None:
            layer = gm.get_submodule(str(target.target))
            weight, bias = affine_into_next_layer(layer, scale, shift)
            fused = copy.deepcopy(layer)
            fused.weight = nn.Parameter(weight.clone(), requires_grad=False)
            fused.bias = nn.Parameter(bias.clone(), requires_grad=False)
            replace_submodule(gm, str(target.target), fused)
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
        else:  # a BatchNorm module called at several places: every call becomes affine
            replace_submodule(gm, str(bn_node.target), ChannelAffine(scale, shift))
    return finish(gm)
