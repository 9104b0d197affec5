"""Recording what the IF layers of a simulation receive and emit (one mechanism for all).

:class:`SpikeRecorder` is the only spike recorder: the per-layer diagnostics
(``analysis.diagnostics.layer_report``) read its totals, and bootstrap (fitting and the
hybrid pass) reads its per-neuron means, and the saturation diagnostics (``evaluate``,
``layer_report``) read its per-neuron spike counts and final membranes
(:meth:`SpikeRecorder.saturation_counts`). It works through forward hooks, so the neurons
themselves carry no monitoring state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch

from ann2snn.runtime.neuron import IFNeuron, _channel_view

#: A neuron at rate 1 counts as saturated when its mean input current exceeds its threshold
#: by more than this fraction (rate 1 from rounding at small T is not saturation).
SATURATION_TOLERANCE = 0.1


@dataclass
class SaturationCounts:
    """How many of one IF layer's (input, neuron) pairs saturated over the inputs simulated
    since :meth:`SpikeRecorder.clear`.

    Attributes:
        pairs: inputs x neurons of the layer.
        saturated: pairs that spiked at every time step while their mean input current
            exceeded the threshold by more than :data:`SATURATION_TOLERANCE` (the neuron
            clipped its input), except where the threshold is the ANN's own clip
            (``ReLU6``, ``Hardtanh(0, a)`` with the scale at the clip), whose rate 1 is
            exact.
    """

    pairs: int
    saturated: int


class SpikeRecorder:
    """Per IF layer: total spikes and neuron-steps, and (with ``per_neuron``) each neuron's
    summed input current and spike count since :meth:`clear`, and (with ``ranges``) each
    neuron's spike count and final membrane since :meth:`clear`, which
    :meth:`saturation_counts` reads (a context manager over forward hooks).

    Example:
        >>> with SpikeRecorder(snn, per_neuron=True) as rec:  # doctest: +SKIP
        ...     snn(x, timesteps=4)
        ...     current, rate = rec.means("time_loop.relu", 4)

    Attributes:
        neurons: name -> IF module of every layer recorded.
        spikes: name -> spikes emitted since the recorder was made (a float).
        neuron_steps: name -> neurons x time steps simulated since then.
        sums: name -> ``[current, spikes]`` per neuron ``[B, ...]`` since :meth:`clear`.
        counts: name -> spikes per neuron ``[B, ...]`` since :meth:`clear` (``ranges``).
        membranes: name -> membrane potential after the last step run (``ranges``).
    """

    def __init__(self, snn: Any, *, per_neuron: bool = False, ranges: bool = False) -> None:
        self.neurons: Dict[str, IFNeuron] = dict(snn.neurons())
        self.per_neuron = per_neuron
        self.ranges = ranges
        self.spikes: Dict[str, float] = {name: 0.0 for name in self.neurons}
        self.neuron_steps: Dict[str, int] = {name: 0 for name in self.neurons}
        self.sums: Dict[str, List[torch.Tensor]] = {}
        self.counts: Dict[str, torch.Tensor] = {}
        self.membranes: Dict[str, torch.Tensor] = {}
        self._handles: List[Any] = []

    def __enter__(self) -> SpikeRecorder:
        self._handles = [
            m.register_forward_hook(self._hook(name)) for name, m in self.neurons.items()
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the per-neuron sums and counts (call between inputs); totals are kept."""
        self.sums = {}
        self.counts = {}
        self.membranes = {}

    def _hook(self, name: str):
        def record(module: IFNeuron, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor):
            out = output.detach()
            self.neuron_steps[name] += out.numel()
            if self.ranges:
                # one pass over the spikes: the total follows from the (T times smaller) counts
                spikes = out.reshape((module.steps, -1) + out.shape[1:]).sum(0)
                self.spikes[name] += float(spikes.sum())
                previous = self.counts.get(name)
                self.counts[name] = spikes if previous is None else previous + spikes
                self.membranes[name] = module.v
            else:
                self.spikes[name] += float(out.sum())
            if not self.per_neuron:
                return
            # float64 sums: the mean of T float32 inputs is then exact (bins see true values)
            x, steps = inputs[0].detach().double(), module.steps
            # a static-input neuron receives its (constant) current once per chunk
            cur = x * steps if module.static_input else x.reshape((steps, -1) + x.shape[1:]).sum(0)
            spk = out.reshape((steps, -1) + out.shape[1:]).sum(0)
            if name in self.sums:
                self.sums[name][0] += cur
                self.sums[name][1] += spk
            else:
                self.sums[name] = [cur.clone(), spk.clone()]

        return record

    def means(self, name: str, timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean input current / threshold (float64), rate) of every neuron of layer
        ``name``, ``[B, ...]`` each, after a simulation of ``timesteps`` steps.

        Raises:
            KeyError: when the layer has not run since :meth:`clear`, or the recorder
                was made without ``per_neuron``.
        """
        if name not in self.sums:
            raise KeyError(
                f"IF layer {name!r} did not run since the recorder was cleared"
                + ("" if self.per_neuron else " (the recorder was made without per_neuron)")
            )
        cur, spk = self.sums[name]
        thr = _channel_view(self.neurons[name].threshold.to(cur.device).double(), cur)
        return cur / timesteps / thr, spk / timesteps

    def saturation_counts(
        self, timesteps: int, tolerance: float = SATURATION_TOLERANCE
    ) -> Dict[str, SaturationCounts]:
        """Per IF layer that ran since :meth:`clear`: how many (input, neuron) pairs
        saturated in a simulation of ``timesteps`` steps (needs ``ranges``).

        A neuron's mean input current over the run follows exactly from its spike count
        ``n``, its final membrane ``v`` and its initial one ``v0``:
        ``(n * threshold + v - v0) / T``.

        Raises:
            ValueError: the recorder was made without ``ranges``.
        """
        if not self.ranges:
            raise ValueError("saturation_counts needs a SpikeRecorder made with ranges=True")
        out: Dict[str, SaturationCounts] = {}
        for name, count in self.counts.items():
            m = self.neurons[name]
            n = count.float()
            thr = _channel_view(m.threshold.to(n.device, n.dtype), n)
            current = (n * thr + self.membranes[name].float() - m.initial_potential(n)) / timesteps
            saturated = (n >= timesteps) & (current > thr * (1 + tolerance))
            if m.clip is not None:  # rate 1 at the ANN's own clip is exact
                clip = _channel_view(m.clip.to(n.device, n.dtype), n)
                saturated &= (clip - thr).abs() > 1e-6 * thr
            out[name] = SaturationCounts(pairs=n.numel(), saturated=int(saturated.sum()))
        return out
