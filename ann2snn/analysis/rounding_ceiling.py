"""The rounding ceiling: the ANN with activations rounded to what T steps of spikes can code.

An IF neuron that fires at most once per step outputs, after T steps, one of the rates
``0, 1/T, ..., 1`` of its threshold. So even a perfect conversion -- one whose spikes
arrive perfectly evenly, with no "unevenness" error -- computes at best the ANN with each
activation clipped at its threshold and rounded to T levels. The accuracy of that
quantized ANN is a ceiling for rate coding with a given set of thresholds: the part of
the ANN-to-SNN gap below it is the clipping and quantization error of the chosen
thresholds, the part above it the error of the spike dynamics (see docs/accuracy.md,
"The rounding ceiling").

:func:`quantized_ann` builds that network with the same normalization as
:func:`ann2snn.convert` (tracing, BatchNorm folding, max-pool placement, percentile
thresholds, channel-wise or not); :func:`set_levels` chooses T.

Example:
    >>> q = quantized_ann(model, "99.9%", calib_data=loader)  # doctest: +SKIP
    >>> set_levels(q, 4)  # doctest: +SKIP
    >>> logits = q(images)  # the ANN with 5-level activations  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Type, Union

import torch
from torch import fx, nn

from ann2snn._checks import optional_positive_int, positive_int
from ann2snn.config import ConversionConfig
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import is_module, register_leaf_module, replace_submodule


def round_rate(rate: torch.Tensor, levels: int) -> torch.Tensor:
    """``rate`` (in units of the threshold) clipped to ``[0, 1]`` and rounded to ``1/levels``.

    Ties round up, as an IF neuron starting at half its threshold does for a constant input
    (``floor(rate * levels + 1/2)`` spikes in ``levels`` steps).
    """
    return torch.clamp(torch.floor(rate * levels + 0.5), 0, levels) / levels


@register_leaf_module
class RoundedActivation(nn.Module):
    """An :class:`~ann2snn.runtime.neuron.Activation` whose rate output is rounded to
    ``levels`` steps.

    Attributes:
        activation: the normalized activation (its output is a rate: units of the threshold).
        levels: the number of time steps T the rate is rounded for; ``None`` passes the
            rate through unrounded and unclipped (the ANN itself).
        factor: scales the clipping point and the step (``factor`` times the threshold),
            keeping the output in the same units, to try other thresholds.
    """

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.levels: Optional[int] = None
        self.factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.activation(x)
        if self.levels is None:
            return rate
        return round_rate(rate / self.factor, self.levels) * self.factor

    def extra_repr(self) -> str:
        return f"levels={self.levels}, factor={self.factor:g}"


def quantized_ann(
    model: nn.Module,
    mode: Union[str, float, None] = None,
    calib_data: Optional[Iterable[Any]] = None,
    *,
    config: Optional[ConversionConfig] = None,
    calib_batches: Optional[int] = None,
    leaf_modules: Iterable[Type[nn.Module]] = (),
    concrete_args: Optional[Dict[str, Any]] = None,
    **options: Any,
) -> fx.GraphModule:
    """The normalized ANN of :func:`ann2snn.convert`, with roundable activations.

    Runs the conversion pipeline up to activation normalization (same arguments, options
    and defaults as :func:`ann2snn.convert`; the options of later stages have no effect)
    and wraps every activation in a :class:`RoundedActivation`. Call :func:`set_levels` to
    round to T levels; until then the network computes the ANN's function.

    Raises:
        ValueError, TypeError, ConversionError: as :func:`ann2snn.convert`.
    """
    from ann2snn.api import resolve_config, traced_copy
    from ann2snn.converter_passes.pipeline import PIPELINE, ConversionContext, run_pipeline

    cfg = resolve_config("quantized_ann", config, mode, options)
    traced = traced_copy("quantized_ann", model, calib_data, leaf_modules, concrete_args)
    gm = traced.gm
    ctx = ConversionContext(
        config=cfg,
        calib_data=traced.calib_data,
        example_input=traced.example,
        calib_batches=optional_positive_int("calib_batches", calib_batches),
        device=traced.device,
    )
    names = [s.name for s in PIPELINE]
    # Up to normalization; the inputs of layer calibration (a later stage) are not needed.
    stages = [
        s
        for s in PIPELINE[: names.index("normalize_activations") + 1]
        if s.name != "collect_sweep_inputs"
    ]
    with torch.no_grad():
        gm = run_pipeline(gm, ctx, stages)
    for node in gm.graph.nodes:
        if is_module(gm, node, Activation):
            name = str(node.target)
            replace_submodule(gm, name, RoundedActivation(gm.get_submodule(name)))
    gm.recompile()
    return gm.eval()


def rounded_activations(gm: nn.Module) -> list:
    """The :class:`RoundedActivation` modules of ``gm``, in module order."""
    return [m for m in gm.modules() if isinstance(m, RoundedActivation)]


def set_levels(gm: nn.Module, levels: Optional[int]) -> nn.Module:
    """Round every activation of a :func:`quantized_ann` to ``levels`` steps (None: off).

    Raises:
        ValueError: for a ``levels`` that is not a positive integer or None.
    """
    if levels is not None:
        levels = positive_int("levels", levels)
    for m in rounded_activations(gm):
        m.levels = levels
    return gm
