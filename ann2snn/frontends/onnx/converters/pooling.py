"""Converters: pooling and reductions (MaxPool, AveragePool, Global*Pool, ReduceMean/Sum/Max)."""

from __future__ import annotations

import math
import operator
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.frontends.onnx.builder import _Builder
from ann2snn.frontends.onnx.converters._common import (
    _ints,
    _norm_axis,
    _resolve_pads,
    _torch_pads,
)
from ann2snn.frontends.onnx.registry import _converter
from ann2snn.frontends.onnx.values import _Node, _NodeProblem, _Unconverted, _Value

_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE_AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ADAPTIVE_MAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}


def _unsupported_extra_outputs(n: _Node, what: str) -> List[_Value]:
    return [_Unconverted(f"the {what} output of {n.op_type} is not supported")] * (
        len(n.proto.output) - 1
    )


@_converter("MaxPool", "AveragePool")
def _pool(b: _Builder, n: _Node) -> List[_Value]:
    x = n.input(0)
    kernel = list(n.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in _MAXPOOL:
        raise _NodeProblem(f"pooling over {nd} spatial dims is not supported (1, 2 or 3)")
    strides = list(n.attr("strides", [1] * nd))
    dilations = list(n.attr("dilations", [1] * nd))
    ceil_mode = bool(n.attr("ceil_mode", 0))
    begins, ends = _resolve_pads(n, nd, kernel, strides, dilations)
    max_pad = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dilations)]
    fits = begins == ends and all(p <= m for p, m in zip(begins, max_pad))
    extra = _unsupported_extra_outputs(n, "Indices")
    if n.op_type == "MaxPool":
        padding: Any = tuple(begins)
        if not fits:
            pads = _torch_pads(begins, ends)
            x = b.call(F.pad, (x, pads), {"mode": "constant", "value": -math.inf}, "pad")
            padding = 0
        pool = _MAXPOOL[nd](
            tuple(kernel),
            stride=tuple(strides),
            padding=padding,
            dilation=tuple(dilations),
            ceil_mode=ceil_mode,
        )
        return [b.module(pool, x)] + extra
    if any(d != 1 for d in dilations):
        raise _NodeProblem("AveragePool with dilations is not supported")
    include_pad = bool(n.attr("count_include_pad", 0))
    if fits:
        pool = _AVGPOOL[nd](tuple(kernel), tuple(strides), tuple(begins), ceil_mode, include_pad)
        return [b.module(pool, x)] + extra
    pads = _torch_pads(begins, ends)
    padded = b.call(F.pad, (x, pads), {"mode": "constant", "value": 0.0}, "pad")
    pool = _AVGPOOL[nd](tuple(kernel), tuple(strides), 0, ceil_mode, True)
    y = b.module(pool, padded)
    if include_pad or not any(begins + ends):
        return [y] + extra
    # Padding must not count: rescale by window size / number of real elements per window.
    shape = n.in_shape(0)
    if shape is None or any(d is None for d in shape[2:]):
        raise _NodeProblem(
            "AveragePool with asymmetric padding and count_include_pad=0 needs the static "
            "spatial input size, which shape inference could not resolve"
        )
    ones = torch.ones([1, 1] + [int(d) for d in shape[2:]])
    counts = _AVGPOOL[nd](tuple(kernel), tuple(strides), 0, ceil_mode, True)(
        F.pad(ones, pads, mode="constant", value=0.0)
    )
    return [b.call(operator.truediv, (y, counts), suffix="exclude_pad")] + extra


@_converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: _Builder, n: _Node) -> _Value:
    nd = n.rank_or_fail(0, f" (needed to choose the {n.op_type} dims)") - 2
    table = _ADAPTIVE_AVG if n.op_type == "GlobalAveragePool" else _ADAPTIVE_MAX
    if nd not in table:
        raise _NodeProblem(f"{n.op_type} over {nd} spatial dims is not supported")
    return b.module(table[nd](1), n.input(0))


_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax}


@_converter("ReduceMean", "ReduceMax", opsets=(1, 17))
def _reduce_attr(b: _Builder, n: _Node) -> _Value:
    return _reduce(b, n, n.attr("axes"))


@_converter("ReduceSum", opsets=(1, 12))
def _reduce_sum_attr(b: _Builder, n: _Node) -> _Value:
    return _reduce(b, n, n.attr("axes"))


@_converter("ReduceMean", "ReduceMax", opsets=(18, None))
def _reduce_input(b: _Builder, n: _Node) -> _Value:
    axes = _ints(n, 1, f"{n.op_type} axes") if n.input(1) is not None else None
    return _reduce(b, n, axes)


@_converter("ReduceSum", opsets=(13, None))
def _reduce_sum_input(b: _Builder, n: _Node) -> _Value:
    return _reduce_input(b, n)


def _reduce(b: _Builder, n: _Node, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    keepdims = bool(n.attr("keepdims", 1))
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(n.rank_or_fail(0, f" ({n.op_type} over all axes)")))
    rank = n.in_rank(0)
    dims = tuple(_norm_axis(a, rank) for a in axes)
    return b.call(_REDUCE[n.op_type], (x,), {"dim": dims, "keepdim": keepdims})
