"""The ONNX converter registry: one converter function per (domain, op type, opset range).

Converters register with the :func:`_converter` decorator (see ``converters/``); registering an
op again for an overlapping opset range raises. :func:`_lookup` finds the converter of a node,
:func:`supported_onnx_ops` lists what is registered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from ann2snn.frontends.onnx.builder import _Builder
    from ann2snn.frontends.onnx.values import _Node

__all__ = ["supported_onnx_ops"]

_DEFAULT_DOMAINS = ("", "ai.onnx")

_ConverterFn = Callable[["_Builder", "_Node"], Any]


@dataclass(frozen=True)
class _Entry:
    first: int
    last: Optional[int]
    fn: _ConverterFn

    def covers(self, opset: int) -> bool:
        return self.first <= opset and (self.last is None or opset <= self.last)


_REGISTRY: Dict[Tuple[str, str], List[_Entry]] = {}


def _converter(
    *op_types: str, opsets: Tuple[int, Optional[int]] = (1, None), domain: str = ""
) -> Callable[[_ConverterFn], _ConverterFn]:
    """Register the decorated function as the converter of ``op_types`` for ``opsets``.

    Args:
        op_types: ONNX op types (``"Conv"``, ...).
        opsets: inclusive range of opset versions of ``domain`` (``None`` = no upper bound).
        domain: the op's domain; ``""`` is the default ONNX domain.

    Raises:
        ValueError: when an op is already registered for an overlapping opset range.
    """
    first, last = opsets
    domain = "" if domain in _DEFAULT_DOMAINS else domain

    def decorate(fn: _ConverterFn) -> _ConverterFn:
        for op_type in op_types:
            entries = _REGISTRY.setdefault((domain, op_type), [])
            for e in entries:
                if first <= (e.last if e.last is not None else math.inf) and e.first <= (
                    last if last is not None else math.inf
                ):
                    raise ValueError(
                        f"ONNX op {op_type!r} (domain {domain or 'ai.onnx'!r}) is already "
                        f"registered for opsets {e.first}..{e.last or 'latest'} by "
                        f"{e.fn.__name__}; {fn.__name__} overlaps with {first}..{last or 'latest'}"
                    )
            entries.append(_Entry(first, last, fn))
        return fn

    return decorate


def _lookup(domain: str, op_type: str, opset: int) -> Optional[_ConverterFn]:
    domain = "" if domain in _DEFAULT_DOMAINS else domain
    for e in _REGISTRY.get((domain, op_type), ()):
        if e.covers(opset):
            return e.fn
    return None


def supported_onnx_ops() -> Dict[str, List[Tuple[int, Optional[int]]]]:
    """The ONNX ops (default domain) the importer converts, with their opset ranges.

    Returns:
        ``{op_type: [(first_opset, last_opset_or_None), ...]}``, sorted by op type.
    """
    out: Dict[str, List[Tuple[int, Optional[int]]]] = {}
    for (domain, op_type), entries in sorted(_REGISTRY.items()):
        if domain == "":
            out[op_type] = sorted((e.first, e.last) for e in entries)
    return out
