"""Potential calibration: per channel, the initial membrane potential that minimizes the
SNN's error at a target number of time steps.

Starting the membrane at half the threshold makes an IF neuron with a constant input round
its rate instead of flooring it. Deeper layers do not receive constant inputs: their spike
trains arrive unevenly, and over few steps a channel fires systematically too much or too
little. This pass walks the IF layers in graph order (:class:`~.layer_sweep.LayerSweep`),
simulates each on the spike trains of its already-calibrated predecessors for T steps and
sets, per channel, the initial potential (a fraction of the threshold) whose firing rate
best matches the ANN's activation (least squares over the calibration images). A charge
given once at the start shifts the rate by ``v / T``: the correction fades as T grows, like
the error it corrects, so long simulations still converge to the ANN.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import fx

from ann2snn.converter_passes.layer_calibration.layer_sweep import LayerData
from ann2snn.converter_passes.layer_calibration.search_thresholds import best_candidate

#: Initial potentials tried, as fractions of the threshold: 0, 0.05, ..., 1. The 0.05 grid
#: measured better at T=4 than a 0.1 grid from 0.1 to 0.9 (avgpool CNN 91.72% against
#: 91.47%, max-pool CNN 91.56% against 91.30%, full test sets, docs/accuracy.md).
DEFAULT_POTENTIAL_CANDIDATES: Tuple[float, ...] = tuple(i / 20 for i in range(21))


def _check_potentials(candidates: Sequence[float]) -> Tuple[float, ...]:
    try:
        values = tuple(float(c) for c in candidates)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"potential candidates must be a sequence of numbers, got {candidates!r}"
        ) from exc
    if not values or any(v != v or abs(v) == float("inf") for v in values):
        raise ValueError(f"potential candidates must be finite numbers, got {values}")
    return values


class PotentialCalibration:
    """Per channel, the initial potential (fraction of the threshold) with least error.

    Args:
        candidates: the fractions tried.
    """

    def __init__(self, candidates: Sequence[float] = DEFAULT_POTENTIAL_CANDIDATES) -> None:
        self.candidates = torch.tensor(_check_potentials(candidates))
        self.chosen: dict = {}

    def calibrate(self, gm: fx.GraphModule, node: fx.Node, layer: LayerData) -> None:
        threshold, gain = layer.threshold(), layer.gain()
        k = len(self.candidates)
        v_init = self.candidates.float()[:, None].expand(k, layer.channels)
        errors = layer.candidate_errors(threshold.expand(k, -1), v_init, gain.expand(k, -1))
        default = float(layer.neuron.v_init)
        v_init = best_candidate(errors, self.candidates.double(), default).float()
        self.chosen[node.name] = v_init
        layer.neuron.v_init_channels = v_init.contiguous()
