"""Argument checks shared across the package (one home for each rule)."""

from __future__ import annotations

import math
import operator
from typing import Any, Optional

import torch
from torch import nn


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as a Python int, if it is an integer (not a bool) of at least ``minimum``.

    Integer-like values (``numpy.int64``, a 0-dim integer tensor) are accepted: they
    implement ``__index__``. Floats, even integral ones, and bools are refused.

    Raises:
        ValueError: naming ``name`` and the value.
    """
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(number)


def optional_positive_int(name: str, value: Any) -> Optional[int]:
    """:func:`positive_int`, with None passed through."""
    return None if value is None else positive_int(name, value)


def finite_float(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high]`` (a real number, not a bool, not NaN).

    Raises:
        ValueError: naming ``name``, the value and the accepted range.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok and type(value).__module__ == "numpy":
        ok = getattr(value, "ndim", 1) == 0 and value.dtype.kind in "iuf"
    number = float(value) if ok else math.nan
    if not low <= number <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return number


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU when it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
