"""Data-based activation normalization: one scale per activation (or per channel), folded
into the weights around it wherever possible."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.calibration import ActivationObserver
from ann2snn.converter_passes.op_support import kind_of
from ann2snn.modes import NormMode, parse_mode
from ann2snn.runtime.neuron import Activation, Scale
from ann2snn.tracing import add_submodule, finish, is_module

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_MAX = parse_mode("max")


def activation_scale(
    max_value: torch.Tensor,
    mode: NormMode,
    statistic: Optional[torch.Tensor] = None,
    clip: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The normalization scale: the activation value that maps to the firing threshold.

    Args:
        max_value: maximum activation (scalar or per channel).
        mode: parsed mode; percentile modes take ``statistic`` (the exact percentile).
        statistic: the percentile for percentile modes.
        clip: the activation's clip value, which caps the scale (ReLU6 converts exactly).

    Returns:
        Positive scales; silent units (scale 0) get 1 (at most the clip) so that they
        simply never fire.
    """
    if mode.quantile is not None:
        if statistic is None:
            raise ValueError("percentile mode needs the percentile statistic")
        lam = statistic
    elif mode.fraction is not None:
        lam = mode.fraction * max_value
    else:
        lam = max_value
    lam = lam.float().clone()
    silent = torch.ones_like(lam)
    if clip is not None:
        lam = torch.minimum(lam, clip.float())
        silent = torch.minimum(silent, clip.float())  # never more than the clip
    return torch.where(lam > 0, lam, silent)


def _channels(lam: torch.Tensor) -> Optional[int]:
    return None if lam.numel() == 1 else lam.numel()


def _output_dims(node: fx.Node) -> Optional[int]:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _module_used_once(gm: fx.GraphModule, target: str) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) == 1


def _can_fold_into_producer(gm: fx.GraphModule, producer, lam: torch.Tensor) -> bool:
    if not isinstance(producer, fx.Node) or not is_module(gm, producer, _WEIGHTED):
        return False
    if len(producer.users) != 1 or not _module_used_once(gm, str(producer.target)):
        return False
    layer = gm.get_submodule(str(producer.target))
    c = _channels(lam)
    if c is None:
        return True
    if isinstance(layer, nn.Linear):
        return layer.out_features == c and _output_dims(producer) == 2
    return layer.out_channels == c


_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
)
_POOL_FUNCTIONS = (
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
)
_FLATTENS = ("flatten", "view", "reshape")


def _per_channel_ops(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that commute with a positive per-channel scale and keep channels in dim 1."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) in _POOLS
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS


def _is_flatten(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) is nn.Flatten
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.reshape)
    return node.op == "call_method" and node.target in _FLATTENS


def _flattened_factor(src: fx.Node, dst: fx.Node, lam: torch.Tensor) -> Optional[torch.Tensor]:
    """``lam`` per channel of ``src`` [B, C, ...] as per feature of ``dst`` [B, C * rest]."""
    if lam.numel() == 1:
        return lam
    a, b = src.meta.get("tensor_meta"), dst.meta.get("tensor_meta")
    if a is None or b is None or len(b.shape) != 2 or len(a.shape) < 2:
        return None
    rest = int(torch.Size(a.shape[2:]).numel())
    if a.shape[1] != lam.numel() or b.shape[1] != lam.numel() * rest:
        return None
    return lam.repeat_interleave(rest)


def _consumer_fold(gm: fx.GraphModule, user: fx.Node, act: fx.Node, lam: torch.Tensor):
    """Follow ``act -> user -> ...`` through single-use pooling/flatten ops to a Conv/Linear
    used only there; return (layer, per-input factor) or None when it cannot be folded."""
    prev, node, factor = act, user, lam
    while node.args and node.args[0] is prev and len(node.users) == 1:
        if _per_channel_ops(gm, node):
            pass
        elif _is_flatten(gm, node):
            factor = _flattened_factor(prev, node, factor)
            if factor is None:
                return None
        else:
            break
        prev, node = node, next(iter(node.users))
    if not is_module(gm, node, _WEIGHTED) or not node.args or node.args[0] is not prev:
        return None
    if not _module_used_once(gm, str(node.target)):
        return None
    layer = gm.get_submodule(str(node.target))
    c = _channels(factor)
    if c is not None:
        if isinstance(layer, nn.Linear):
            if layer.in_features != c or _output_dims(prev) != 2:
                return None
        elif layer.in_channels != c:
            return None
    return layer, factor


def scale_output_channels(layer: nn.Module, factor: torch.Tensor) -> None:
    """Multiply the outputs of a Conv/Linear by ``factor`` (scalar or per output channel)."""
    with torch.no_grad():
        f = factor.to(layer.weight.dtype)
        layer.weight.mul_(
            f.reshape((-1,) + (1,) * (layer.weight.dim() - 1)) if f.numel() > 1 else f
        )
        if layer.bias is not None:
            layer.bias.mul_(f.reshape(-1) if f.numel() > 1 else f)


def scale_input_channels(layer: nn.Module, factor: torch.Tensor) -> None:
    """Multiply the inputs of a Conv/Linear by ``factor`` (scalar or per input channel)."""
    with torch.no_grad():
        f = factor.to(layer.weight.dtype)
        if f.numel() == 1:
            layer.weight.mul_(f)
            return
        w = layer.weight
        if isinstance(layer, nn.Linear):
            w.mul_(f.reshape(1, -1))
            return
        groups = layer.groups
        out_c, in_per_group = w.shape[0], w.shape[1]
        per_out = f.reshape(groups, in_per_group).repeat_interleave(out_c // groups, dim=0)
        w.mul_(per_out.reshape((out_c, in_per_group) + (1,) * (w.dim() - 2)))


def feeds_max_pooling(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when a max pooling reads ``node``'s values without a Conv/Linear in between:
    through reshapes, concatenation, splitting, padding, average pooling, per-channel
    affine maps, additions or other activations. Such a pooling selects the largest of
    the values that reach it, which come from the top of this activation's range."""
    seen = set()
    stack = list(node.users)
    while stack:
        user = stack.pop()
        if user in seen or user.op not in ("call_module", "call_function", "call_method"):
            continue
        seen.add(user)
        kind = kind_of(gm, user)
        if kind == "maxpool":
            return True
        if kind != "weighted":
            stack.extend(user.users)
    return False


def normalize_activations(gm: fx.GraphModule, mode: NormMode, fold: bool = True) -> fx.GraphModule:
    """Set each activation's scale from its observer and fold it into neighbouring weights.

    Every activation ``a = relu(z)`` becomes ``relu(z / lam) * lam``: the division is folded
    into the producing Conv/Linear (else the activation's threshold is ``lam``), and the
    multiplication into the consuming Conv/Linear layers (else a :class:`Scale` node is
    inserted). The graph computes the same function as before; each activation now outputs
    a rate in [0, 1] for inputs up to ``lam``. Observers are removed.

    An activation that a max pooling reads (:func:`feeds_max_pooling`) gets the maximum
    whatever the mode: the pooling reads exactly the largest values, which a percentile
    (or a fraction of the maximum) would clip (docs/design.md).

    Args:
        mode: the parsed normalization mode.
        fold: fold scales into weights where possible (else keep thresholds and Scale nodes).
    """
    for obs_node in list(gm.graph.nodes):
        if not is_module(gm, obs_node, ActivationObserver):
            continue
        act_node = obs_node.args[0]
        observer = gm.get_submodule(str(obs_node.target))
        act = gm.get_submodule(str(act_node.target))
        if observer.max_value is None:
            raise ValueError(f"activation {act_node.name!r} saw no calibration data")
        use_mode = _MAX if feeds_max_pooling(gm, obs_node) else mode
        stat = observer.statistic() if use_mode.quantile is not None else None
        lam = activation_scale(observer.max_value, use_mode, stat, act.clip).detach()
        if lam.numel() > 1 and lam.dim() == 0:
            lam = lam.reshape(-1)
        act.calib_max = observer.max_value.detach().float().clone().reshape(lam.shape)
        obs_node.replace_all_uses_with(act_node)
        gm.graph.erase_node(obs_node)
        _apply_scale(gm, act_node, act, lam, fold)
    return finish(gm)


def _apply_scale(gm: fx.GraphModule, act_node: fx.Node, act: Activation, lam, fold: bool):
    act.scale = lam.clone()
    producer = act_node.args[0]
    if fold and _can_fold_into_producer(gm, producer, lam):
        scale_output_channels(gm.get_submodule(str(producer.target)), 1.0 / lam)
        if act.clip is not None:
            act.clip = act.clip / lam
        act.threshold = torch.ones_like(lam)
    else:
        act.threshold = lam.clone()
    folds = [_consumer_fold(gm, u, act_node, lam) for u in act_node.users] if fold else [None]
    if folds and all(f is not None for f in folds):
        for layer, factor in folds:
            scale_input_channels(layer, factor)
        return
    name = add_submodule(gm, f"{act_node.target}_scale", Scale(lam))
    with gm.graph.inserting_after(act_node):
        scale_node = gm.graph.call_module(name, (act_node,))
    act_node.replace_all_uses_with(scale_node, delete_user_cb=lambda u: u is not scale_node)
