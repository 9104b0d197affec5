"""Inputs that exercise the IF op's edge cases, shared by its tests (tests/ops) and the
GPU device check (benchmarks/device_check.py)."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def if_op_inputs(
    shape: Sequence[int],
    per_channel: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [T, B, C, ...], v [B, C, ...], threshold)`` for ``torch.ops.ann2snn.if_multistep``.

    Inputs are multiples of 1/8, half of them nudged by 1%, so exact ties
    ``v == threshold`` are frequent and ``>=`` versus ``>`` matters. The threshold is one
    value (0.75), or per channel (dim 2 of ``x``) in [0.5, 1.5) with channel 0 at 1.
    """
    shape = tuple(shape)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(-4, 9, shape, generator=gen) / 8.0).to(dtype)
    x = x + 0.01 * torch.randn(shape, generator=gen).to(dtype) * (
        torch.rand(shape, generator=gen) < 0.5
    )
    v = torch.randn(shape[1:], generator=gen) * 0.3
    if per_channel:
        threshold = torch.rand(shape[2], generator=gen) + 0.5
        threshold[0] = 1.0
    else:
        threshold = torch.tensor([0.75])
    return x.to(device), v.to(device), threshold.to(device)
