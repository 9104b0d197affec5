"""Threshold search and potential calibration in one layer-by-layer sweep."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import fx

from ann2snn.converter_passes.layer_calibration.calibrate_potentials import PotentialCalibration
from ann2snn.converter_passes.layer_calibration.layer_sweep import (
    DEFAULT_HORIZONS,
    LayerCalibrator,
    LayerSweep,
)
from ann2snn.converter_passes.layer_calibration.search_thresholds import (
    ThresholdSearch,
    _has_channel_thresholds,
)
from ann2snn.tracing import finish


def calibrate_layers(
    gm: fx.GraphModule,
    reference: fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    timesteps: int,
    *,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    threshold_search: bool = True,
    potential_calibration: bool = True,
    per_channel: Optional[bool] = None,
    progress: bool = False,
) -> fx.GraphModule:
    """Tune every IF layer for ``timesteps`` steps: threshold, then initial potentials.

    Each layer first gets its threshold (:class:`~.search_thresholds.ThresholdSearch`),
    then its initial potentials given that threshold
    (:class:`~.calibrate_potentials.PotentialCalibration`), before the next layer is
    simulated on its output: one simulation per layer for both techniques.

    Args:
        gm: the flat spiking graph (after ``replace_relu_with_if``, before hoisting).
        reference: the normalized ANN graph (see :class:`~.layer_sweep.LayerSweep`).
        inputs: calibration input batches (:func:`~.layer_sweep.collect_inputs`).
        timesteps: the target number of time steps T.
        horizons: multiples of T whose errors are summed (1 and 2 by default; see
            :mod:`.layer_sweep`).
        threshold_search: run the threshold search.
        potential_calibration: run the potential calibration.
        per_channel: one threshold factor per channel (default: where thresholds are per
            channel).
        progress: show a progress bar.

    Returns:
        ``gm``, calibrated (unchanged when both techniques are off).

    Raises:
        ValueError: for a bad ``timesteps`` or ``horizons``.
    """
    steps: list[LayerCalibrator] = []
    if threshold_search:
        pc = _has_channel_thresholds(gm) if per_channel is None else per_channel
        steps.append(ThresholdSearch(per_channel=pc))
    if potential_calibration:
        steps.append(PotentialCalibration())
    if not steps:
        return gm
    LayerSweep(gm, reference, inputs, timesteps, horizons).run(steps, progress=progress)
    return finish(gm)
