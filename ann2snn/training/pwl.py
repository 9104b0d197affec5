"""Piecewise-linear activations for bootstrap training, and where a graph keeps its fits.

Pure pieces shared by the bootstrap fitting pass (``converter_passes/bootstrap_fit.py``)
and the training loop (:mod:`ann2snn.bootstrap`), so that neither imports the other.
"""

from __future__ import annotations

from typing import Iterator, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.runtime.neuron import _channel_view

#: Name of the ModuleDict on a spiking graph that holds the fitted functions.
FITS_ATTR = "bootstrap_fits"


def pwl_eval(x: torch.Tensor, values: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Evaluate the piecewise-linear function with knot ``values`` evenly over ``[lo, hi]``.

    Outside ``[lo, hi]`` the function is constant (its end values). Differentiable in ``x``
    (slope of the segment) and in ``values``.

    Args:
        x: inputs, any shape.
        values: ``[segments + 1]`` knot values.
        lo, hi: positions of the first and last knot.

    Returns:
        ``f(x)``, shaped like ``x``.
    """
    segments = values.numel() - 1
    p = (x - lo) * (segments / (hi - lo))
    i = p.detach().floor().clamp(0, segments - 1)
    frac = (p - i).clamp(0, 1)
    i = i.long()
    left = values[i]
    return left + frac * (values[i + 1] - left)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    y = y.clamp_min(1e-12)
    return torch.where(y > 20, y, torch.log(torch.expm1(y)))


class PiecewiseLinear(nn.Module):
    """A monotone piecewise-linear activation: the ANN view of one IF layer.

    ``forward(x) = f(x / threshold)`` with ``f`` linear between ``segments + 1`` evenly
    spaced knots over ``[lo, hi]`` (threshold units) and constant outside. It outputs a
    firing rate, as the IF neuron it stands for does on average.

    The knot values are stored as a first value plus non-negative increments (through a
    softplus), so ``f`` stays non-decreasing even when the knots are learned.

    Args:
        values: the ``segments + 1`` knot values (non-decreasing).
        lo, hi: positions of the first and last knot.
        threshold: the IF layer's threshold, scalar or per channel (dim 1).
        learnable: make the knot values trainable parameters (else fixed buffers).

    Raises:
        ValueError: on fewer than two values, decreasing values or a bad range.
    """

    def __init__(
        self,
        values: torch.Tensor,
        lo: float,
        hi: float,
        threshold: Union[float, torch.Tensor] = 1.0,
        learnable: bool = False,
    ) -> None:
        super().__init__()
        values = torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1)
        if values.numel() < 2:
            raise ValueError("PiecewiseLinear needs at least two knot values")
        if not float(lo) < float(hi):
            raise ValueError(f"PiecewiseLinear needs lo < hi, got ({lo}, {hi})")
        steps = values[1:] - values[:-1]
        if bool((steps < -1e-6).any()):
            raise ValueError("PiecewiseLinear knot values must be non-decreasing")
        self.lo, self.hi = float(lo), float(hi)
        self.exact = not learnable
        first = values[:1].clone()
        if learnable:
            self.first = nn.Parameter(first)
            self.raw_steps = nn.Parameter(_inverse_softplus(steps.clamp_min(0)))
        else:
            self.register_buffer("first", first)
            self.register_buffer("raw_steps", steps.clamp_min(0).clone())
        thr = torch.as_tensor(threshold, dtype=torch.float32).detach().clone().reshape(-1)
        if bool((thr <= 0).any()):
            raise ValueError("PiecewiseLinear thresholds must be positive")
        self.register_buffer("threshold", thr)

    @property
    def segments(self) -> int:
        return self.raw_steps.numel()

    def values(self) -> torch.Tensor:
        """The knot values ``[segments + 1]``."""
        steps = self.raw_steps if self.exact else F.softplus(self.raw_steps)
        return torch.cat([self.first, self.first + torch.cumsum(steps, 0)])

    def knots(self) -> torch.Tensor:
        """The knot positions ``[segments + 1]`` (threshold units)."""
        return torch.linspace(self.lo, self.hi, self.segments + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x / _channel_view(self.threshold, x)
        return pwl_eval(u, self.values(), self.lo, self.hi)

    def extra_repr(self) -> str:
        return (
            f"segments={self.segments}, range=({self.lo:g}, {self.hi:g}), "
            f"learnable={not self.exact}"
        )


class _Fits:
    """Neuron name -> fitted :class:`PiecewiseLinear`, kept in a ModuleDict on the graph
    (ModuleDict keys may not contain dots, so names are stored with ``/``)."""

    def __init__(self, store: nn.ModuleDict) -> None:
        self.store = store

    def __getitem__(self, name: str) -> PiecewiseLinear:
        return self.store[name.replace(".", "/")]  # type: ignore[return-value]

    def __setitem__(self, name: str, fit: PiecewiseLinear) -> None:
        self.store[name.replace(".", "/")] = fit

    def __contains__(self, name: str) -> bool:
        return name.replace(".", "/") in self.store

    def __len__(self) -> int:
        return len(self.store)

    def items(self) -> Iterator[Tuple[str, PiecewiseLinear]]:
        for key, fit in self.store.items():
            yield key.replace("/", "."), fit  # type: ignore[misc]


def fits_of(gm: nn.Module) -> _Fits:
    """The fitted functions stored on a spiking graph (created empty when absent)."""
    if not isinstance(getattr(gm, FITS_ATTR, None), nn.ModuleDict):
        gm.add_module(FITS_ATTR, nn.ModuleDict())
    return _Fits(getattr(gm, FITS_ATTR))


def drop_fits(gm: nn.Module) -> None:
    """Remove the fitted functions from a spiking graph, leaving exactly the converted
    structure (so that the SNN saves and loads like any other)."""
    if hasattr(gm, FITS_ATTR):
        delattr(gm, FITS_ATTR)
