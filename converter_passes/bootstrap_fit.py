"""Bootstrap fit (optional, outside the default pipeline): measure what each IF layer of a
converted SNN really does at a target number of time steps and fit it as a monotone
piecewise-linear function of the input current.

At a handful of time steps an IF neuron takes only a few rates (``k / T``), starts from
``v_init``, saturates at one spike per step and, deep in the network, reacts to the timing
of its input spikes, so ``relu`` no longer describes it. SAMPLING simulates the SNN for
``T`` steps on calibration data and records, for every neuron of every IF layer, the pair
(mean input current over the ``T`` steps / threshold, output rate). FIT turns the pairs
into one monotone piecewise-linear function per layer with fixed, evenly spaced knots
(the exact least-squares fit under the monotonicity constraint). The fitted functions are
stored on the graph as :class:`ann2snn.training.bootstrap.PiecewiseLinear` modules; the
ANN view of :mod:`ann2snn.bootstrap` runs the graph with them in place of the neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import fx, nn
from tqdm import tqdm

from ann2snn._checks import device_of, positive_int
from ann2snn.calibration import batch_count_bound, iter_inputs
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.runtime.recorders import SpikeRecorder
from ann2snn.runtime.spiking_model import SpikingModel
from ann2snn.training.pwl import PiecewiseLinear, fits_of, pwl_eval

#: Default input-current range sampled and fitted, in units of the threshold.
DEFAULT_SAMPLE_RANGE: Tuple[float, float] = (-1.0, 2.0)
#: Default number of linear segments of each fitted function.
DEFAULT_SEGMENTS = 12
#: Sampling bins per segment: the fit sees binned means, never the raw millions of pairs.
BINS_PER_SEGMENT = 8


@dataclass
class RateSamples:
    """Binned (mean input current, output rate) pairs of one IF layer.

    Currents are in units of the layer's threshold and binned evenly over ``[lo, hi)``.

    Attributes:
        lo, hi: the sampled range.
        timesteps: the number of time steps simulated.
        count: samples per bin ``[bins]`` (float64).
        current: mean current per bin (NaN where empty).
        rate: mean output rate per bin (NaN where empty).
        below, above: samples whose current fell below ``lo`` / at or above ``hi``.
        rate_below, rate_above: mean rate of those samples (NaN when there are none).
    """

    lo: float
    hi: float
    timesteps: int
    count: torch.Tensor
    current: torch.Tensor
    rate: torch.Tensor
    below: float = 0.0
    above: float = 0.0
    rate_below: float = float("nan")
    rate_above: float = float("nan")

    @property
    def total(self) -> float:
        """All samples, in range or not."""
        return float(self.count.sum()) + self.below + self.above

    @property
    def in_range(self) -> float:
        """Fraction of the samples inside the sampled range."""
        return float(self.count.sum()) / max(self.total, 1.0)


class _BinAccumulator:
    """Running per-bin sums for one layer (float64, so millions of samples add up exactly)."""

    def __init__(self, lo: float, hi: float, bins: int) -> None:
        self.lo, self.hi, self.bins = lo, hi, bins
        self.count = torch.zeros(bins, dtype=torch.float64)
        self.current = torch.zeros(bins, dtype=torch.float64)
        self.rate = torch.zeros(bins, dtype=torch.float64)
        self.below = [0.0, 0.0]  # count, rate sum
        self.above = [0.0, 0.0]

    def add(self, current: torch.Tensor, rate: torch.Tensor) -> None:
        c = current.detach().reshape(-1).double().cpu()
        r = rate.detach().reshape(-1).double().cpu()
        low, high = c < self.lo, c >= self.hi
        self.below[0] += float(low.sum())
        self.below[1] += float(r[low].sum())
        self.above[0] += float(high.sum())
        self.above[1] += float(r[high].sum())
        keep = ~(low | high)
        c, r = c[keep], r[keep]
        idx = ((c - self.lo) * (self.bins / (self.hi - self.lo))).long().clamp_(0, self.bins - 1)
        self.count += torch.bincount(idx, minlength=self.bins).double()
        self.current += torch.bincount(idx, weights=c, minlength=self.bins)
        self.rate += torch.bincount(idx, weights=r, minlength=self.bins)

    def result(self, timesteps: int) -> RateSamples:
        n = self.count
        nan = torch.full_like(n, float("nan"))
        return RateSamples(
            lo=self.lo,
            hi=self.hi,
            timesteps=timesteps,
            count=n.clone(),
            current=torch.where(n > 0, self.current / n.clamp_min(1), nan),
            rate=torch.where(n > 0, self.rate / n.clamp_min(1), nan),
            below=self.below[0],
            above=self.above[0],
            rate_below=self.below[1] / self.below[0] if self.below[0] else float("nan"),
            rate_above=self.above[1] / self.above[0] if self.above[0] else float("nan"),
        )


def _check_spiking_graph(gm: nn.Module) -> None:
    if not hasattr(gm, "time_loop") or not hasattr(gm, "static_prefix"):
        raise ValueError(
            "bootstrap_fit needs a converted spiking graph (with static_prefix and time_loop), "
            "e.g. ann2snn.convert(model, ...).graph_module"
        )
    swapped = [n for n, m in gm.time_loop.named_modules() if isinstance(m, PiecewiseLinear)]
    if swapped:
        raise ValueError(
            f"the graph is in ANN mode (piecewise-linear activations at {swapped[:3]}): switch "
            "it back to the SNN (BootstrapModel.snn_mode()) before sampling"
        )
    if not any(isinstance(m, IFNeuron) for m in gm.time_loop.modules()):
        raise ValueError("the spiking graph has no IF neurons to sample")


def check_sample_range(sample_range: Tuple[float, float]) -> Tuple[float, float]:
    """Return ``(low, high)`` as floats.

    Raises:
        ValueError: unless the range is finite and holds [0, 1] strictly inside.
    """
    try:
        lo, hi = (float(v) for v in sample_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_range must be (low, high), got {sample_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < 0.0 < 1.0 < hi):
        raise ValueError(
            f"sample_range must be finite and contain [0, 1] (the firing range, in units of "
            f"the threshold) strictly inside, e.g. {DEFAULT_SAMPLE_RANGE}; got {sample_range!r}"
        )
    return lo, hi


@torch.no_grad()
def sample_rates(
    snn: SpikingModel,
    data: Iterable[Any],
    timesteps: int,
    *,
    sample_range: Tuple[float, float] = DEFAULT_SAMPLE_RANGE,
    bins: int = DEFAULT_SEGMENTS * BINS_PER_SEGMENT,
    max_batches: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, RateSamples]:
    """SAMPLING: simulate ``timesteps`` steps and bin (mean current, rate) of every neuron.

    The current of a neuron is its input averaged over the ``timesteps`` steps, divided by
    its (per-layer or per-channel) threshold; the rate is its spike count over
    ``timesteps``. Every neuron of every sample is one pair.

    Args:
        snn: the converted model (in SNN mode).
        data: calibration batches (tensors, ``(input, label)`` pairs or dicts).
        timesteps: the target number of time steps T.
        sample_range: the current range ``(low, high)`` that is binned.
        bins: number of even bins over the range.
        max_batches: use at most this many batches of ``data``.
        progress: show a progress bar.

    Returns:
        IF layer name (as in ``snn.neurons()``) -> :class:`RateSamples`.

    Raises:
        ValueError: on a bad range, ``timesteps`` or ``bins``, a graph in ANN mode, or
            data that yields no batch.
    """
    _check_spiking_graph(snn.graph_module)
    lo, hi = check_sample_range(sample_range)
    timesteps, bins = positive_int("timesteps", timesteps), positive_int("bins", bins)
    acc = {name: _BinAccumulator(lo, hi, bins) for name, _ in snn.neurons()}
    device = device_of(snn.graph_module)
    batches = 0
    bar = tqdm(
        iter_inputs(data, max_batches),
        total=batch_count_bound(data, max_batches),
        desc=f"bootstrap sampling T={timesteps}",
        disable=not progress,
        leave=False,
    )
    with SpikeRecorder(snn, per_neuron=True) as rec:
        for x in bar:
            rec.clear()
            for _ in snn.simulate(x.to(device), timesteps):
                pass
            for name, a in acc.items():
                a.add(*rec.means(name, timesteps))
            batches += 1
        rec.clear()
    if batches == 0:
        raise ValueError("the calibration data yielded no batch to sample the SNN with")
    return {name: a.result(timesteps) for name, a in acc.items()}


def nnls(a: torch.Tensor, b: torch.Tensor, max_iter: Optional[int] = None) -> torch.Tensor:
    """Non-negative least squares ``argmin_{z >= 0} ||a z - b||`` (Lawson-Hanson active set).

    Args:
        a: ``[m, n]`` matrix (use float64).
        b: ``[m]`` right-hand side.
        max_iter: bound on outer iterations (default ``3 n``).

    Returns:
        The solution ``[n]``.
    """
    m, n = a.shape
    z = torch.zeros(n, dtype=a.dtype)
    passive = torch.zeros(n, dtype=torch.bool)
    tol = 1e-10 * max(1.0, float(a.abs().max())) * max(m, n)
    for _ in range(max_iter or 3 * n):
        w = a.T @ (b - a @ z)
        candidates = (~passive) & (w > tol)
        if not bool(candidates.any()):
            break
        passive[int(torch.where(candidates, w, torch.full_like(w, -math.inf)).argmax())] = True
        while True:
            s = torch.zeros_like(z)
            idx = passive.nonzero().reshape(-1)
            s[idx] = torch.linalg.lstsq(a[:, idx], b.unsqueeze(1)).solution.reshape(-1)
            if bool((s[idx] > 0).all()):
                z = s
                break
            blocked = passive & (s <= 0)
            step = (z[blocked] / (z[blocked] - s[blocked])).min()
            z = z + step * (s - z)
            passive &= z > tol
            z[~passive] = 0.0
    return z


def fit_monotone_pwl(
    current: torch.Tensor,
    rate: torch.Tensor,
    weight: torch.Tensor,
    lo: float,
    hi: float,
    segments: int,
    prior_weight: float = 1e-4,
) -> torch.Tensor:
    """FIT: the monotone piecewise-linear function through (current, rate) points.

    Knots are evenly spaced over ``[lo, hi]``. The knot values minimize
    ``sum w (f(current) - rate)^2`` under ``f`` non-decreasing, plus a tiny pull
    (``prior_weight`` of the total weight per knot) toward ``clamp(x, 0, 1)``, the
    infinite-time IF rate, so that knots no sample constrains stay sensible. The values
    are finally clipped to the possible rates [0, 1].

    Args:
        current: sample currents (threshold units), any shape.
        rate: sample rates, same shape.
        weight: non-negative sample weights (e.g. bin counts), same shape; NaN points with
            zero weight are ignored.
        lo, hi: the fitted range.
        segments: number of linear segments.
        prior_weight: weight of the pull toward ``clamp(x, 0, 1)``.

    Returns:
        Knot values ``[segments + 1]`` (float32, non-decreasing).

    Raises:
        ValueError: on a bad range or segment count, or mismatched shapes.
    """
    segments = positive_int("segments", segments)
    if not lo < hi:
        raise ValueError(f"the fit range needs lo < hi, got ({lo}, {hi})")
    if not (current.shape == rate.shape == weight.shape):
        raise ValueError(
            f"current, rate and weight must have one shape, got {tuple(current.shape)}, "
            f"{tuple(rate.shape)}, {tuple(weight.shape)}"
        )
    x, y, w = (t.detach().reshape(-1).double().cpu() for t in (current, rate, weight))
    ok = (w > 0) & torch.isfinite(x) & torch.isfinite(y)
    x, y, w = x[ok].clamp(lo, hi), y[ok], w[ok]
    knots = torch.linspace(lo, hi, segments + 1, dtype=torch.float64)
    # f(x) = c + sum_j d_j * ramp_j(x), ramp_j rising from 0 to 1 over segment j: d >= 0 is
    # exactly "f non-decreasing". The free offset c = c+ - c- keeps the problem an NNLS.
    h = (hi - lo) / segments
    ramps_at_knots = ((knots.unsqueeze(1) - knots[:-1].unsqueeze(0)) / h).clamp(0, 1)
    prior = knots.clamp(0, 1)
    total = float(w.sum()) if len(w) else 1.0
    sp = math.sqrt(prior_weight * total)
    rows = []
    rhs = []
    if len(x):
        ramps = ((x.unsqueeze(1) - knots[:-1].unsqueeze(0)) / h).clamp(0, 1)
        sw = w.sqrt().unsqueeze(1)
        rows.append(torch.cat([sw, -sw, sw * ramps], 1))
        rhs.append(w.sqrt() * y)
    one = torch.ones(segments + 1, 1, dtype=torch.float64)
    rows.append(sp * torch.cat([one, -one, ramps_at_knots], 1))
    rhs.append(sp * prior)
    z = nnls(torch.cat(rows, 0), torch.cat(rhs, 0))
    values = (z[0] - z[1]) + ramps_at_knots @ z[2:]
    # Rates live in [0, 1]; clamping keeps the order, so the fit stays monotone.
    return values.clamp(0.0, 1.0).float()


def fit_error(samples: RateSamples, values: torch.Tensor) -> float:
    """Count-weighted RMS difference between the fit and the binned sample means."""
    ok = samples.count > 0
    if not bool(ok.any()):
        return float("nan")
    pred = pwl_eval(samples.current[ok], values.double(), samples.lo, samples.hi)
    w = samples.count[ok]
    return float(((pred - samples.rate[ok]) ** 2 * w).sum() / w.sum()) ** 0.5


def bootstrap_fit(
    gm: fx.GraphModule,
    calib_data: Iterable[Any],
    timesteps: int,
    *,
    segments: int = DEFAULT_SEGMENTS,
    sample_range: Tuple[float, float] = DEFAULT_SAMPLE_RANGE,
    max_batches: Optional[int] = None,
    progress: bool = False,
) -> fx.GraphModule:
    """Sample every IF layer of a spiking graph at ``timesteps`` steps and fit its rate.

    Stores one :class:`~ann2snn.training.bootstrap.PiecewiseLinear` per IF layer (replacing any
    earlier fit) in ``gm.bootstrap_fits`` and the fit statistics in
    ``gm.meta['bootstrap_fit']``. The spiking graph itself computes exactly what it
    computed before.

    Args:
        gm: a converted spiking graph (``SpikingModel.graph_module``), in SNN mode.
        calib_data: batches to simulate (a few thousand training images are plenty).
        timesteps: the target number of time steps T.
        segments: linear segments per fitted function.
        sample_range: the current range ``(low, high)`` sampled and fitted, in units of
            the threshold; it must contain [0, 1]. Outside it the function is constant.
        max_batches: use at most this many batches of ``calib_data``.
        progress: show a progress bar.

    Returns:
        ``gm``, with ``bootstrap_fits`` set.

    Raises:
        ValueError: on bad options, a graph that is not a spiking graph in SNN mode, or
            no calibration data.
    """
    _check_spiking_graph(gm)
    lo, hi = check_sample_range(sample_range)
    segments = positive_int("segments", segments)
    snn = SpikingModel(gm)
    samples = sample_rates(
        snn,
        calib_data,
        timesteps,
        sample_range=(lo, hi),
        bins=segments * BINS_PER_SEGMENT,
        max_batches=max_batches,
        progress=progress,
    )
    fits = fits_of(gm)
    stats = {}
    for name, neuron in snn.neurons():
        s = samples[name]
        values = fit_monotone_pwl(s.current, s.rate, s.count, lo, hi, segments)
        pwl = PiecewiseLinear(values, lo, hi, threshold=neuron.threshold.detach().clone())
        pwl.to(neuron.threshold.device)
        fits[name] = pwl
        stats[name] = {
            "timesteps": timesteps,
            "rmse": fit_error(s, values),
            "in_range": s.in_range,
            "rate_below": s.rate_below,
            "rate_above": s.rate_above,
            "values": [round(float(v), 5) for v in values],
        }
    gm.meta["bootstrap_fit"] = stats
    gm.graph.lint()
    gm.recompile()
    return gm
