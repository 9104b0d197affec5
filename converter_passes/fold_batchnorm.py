"""Fold BatchNorm layers into the Conv/Linear layer that feeds them."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from ann2snn.tracing import finish, is_module, replace_submodule

_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_conv_weights(
    conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by eval-mode ``bn``, as one layer.

    Works for Conv1d/2d/3d (``out_channels`` first) and Linear (``out_features`` first).
    """
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.affine else torch.ones_like(mean)
    beta = bn.bias if bn.affine else torch.zeros_like(mean)
    if isinstance(conv, nn.Linear):
        w, b = fuse_linear_bn_weights(weight, bias, mean, var, bn.eps, gamma, beta)
    else:
        w, b = fuse_conv_bn_weights(weight, bias, mean, var, bn.eps, gamma, beta)
    return w.detach(), b.detach()


def _foldable(gm: fx.GraphModule, producer: fx.Node, bn_node: fx.Node) -> bool:
    if len(producer.users) != 1 or producer.op != "call_module":
        return False
    layer = gm.get_submodule(str(producer.target))
    bn = gm.get_submodule(str(bn_node.target))
    if bn.running_mean is None or bn.running_var is None:
        return False  # track_running_stats=False: batch statistics even in eval mode
    if isinstance(layer, nn.Linear):
        # BatchNorm1d normalizes dim 1: that is the feature dim only for [N, F] outputs.
        meta = producer.meta.get("tensor_meta")
        two_d = meta is not None and len(meta.shape) == 2
        return type(bn) is nn.BatchNorm1d and two_d and bn.num_features == layer.out_features
    expected = _CONV_BN.get(type(layer))
    return expected is type(bn) and bn.num_features == layer.out_channels


def _shared(gm: fx.GraphModule, target: str) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) > 1


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every eval-mode BatchNorm that directly follows a Conv/Linear used only there.

    BatchNorms that follow anything else stay in the graph as affine layers.

    Returns:
        ``gm`` with the folded BatchNorm nodes removed.
    """
    for bn_node in list(gm.graph.nodes):
        if not is_module(gm, bn_node, _BN):
            continue
        producer = bn_node.args[0]
        if not isinstance(producer, fx.Node) or not is_module(
            gm, producer, tuple(_CONV_BN) + (nn.Linear,)
        ):
            continue
        if not _foldable(gm, producer, bn_node) or _shared(gm, str(producer.target)):
            continue
        layer = gm.get_submodule(str(producer.target))
        bn = gm.get_submodule(str(bn_node.target))
        weight, bias = folded_conv_weights(layer, bn)
        fused = _copy_with(layer, weight, bias)
        replace_submodule(gm, str(producer.target), fused)
        bn_node.replace_all_uses_with(producer)
        gm.graph.erase_node(bn_node)
    return finish(gm)


def _copy_with(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    import copy

    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(weight.clone(), requires_grad=layer.weight.requires_grad)
    fused.bias = nn.Parameter(bias.clone(), requires_grad=layer.weight.requires_grad)
    return fused
