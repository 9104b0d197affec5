"""The public conversion entry point."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Type, Union

import torch
from torch import fx, nn

from .calibration import iter_inputs
from .modes import parse_mode
from .spiking import SpikingModel
from .tracing import trace


def convert(
    model: nn.Module,
    mode: Union[str, float] = "99.9%",
    calib_data: Optional[Iterable[Any]] = None,
    *,
    calib_batches: Optional[int] = None,
    channelwise: bool = True,
    v_init: float = 0.5,
    fold_scales: bool = True,
    maxpool: str = "auto",
    target_timesteps: int = 4,
    calibration_horizons: Sequence[int] = (1, 2, 4),
    threshold_search: bool = False,
    potential_calibration: bool = True,
    sweep_samples: int = 512,
    readout: str = "membrane",
    leaf_modules: Iterable[Type[nn.Module]] = (),
    concrete_args: Optional[Dict[str, Any]] = None,
    progress: bool = False,
) -> SpikingModel:
    """Convert a trained ReLU-family classifier into a spiking model.

    Args:
        model: the trained ANN. It is never modified (conversion works on a deep copy).
        mode: activation normalization: ``'max'``, a percentile ``'P%'`` such as
            ``'99.9%'``, or a float ``0 < s <= 1`` meaning ``s * max``.
        calib_data: calibration batches: a DataLoader or iterable of tensors,
            ``(input, label)`` pairs or dicts. Statistics are exact over all of it.
        calib_batches: use at most this many calibration batches.
        channelwise: one normalization scale per channel instead of per layer.
        v_init: initial membrane potential as a fraction of the threshold.
        fold_scales: fold normalization scales into weights where possible.
        maxpool: how max pooling of spike trains converts: ``'auto'`` (default),
            ``'cumulative'``, ``'gate'``, ``'current'`` or ``'spikes'`` (see
            ``ann2snn.converter_passes.convert_maxpool`` and docs/architectures.md).
        target_timesteps: the number of time steps T that ``threshold_search`` and
            ``potential_calibration`` tune the network for (the SNN still runs at any T).
        calibration_horizons: both techniques minimize the error summed over the first
            ``m * target_timesteps`` steps for each multiple ``m`` given (default: after
            T, 2T and 4T steps), so a choice that only pays off at exactly T loses. The
            calibration simulates ``sweep_samples`` images for ``target_timesteps *
            max(calibration_horizons)`` steps, and its memory grows with both.
        threshold_search: per layer (per channel with ``channelwise``), scale the
            threshold by the factor whose firing rate best matches the ANN after
            ``target_timesteps`` steps, layer after layer on the calibration data.
        potential_calibration: per channel, choose the initial membrane potential the
            same way (its effect fades as ``1/T``, so long runs still converge).
        sweep_samples: calibration images simulated by ``threshold_search`` and
            ``potential_calibration`` (the first ones of ``calib_data``).
        readout: ``'membrane'``: the output layer integrates its input current (exact,
            keeps negative values); ``'spikes'``: the output layer spikes and the spike
            count is read (for comparison; see docs/accuracy.md).
        leaf_modules: module types to keep opaque when tracing.
        concrete_args: fixed arguments for tracing (see ``torch.fx.symbolic_trace``).
        progress: show progress bars.

    Returns:
        A :class:`SpikingModel`; call it as ``snn(x, timesteps=T)``.

    Raises:
        ValueError: for a bad mode or missing calibration data.
        ConversionError: naming every node that cannot be converted.

    Example:
        >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
        >>> out = snn(images, timesteps=32)  # doctest: +SKIP
    """
    from ann2snn.converter_passes.layer_sweep import check_horizons
    from ann2snn.converter_passes.pipeline import ConversionContext, run_pipeline

    _check_calibration_options(target_timesteps, sweep_samples, readout)
    horizons = check_horizons(calibration_horizons)
    norm, gm, example, device = _traced_copy(
        "convert", model, mode, calib_data, maxpool, leaf_modules, concrete_args
    )
    ann = copy.deepcopy(model).eval()
    # The options that shape the network: passed to the passes and recorded in meta (so a
    # saved SNN rebuilds with the same ones).
    options = dict(
        channelwise=channelwise,
        v_init=v_init,
        fold_scales=fold_scales,
        maxpool=maxpool,
        target_timesteps=target_timesteps,
        calibration_horizons=list(horizons),
        threshold_search=threshold_search,
        potential_calibration=potential_calibration,
        sweep_samples=sweep_samples,
        readout=readout,
    )
    ctx = ConversionContext(
        mode=norm,
        calib_data=calib_data,
        example_input=example,
        calib_batches=calib_batches,
        progress=progress,
        device=device,
        **options,
    )
    with torch.no_grad():
        gm = run_pipeline(gm, ctx)
    meta = {
        "mode": norm.text,
        **options,
        "input_shape": list(example.shape[1:]),
        "model_class": type(model).__name__,
    }
    return SpikingModel(gm, ann=ann, meta=meta)


def _traced_copy(
    caller: str,
    model: Any,
    mode: Union[str, float],
    calib_data: Optional[Iterable[Any]],
    maxpool: str,
    leaf_modules: Iterable[Type[nn.Module]],
    concrete_args: Optional[Dict[str, Any]],
) -> Tuple[Any, fx.GraphModule, torch.Tensor, torch.device]:
    """Check the arguments every conversion shares and trace a deep copy of ``model``.

    Returns:
        ``(normalization mode, traced copy in eval mode, example input on the model's
        device, that device)``.

    Raises:
        ValueError / TypeError: for a bad mode, max-pool method, model or calibration data.
    """
    from ann2snn.converter_passes.convert_maxpool import check_maxpool_method

    norm = parse_mode(mode)
    check_maxpool_method(maxpool)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if calib_data is None:
        raise ValueError(
            f"{caller}() needs calib_data: a DataLoader or iterable of input batches used to "
            "measure activation ranges (a few hundred to a few thousand training images)"
        )
    example = _example_input(calib_data)
    work = copy.deepcopy(model).eval()
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    gm = trace(work, leaf_modules=leaf_modules, concrete_args=concrete_args)
    return norm, gm, example.to(device), device


def _check_calibration_options(target_timesteps: Any, sweep_samples: Any, readout: Any) -> None:
    for name, value in (("target_timesteps", target_timesteps), ("sweep_samples", sweep_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if readout not in ("membrane", "spikes"):
        raise ValueError(
            f"invalid readout {readout!r}; use 'membrane' (the output layer integrates its "
            "input current) or 'spikes' (the output layer spikes and spikes are counted)"
        )


def _example_input(calib_data: Iterable[Any]) -> torch.Tensor:
    """A two-sample batch from the first calibration batch, for recording shapes."""
    for x in iter_inputs(calib_data, 1):
        if x.shape[0] == 0:
            break
        return x[:2].detach().clone()
    raise ValueError("the calibration data yielded no (non-empty) batch")
