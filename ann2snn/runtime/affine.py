"""A fixed per-channel affine map: what an eval-mode BatchNorm computes."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ann2snn.tracing import register_leaf_module


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel with ``bn(x) == x * scale + shift`` in eval mode.

    Raises:
        ValueError: when ``bn`` keeps no running statistics (it then uses batch statistics).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics is not a fixed affine map")
    mean, var = bn.running_mean.detach().float(), bn.running_var.detach().float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + bn.eps)
    return scale, beta - mean * scale


@register_leaf_module
class ChannelAffine(nn.Module):
    """``x * scale + shift`` with one scale and shift per channel (dim 1).

    The form an eval-mode BatchNorm takes in a converted graph when no Conv/Linear is next
    to it to absorb it. Unlike BatchNorm it has no training mode, so calling ``.train()`` on
    a spiking model cannot switch it to batch statistics.

    Args:
        scale: per-channel factors ``[C]``.
        shift: per-channel offsets ``[C]``.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        if scale.shape != shift.shape or scale.dim() != 1:
            raise ValueError(
                f"scale and shift must be 1-d and alike, got {tuple(scale.shape)} and "
                f"{tuple(shift.shape)}"
            )
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("shift", shift.detach().clone().float())

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> ChannelAffine:
        """The affine map of an eval-mode BatchNorm."""
        return cls(*batchnorm_affine(bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.reshape(view), x, self.scale.reshape(view))

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"
