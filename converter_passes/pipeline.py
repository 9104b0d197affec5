"""The conversion pipeline: one ordered tuple of stages, each a pass over the fx graph."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import fx

from ann2snn.calibration import calibrate
from ann2snn.config import ConversionConfig
from ann2snn.converter_passes.add_output_neurons import add_output_neurons
from ann2snn.converter_passes.calibrate_layers import calibrate_layers
from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.check_supported import check_supported
from ann2snn.converter_passes.convert_maxpool import convert_maxpool, pool_before_neurons
from ann2snn.converter_passes.fold_affine_batchnorm import fold_affine_batchnorm
from ann2snn.converter_passes.fold_batchnorm import fold_batchnorm
from ann2snn.converter_passes.hoist_static_prefix import hoist_static_prefix
from ann2snn.converter_passes.insert_observers import insert_observers
from ann2snn.converter_passes.layer_calibration.layer_sweep import collect_inputs
from ann2snn.converter_passes.normalize_activations import normalize_activations
from ann2snn.converter_passes.rebind_batch_sizes import rebind_batch_sizes
from ann2snn.converter_passes.replace_relu_with_if import replace_relu_with_if
from ann2snn.distributed import DistributedError, failure_check
from ann2snn.errors import ConversionError


@dataclass
class ConversionContext:
    """Everything the stages need besides the graph: the options and the run's data.

    Attributes:
        config: the conversion options.
        calib_data: the calibration batches.
        example_input: a small batch, on ``device``, for recording shapes.
        calib_batches: read at most this many calibration batches (None: all).
        progress: show progress bars.
        device: where the model lives.
        sweep_inputs: set by ``collect_sweep_inputs``: the inputs layer calibration
            simulates (None when it does not run).
        reference: set by ``keep_reference``: the normalized ANN, what layer calibration
            aims at (None when it does not run).
    """

    config: ConversionConfig
    calib_data: Any
    example_input: torch.Tensor
    calib_batches: Optional[int] = None
    progress: bool = False
    device: Optional[torch.device] = None
    sweep_inputs: Optional[List[torch.Tensor]] = None
    reference: Optional[fx.GraphModule] = None


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[fx.GraphModule, ConversionContext], fx.GraphModule]


def _propagate(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(ctx.example_input)
    return gm


def _collect_sweep_inputs(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    if not ctx.config.calibrates_layers:
        return gm
    data = ctx.calib_data
    if isinstance(data, Iterator):
        # A one-shot iterator: keep what calibration will read, the sweep's images first.
        data = list(itertools.islice(data, ctx.calib_batches))
        ctx.calib_data = data
    ctx.sweep_inputs = collect_inputs(
        data,
        ctx.calib_batches,
        ctx.config.sweep_samples,
        ctx.device,
        dtype=ctx.example_input.dtype,
    )
    return gm


def _keep_reference(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    if ctx.config.calibrates_layers:  # the normalized ANN: what layer calibration aims at
        ctx.reference = copy.deepcopy(gm)
    return gm


def _calibrate_layers(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    cfg = ctx.config
    if not cfg.calibrates_layers:
        return gm
    gm = calibrate_layers(
        gm,
        ctx.reference,
        ctx.sweep_inputs,
        cfg.target_timesteps,
        horizons=cfg.calibration_horizons,
        threshold_search=cfg.threshold_search,
        potential_calibration=cfg.potential_calibration,
        progress=ctx.progress,
    )
    ctx.reference = ctx.sweep_inputs = None  # free them
    return gm


PIPELINE: Tuple[Stage, ...] = (
    Stage("canonicalize_activations", lambda gm, ctx: canonicalize_activations(gm)),
    Stage("propagate_shapes", _propagate),
    Stage("rebind_batch_sizes", lambda gm, ctx: rebind_batch_sizes(gm)),
    Stage(
        "add_output_neurons",
        lambda gm, ctx: add_output_neurons(gm) if ctx.config.readout == "spikes" else gm,
    ),
    Stage("check_supported", lambda gm, ctx: check_supported(gm)),
    Stage("fold_batchnorm", lambda gm, ctx: fold_batchnorm(gm)),
    Stage("fold_affine_batchnorm", lambda gm, ctx: fold_affine_batchnorm(gm)),
    Stage("pool_before_neurons", lambda gm, ctx: pool_before_neurons(gm, ctx.config.maxpool)),
    Stage(
        "insert_observers",
        lambda gm, ctx: insert_observers(
            gm,
            quantile=ctx.config.norm.quantile,
            channel_axis=1 if ctx.config.channelwise else None,
        ),
    ),
    Stage("collect_sweep_inputs", _collect_sweep_inputs),
    Stage(
        "calibrate",
        lambda gm, ctx: calibrate(
            gm, ctx.calib_data, ctx.calib_batches, progress=ctx.progress, device=ctx.device
        ),
    ),
    Stage(
        "normalize_activations",
        lambda gm, ctx: normalize_activations(gm, ctx.config.norm, fold=ctx.config.fold_scales),
    ),
    Stage("keep_reference", _keep_reference),
    Stage(
        "replace_relu_with_if", lambda gm, ctx: replace_relu_with_if(gm, v_init=ctx.config.v_init)
    ),
    Stage("convert_maxpool", lambda gm, ctx: convert_maxpool(gm, ctx.config.maxpool)),
    Stage("calibrate_layers", _calibrate_layers),
    Stage("hoist_static_prefix", lambda gm, ctx: hoist_static_prefix(gm, ctx.example_input)),
)


def run_pipeline(
    gm: fx.GraphModule, ctx: ConversionContext, stages: Iterable[Stage] = PIPELINE
) -> fx.GraphModule:
    """Run ``stages`` in order; a failing stage is re-raised naming the stage.

    Raises:
        ConversionError: user-facing problems, prefixed with the stage name.
        RuntimeError: internal failures, naming the stage.
    """
    for stage in stages:
        try:
            # Under torch.distributed a stage failing on one rank stops every rank here.
            with failure_check(f"conversion pass {stage.name!r}"):
                gm = stage.run(gm, ctx)
        except ConversionError as exc:
            raise ConversionError(f"[{stage.name}] {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"[{stage.name}] {exc}") from exc
        except DistributedError:
            raise  # already says which pass failed on which rank
        except Exception as exc:
            raise RuntimeError(f"conversion pass {stage.name!r} failed: {exc}") from exc
    return gm
