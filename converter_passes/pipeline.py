"""The conversion pipeline: one ordered tuple of stages, each a pass over the fx graph."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import fx

from ann2snn.calibration import calibrate
from ann2snn.distributed import DistributedError, failure_check
from ann2snn.errors import ConversionError
from ann2snn.modes import NormMode

from .add_output_neurons import add_output_neurons
from .calibrate_layers import calibrate_layers
from .canonicalize_activations import canonicalize_activations
from .check_supported import check_supported
from .convert_maxpool import DEFAULT_MAXPOOL, convert_maxpool, pool_before_neurons
from .fold_affine_batchnorm import fold_affine_batchnorm
from .fold_batchnorm import fold_batchnorm
from .hoist_static_prefix import hoist_static_prefix
from .insert_observers import insert_observers
from .layer_sweep import DEFAULT_HORIZONS, DEFAULT_SWEEP_SAMPLES, collect_inputs
from .normalize_activations import normalize_activations
from .rebind_batch_sizes import rebind_batch_sizes
from .replace_relu_with_if import replace_relu_with_if


@dataclass
class ConversionContext:
    """Everything the stages need besides the graph."""

    mode: NormMode
    calib_data: Any
    example_input: torch.Tensor
    calib_batches: Optional[int] = None
    channelwise: bool = False
    v_init: float = 0.5
    fold_scales: bool = True
    progress: bool = False
    device: Optional[torch.device] = None
    maxpool: str = DEFAULT_MAXPOOL
    target_timesteps: int = 4
    calibration_horizons: Tuple[int, ...] = DEFAULT_HORIZONS
    threshold_search: bool = False
    potential_calibration: bool = False
    sweep_samples: int = DEFAULT_SWEEP_SAMPLES
    readout: str = "membrane"
    extras: dict = field(default_factory=dict)

    @property
    def calibrates_layers(self) -> bool:
        return self.threshold_search or self.potential_calibration


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[fx.GraphModule, ConversionContext], fx.GraphModule]


def _propagate(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(ctx.example_input)
    return gm


def _collect_sweep_inputs(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    if not ctx.calibrates_layers:
        return gm
    data = ctx.calib_data
    if not isinstance(data, torch.Tensor) and iter(data) is data:
        # A one-shot iterator: keep what the sweep reads and put it back in front.
        data = list(itertools.islice(data, ctx.calib_batches))
        ctx.calib_data = data
    ctx.extras["sweep_inputs"] = collect_inputs(
        data, ctx.calib_batches, ctx.sweep_samples, ctx.device
    )
    return gm


def _keep_reference(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    if ctx.calibrates_layers:  # the normalized ANN: what layer calibration aims at
        ctx.extras["reference"] = copy.deepcopy(gm)
    return gm


def _calibrate_layers(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    if not ctx.calibrates_layers:
        return gm
    gm = calibrate_layers(
        gm,
        ctx.extras.pop("reference"),
        ctx.extras.pop("sweep_inputs"),
        ctx.target_timesteps,
        horizons=ctx.calibration_horizons,
        threshold_search=ctx.threshold_search,
        potential_calibration=ctx.potential_calibration,
        progress=ctx.progress,
    )
    return gm


PIPELINE: Tuple[Stage, ...] = (
    Stage("canonicalize_activations", lambda gm, ctx: canonicalize_activations(gm)),
    Stage("propagate_shapes", _propagate),
    Stage("rebind_batch_sizes", lambda gm, ctx: rebind_batch_sizes(gm)),
    Stage(
        "add_output_neurons",
        lambda gm, ctx: add_output_neurons(gm) if ctx.readout == "spikes" else gm,
    ),
    Stage("check_supported", lambda gm, ctx: check_supported(gm)),
    Stage("fold_batchnorm", lambda gm, ctx: fold_batchnorm(gm)),
    Stage("fold_affine_batchnorm", lambda gm, ctx: fold_affine_batchnorm(gm)),
    Stage("pool_before_neurons", lambda gm, ctx: pool_before_neurons(gm, ctx.maxpool)),
    Stage(
        "insert_observers",
        lambda gm, ctx: insert_observers(
            gm, quantile=ctx.mode.quantile, channel_axis=1 if ctx.channelwise else None
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
        lambda gm, ctx: normalize_activations(gm, ctx.mode, fold=ctx.fold_scales),
    ),
    Stage("keep_reference", _keep_reference),
    Stage("replace_relu_with_if", lambda gm, ctx: replace_relu_with_if(gm, v_init=ctx.v_init)),
    Stage("convert_maxpool", lambda gm, ctx: convert_maxpool(gm, ctx.maxpool)),
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
