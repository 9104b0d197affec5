"""Saturation and calibration coverage of a simulation.

An IF neuron cannot fire more than once per step, so it represents activations up to its
normalization scale (rate 1) and clips everything above. Three figures say how much of the
evaluated data hit that limit:

* **saturated**: of all (input, neuron) pairs, those that spiked at every one of the T
  steps while their mean input exceeded the threshold (by more than
  ``SATURATION_TOLERANCE``): the neuron clipped its input. A percentile mode clips about
  ``1 - P`` of the calibration values on purpose; much more means the data drives neurons
  harder than the calibration data did. Neurons whose scale is the ANN's own clip
  (``ReLU6``, ``Hardtanh(0, a)``) are not counted: their rate 1 is exact.
* **out of range** (coverage): of all inputs, those that drove at least one activation of
  the ANN above the largest value it took on the calibration data (by more than
  ``RANGE_RELATIVE_TOLERANCE`` of that value plus ``RANGE_TOLERANCE`` of its scale).
  The SNN clips those values where the ANN does not: the calibration data did not cover
  the evaluated data (too few calibration examples, or a shift between the two).
* **clip error**: what clipping costs at the output: the relative output error
  ``||clipped(x) - ann(x)|| / ||ann(x)||`` over the evaluated inputs, where ``clipped`` is
  the ANN with every activation clipped at its neuron's scale. An IF neuron's rate tends
  to its input's time average clipped to [0, 1], so for inputs that are the same at every
  step this is about the error the SNN's output approaches as T grows. Not measured
  after :func:`ann2snn.bootstrap`, which trains the SNN itself, clipping included.

Saturation is measured on the simulation at the largest T, from each neuron's spike count
and final membrane (:meth:`ann2snn.runtime.recorders.SpikeRecorder.saturation_counts`).
Coverage and the clip error are properties of the data, not of T or the input encoding:
they come from two passes of the ANN per batch (``snn_graph.ann_view``, once exact and
once clipped; a sequence's ANN input is its mean frame). A warning is given when one
exceeds :data:`SATURATION_WARNING`, :data:`OUT_OF_RANGE_WARNING` or
:data:`CLIP_ERROR_WARNING`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ann2snn import distributed
from ann2snn.runtime.neuron import Activation, _channel_view
from ann2snn.runtime.recorders import SATURATION_TOLERANCE, SaturationCounts

__all__ = [
    "CLIP_ERROR_WARNING",
    "OUT_OF_RANGE_WARNING",
    "RANGE_RELATIVE_TOLERANCE",
    "RANGE_TOLERANCE",
    "SATURATION_TOLERANCE",
    "SATURATION_WARNING",
    "RangeTally",
    "RangeWarning",
    "clipped_views",
    "range_line",
    "range_report",
    "range_warnings",
    "refresh_calibrated_ranges",
]


class RangeWarning(UserWarning):
    """Neurons saturate, inputs leave the calibrated range, or clipping costs accuracy."""


#: An activation's value is beyond the calibrated range when it exceeds the largest value
#: the activation took on the calibration data by more than this fraction of that value
#: plus :data:`RANGE_TOLERANCE` of its scale (the ANN value of one spike per step). Data
#: drawn like the calibration data exceeds the maximum of n calibration values with
#: probability 1/(n+1) per neuron; over the hundreds of neurons of a wide layer that is
#: most inputs, by a little: the relative margin keeps such sampling noise apart from
#: data the calibration did not cover (mnist_mlp, 2,000 calibration images, its test set:
#: 14.8% of the inputs beyond with the scale margin alone, 3.4% with both).
RANGE_RELATIVE_TOLERANCE = 0.25
RANGE_TOLERANCE = 0.1
#: Warn when more than this share of (input, neuron) pairs saturated.
SATURATION_WARNING = 0.01
#: Warn when more than this share of the inputs left the calibrated range somewhere.
OUT_OF_RANGE_WARNING = 0.1
#: Warn when clipping at the neurons' scales alone moves the output by more than this
#: (relative error; about what the SNN's error approaches as T grows).
CLIP_ERROR_WARNING = 0.05


def _exact_view(snn: Any) -> nn.Module:
    """The ANN a converted SNN stands for; its activations keep their neuron's ``scale``
    and ``calib_max``."""
    from ann2snn.snn_graph import ann_view

    exact = ann_view(snn.graph_module)
    neurons = dict(snn.neurons())
    for name, m in exact.named_modules():
        if isinstance(m, Activation) and name in neurons:
            m.scale = _copy(neurons[name].scale)
            m.calib_max = _copy(getattr(neurons[name], "calib_max", None))
    return exact


def clipped_views(snn: Any) -> Tuple[nn.Module, nn.Module]:
    """(the ANN a converted SNN stands for, the same ANN with every activation clipped at
    its neuron's threshold: the function the SNN computes as T grows). The activations of
    the first keep their neuron's ``scale`` and ``calib_max`` (for :class:`RangeTally`)."""
    exact = _exact_view(snn)
    clipped = copy.deepcopy(exact)
    for m in clipped.modules():
        if isinstance(m, Activation) and m.threshold is not None:
            thr = m.threshold.reshape(-1)
            m.clip = thr.clone() if m.clip is None else torch.minimum(m.clip.reshape(-1), thr)
    return exact, clipped


def _copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().clone().reshape(-1)


def _ann_units(act: Activation, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the activation's values for input ``x`` in ANN units, its scale broadcast to them)."""
    value = torch.relu(x.float())
    if act.clip is not None:
        value = torch.minimum(value, _channel_view(act.clip.float(), value))
    thr = _channel_view(act.threshold.float(), value)
    scale = thr if act.scale is None else _channel_view(act.scale.float(), value)
    return value * scale / thr, scale


def _beyond(act: Activation, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``[B]`` bool: the input drove one of the activation's values beyond its calibrated
    range (None when the activation does not know it)."""
    if act.calib_max is None:
        return None
    value, scale = _ann_units(act, x)
    largest = _channel_view(act.calib_max.float(), value)
    limit = (1 + RANGE_RELATIVE_TOLERANCE) * largest + RANGE_TOLERANCE * scale
    return (value > limit).reshape(value.shape[0], -1).any(1)


@torch.no_grad()
def refresh_calibrated_ranges(snn: Any, data: Any, max_batches: Optional[int] = None) -> None:
    """Measure every IF layer's calibrated range (``calib_max``, per channel, ANN units)
    again on ``data``.

    Conversion records the ranges; a pass that changes the SNN's weights afterwards
    (:func:`ann2snn.bootstrap`) calls this, or coverage would be judged against the ranges
    of the weights before it.
    """
    from ann2snn.calibration import iter_inputs

    exact = _exact_view(snn)
    neurons = dict(snn.neurons())
    maxima: Dict[str, torch.Tensor] = {}

    def record(name: str, act: Activation, x: torch.Tensor) -> None:
        value, _ = _ann_units(act, x)
        if value.dim() > 1:  # per channel (dim 1)
            top = value.amax(dim=[d for d in range(value.dim()) if d != 1])
        else:
            top = value.amax().reshape(1)
        maxima[name] = top if name not in maxima else torch.maximum(maxima[name], top)

    handles = [
        m.register_forward_hook(lambda m, inputs, out, name=name: record(name, m, inputs[0]))
        for name, m in exact.named_modules()
        if isinstance(m, Activation) and name in neurons and m.threshold is not None
    ]
    try:
        device = next(iter(exact.buffers()), torch.zeros(0)).device
        for x in iter_inputs(data, max_batches):
            exact(x.to(device))
    finally:
        for h in handles:
            h.remove()
    for name, top in maxima.items():
        old = neurons[name].calib_max
        if old is None:
            neurons[name].calib_max = top.float().reshape(-1)
            continue
        if old.numel() == 1:  # a per-layer range stays per layer
            top = top.max()
        neurons[name].calib_max = top.float().to(old.device).reshape(old.shape)


def _flat(output: Any) -> torch.Tensor:
    from torch.utils._pytree import tree_leaves

    tensors = [t.reshape(-1).float() for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
    return torch.cat(tensors) if tensors else torch.zeros(0)


class RangeTally:
    """Sums saturation, coverage and clip error over batches (and ranks).

    Args:
        timesteps: the simulated T the saturation counts are read at.
        snn: the SNN, for coverage and the clip error (:meth:`add_inputs`); None: neither.
    """

    def __init__(self, timesteps: int, snn: Any = None) -> None:
        self.timesteps = timesteps
        self.views = clipped_views(snn) if snn is not None else None
        # After bootstrap the SNN itself is the trained function, clipping included: the ANN
        # its weights would make is no reference to measure the clip error against.
        self.clip_reference = self.views is not None and "bootstrap" not in getattr(snn, "meta", {})
        self.error_sq = 0.0
        self.ann_sq = 0.0
        self.layers: List[str] = []
        self.pairs: Dict[str, int] = {}
        self.saturated: Dict[str, int] = {}
        self.layer_inputs_beyond: Dict[str, int] = {}
        self.inputs = 0
        self.inputs_beyond = 0
        self.known = self.views is not None and all(
            m.calib_max is not None
            for m in self.views[0].modules()
            if isinstance(m, Activation) and m.threshold is not None
        )

    def _layer(self, name: str) -> None:
        if name not in self.pairs:
            self.layers.append(name)
            self.pairs[name] = self.saturated[name] = self.layer_inputs_beyond[name] = 0

    def add_spikes(self, counts: Mapping[str, SaturationCounts]) -> None:
        """Add one simulated batch's saturation counts (every IF layer that ran)."""
        for name, c in counts.items():
            self._layer(name)
            self.pairs[name] += c.pairs
            self.saturated[name] += c.saturated

    @torch.no_grad()
    def add_inputs(self, x: torch.Tensor) -> None:
        """Add one batch of static ANN inputs to the coverage and the clip error."""
        if self.views is None:
            return
        exact, clipped = self.views
        found: Dict[str, torch.Tensor] = {}
        handles = [
            m.register_forward_hook(
                lambda m, inputs, out, name=name: found.__setitem__(name, _beyond(m, inputs[0]))
            )
            for name, m in exact.named_modules()
            if isinstance(m, Activation) and m.calib_max is not None
        ]
        try:
            reference = _flat(exact(x))
        finally:
            for h in handles:
                h.remove()
        if found:
            self.inputs += int(x.shape[0])
            any_beyond = torch.zeros(x.shape[0], dtype=torch.bool)
            for name, beyond in found.items():
                self._layer(name)
                self.layer_inputs_beyond[name] += int(beyond.sum())
                any_beyond |= beyond.cpu()
            self.inputs_beyond += int(any_beyond.sum())
        if self.clip_reference:
            self.error_sq += float(((_flat(clipped(x)) - reference).double() ** 2).sum())
            self.ann_sq += float((reference.double() ** 2).sum())

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (every rank has the same layers)."""
        if not distributed.is_distributed():
            return
        names = self.layers
        values = (
            [self.pairs[n] for n in names]
            + [self.saturated[n] for n in names]
            + [self.layer_inputs_beyond[n] for n in names]
            + [self.inputs, self.inputs_beyond, int(not self.known)]
        )
        summed = distributed.all_reduce_sum(values, dtype=torch.int64)
        k = len(names)
        self.pairs = dict(zip(names, summed[:k]))
        self.saturated = dict(zip(names, summed[k : 2 * k]))
        self.layer_inputs_beyond = dict(zip(names, summed[2 * k : 3 * k]))
        self.inputs, self.inputs_beyond, unknown = summed[3 * k :]
        self.known = unknown == 0
        self.error_sq, self.ann_sq = distributed.all_reduce_sum([self.error_sq, self.ann_sq])

    def summary(self) -> Dict[str, Any]:
        """Plain JSON-ready data: ``timesteps``, ``saturated`` (share of (input, neuron)
        pairs that saturated), ``out_of_range`` (share of inputs beyond the calibrated range;
        None when the SNN does not know its calibrated ranges), ``clip_error`` (None when
        not measured, or after bootstrap), ``inputs`` and per layer the two shares."""
        pairs = sum(self.pairs.values())
        layers = {
            n: {
                "saturated": self.saturated[n] / max(self.pairs[n], 1),
                "out_of_range": (
                    self.layer_inputs_beyond[n] / max(self.inputs, 1) if self.known else None
                ),
            }
            for n in self.layers
        }
        return {
            "timesteps": self.timesteps,
            "saturated": sum(self.saturated.values()) / max(pairs, 1),
            "out_of_range": self.inputs_beyond / max(self.inputs, 1) if self.known else None,
            "clip_error": (
                math.sqrt(self.error_sq / self.ann_sq)
                if self.clip_reference and self.ann_sq > 0
                else None
            ),
            "inputs": self.inputs,
            "layers": layers,
        }


def _worst(summary: Mapping[str, Any], key: str) -> Optional[str]:
    layers = {n: v[key] for n, v in summary.get("layers", {}).items() if v.get(key) is not None}
    return max(layers, key=layers.get) if layers else None


def range_line(summary: Mapping[str, Any]) -> str:
    """One line: both shares at their T, with the worst layers."""
    if not summary:
        return ""
    t = summary["timesteps"]
    line = f"saturation at T={t}: {100 * summary['saturated']:.2f}% of neuron-inputs saturated"
    worst = _worst(summary, "saturated")
    if worst is not None and summary["saturated"] > 0:
        line += f" (most: {worst})"
    if summary.get("out_of_range") is None:
        line += "; calibrated ranges unknown (SNN converted before they were kept)"
    else:
        line += f"; {100 * summary['out_of_range']:.1f}% of inputs beyond the calibrated range"
        worst = _worst(summary, "out_of_range")
        if worst is not None and summary["out_of_range"] > 0:
            line += f" (most: {worst})"
    if summary.get("clip_error") is not None:
        line += f"; clip error {summary['clip_error']:.4f}"
    return line


def range_report(summary: Mapping[str, Any]) -> List[str]:
    """The lines a table prints below itself: :func:`range_line` and each warning."""
    if not summary:
        return []
    return [range_line(summary)] + [f"warning: {w}" for w in range_warnings(summary)]


def range_warnings(summary: Mapping[str, Any]) -> List[str]:
    """The warnings a summary calls for (empty when both shares are small)."""
    if not summary:
        return []
    out = []
    t = summary["timesteps"]
    if summary["saturated"] > SATURATION_WARNING:
        out.append(
            f"{100 * summary['saturated']:.1f}% of (input, neuron) pairs saturated at T={t} "
            f"(spiked at every step, input above the threshold; warning above "
            f"{100 * SATURATION_WARNING:g}%, "
            f"most in {_worst(summary, 'saturated')}): those neurons clip activations above "
            "their scale. Calibrate on more (or more representative) data, or use mode='max'"
        )
    beyond = summary.get("out_of_range")
    if beyond is not None and beyond > OUT_OF_RANGE_WARNING:
        out.append(
            f"{100 * beyond:.1f}% of the inputs drove activations above the largest value of the "
            f"calibration data (warning above {100 * OUT_OF_RANGE_WARNING:g}%, most in "
            f"{_worst(summary, 'out_of_range')}): the SNN clips there and the ANN does not. "
            "Calibrate on more data, or on data like the data evaluated"
        )
    clip_error = summary.get("clip_error")
    if clip_error is not None and clip_error > CLIP_ERROR_WARNING:
        out.append(
            f"clipping at the neurons' scales alone changes the output by {clip_error:.3f} "
            f"(relative; warning above {CLIP_ERROR_WARNING:g}): the SNN's output error "
            "approaches about this as T grows. Calibrate on more data or data like the data "
            "evaluated, or use mode='max'"
        )
    return out
