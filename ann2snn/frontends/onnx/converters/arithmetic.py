"""Converters: arithmetic (Add/Sub/Mul/Div, Sum, MatMul, Gemm), shape arithmetic included."""

from __future__ import annotations

import operator
from typing import Any, List, Optional, Union

import torch
from torch import fx, nn

from ann2snn.frontends.onnx.builder import _Builder
from ann2snn.frontends.onnx.converters._common import _with_tensors
from ann2snn.frontends.onnx.registry import _converter
from ann2snn.frontends.onnx.values import (
    _INT_DTYPES,
    _Node,
    _NodeProblem,
    _shape_elems,
    _shape_value,
    _SymShape,
    _Value,
)

_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
}


def _trunc_div(a: int, c: int) -> int:
    q = abs(a) // abs(c)
    return q if (a >= 0) == (c > 0) else -q


def _sym_binary(b: _Builder, n: _Node, a: _Value, c: _Value) -> _Value:
    ea, ec = _shape_elems(a), _shape_elems(c)
    if ea is None or ec is None:
        raise _NodeProblem(f"{n.op_type} mixes a run-time shape with a non-integer tensor")
    (la, sa), (lc, sc) = ea, ec
    if len(la) != len(lc) and 1 not in (len(la), len(lc)):
        raise _NodeProblem(f"{n.op_type} on shapes of lengths {len(la)} and {len(lc)}")
    length = max(len(la), len(lc))
    la = la * length if len(la) == 1 else la
    lc = lc * length if len(lc) == 1 else lc
    py_op = {
        "Add": operator.add,
        "Sub": operator.sub,
        "Mul": operator.mul,
        "Div": operator.floordiv,  # sizes are >= 0, so floor == ONNX's truncation
    }[n.op_type]
    out: List[Union[int, fx.Node]] = []
    for x, y in zip(la, lc):
        if isinstance(x, int) and isinstance(y, int):
            out.append(_trunc_div(x, y) if n.op_type == "Div" else py_op(x, y))
        else:
            out.append(b.call(py_op, (x, y)))
    return _shape_value(out, scalar=sa and sc)


def _scalar_or_tensor(const: torch.Tensor, other_rank: Optional[int]) -> Any:
    """A one-element constant as a Python number when broadcasting allows it."""
    if const.numel() != 1:
        return const
    if const.dim() <= 1 or (other_rank is not None and other_rank >= const.dim()):
        return const.item()
    return const


def _try_merge_bias(b: _Builder, n: _Node, a: _Value, c: _Value) -> Optional[fx.Node]:
    """MatMul(x, W) + bias -> one nn.Linear with that bias, when the result is used only here."""
    for lin_node, bias in ((a, c), (c, a)):
        if not isinstance(lin_node, fx.Node) or lin_node not in b.bias_free_linears:
            continue
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            continue
        onnx_name = lin_node.meta.get("onnx_output")
        if b.consumers.get(onnx_name, 0) != 1 or onnx_name in b.graph_outputs:
            continue
        linear = b.bias_free_linears[lin_node]
        out_shape = n.output_shapes[0]
        leading_ones = all(d == 1 for d in bias.shape[:-1])
        fits = bias.dim() >= 1 and bias.shape[-1] == linear.out_features and leading_ones
        if not fits or (bias.dim() > 1 and (out_shape is None or bias.dim() > len(out_shape))):
            continue
        linear.bias = nn.Parameter(bias.detach().reshape(-1).clone().to(linear.weight.dtype))
        del b.bias_free_linears[lin_node]
        return lin_node
    return None


@_converter("Add", "Sub", "Mul", "Div")
def _binary(b: _Builder, n: _Node) -> _Value:
    a, c = n.input(0), n.input(1)
    if isinstance(a, _SymShape) or isinstance(c, _SymShape):
        return _sym_binary(b, n, a, c)
    int_div = (
        n.op_type == "Div"
        and isinstance(a, torch.Tensor)
        and isinstance(c, torch.Tensor)
        and a.dtype in _INT_DTYPES
        and c.dtype in _INT_DTYPES
    )
    if int_div:
        return torch.div(a, c, rounding_mode="trunc")
    if n.op_type == "Add":
        merged = _try_merge_bias(b, n, a, c)
        if merged is not None:
            return merged
    if isinstance(a, torch.Tensor) and not isinstance(c, torch.Tensor):
        a = _scalar_or_tensor(a, n.in_rank(1))
    elif isinstance(c, torch.Tensor) and not isinstance(a, torch.Tensor):
        c = _scalar_or_tensor(c, n.in_rank(0))
    return b.call(_BINARY[n.op_type], (a, c))


@_converter("Sum")
def _sum(b: _Builder, n: _Node) -> _Value:
    parts = [v for v in n.inputs if v is not None]
    out = parts[0]
    for i, v in enumerate(parts[1:]):
        out = b.call(operator.add, (out, v), suffix=str(i) if i else "")
    return out


@_converter("MatMul")
def _matmul(b: _Builder, n: _Node) -> _Value:
    a, w = n.input(0), n.input(1)
    if isinstance(a, fx.Node) and isinstance(w, torch.Tensor) and w.dim() == 2:
        k, out_features = w.shape
        lin = nn.Linear(k, out_features, bias=False, device="meta")
        _with_tensors(lin, weight=w.t())
        node = b.module(lin, a)
        node.meta["onnx_output"] = n.proto.output[0]
        b.bias_free_linears[node] = lin
        return node
    return b.call(torch.matmul, (a, w))


@_converter("Gemm")
def _gemm(b: _Builder, n: _Node) -> _Value:
    a, w, c = n.input(0), n.input(1), n.input(2)
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    if trans_a:
        a = b.call("t", (a,), suffix="transpose_a")
    if isinstance(w, torch.Tensor) and not isinstance(a, torch.Tensor):
        weight = (w if trans_b else w.t()) * alpha
        out_features, in_features = weight.shape
        bias = None
        if isinstance(c, torch.Tensor) and (
            c.numel() == 1 or (c.numel() == out_features and c.shape[-1] == out_features)
        ):
            bias = (c.reshape(-1) * beta).expand(out_features)
            c = None
        lin = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
        _with_tensors(lin, weight=weight, bias=bias)
        y = b.module(lin, a)
    else:
        if trans_b:
            w = b.call("t", (w,), suffix="transpose_b")
        y = b.call(torch.matmul, (a, w))
        if alpha != 1.0:
            y = b.call(operator.mul, (y, alpha), suffix="alpha")
    if c is None:
        return y
    if isinstance(c, torch.Tensor):
        return b.call(operator.add, (y, _scalar_or_tensor(c * beta, 2)), suffix="bias")
    if beta != 1.0:
        c = b.call(operator.mul, (c, beta), suffix="beta")
    return b.call(operator.add, (y, c), suffix="bias")
