"""The public conversion entry point."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any, Dict, Iterable, Optional, Tuple, Type, Union

import torch
from torch import fx, nn

from ann2snn._checks import device_of, optional_positive_int
from ann2snn.calibration import iter_inputs
from ann2snn.config import ConversionConfig, options_docstring
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
            model: the trained ANN. It is never modified (conversion works on a deep copy).
            calib_data: calibration batches: a DataLoader or iterable of tensors,
                ``(input, label)`` pairs or dicts. Statistics are exact over all of it.
            config: a :class:`~ann2snn.config.ConversionConfig` (default: the defaults).
            calib_batches: use at most this many calibration batches.
            leaf_modules: module types to keep opaque when tracing.
            concrete_args: fixed arguments for tracing (see ``torch.fx.symbolic_trace``).
            progress: show progress bars.
    {options}

        Returns:
            A :class:`SpikingModel`; call it as ``snn(x, timesteps=T)``.

        Raises:
            ValueError: for a bad option or missing calibration data.
            TypeError: for an unknown option.
            ConversionError: naming every node that cannot be converted.

        Example:
            >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
            >>> out = snn(images, timesteps=32)  # doctest: +SKIP
    """
    from ann2snn.converter_passes.pipeline import ConversionContext, run_pipeline

    cfg = resolve_config("convert", config, mode, options)
    gm, example, device = traced_copy("convert", model, calib_data, leaf_modules, concrete_args)
    ann = copy.deepcopy(model).eval()
    ctx = ConversionContext(
        config=cfg,
        calib_data=calib_data,
        example_input=example,
        calib_batches=optional_positive_int("calib_batches", calib_batches),
        progress=progress,
        device=device,
    )
    with torch.no_grad():
        gm = run_pipeline(gm, ctx)
    # The options are recorded in meta, so that a saved SNN says how it was made.
    meta = {
        **cfg.to_meta(),
        "input_shape": list(example.shape[1:]),
        "model_class": type(model).__name__,
    }
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


def traced_copy(
    caller: str,
    model: Any,
    calib_data: Optional[Iterable[Any]],
    leaf_modules: Iterable[Type[nn.Module]],
    concrete_args: Optional[Dict[str, Any]],
) -> Tuple[fx.GraphModule, torch.Tensor, torch.device]:
    """Check the model and data every conversion shares and trace a deep copy of ``model``.

    Returns:
        ``(traced copy in eval mode, example input on the model's device, that device)``.

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
    example = _example_input(calib_data)
    work = copy.deepcopy(model).eval()
    device = device_of(work)
    gm = trace(work, leaf_modules=leaf_modules, concrete_args=concrete_args)
    return gm, example.to(device), device


def _example_input(calib_data: Iterable[Any]) -> torch.Tensor:
    """A two-sample batch from the first calibration batch, for recording shapes."""
    for x in iter_inputs(calib_data, 1):
        if x.shape[0] == 0:
            break
        return x[:2].detach().clone()
    raise ValueError("the calibration data yielded no (non-empty) batch")
