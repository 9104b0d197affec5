"""Threshold search: per IF layer (or channel), the threshold that minimizes the SNN's error
at a target number of time steps.

A percentile threshold is a guess made on ANN statistics alone. In the SNN, a lower
threshold clips more but quantizes finer (one spike is worth less), a higher one the
opposite, and the best trade-off depends on T: at T=4 a neuron can only output 0, 1/4 ...
1 of its threshold, so clipping the rare large activations pays off. This pass walks the IF
layers in graph order (:class:`~.layer_sweep.LayerSweep`), simulates each on the spike
trains of its already-tuned predecessors for T steps, and scales its threshold by the
candidate factor whose firing rate best matches the ANN's activation (least squares over
the calibration images). The factor is folded into the consuming layers' weights, so the
network computes the same function as before up to clipping.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import fx

from ann2snn.converter_passes.layer_calibration.layer_sweep import LayerData
from ann2snn.converter_passes.normalize_activations import (
    _consumer_fold,
    _module_used_once,
    scale_input_channels,
)
from ann2snn.runtime.neuron import IFNeuron, Scale
from ann2snn.tracing import add_submodule, is_module

#: Threshold factors tried, relative to the normalization scale (e.g. the 99.9th percentile).
DEFAULT_THRESHOLD_CANDIDATES: Tuple[float, ...] = (
    0.35,
    0.45,
    0.55,
    0.65,
    0.75,
    0.85,
    1.0,
    1.15,
    1.3,
)

DEFAULT_LONG_RUN_WEIGHT = 1.0


def check_candidates(candidates: Sequence[float], what: str) -> Tuple[float, ...]:
    """Validate a list of candidate values (positive numbers).

    Raises:
        ValueError: for an empty list or a non-positive or non-numeric entry.
    """
    try:
        values = tuple(float(c) for c in candidates)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a sequence of numbers, got {candidates!r}") from exc
    if not values or any(not v > 0 or v != v for v in values):
        raise ValueError(f"{what} must be a non-empty sequence of positive numbers: {values}")
    return values


def best_candidate(errors: torch.Tensor, candidates: torch.Tensor, prefer: float) -> torch.Tensor:
    """Per column, the candidate with the least error; ties go to the one nearest ``prefer``.

    Args:
        errors: ``[K, C]`` summed squared errors of K candidates for C channels.
        candidates: ``[K]`` the candidate values.
        prefer: the value that wins ties (the uncalibrated default).

    Returns:
        ``[C]`` chosen values.
    """
    order = torch.argsort((candidates.double() - prefer).abs(), stable=True)
    pick = errors[order].argmin(0)  # argmin returns the first minimum: the nearest wins
    return candidates[order][pick]


class ThresholdSearch:
    """Per layer (or per channel), scale the threshold by the candidate with least error.

    Args:
        candidates: factors tried, relative to the current threshold.
        per_channel: one factor per channel (else one per layer).
    """

    def __init__(
        self,
        candidates: Sequence[float] = DEFAULT_THRESHOLD_CANDIDATES,
        per_channel: bool = True,
    ) -> None:
        self.candidates = torch.tensor(check_candidates(candidates, "threshold candidates"))
        self.per_channel = per_channel
        self.long_run_weight = DEFAULT_LONG_RUN_WEIGHT
        self.chosen: dict = {}

    def calibrate(self, gm: fx.GraphModule, node: fx.Node, layer: LayerData) -> None:
        threshold, gain, v_init = layer.threshold(), layer.gain(), layer.v_init()
        factors = self.candidates.float()[:, None]  # [K, 1]
        errors = layer.candidate_errors(
            threshold * factors, v_init.expand(len(factors), -1), gain * factors
        ) + self.long_run_weight * torch.stack([layer.clipping_errors(gain * f) for f in factors])
        if not self.per_channel:
            errors = errors.sum(1, keepdim=True)
        factor = best_candidate(errors, self.candidates.double(), 1.0).float()
        factor = factor.expand(layer.channels).clone() if self.per_channel else factor
        self.chosen[node.name] = factor
        scale_neuron_output(gm, node, factor)


def scale_neuron_output(gm: fx.GraphModule, node: fx.Node, factor: torch.Tensor) -> None:
    """Make each spike of the IF neuron at ``node`` worth ``factor`` times more.

    The threshold is multiplied by ``factor`` (one value or one per channel) and so are the
    consumers' inputs: folded into the following Scale node or Conv/Linear weights (through
    pooling and flattening) where possible, else through a new :class:`Scale` node.
    """
    neuron = gm.get_submodule(str(node.target))
    factor = factor.detach().float().reshape(-1)
    neuron.threshold = (neuron.threshold.reshape(-1) * factor).contiguous()
    if neuron.scale is not None:
        neuron.scale = (neuron.scale.reshape(-1) * factor).contiguous()
    users = list(node.users)
    if len(users) == 1 and is_module(gm, users[0], Scale):
        scale = gm.get_submodule(str(users[0].target))
        if _module_used_once(gm, str(users[0].target)):
            scale.scale = (scale.scale.reshape(-1) * factor).contiguous()
            return
    folds = [_consumer_fold(gm, user, node, factor) for user in users]
    if users and all(f is not None for f in folds):
        for layer, f in folds:
            scale_input_channels(layer, f)
        return
    name = add_submodule(gm, f"{node.target}_search_scale", Scale(factor))
    with gm.graph.inserting_after(node):
        scale_node = gm.graph.call_module(name, (node,))
    scale_node.meta = dict(node.meta)
    node.replace_all_uses_with(scale_node, delete_user_cb=lambda u: u is not scale_node)


def _has_channel_thresholds(gm: fx.GraphModule) -> bool:
    neurons: List[IFNeuron] = [m for m in gm.modules() if isinstance(m, IFNeuron)]
    return any(m.threshold.numel() > 1 for m in neurons)
