"""Values flowing through the ONNX importer and the per-node view handed to converters.

A value is a constant ``torch.Tensor`` (initializers, folded results), an ``fx.Node`` (computed
at run time), a :class:`_SymShape` (shape arithmetic with a symbolic batch dim), an
:class:`_Unconverted` marker or ``None`` (an omitted optional input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import fx

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

_ONNX_TO_TORCH_DTYPE: Dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


# --------------------------------------------------------------------------------------------
# Values flowing through the importer
# --------------------------------------------------------------------------------------------


class _SymShape:
    """An int64 shape tensor (0-d or 1-d) whose elements are ints or fx nodes giving ints.

    Produced by ``Shape`` on a run-time tensor: dim 0 (the batch) stays symbolic as
    ``x.size(0)``; other dims are static ints when shape inference knows them.
    """

    __slots__ = ("elems", "scalar")

    def __init__(self, elems: List[Union[int, fx.Node]], scalar: bool = False) -> None:
        self.elems = elems
        self.scalar = scalar


class _Unconverted:
    """Marks the output of a node that could not be imported (reported once, then skipped)."""

    __slots__ = ("reason",)

    def __init__(self, reason: Optional[str] = None) -> None:
        self.reason = reason


_Value = Union[torch.Tensor, fx.Node, _SymShape, _Unconverted, None]


class _NodeProblem(Exception):
    """Raised by a converter when this particular node cannot be imported (collected, not fatal)."""


def _shape_value(elems: Sequence[Union[int, fx.Node]], scalar: bool = False) -> _Value:
    """A constant int64 tensor when every element is known, else a :class:`_SymShape`."""
    elems = list(elems)
    if all(isinstance(e, int) for e in elems):
        t = torch.tensor(elems, dtype=torch.int64)
        return t.reshape(()) if scalar else t
    return _SymShape(elems, scalar)


def _shape_elems(value: _Value) -> Optional[Tuple[List[Union[int, fx.Node]], bool]]:
    """Elements of a shape-like value (int tensor of rank <= 1 or _SymShape), else None."""
    if isinstance(value, _SymShape):
        return list(value.elems), value.scalar
    if isinstance(value, torch.Tensor) and value.dim() <= 1 and value.dtype in _INT_DTYPES:
        return [int(v) for v in value.reshape(-1).tolist()], value.dim() == 0
    return None


def _has_node(obj: Any) -> bool:
    if isinstance(obj, fx.Node):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_node(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_node(o) for o in obj.values())
    return False


# --------------------------------------------------------------------------------------------
# Per-node view handed to converters
# --------------------------------------------------------------------------------------------

_StaticShape = Optional[List[Optional[int]]]


@dataclass
class _Node:
    proto: onnx.NodeProto
    name: str
    opset: int
    inputs: List[_Value]
    input_shapes: List[_StaticShape]
    output_shapes: List[_StaticShape]
    attrs: Dict[str, Any] = field(default_factory=dict)
    example_shape: Optional[Callable[[_Value], _StaticShape]] = None

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> _Value:
        return self.inputs[i] if i < len(self.inputs) else None

    def in_shape(self, i: int = 0) -> _StaticShape:
        """Static shape of input ``i`` (None: unknown; None entries: unknown or dynamic dims).

        ONNX shape inference first; where it leaves gaps (e.g. after a Slice whose bounds it
        could not fold), the shape of the imported graph run on an example input fills them.
        """
        shape = self.input_shapes[i] if i < len(self.input_shapes) else None
        if shape is not None and all(d is not None for d in shape):
            return shape
        if isinstance(self.input(i), torch.Tensor):
            return list(self.input(i).shape)
        example = self.example_shape(self.input(i)) if self.example_shape else None
        if example is None or (shape is not None and len(shape) != len(example)):
            return shape
        if shape is None:
            return example
        return [d if d is not None else e for d, e in zip(shape, example)]

    def in_rank(self, i: int = 0) -> Optional[int]:
        shape = self.in_shape(i)
        if shape is not None:
            return len(shape)
        value = self.input(i)
        if isinstance(value, torch.Tensor):
            return value.dim()
        return None

    def rank_or_fail(self, i: int = 0, why: str = "") -> int:
        rank = self.in_rank(i)
        if rank is None:
            raise _NodeProblem(
                f"the rank of input {self.proto.input[i]!r} is unknown{why}; shape inference "
                "could not resolve it (export with static input shapes)"
            )
        return rank


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return _tensor_from_proto(value, "")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _tensor_from_proto(proto: onnx.TensorProto, base_dir: str) -> torch.Tensor:
    if proto.data_type not in _ONNX_TO_TORCH_DTYPE:
        raise _NodeProblem(
            f"tensor {proto.name!r} has ONNX data type "
            f"{onnx.TensorProto.DataType.Name(proto.data_type)}, which torch cannot hold here"
        )
    arr = numpy_helper.to_array(proto, base_dir) if base_dir else numpy_helper.to_array(proto)
    dtype = _ONNX_TO_TORCH_DTYPE[proto.data_type]
    if dtype == torch.bfloat16:
        return torch.tensor(np.asarray(arr, dtype=np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))
