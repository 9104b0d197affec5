"""Exact activation statistics over a calibration set: global max and exact percentiles."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ann2snn._checks import device_of
from ann2snn.input_checks import check_calibration_batch, float_dtype
from ann2snn.tracing import register_leaf_module

INPUT_KEYS = ("input", "inputs", "image", "images", "img", "x", "pixel_values", "data")


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of one batch: a tensor, the first item of a tuple/list, or a dict entry.

    Raises:
        TypeError: when no input tensor can be found in ``batch``.
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        raise TypeError(
            f"calibration batch is a dict with keys {sorted(batch)}; none of them is an input "
            f"tensor under a known name {INPUT_KEYS}. Pass an iterable of tensors instead."
        )
    raise TypeError(
        f"calibration batches must be tensors, (input, label) pairs or dicts, got "
        f"{type(batch).__name__}"
    )


def iter_inputs(data: Iterable[Any], max_batches: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield the input tensors of at most ``max_batches`` batches of ``data``."""
    if isinstance(data, torch.Tensor):
        data = [data]
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        yield batch_input(batch)


def batch_count_bound(data: Any, max_batches: Optional[int]) -> Optional[int]:
    """An upper bound on the number of batches ``iter_inputs`` yields, or None if unknown."""
    if isinstance(data, torch.Tensor):
        return 1
    try:
        n = len(data)
    except TypeError:
        n = None
    if n is None:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


def needed_top_count(n: int, q: float) -> int:
    """How many of the largest of ``n`` values determine the ``q``-quantile (linear rule)."""
    if n <= 0:
        return 0
    return n - math.floor(q * (n - 1))


def quantile_from_top(top_sorted: torch.Tensor, n: int, q: float) -> torch.Tensor:
    """The ``q``-quantile (numpy's 'linear' rule) of ``n`` values given their largest ones.

    Args:
        top_sorted: the ``m`` largest values in ascending order, along the last dim.
        n: how many values there are in all.
        q: quantile in [0, 1].
    """
    m = top_sorted.shape[-1]
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    offset = n - m
    if lo < offset:
        raise RuntimeError("internal error: the kept top values do not reach the quantile")
    a = top_sorted[..., lo - offset]
    b = top_sorted[..., hi - offset]
    return a + (b - a) * frac


@register_leaf_module
class ActivationObserver(nn.Module):
    """Identity module recording exact statistics of the activation it follows.

    Records the global (or per-channel) maximum and, for percentile modes, exactly the
    largest values that can determine the percentile: with an upper bound ``n_upper`` on the
    number of elements it will see, it keeps the top ``needed_top_count(n_upper, q)`` values
    (a running top-k that first drops every value below the current k-th largest). The
    result equals ``numpy.percentile`` over all values seen, with no size limit.

    Args:
        quantile: the quantile in [0, 1] to track, or None for max only.
        channel_axis: None for layer-wise statistics, 1 for per-channel statistics.
    """

    def __init__(self, quantile: Optional[float] = None, channel_axis: Optional[int] = None):
        super().__init__()
        self.quantile = quantile
        self.channel_axis = channel_axis
        self.batches_upper: Optional[int] = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.count = 0
        self.first_batch_elements: Optional[int] = None
        self.bound_exceeded = False
        self.max_value: Optional[torch.Tensor] = None
        self.top: Optional[torch.Tensor] = None
        self.exact_count: Optional[int] = None  # total elements, when known from a prior pass
        self.collect = True  # False: a first pass that only counts elements and tracks the max

    def _keep(self) -> Optional[int]:
        if self.quantile is None:
            return None
        if self.exact_count is not None:
            n = self.exact_count
        elif self.batches_upper is not None and self.first_batch_elements is not None:
            n = self.batches_upper * self.first_batch_elements
        else:
            return None  # unknown: keep everything
        return needed_top_count(n, self.quantile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self._observe(x.detach())
        return x

    def _observe(self, x: torch.Tensor) -> None:
        if self.channel_axis is None:
            flat = x.reshape(1, -1)
        else:
            flat = x.transpose(0, self.channel_axis).reshape(x.shape[self.channel_axis], -1)
        flat = flat.float()
        per_row = flat.shape[1]
        if self.first_batch_elements is None:
            self.first_batch_elements = per_row
        elif per_row > self.first_batch_elements and self.exact_count is None:
            self.bound_exceeded = True
        self.count += per_row
        batch_max = flat.amax(dim=1) if per_row else None
        if batch_max is not None:
            self.max_value = (
                batch_max if self.max_value is None else torch.maximum(self.max_value, batch_max)
            )
        if self.quantile is None or per_row == 0 or not self.collect:
            return
        k = self._keep()
        if k is None:
            raise RuntimeError("observer needs a bound on the number of elements it will see")
        if self.top is not None and self.top.shape[1] >= k and flat.shape[0] == 1:
            # Values not above the current k-th largest can never enter the top k.
            flat = flat[flat > self.top[0, 0]].reshape(1, -1)
        merged = flat if self.top is None else torch.cat([self.top, flat], dim=1)
        if merged.shape[1] > k:
            merged = torch.topk(merged, k, dim=1, largest=True, sorted=False).values
        # Keep ascending order so that top[:, 0] is the current k-th largest.
        self.top = torch.sort(merged, dim=1).values

    def statistic(self) -> torch.Tensor:
        """The maximum (quantile None) or the exact quantile; shape [] or [C]."""
        if self.max_value is None:
            raise RuntimeError("observer saw no data")
        if self.quantile is None:
            out = self.max_value
        else:
            top = torch.sort(self.top, dim=1).values
            out = quantile_from_top(top, self.count, self.quantile)
        return out.reshape(()) if self.channel_axis is None else out

    def extra_repr(self) -> str:
        return f"quantile={self.quantile}, channel_axis={self.channel_axis}"


def observers_of(module: nn.Module) -> List[ActivationObserver]:
    return [m for m in module.modules() if isinstance(m, ActivationObserver)]


def _run(module: nn.Module, inputs: Iterable[torch.Tensor], device, progress: bool, total):
    from tqdm.auto import tqdm

    dtype = float_dtype(module)  # float64 or float16 data runs in the model's dtype
    for x in tqdm(inputs, total=total, desc="calibrating", disable=not progress, leave=False):
        module(x.to(device=device, dtype=dtype))


def calibrate(
    module: nn.Module,
    data: Iterable[Any],
    max_batches: Optional[int] = None,
    *,
    progress: bool = False,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """Run calibration data through ``module`` so that its observers record exact statistics.

    One pass when an upper bound on the number of batches is known (``len(data)`` or
    ``max_batches``) and no batch is larger than the first; otherwise a counting pass and
    an exact second pass (one-shot iterators are buffered for that). Batches are cast to
    the module's floating-point dtype.

    Args:
        module: a module containing :class:`ActivationObserver` s.
        data: DataLoader or iterable of tensors, ``(input, label)`` pairs or dicts.
        max_batches: use at most this many batches.
        device: where to run (default: the module's device).

    Returns:
        ``module``.

    Raises:
        ValueError: when ``data`` yields no batch, or a batch that is not floating point
            or holds NaN or infinite values.
    """
    from ann2snn import distributed

    observers = observers_of(module)
    device = device or device_of(module)
    bound = batch_count_bound(data, max_batches)
    sharded = distributed.is_distributed()
    if sharded:  # this rank's batches only; `bound` stays global (see ann2snn/distributed.py)
        data, max_batches = distributed.shard(data, max_batches), None
        progress = progress and distributed.is_main()
    needs_top = any(o.quantile is not None for o in observers)
    one_shot = isinstance(data, Iterator)
    for o in observers:
        o.reset_stats()
        o.batches_upper = bound
        o.collect = bound is not None
    stored: Optional[List[torch.Tensor]] = [] if (one_shot and needs_top) else None

    def first_pass_inputs() -> Iterator[torch.Tensor]:
        for i, x in enumerate(iter_inputs(data, max_batches), 1):
            check_calibration_batch(x, i)
            if stored is not None:
                stored.append(x)
            yield x

    module.eval()
    with torch.no_grad():
        with distributed.failure_check("calibration"):
            _run(module, first_pass_inputs(), device, progress, bound)
        if sharded:
            merge_observers(observers)
        if observers and observers[0].count == 0:
            raise ValueError("the calibration data yielded no batch")
        if needs_top and any(o.bound_exceeded or not o.collect for o in observers):
            for o in observers:
                n = o.count
                o.reset_stats()
                o.exact_count = n
            again = stored if stored is not None else iter_inputs(data, max_batches)
            with distributed.failure_check("calibration (second pass)"):
                _run(module, again, device, progress, bound)
            if sharded:
                merge_observers(observers)
    return module


def merge_observers(observers: Sequence[Any]) -> None:
    """Make every rank's observers hold the statistics of all ranks' data together.

    A collective over the ranks (every rank passes its observers of the same model, in
    the same order). Afterwards each observer's ``count`` is the global element count,
    ``max_value`` the global maximum and, for percentile observers, ``top`` the global
    largest values, so ``statistic()`` equals the single-process value exactly. When some
    rank kept too few values for that (see the module docstring), ``bound_exceeded`` is
    set on every rank, which makes :func:`calibrate` run its exact
    second pass; ``collect`` is False on every rank if it was False on any.

    Args:
        observers: the :class:`~ann2snn.calibration.ActivationObserver` s of one model.
    """
    from ann2snn import distributed

    if not distributed.is_distributed() or not observers:
        return
    w = distributed.world_size()
    meta = torch.tensor(
        [
            [
                o.count,
                0 if o.max_value is None else o.max_value.numel(),
                0 if o.top is None else o.top.shape[1],
                int(o.collect),
            ]
            for o in observers
        ],
        dtype=torch.int64,
    )
    gathered = torch.stack(distributed.all_gather(meta))  # [W, observers, 4]
    counts, rows = gathered[:, :, 0], gathered[:, :, 1].amax(dim=0)
    kept, collected = gathered[:, :, 2], bool(gathered[:, :, 3].min() > 0)

    # One all-reduce for every maximum (ranks without data contribute -inf).
    home = next((o.max_value.device for o in observers if o.max_value is not None), None)
    home = home or torch.device("cpu")
    maxima = torch.full((int(rows.sum()),), float("-inf"), dtype=torch.float32, device=home)
    offsets = [0] + torch.cumsum(rows, 0).tolist()
    for i, o in enumerate(observers):
        if o.max_value is not None:
            maxima[offsets[i] : offsets[i + 1]] = o.max_value.reshape(-1).float()
    maxima = distributed.all_reduce_max(maxima)

    needed = []
    for i, o in enumerate(observers):
        o.count = int(counts[:, i].sum())
        o.collect = collected
        if int(rows[i]) > 0:
            o.max_value = maxima[offsets[i] : offsets[i + 1]].clone()
        if o.quantile is None or not collected or o.count == 0:
            needed.append(None)
            continue
        k = needed_top_count(o.count, o.quantile)
        needed.append(k)
        # Exact iff every rank kept its min(k, n_r) largest values: the global k largest
        # are among them. Otherwise calibrate() reruns with k from the global count.
        o.bound_exceeded = any(int(kept[r, i]) < min(k, int(counts[r, i])) for r in range(w))
    if any(o.bound_exceeded for o, k in zip(observers, needed) if k is not None):
        return
    for i, (o, k) in enumerate(zip(observers, needed)):
        if k is None:
            continue
        width = int(kept[:, i].max())
        padded = torch.zeros((int(rows[i]), width), dtype=torch.float32, device=home)
        if o.top is not None:
            padded[:, : o.top.shape[1]] = o.top
        parts = distributed.all_gather(padded)
        union = torch.cat([p[:, : int(kept[r, i])] for r, p in enumerate(parts)], dim=1)
        top = torch.topk(union, min(k, union.shape[1]), dim=1, largest=True, sorted=False).values
        o.top = torch.sort(top, dim=1).values
