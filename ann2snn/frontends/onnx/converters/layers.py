"""Converters: layers and activations (Conv, BatchNormalization, Relu, Clip, Softmax, Pad)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.frontends.onnx.builder import _Builder
from ann2snn.frontends.onnx.converters._common import (
    _const,
    _ints,
    _norm_axis,
    _opt_const,
    _resolve_pads,
    _torch_pads,
    _with_tensors,
)
from ann2snn.frontends.onnx.registry import _converter
from ann2snn.frontends.onnx.values import _Node, _NodeProblem, _SymShape, _Unconverted, _Value

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@_converter("Conv")
def _conv(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    weight = _const(n, 1, "the Conv weight")
    bias = _opt_const(n, 2, "the Conv bias")
    nd = weight.dim() - 2
    if nd not in _CONV:
        raise _NodeProblem(f"Conv with {nd} spatial dims is not supported (1, 2 or 3)")
    kernel = list(n.attr("kernel_shape", weight.shape[2:]))
    strides = list(n.attr("strides", [1] * nd))
    dilations = list(n.attr("dilations", [1] * nd))
    groups = int(n.attr("group", 1))
    begins, ends = _resolve_pads(n, nd, kernel, strides, dilations)
    padding: Union[int, Tuple[int, ...]] = tuple(begins)
    if begins != ends:
        x = b.call(F.pad, (x, _torch_pads(begins, ends)), {"mode": "constant", "value": 0.0}, "pad")
        padding = 0
    conv = _CONV[nd](
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(kernel),
        stride=tuple(strides),
        padding=padding,
        dilation=tuple(dilations),
        groups=groups,
        bias=bias is not None,
        device="meta",
    )
    _with_tensors(conv, weight=weight, bias=bias)
    return b.module(conv, x)


@_converter("BatchNormalization")
def _batchnorm(b: _Builder, n: _Node) -> List[_Value]:
    scale = _const(n, 1, "the BatchNormalization scale")
    shift = _const(n, 2, "the BatchNormalization bias")
    mean = _const(n, 3, "the running mean")
    var = _const(n, 4, "the running variance")
    if n.attr("training_mode", 0) or (n.opset < 9 and n.attr("spatial", 1) == 0):
        raise _NodeProblem("only inference-mode, spatial BatchNormalization is supported")
    if n.opset < 6 and n.attr("is_test", 0) == 0 and len(n.proto.output) > 1:
        raise _NodeProblem("training-mode BatchNormalization (is_test=0) is not supported")
    rank = n.rank_or_fail(0, " (needed to choose BatchNorm1d/2d/3d)")
    if rank not in _BATCHNORM:
        raise _NodeProblem(f"BatchNormalization on a rank-{rank} input is not supported")
    momentum = 1.0 - float(n.attr("momentum", 0.9))
    bn = _BATCHNORM[rank](
        scale.numel(), eps=float(n.attr("epsilon", 1e-5)), momentum=momentum, device="meta"
    )
    _with_tensors(
        bn,
        weight=scale,
        bias=shift,
        running_mean=mean,
        running_var=var,
        num_batches_tracked=torch.tensor(0, dtype=torch.long),
    )
    extra = [_Unconverted("training outputs of BatchNormalization are not supported")]
    return [b.module(bn, n.input(0))] + extra * (len(n.proto.output) - 1)


@_converter("Relu")
def _relu(b: _Builder, n: _Node) -> _Value:
    return b.module(nn.ReLU(), n.input(0))


_FLOAT_LIMIT = 3.0e38  # opset < 11 writes +-FLT_MAX for "no bound"


@_converter("Clip", opsets=(1, 10))
def _clip_v1(b: _Builder, n: _Node) -> _Value:
    lo, hi = n.attr("min"), n.attr("max")
    lo = None if lo is None or lo <= -_FLOAT_LIMIT else float(lo)
    hi = None if hi is None or hi >= _FLOAT_LIMIT else float(hi)
    return _clip(b, n, lo, hi)


@_converter("Clip", opsets=(11, None))
def _clip_v11(b: _Builder, n: _Node) -> _Value:
    bounds = []
    for i in (1, 2):
        v = n.input(i)
        bounds.append(float(v.reshape(-1)[0]) if isinstance(v, torch.Tensor) else v)
    return _clip(b, n, bounds[0], bounds[1])


def _clip(b: _Builder, n: _Node, lo: Any, hi: Any) -> _Value:
    x = n.input(0)
    if isinstance(lo, (_SymShape, _Unconverted)) or isinstance(hi, (_SymShape, _Unconverted)):
        raise _NodeProblem("Clip bounds must be constants or tensors")
    if lo is None and hi is None:
        return x
    if not isinstance(x, torch.Tensor) and lo == 0.0 and not isinstance(hi, fx.Node):
        if hi is None:
            return b.module(nn.ReLU(), x)
        if hi == 6.0:
            return b.module(nn.ReLU6(), x)
        if hi > 0.0:
            return b.module(nn.Hardtanh(0.0, hi), x)
    return b.call(torch.clamp, (x,), {"min": lo, "max": hi})


@_converter("Softmax", "LogSoftmax")
def _softmax(b: _Builder, n: _Node) -> _Value:
    fn = torch.softmax if n.op_type == "Softmax" else torch.log_softmax
    x = n.input(0)
    if n.opset >= 13:
        return b.call(fn, (x,), {"dim": int(n.attr("axis", -1))})
    # Before opset 13 the input is viewed as 2-D around `axis` (default 1).
    rank = n.rank_or_fail(0, f" ({n.op_type} before opset 13)")
    axis = _norm_axis(int(n.attr("axis", 1)), rank)
    if axis == rank - 1:
        return b.call(fn, (x,), {"dim": axis})
    flat = b.call(torch.flatten, (x, axis), suffix="flatten")
    y = b.call(fn, (flat,), {"dim": -1})
    return b.call("reshape_as", (y, x), suffix="unflatten")


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@_converter("Pad", opsets=(1, 10))
def _pad_v1(b: _Builder, n: _Node) -> _Value:
    pads = n.attr("pads", n.attr("paddings"))
    return _pad(b, n, list(pads), float(n.attr("value", 0.0)), None)


@_converter("Pad", opsets=(11, None))
def _pad_v11(b: _Builder, n: _Node) -> _Value:
    pads = _ints(n, 1, "Pad pads")
    value = 0.0
    if n.input(2) is not None:
        value = float(_const(n, 2, "the Pad constant value").reshape(-1)[0])
    axes = _ints(n, 3, "Pad axes") if n.input(3) is not None else None
    return _pad(b, n, pads, value, axes)


def _pad(b: _Builder, n: _Node, pads: List[int], value: float, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    mode = _PAD_MODES.get(n.attr("mode", "constant"))
    if mode is None:
        raise _NodeProblem(f"Pad mode {n.attr('mode')!r} is not supported")
    half = len(pads) // 2
    rank = n.in_rank(0)
    if axes is None:
        axes = list(range(half))
    else:
        rank = n.rank_or_fail(0, " (Pad with axes)")
    axes = [_norm_axis(a, rank) for a in axes]
    full = max(axes) + 1 if rank is None else rank
    begins, ends = [0] * full, [0] * full
    for a, p_begin, p_end in zip(axes, pads[:half], pads[half:]):
        begins[a], ends[a] = p_begin, p_end
    torch_pads = _torch_pads(begins, ends)
    if not any(torch_pads):
        return x
    kwargs: Dict[str, Any] = {"mode": mode}
    if mode == "constant":
        kwargs["value"] = value
    return b.call(F.pad, (x, torch_pads), kwargs)
