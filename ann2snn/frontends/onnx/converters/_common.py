"""Helpers shared by the ONNX converters: constant inputs, axes, padding, meta-device modules."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ann2snn.frontends.onnx.values import _Node, _NodeProblem, _shape_elems


def _const(node: _Node, i: int, what: str) -> torch.Tensor:
    value = node.input(i)
    if not isinstance(value, torch.Tensor):
        raise _NodeProblem(
            f"{what} (input {node.proto.input[i]!r}) must be a constant (an initializer), "
            "but it is computed at run time"
        )
    return value


def _opt_const(node: _Node, i: int, what: str) -> Optional[torch.Tensor]:
    if node.input(i) is None:
        return None
    return _const(node, i, what)


def _ints(node: _Node, i: int, what: str) -> List[int]:
    """A constant int list from input ``i`` (shape values included when fully known)."""
    value = node.input(i)
    elems = _shape_elems(value)
    if elems is not None and all(isinstance(e, int) for e in elems[0]):
        return [int(e) for e in elems[0]]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    raise _NodeProblem(
        f"{what} (input {node.proto.input[i]!r}) is computed at run time and cannot be "
        "resolved at import time; export the model with static shapes"
    )


def _norm_axis(axis: int, rank: Optional[int]) -> int:
    if axis >= 0:
        return axis
    if rank is None:
        raise _NodeProblem(f"negative axis {axis} needs the input rank, which is unknown")
    return axis + rank


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> Tuple[int, ...]:
    """ONNX per-dim (begins, ends), first dim first -> F.pad order, last dim first."""
    out: List[int] = []
    for b, e in zip(reversed(list(begins)), reversed(list(ends))):
        out += [int(b), int(e)]
    while len(out) > 2 and out[-1] == 0 and out[-2] == 0:
        out = out[:-2]
    return tuple(out)


def _resolve_pads(
    node: _Node, nd: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> Tuple[List[int], List[int]]:
    """(begins, ends) of the spatial padding from ``pads`` or ``auto_pad``."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
        return pads[:nd], pads[nd:]
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise _NodeProblem(f"unknown auto_pad {auto_pad!r}")
    shape = node.in_shape(0)
    begins, ends = [], []
    for i in range(nd):
        eff_k = (kernel[i] - 1) * dilations[i] + 1
        if strides[i] == 1:
            total = eff_k - 1
        else:
            size = shape[2 + i] if shape is not None and len(shape) == nd + 2 else None
            if size is None:
                raise _NodeProblem(
                    f"auto_pad={auto_pad} with stride {strides[i]} needs the input's spatial "
                    "size, which shape inference could not resolve"
                )
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + eff_k - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins, ends


def _with_tensors(mod: nn.Module, **tensors: Optional[torch.Tensor]) -> nn.Module:
    """Fill a module built on the meta device with real parameters and buffers."""
    for key, t in tensors.items():
        if key in mod._parameters:
            if t is None:
                mod._parameters[key] = None
            else:
                mod._parameters[key] = nn.Parameter(t.detach().clone().contiguous())
        else:
            mod._buffers[key] = None if t is None else t.detach().clone().contiguous()
    return mod
