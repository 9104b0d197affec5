"""The public conversion entry point."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
from typing import Any, Dict, Iterable, Iterator, NamedTuple, Optional, Tuple, Type, Union

import torch
from torch import fx, nn

from ann2snn._checks import device_of, optional_positive_int
from ann2snn.calibration import iter_inputs
from ann2snn.config import ConversionConfig, options_docstring
from ann2snn.input_checks import (
    check_calibration_batch,
    check_finite_weights,
    check_runs,
    check_single_input,
    dtype_name,
    float_dtype,
)
from ann2snn.runtime.spiking_model import SpikingModel
from ann2snn.tracing import trace


def convert(
    model: nn.Module,
    mode: Union[str, float, None] = None,
    calib_data: Optional[Iterable[Any]] = None,
    *,
    config: Optional[ConversionConfig] = None,
    calib_batches: Optional[int] = None,
    leaf_modules: Iterable[Type[nn.Module]] = (),
    concrete_args: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    **options: Any,
) -> SpikingModel:
    """Convert a trained ReLU-family classifier into a spiking model.

        The conversion options (``mode`` and ``**options``) are the fields of
        :class:`~ann2snn.config.ConversionConfig`; options given here override ``config``.

        Args:
            model: the trained ANN, with one input tensor and finite weights. It is never
                modified (conversion works on a deep copy; a float64, float16 or bfloat16
                model is converted as a float32 copy, recorded as ``meta['model_dtype']``).
            calib_data: calibration batches: a DataLoader or iterable of tensors,
                ``(input, label)`` pairs or dicts, floating point (cast to float32) and
                finite. Statistics are exact over all of it; a one-shot iterator (a
                generator) is read once, and kept in memory when two passes are needed.
            config: a :class:`~ann2snn.config.ConversionConfig` (default: the defaults).
            calib_batches: use at most this many calibration batches.
            leaf_modules: module types to keep opaque when tracing.
            concrete_args: fixed arguments for tracing (see ``torch.fx.symbolic_trace``).
            progress: show progress bars.
    {options}

        Returns:
            A :class:`SpikingModel`; call it as ``snn(x, timesteps=T)``.

        Raises:
            ValueError: for a bad option; missing, integer, non-finite or ill-shaped
                calibration data; non-finite weights; a model with several inputs.
            TypeError: for an unknown option.
            ConversionError: naming every node that cannot be converted.

        Example:
            >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
            >>> out = snn(images, timesteps=32)  # doctest: +SKIP
    """
    from ann2snn.converter_passes.pipeline import ConversionContext, run_pipeline

    cfg = resolve_config("convert", config, mode, options)
    traced = traced_copy("convert", model, calib_data, leaf_modules, concrete_args)
    ann = copy.deepcopy(model).eval()
    if traced.model_dtype != torch.float32:
        ann = ann.float()  # the network that was converted
    ctx = ConversionContext(
        config=cfg,
        calib_data=traced.calib_data,
        example_input=traced.example,
        calib_batches=optional_positive_int("calib_batches", calib_batches),
        progress=progress,
        device=traced.device,
    )
    with torch.no_grad():
        gm = run_pipeline(traced.gm, ctx)
    # The options are recorded in meta, so that a saved SNN says how it was made.
    meta = {
        **cfg.to_meta(),
        "input_shape": list(traced.example.shape[1:]),
        "model_class": type(model).__name__,
    }
    if traced.model_dtype != torch.float32:
        meta["model_dtype"] = dtype_name(traced.model_dtype)
    return SpikingModel(gm, ann=ann, meta=meta)


def resolve_config(
    caller: str,
    config: Optional[ConversionConfig],
    mode: Union[str, float, None],
    options: Dict[str, Any],
) -> ConversionConfig:
    """``config`` (or the defaults) with ``mode`` and ``options`` applied and checked."""
    if config is not None and not isinstance(config, ConversionConfig):
        raise TypeError(f"config must be a ConversionConfig, got {type(config).__name__}")
    if mode is not None:
        options = {**options, "mode": mode}
    ConversionConfig.from_options(options, caller=caller)  # names and values checked
    return (config or ConversionConfig()).replace(**options)


def _with_option_signature(fn: Any) -> Any:
    """Document ``fn``'s ``**options`` in its docstring and signature (for ``help``/IDEs)."""
    fn.__doc__ = fn.__doc__.replace("{options}", options_docstring())
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params[1] = params[1].replace(default=ConversionConfig.default("mode"))
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
        for name, f in ((f.name, f) for f in dataclasses.fields(ConversionConfig))
        if name != "mode"
    ]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


convert = _with_option_signature(convert)


class Traced(NamedTuple):
    """What :func:`traced_copy` returns."""

    gm: fx.GraphModule  #: the traced deep copy, in eval mode (float32)
    example: torch.Tensor  #: a two-sample float32 batch on ``device``, for recording shapes
    device: torch.device  #: where the model lives
    calib_data: Any  #: the calibration data to read (a one-shot iterator is rewound)
    model_dtype: torch.dtype  #: the user's model's dtype (the copy is float32)


def traced_copy(
    caller: str,
    model: Any,
    calib_data: Optional[Iterable[Any]],
    leaf_modules: Iterable[Type[nn.Module]],
    concrete_args: Optional[Dict[str, Any]],
) -> Traced:
    """Check the model and data every conversion shares and trace a deep copy of ``model``.

    The first calibration batch is checked against the model before anything else runs:
    floating-point, finite, batched, of a shape the model runs on; the model must have
    finite weights and one input tensor. A model in another floating-point dtype is
    converted as a float32 copy, and calibration batches are cast to float32.

    Raises:
        ValueError / TypeError: for a bad model or calibration data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if calib_data is None:
        raise ValueError(
            f"{caller}() needs calib_data: a DataLoader or iterable of input batches used to "
            "measure activation ranges (a few hundred to a few thousand training images)"
        )
    first, calib_data = _first_input(calib_data)
    check_calibration_batch(first, 1)
    check_finite_weights(model)
    model_dtype = float_dtype(model)
    work = copy.deepcopy(model).eval()
    if model_dtype != torch.float32:
        work = work.float()
    device = device_of(work)
    gm = trace(work, leaf_modules=leaf_modules, concrete_args=concrete_args)
    check_single_input(gm, type(model).__name__)
    example = first[:2].detach().clone().to(device=device, dtype=torch.float32)
    check_runs(gm, example)
    return Traced(gm, example, device, calib_data, model_dtype)


def _first_input(calib_data: Any) -> Tuple[torch.Tensor, Any]:
    """The input of the first calibration batch, and ``calib_data`` to read from the start.

    A one-shot iterator (a generator) is read once: its first batch is put back in front,
    so the statistics cover every batch it yields.
    """
    if isinstance(calib_data, Iterator):
        try:
            batch = next(calib_data)
        except StopIteration:
            raise ValueError("the calibration data yielded no (non-empty) batch") from None
        calib_data = itertools.chain([batch], calib_data)
        batches: Iterable[Any] = [batch]
    else:
        batches = calib_data
    for x in iter_inputs(batches, 1):
        if x.shape[0] == 0:
            break
        return x, calib_data
    raise ValueError("the calibration data yielded no (non-empty) batch")
