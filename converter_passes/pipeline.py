"""The conversion pipeline: one ordered tuple of stages, each a pass over the fx graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import fx

from ann2snn.calibration import calibrate
from ann2snn.errors import ConversionError
from ann2snn.modes import NormMode

from .canonicalize_activations import canonicalize_activations
from .check_supported import check_supported
from .convert_maxpool import DEFAULT_MAXPOOL, convert_maxpool, pool_before_neurons
from .fold_affine_batchnorm import fold_affine_batchnorm
from .fold_batchnorm import fold_batchnorm
from .hoist_static_prefix import hoist_static_prefix
from .insert_observers import insert_observers
from .normalize_activations import normalize_activations
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
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[fx.GraphModule, ConversionContext], fx.GraphModule]


def _propagate(gm: fx.GraphModule, ctx: ConversionContext) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(ctx.example_input)
    return gm


PIPELINE: Tuple[Stage, ...] = (
    Stage("canonicalize_activations", lambda gm, ctx: canonicalize_activations(gm)),
    Stage("propagate_shapes", _propagate),
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
    Stage("replace_relu_with_if", lambda gm, ctx: replace_relu_with_if(gm, v_init=ctx.v_init)),
    Stage("convert_maxpool", lambda gm, ctx: convert_maxpool(gm, ctx.maxpool)),
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
            gm = stage.run(gm, ctx)
        except ConversionError as exc:
            raise ConversionError(f"[{stage.name}] {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"[{stage.name}] {exc}") from exc
        except Exception as exc:
            raise RuntimeError(f"conversion pass {stage.name!r} failed: {exc}") from exc
    return gm
