"""Max pooling over rate-coded spike trains.

Pooling spikes step by step over-counts: the pooled output spikes whenever ANY unit of a
window spikes, so its rate approaches the OR of the rates rather than their maximum. The
modules here keep, per input, the running sum of their input and make the time average of
their output converge to the max pooling of the time-averaged input, which is what the
ANN computes. Both are :class:`ann2snn.runtime.temporal.TemporalModule`\\ s: they process chunks of
``steps`` time steps (``[steps * B, ...]``) and keep state until :meth:`reset`.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ann2snn import ops
from ann2snn.tracing import register_leaf_module

#: Max-pooling modules that can report the position of each maximum (``return_indices``).
INDEXED_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


@register_leaf_module
class AMax(nn.Module):
    """``torch.amax(x, dim, keepdim)`` as a module (a max pooling over whole dimensions).

    Args:
        dim: the reduced dimension(s); never the batch dimension 0.
        keepdim: keep the reduced dimensions with size 1.

    Raises:
        ValueError: when ``dim`` includes the batch dimension.
    """

    def __init__(self, dim: Union[int, Sequence[int]], keepdim: bool = False) -> None:
        super().__init__()
        dims = (dim,) if isinstance(dim, int) else tuple(int(d) for d in dim)
        if not dims or 0 in dims:
            raise ValueError(f"amax over dim={dim!r}: the batch dimension 0 cannot be reduced")
        self.dim = dims
        self.keepdim = bool(keepdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, self.dim, self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class _PoolState(nn.Module):
    """Shared bookkeeping: the running input sum per (sample, unit), kept across chunks."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.steps = 1
        self.total: Optional[torch.Tensor] = None

    def reset(self) -> None:
        """Forget the accumulated input."""
        self.total = None

    def _per_step(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.steps
        if x.shape[0] % steps:
            raise RuntimeError(
                f"{type(self).__name__} got a batch of {x.shape[0]} that is not a multiple of "
                f"steps={steps}; reset() the model and set steps consistently"
            )
        return x.reshape((steps, x.shape[0] // steps) + tuple(x.shape[1:]))

    def _cumulative(self, per_step: torch.Tensor) -> torch.Tensor:
        """Running input sums after each step of the chunk, ``[steps, B, ...]``."""
        if self.total is None or self.total.shape != per_step.shape[1:]:
            self.total = torch.zeros_like(per_step[0])
        cum = per_step.cumsum(0) + self.total
        self.total = cum[-1].clone()
        return cum

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


@register_leaf_module
class SpikingMaxPool(_PoolState):
    """Max pooling of the running input sum, differenced over time (exact on average).

    With ``S_t`` the sum of the inputs up to step ``t``, the output at step ``t`` is
    ``pool(S_t) - pool(S_{t-1})``. The sum telescopes: the average output after ``t``
    steps is exactly ``pool(S_t / t)``, the max pooling of the average input, so the SNN
    tracks the ANN as closely as the rates feeding it do. For spike inputs (0/1, or 0/lam
    per channel) each running sum grows by at most one spike per step, so the output is
    itself a spike train.

    Args:
        pool: the max pooling to apply (``nn.MaxPool2d``, ``nn.AdaptiveMaxPool2d``,
            :class:`AMax` ...); it must not reduce the batch dimension.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__(copy.deepcopy(pool))
        self.last: Optional[torch.Tensor] = None

    def reset(self) -> None:
        """Forget the accumulated input."""
        super().reset()
        self.last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _has_fused_kernel(self.pool, x):
            return self._forward_fused(x)
        per_step = self._per_step(x)
        steps, batch = per_step.shape[:2]
        fresh = self.total is None or self.total.shape != per_step.shape[1:]
        cum = self._cumulative(per_step)
        pooled = self.pool(cum.reshape((steps * batch,) + tuple(cum.shape[2:])))
        pooled = pooled.reshape((steps, batch) + tuple(pooled.shape[1:]))
        if fresh or self.last is None:
            self.last = torch.zeros_like(pooled[0])
        before = torch.cat((self.last.unsqueeze(0), pooled[:-1]))
        self.last = pooled[-1].clone()
        out = pooled - before
        return out.reshape((steps * batch,) + tuple(out.shape[2:]))

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same with ``torch.ops.ann2snn.cumulative_max_pool2d`` (one pass over ``x``)."""
        per_step = self._per_step(x)
        steps, batch = per_step.shape[:2]
        p = self.pool
        if self.total is None or self.total.shape != per_step.shape[1:] or self.last is None:
            self.total = torch.zeros_like(per_step[0])
            self.last = torch.zeros(
                pool_output_shape(p, tuple(per_step.shape[1:])), device=x.device
            )
        out, self.total, self.last = ops.cumulative_max_pool2d(
            per_step,
            self.total,
            self.last,
            p.kernel_size,
            p.stride or p.kernel_size,
            p.padding,
            p.dilation,
            p.ceil_mode,
        )
        return out.reshape((steps * batch,) + tuple(out.shape[2:]))


def _has_fused_kernel(pool: nn.Module, x: torch.Tensor) -> bool:
    # The fused op has no backward: where a gradient is wanted, the torch composition runs.
    return (
        not (x.requires_grad and torch.is_grad_enabled())
        and type(pool) is nn.MaxPool2d
        and not pool.return_indices
        and x.dim() == 4
        and x.dtype == torch.float32
    )


@register_leaf_module
class GatedMaxPool(_PoolState):
    """Per window, pass the current input of the unit with the largest running input sum.

    The gate follows the unit that has been most active so far (its spike count when the
    input is spikes); once the rates have separated, the window's output is the winner's
    spike train. Ties go to the first unit of the window.

    Args:
        pool: ``nn.MaxPool1d/2d/3d`` or ``nn.AdaptiveMaxPool1d/2d/3d`` (they report the
            position of each maximum).

    Raises:
        TypeError: for other pooling modules.
    """

    def __init__(self, pool: nn.Module) -> None:
        if type(pool) not in INDEXED_POOLS:
            names = ", ".join(t.__name__ for t in INDEXED_POOLS)
            raise TypeError(
                f"GatedMaxPool needs one of {names}, got {type(pool).__name__}; "
                "use maxpool='cumulative' for this pooling"
            )
        indexed = copy.deepcopy(pool)
        indexed.return_indices = True
        super().__init__(indexed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_step = self._per_step(x)
        steps, batch = per_step.shape[:2]
        cum = self._cumulative(per_step)
        flat = cum.reshape((steps * batch,) + tuple(cum.shape[2:]))
        _, index = self.pool(flat)
        src = x.reshape(x.shape[:2] + (-1,))
        out = src.gather(2, index.reshape(index.shape[:2] + (-1,)))
        return out.reshape(index.shape)


def pool_output_shape(pool: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The output shape of ``pool`` for an input of ``shape`` (computed on the meta device)."""
    out = pool(torch.empty(shape, device="meta"))
    out = out[0] if isinstance(out, tuple) else out
    return tuple(out.shape)
