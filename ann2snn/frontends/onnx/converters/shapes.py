"""Converters: constants and shapes (Constant, Shape, Gather, Slice, Concat, Reshape, ...)."""

from __future__ import annotations

import operator
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import onnx
import torch
from torch import fx

from ann2snn.frontends.onnx.builder import _Builder
from ann2snn.frontends.onnx.converters._common import _ints, _norm_axis
from ann2snn.frontends.onnx.registry import _converter
from ann2snn.frontends.onnx.values import (
    _ONNX_TO_TORCH_DTYPE,
    _Node,
    _NodeProblem,
    _shape_elems,
    _shape_value,
    _SymShape,
    _Unconverted,
    _Value,
)


@_converter("Constant")
def _constant(b: _Builder, n: _Node) -> _Value:
    for key in ("value", "value_float", "value_int"):
        if key in n.attrs:
            v = n.attrs[key]
            return v if isinstance(v, torch.Tensor) else torch.tensor(v)
    if "value_floats" in n.attrs:
        return torch.tensor(n.attrs["value_floats"], dtype=torch.float32)
    if "value_ints" in n.attrs:
        return torch.tensor(n.attrs["value_ints"], dtype=torch.int64)
    raise _NodeProblem(f"Constant with attributes {sorted(n.attrs)} is not supported")


@_converter("ConstantOfShape")
def _constant_of_shape(b: _Builder, n: _Node) -> _Value:
    value = n.attr("value")
    fill = value if isinstance(value, torch.Tensor) else torch.zeros(1, dtype=torch.float32)
    elems = _shape_elems(n.input(0))
    if elems is None:
        raise _NodeProblem("the shape input must be a constant or a shape computation")
    return b.call(torch.full, (elems[0], fill.reshape(()).item()), {"dtype": fill.dtype})


@_converter("Shape")
def _shape(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    start, end = n.attr("start", 0), n.attr("end", None)
    if isinstance(x, _SymShape):
        return torch.tensor([] if x.scalar else [len(x.elems)], dtype=torch.int64)[start:end]
    if isinstance(x, torch.Tensor):
        dims: List[Union[int, fx.Node]] = list(x.shape)
    else:
        rank = n.rank_or_fail(0, " (Shape of a run-time tensor)")
        shape = n.in_shape(0)
        dims = [b.dim_of(x, shape, i) for i in range(rank)]
    return _shape_value(dims[start:end])


@_converter("Identity")
def _identity(b: _Builder, n: _Node) -> _Value:
    return n.input(0)


@_converter("Dropout")
def _dropout(b: _Builder, n: _Node) -> List[_Value]:
    # Inference import: dropout is the identity. The mask output has no meaning here.
    return [n.input(0), _Unconverted("the mask output of Dropout is not supported")]


@_converter("Cast")
def _cast(b: _Builder, n: _Node) -> _Value:
    to = n.attr("to")
    x = n.input(0)
    if isinstance(to, str):
        to = onnx.TensorProto.DataType.Value(to)
    if to not in _ONNX_TO_TORCH_DTYPE:
        raise _NodeProblem(f"Cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    dtype = _ONNX_TO_TORCH_DTYPE[to]
    if isinstance(x, _SymShape):
        if dtype in (torch.int64, torch.int32):
            return x
        raise _NodeProblem(f"a run-time shape is cast to {dtype} and cannot be resolved")
    return b.call("to", (x, dtype))


def _gather_index(axis: int, idx: Any) -> Tuple[Any, ...]:
    return (slice(None),) * axis + (idx,)


@_converter("Gather")
def _gather(b: _Builder, n: _Node) -> _Value:
    data, indices = n.input(0), n.input(1)
    axis = n.attr("axis", 0)
    if isinstance(data, _SymShape):
        if axis != 0 or not isinstance(indices, torch.Tensor):
            raise _NodeProblem("Gather on a run-time shape needs constant indices on axis 0")
        picked = [data.elems[int(i)] for i in indices.reshape(-1).tolist()]
        return _shape_value(picked, scalar=indices.dim() == 0)
    if isinstance(indices, _SymShape):
        raise _NodeProblem("Gather with run-time shape values as indices cannot be resolved")
    axis = _norm_axis(axis, n.in_rank(0))
    if isinstance(indices, torch.Tensor):
        if indices.dim() == 0:
            return b.call(torch.select, (data, axis, int(indices)))
        indices = indices.to(torch.int64)
    return b.call(operator.getitem, (data, _gather_index(axis, indices)))


@_converter("Slice", opsets=(1, 9))
def _slice_v1(b: _Builder, n: _Node) -> _Value:
    starts, ends = n.attr("starts"), n.attr("ends")
    axes = n.attr("axes", list(range(len(starts))))
    return _slice(b, n, list(starts), list(ends), list(axes), [1] * len(starts))


@_converter("Slice", opsets=(10, None))
def _slice_v10(b: _Builder, n: _Node) -> _Value:
    starts = _ints(n, 1, "Slice starts")
    ends = _ints(n, 2, "Slice ends")
    axes = _ints(n, 3, "Slice axes") if n.input(3) is not None else list(range(len(starts)))
    steps = _ints(n, 4, "Slice steps") if n.input(4) is not None else [1] * len(starts)
    return _slice(b, n, starts, ends, axes, steps)


def _slice(
    b: _Builder, n: _Node, starts: List[int], ends: List[int], axes: List[int], steps: List[int]
) -> _Value:
    x = n.input(0)
    big = 2**62  # ONNX writes INT64_MAX/MIN for "to the end"; Python slices clamp anyway
    clip = [max(min(v, big), -big) for v in starts], [max(min(v, big), -big) for v in ends]
    if isinstance(x, _SymShape):
        if axes != [0] and axes != [-1]:
            raise _NodeProblem("Slice of a run-time shape must be along axis 0")
        return _shape_value(x.elems[slice(clip[0][0], clip[1][0], steps[0])])
    rank = n.in_rank(0)
    axes = [_norm_axis(a, rank) for a in axes]
    if isinstance(x, torch.Tensor):
        arr = x.numpy()
        index = [slice(None)] * arr.ndim
        for a, s, e, st in zip(axes, clip[0], clip[1], steps):
            index[a] = slice(s, e, st)
        return torch.from_numpy(np.array(arr[tuple(index)], copy=True))
    if any(st <= 0 for st in steps):
        raise _NodeProblem("Slice with negative steps on a run-time tensor is not supported")
    index = [slice(None)] * (max(axes) + 1)
    for a, s, e, st in zip(axes, clip[0], clip[1], steps):
        index[a] = slice(s, e, None if st == 1 else st)
    return b.call(operator.getitem, (x, tuple(index)))


@_converter("Concat")
def _concat(b: _Builder, n: _Node) -> _Value:
    axis = n.attr("axis", 0)
    parts = [v for v in n.inputs if v is not None]
    if any(isinstance(v, _SymShape) for v in parts):
        elems: List[Union[int, fx.Node]] = []
        for v in parts:
            e = _shape_elems(v)
            if e is None or e[1]:
                raise _NodeProblem("Concat mixes a run-time shape with non-shape tensors")
            elems += e[0]
        return _shape_value(elems)
    return b.call(torch.cat, (parts,), {"dim": axis})


@_converter("Split", opsets=(1, 12))
def _split_v1(b: _Builder, n: _Node) -> List[_Value]:
    sizes = n.attr("split")
    if sizes is None and n.input(1) is not None:  # Split-1 could take the sizes as an input
        sizes = _ints(n, 1, "Split sizes")
    return _split(b, n, sizes)


@_converter("Split", opsets=(13, None))
def _split_v13(b: _Builder, n: _Node) -> List[_Value]:
    return _split(b, n, _ints(n, 1, "Split sizes") if n.input(1) is not None else None)


def _split(b: _Builder, n: _Node, sizes: Optional[List[int]]) -> List[_Value]:
    x = n.input(0)
    axis = int(n.attr("axis", 0))
    count = len(n.proto.output)
    if sizes is None:
        # Equal parts (opset 18: the last one may be smaller), as torch.chunk computes them.
        shape = n.in_shape(0)
        dim = None if shape is None else shape[_norm_axis(axis, len(shape))]
        if dim is None:
            raise _NodeProblem("Split into equal parts needs the size of the split axis")
        size = -(-dim // count)
        sizes = [min(size, dim - i * size) for i in range(count)]
    parts = b.call(torch.split, (x, [int(v) for v in sizes]), {"dim": axis})
    return [b.call(operator.getitem, (parts, i), suffix=str(i)) for i in range(count)]


@_converter("Unsqueeze", opsets=(1, 12))
def _unsqueeze_v1(b: _Builder, n: _Node) -> _Value:
    return _unsqueeze(b, n, list(n.attr("axes")))


@_converter("Unsqueeze", opsets=(13, None))
def _unsqueeze_v13(b: _Builder, n: _Node) -> _Value:
    return _unsqueeze(b, n, _ints(n, 1, "Unsqueeze axes"))


def _unsqueeze(b: _Builder, n: _Node, axes: List[int]) -> _Value:
    x = n.input(0)
    if isinstance(x, _SymShape):
        if not x.scalar or axes not in ([0], [-1]):
            raise _NodeProblem("Unsqueeze of a run-time shape is only supported for a scalar")
        return _SymShape(list(x.elems))
    rank = n.in_rank(0)
    out_rank = None if rank is None else rank + len(axes)
    axes = sorted(_norm_axis(a, out_rank) for a in axes)
    for a in axes:
        x = b.call(torch.unsqueeze, (x, a))
    return x


@_converter("Squeeze", opsets=(1, 12))
def _squeeze_v1(b: _Builder, n: _Node) -> _Value:
    return _squeeze(b, n, n.attr("axes"))


@_converter("Squeeze", opsets=(13, None))
def _squeeze_v13(b: _Builder, n: _Node) -> _Value:
    return _squeeze(b, n, _ints(n, 1, "Squeeze axes") if n.input(1) is not None else None)


def _squeeze(b: _Builder, n: _Node, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    if isinstance(x, _SymShape):
        if x.scalar or len(x.elems) != 1:
            raise _NodeProblem("Squeeze of a run-time shape is only supported for one element")
        return _SymShape(list(x.elems), scalar=True)
    if axes is None:
        shape = n.in_shape(0)
        if isinstance(x, torch.Tensor) or shape is None or any(d is None for d in shape):
            return b.call(torch.squeeze, (x,))
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = [_norm_axis(a, n.in_rank(0)) for a in axes]
    if not axes:
        return x
    return b.call(torch.squeeze, (x, tuple(axes) if len(axes) > 1 else axes[0]))


@_converter("Reshape", opsets=(1, 4))
def _reshape_v1(b: _Builder, n: _Node) -> _Value:
    return _reshape(b, n, [int(v) for v in n.attr("shape")], allowzero=False)


@_converter("Reshape", opsets=(5, None))
def _reshape_v5(b: _Builder, n: _Node) -> _Value:
    elems = _shape_elems(n.input(1))
    if elems is None:
        raise _NodeProblem(
            f"the target shape {n.proto.input[1]!r} is computed from tensor values at run time "
            "and cannot be resolved; export with static shapes"
        )
    return _reshape(b, n, elems[0], allowzero=bool(n.attr("allowzero", 0)))


def _reshape(b: _Builder, n: _Node, target: List[Any], allowzero: bool) -> _Value:
    x = n.input(0)
    shape = n.in_shape(0)
    target = list(target)
    if not allowzero:
        for i, d in enumerate(target):
            if isinstance(d, int) and d == 0:
                target[i] = b.dim_of(x, shape, i)
    if isinstance(x, torch.Tensor):
        return b.call(torch.reshape, (x, tuple(target)))
    # Keep the batch dimension dynamic: a constant first entry equal to the exported batch size
    # ([1, -1] from a model exported with batch 1) means "the batch size".
    first = target[0] if target else None
    batch = shape[0] if shape else None
    if isinstance(first, int) and first > 0 and batch is not None and first == batch:
        infers_other = any(isinstance(d, int) and d == -1 for d in target[1:])
        target[0] = b.size(x, 0) if infers_other else -1
    return b.call("reshape", (x, *target))


@_converter("Flatten")
def _flatten(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    axis = _norm_axis(n.attr("axis", 1), n.in_rank(0))
    if axis == 0:
        return b.call("reshape", (x, 1, -1))
    if axis == 1:
        return b.call(torch.flatten, (x, 1))
    inner = b.call(torch.flatten, (x, axis))
    return b.call(torch.flatten, (inner, 0, axis - 1), suffix="outer")


@_converter("Transpose")
def _transpose(b: _Builder, n: _Node) -> _Value:
    perm = n.attr("perm")
    if perm is None:
        perm = list(reversed(range(n.rank_or_fail(0, " (Transpose without perm)"))))
    return b.call("permute", (n.input(0), *[int(p) for p in perm]))
