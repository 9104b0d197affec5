"""Modules that appear in converted graphs: the canonical activation and the IF neuron."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ann2snn.tracing import register_leaf_module

Number = Union[float, int]


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or per-channel (dim 1) tensor so it broadcasts against ``x``."""
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape((1, -1) + (1,) * (x.dim() - 2))


@register_leaf_module
class Activation(nn.Module):
    """The single activation node every ReLU-family op becomes: ``clamp(x, 0, clip)``.

    ``threshold`` is the value at which the converted IF neuron fires (1 when the
    normalization scale was folded into the producing layer, the scale itself otherwise).
    After normalization the output is in units of the threshold (a firing rate): the
    normalization scale ``scale`` is multiplied back in by the consumers.

    Args:
        clip: upper clip of the activation (6 for ReLU6, ``a`` for Hardtanh(0, a)), or None.
    """

    def __init__(self, clip: Optional[Number] = None) -> None:
        super().__init__()
        self.register_buffer("clip", None if clip is None else torch.tensor(float(clip)))
        self.register_buffer("threshold", None)
        self.register_buffer("scale", None)
        # The largest value seen on the calibration data (ANN units), for diagnostics.
        self.register_buffer("calib_max", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        if self.clip is not None:
            y = torch.minimum(y, _channel_view(self.clip, x))
        if self.threshold is not None:
            y = y / _channel_view(self.threshold, x)
        return y

    def extra_repr(self) -> str:
        return "" if self.clip is None else f"clip={self.clip.tolist()}"


@register_leaf_module
class Scale(nn.Module):
    """Multiply by a scalar or per-channel (dim 1) factor (an unfolded normalization scale)."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _channel_view(self.scale, x)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


@register_leaf_module
class IFNeuron(nn.Module):
    """Integrate-and-fire neurons with soft reset (subtract the threshold on a spike).

    Per element, for each time step: ``v += x[t]; s[t] = v >= threshold;
    v -= s[t] * threshold``, with ``v`` starting at ``v_init * threshold``. The simulator
    (:class:`ann2snn.runtime.spiking_model.SpikingModel`) sets :attr:`steps` so that one
    call processes a
    chunk of ``steps`` time steps stacked along the batch dimension (``[steps * B, ...]``);
    with the default ``steps = 1`` each call is one time step. The membrane is kept between
    calls until :meth:`reset`.

    Args:
        threshold: firing threshold, a scalar or one value per channel (dim 1).
        v_init: initial membrane potential as a fraction of the threshold. A per-channel
            calibration (``converter_passes/layer_calibration/calibrate_potentials.py``) sets
            :attr:`v_init_channels`, one fraction per channel, which then takes precedence.
    """

    def __init__(self, threshold: Union[Number, torch.Tensor] = 1.0, v_init: float = 0.5) -> None:
        super().__init__()
        thr = torch.as_tensor(threshold, dtype=torch.float32).detach().clone().reshape(-1)
        if torch.any(thr <= 0):
            raise ValueError("IFNeuron thresholds must be positive")
        self.register_buffer("threshold", thr)
        self.v_init = float(v_init)
        self.register_buffer("v_init_channels", None)  # per-channel fractions, or None
        self.register_buffer("scale", None)  # normalization scale in ANN units (diagnostics)
        # The clip of the activation this neuron replaced, in the units of its input like
        # the threshold (the ANN's clip divided by the scale where the scale was folded
        # into the producing layer; None for a plain ReLU). The simulation does not read
        # it; the ANN view of the graph (ann2snn.snn_graph.ann_view) puts the activation
        # back with it.
        self.register_buffer("clip", None)
        # The largest value the activation took on the calibration data (ANN units, one
        # per channel or one), or None when unknown (files written before it was kept).
        # The simulation does not read it; the range diagnostics
        # (ann2snn.runtime.recorders.SpikeRecorder.range_counts) compare the evaluated
        # inputs with it.
        self.register_buffer("calib_max", None)
        self.steps = 1
        self.static_input = False  # input is the same every step: [B, ...] instead of [T*B, ...]
        self.v: Optional[torch.Tensor] = None

    def reset(self) -> None:
        """Forget the membrane potential."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ann2snn import ops

        steps = self.steps
        if self.static_input:
            currents = x.unsqueeze(0).expand((steps,) + tuple(x.shape))
        else:
            if x.shape[0] % steps:
                raise RuntimeError(
                    f"IFNeuron got a batch of {x.shape[0]} that is not a multiple of "
                    f"steps={steps}; reset() the neuron and set steps consistently"
                )
            currents = x.reshape((steps, x.shape[0] // steps) + tuple(x.shape[1:]))
        per_step = currents.shape[1:]
        if self.v is None or tuple(self.v.shape) != tuple(per_step):
            self.v = self.initial_potential(currents[0]).expand(per_step).float().contiguous()
        spikes, self.v = ops.if_multistep(currents, self.v, self.threshold.to(x.device))
        return spikes.reshape((-1,) + tuple(per_step[1:]))

    def initial_potential(self, like: torch.Tensor) -> torch.Tensor:
        """The membrane potential at the first step, broadcastable to ``like`` ``[B, C, ...]``."""
        thr = _channel_view(self.threshold.to(like.device), like)
        if self.v_init_channels is None:
            return self.v_init * thr
        return _channel_view(self.v_init_channels.to(like.device), like) * thr

    def extra_repr(self) -> str:
        thr = self.threshold
        t = f"{thr.item():.4g}" if thr.numel() == 1 else f"per-channel[{thr.numel()}]"
        v = self.v_init if self.v_init_channels is None else "per-channel"
        return f"threshold={t}, v_init={v}"


@register_leaf_module
class RepeatInTime(nn.Module):
    """Broadcast a time-invariant ``[B, ...]`` tensor to ``[steps * B, ...]``."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 1

    def reset(self) -> None:
        """Stateless: nothing to forget (a :class:`ann2snn.runtime.temporal.TemporalModule`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rep = x.unsqueeze(0).expand((self.steps,) + tuple(x.shape))
        return rep.reshape((-1,) + tuple(x.shape[1:]))
