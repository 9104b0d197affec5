"""Parsing of normalization modes: 'max', 'P%' (a percentile) or a float 0 < s <= 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

#: The smallest fraction ``s`` of a float mode: below it, ``s * max`` underflows float32
#: thresholds towards zero and every neuron saturates.
MIN_FRACTION = 1e-6
ACCEPTED = (
    "'max' (the maximum activation), a percentile written 'P%' with 0 < P <= 100 "
    "(e.g. '99.9%', '99.99%'), or a float 0 < s <= 1 meaning s * max"
)


@dataclass(frozen=True)
class NormMode:
    """A parsed normalization mode.

    Attributes:
        text: the user's words, e.g. '99.9%'.
        quantile: the quantile in (0, 1] for percentile modes, else None.
        fraction: for float modes the factor s applied to the max, else None.
    """

    text: str
    quantile: Optional[float] = None
    fraction: Optional[float] = None


def parse_mode(mode: Union[str, float, int]) -> NormMode:
    """Parse a normalization mode.

    Raises:
        ValueError: naming the accepted forms, for anything else.
    """
    if isinstance(mode, bool):
        raise ValueError(f"invalid normalization mode {mode!r}; use {ACCEPTED}")
    if isinstance(mode, (int, float)):
        if 0 < float(mode) <= 1:
            return NormMode(text=str(mode), fraction=_fraction(mode))
        raise ValueError(f"invalid normalization mode {mode!r}; use {ACCEPTED}")
    if isinstance(mode, str):
        text = mode.strip()
        if text.lower() == "max":
            return NormMode(text="max")
        if text.endswith("%"):
            try:
                p = float(text[:-1])
            except ValueError:
                p = float("nan")
            if 0 < p <= 100:
                return NormMode(text=text, quantile=p / 100.0)
        else:
            try:
                s = float(text)
            except ValueError:
                s = float("nan")
            if 0 < s <= 1:
                return NormMode(text=text, fraction=_fraction(mode))
    raise ValueError(f"invalid normalization mode {mode!r}; use {ACCEPTED}")


def _fraction(mode: Union[str, float, int]) -> float:
    s = float(mode)
    if s < MIN_FRACTION:
        raise ValueError(
            f"normalization mode {mode!r} is too small: thresholds of {s:g} * max underflow "
            f"and every neuron saturates; use a fraction of at least {MIN_FRACTION:g}"
        )
    return s
