"""Layer-by-layer calibration of a spiking graph against its ANN, at a target number of steps.

Post-training calibration techniques (:mod:`.search_thresholds`,
:mod:`.calibrate_potentials`) tune each IF layer on what it really receives: the spike
trains of the layers before it, already calibrated, simulated for ``timesteps`` steps on
calibration images. They compare the layer's firing rate with the activation the ANN
computes at the same place on the same images. :class:`LayerSweep` does the bookkeeping
once for all of them: it walks the IF layers in graph order and, for each, collects the
input currents ``[T, B, ...]`` and the reference rates ``[B, ...]`` for every calibration
batch, then hands them to each calibrator before moving on, so every layer sees its
predecessors' final parameters.

The error a calibrator minimizes is summed over several horizons: the prefixes of one
simulation of ``T * m`` steps for every multiple ``m`` in ``horizons`` (default 1 and 2
times the target T). A choice that is right at exactly T steps and wrong at 2T (a
potential that happens to round well after 4 steps, a threshold that clips) is then
outvoted, and the curve improves at and beyond the target instead of only at it.

Not a pass itself: the passes build a sweep and call :meth:`LayerSweep.run`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence

import torch
from torch import fx

from ann2snn._checks import positive_int
from ann2snn.calibration import iter_inputs
from ann2snn.config import ConversionConfig, check_horizons
from ann2snn.ops import if_sweep_errors
from ann2snn.runtime.neuron import IFNeuron, _channel_view
from ann2snn.runtime.temporal import reset_state, set_steps, temporal_modules
from ann2snn.tracing import is_module

#: Calibration images simulated by default (a subset of the calibration data).
DEFAULT_SWEEP_SAMPLES: int = ConversionConfig.default("sweep_samples")
#: Horizons of the calibration error, as multiples of the target number of steps.
DEFAULT_HORIZONS: tuple = ConversionConfig.default("calibration_horizons")
#: Images per sweep batch. Each batch runs all its steps in one call ([steps * batch, ...]
#: tensors); 32 images keep a convolution's input and output in cache, where 128 spill:
#: ResNet-20's conversion took 3.45 s with 32 and 4.56 s with 128 (docs/deep.md).
_SWEEP_BATCH = 32


class LayerCalibrator(Protocol):
    """One technique applied to one IF layer at a time (see :class:`LayerSweep`)."""

    def calibrate(self, gm: fx.GraphModule, node: fx.Node, layer: LayerData) -> None:
        """Tune the IF neuron at ``node`` from ``layer``; may change ``gm``."""
        ...


class LayerData:
    """What one IF layer receives during a sweep, and how to simulate it.

    Attributes:
        neuron: the layer's :class:`IFNeuron`.
        currents: per calibration batch, the input currents ``[T, B, C, ...]``.
        targets: per batch, the ANN's activation at this layer in units of
            :attr:`reference_threshold` (its rate), ``[B, C, ...]``.
        reference_threshold: per-channel threshold ``[C]`` the targets are measured in.
        timesteps: T, the number of steps simulated (the currents' first dimension).
        horizons: the prefix lengths whose errors :meth:`squared_errors` sums, the
            shortest first (default: ``(timesteps,)``).
    """

    def __init__(
        self,
        neuron: IFNeuron,
        currents: List[torch.Tensor],
        targets: List[torch.Tensor],
        reference_threshold: torch.Tensor,
        timesteps: int,
        horizons: Optional[Sequence[int]] = None,
    ) -> None:
        self.neuron = neuron
        self.currents = currents
        self.targets = targets
        self.reference_threshold = reference_threshold
        self.timesteps = timesteps
        self.horizons = tuple(sorted(horizons)) if horizons else (timesteps,)
        if self.horizons[0] < 1 or self.horizons[-1] > timesteps:
            raise ValueError(f"horizons {self.horizons} must lie in 1..{timesteps}")

    @property
    def channels(self) -> int:
        return int(self.reference_threshold.numel())

    def gain(self) -> torch.Tensor:
        """Per channel, what one spike of the neuron is worth in reference units."""
        return self.threshold() / self.reference_threshold

    def threshold(self) -> torch.Tensor:
        """The neuron's current threshold, one value per channel."""
        return self.neuron.threshold.reshape(-1).expand(self.channels).float()

    def v_init(self) -> torch.Tensor:
        """The neuron's initial potentials (fractions of the threshold), per channel."""
        if self.neuron.v_init_channels is not None:
            return self.neuron.v_init_channels.reshape(-1).float()
        return torch.full((self.channels,), self.neuron.v_init)

    def clipping_errors(self, gain: torch.Tensor) -> torch.Tensor:
        """Per channel, the summed squared error of the layer after infinitely many steps.

        With exact inputs the rate converges to the ANN's activation clipped at one spike per
        step, i.e. ``min(target, gain)`` in reference units.
        """
        total = torch.zeros(self.channels, dtype=torch.float64)
        for a in self.targets:
            g = _channel_view(gain.to(a.device).float(), a)
            err = torch.clamp(a - g, min=0)
            dims = (0,) + tuple(range(2, err.dim()))
            total += err.pow(2).sum(dims).double().cpu()
        return total

    def squared_errors(
        self, threshold: torch.Tensor, v_init: torch.Tensor, gain: torch.Tensor
    ) -> torch.Tensor:
        """Per channel, the summed squared error of the rate (times ``gain``) vs the ANN:
        :meth:`candidate_errors` for one candidate."""
        return self.candidate_errors(threshold[None], v_init[None], gain[None])[0]

    def candidate_errors(
        self, threshold: torch.Tensor, v_init: torch.Tensor, gain: torch.Tensor
    ) -> torch.Tensor:
        """Per candidate and channel, the summed squared error of the rate (times ``gain``)
        vs the ANN.

        Simulates the layer for every calibration batch with, for each of K candidates,
        per-channel ``threshold`` and initial potential ``v_init`` (fractions of it), all
        ``[K, C]``, over :attr:`timesteps` steps, and sums the errors of the rates after
        each of :attr:`horizons` steps. A rate's error shrinks about as ``1/h`` with the
        horizon ``h``, its square as ``1/h**2``; each square is weighted by
        ``h / horizons[0]``, so the shortest horizon (the target) counts most and the
        longer ones still outvote choices that only pay off there. One
        :func:`~ann2snn.ops.if_sweep_errors` call per batch scores all K candidates.

        Returns:
            ``[K, C]`` float64.
        """
        th = threshold.float()
        v0 = v_init.float() * th  # the initial potentials, absolute
        g = gain.float()
        total = torch.zeros(th.shape, dtype=torch.float64)
        for z, a in zip(self.currents, self.targets):
            dev = z.device
            total += if_sweep_errors(z, a, th.to(dev), v0.to(dev), g.to(dev), self.horizons).cpu()
        return total


def collect_inputs(
    data: Iterable[Any],
    max_batches: Optional[int] = None,
    max_samples: int = DEFAULT_SWEEP_SAMPLES,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> List[torch.Tensor]:
    """The first ``max_samples`` calibration inputs, re-batched for simulation (moved to
    ``device`` and cast to ``dtype`` when given).

    Raises:
        ValueError: when ``data`` yields no input or ``max_samples`` is not positive.
    """
    try:
        max_samples = positive_int("max_samples", max_samples)
    except ValueError:
        raise ValueError(
            f"the sweep needs a positive number of samples, got {max_samples!r}"
        ) from None
    parts: List[torch.Tensor] = []
    have = 0
    for x in iter_inputs(data, max_batches):
        take = x[: max_samples - have]
        if take.shape[0]:
            parts.append(take.detach())
            have += take.shape[0]
        if have >= max_samples:
            break
    if not parts:
        raise ValueError("the calibration data yielded no input to simulate")
    inputs = torch.cat(parts)
    if device is not None or dtype is not None:
        inputs = inputs.to(device=device, dtype=dtype)
    return list(inputs.split(_SWEEP_BATCH))


class LayerSweep:
    """Calibrate the IF layers of a flat spiking graph one after the other.

    The graph runs node by node over all calibration batches at once (each batch is one
    call covering all T steps), so each layer is simulated once: when the sweep reaches an
    IF layer it has every batch's input currents, calibrates the layer, then computes its
    spikes with the new parameters and goes on. Memory: the live activations of all
    calibration batches (``timesteps * samples`` images' worth).

    Args:
        gm: the spiking graph after ``replace_relu_with_if`` (and max-pool conversion),
            before ``hoist_static_prefix``: every tensor is ``[steps * B, ...]``.
        reference: the normalized ANN graph (after ``normalize_activations``) whose
            activation nodes have the same names as the IF nodes of ``gm``.
        inputs: calibration input batches (see :func:`collect_inputs`).
        timesteps: the number of steps T the layers are tuned for.
        horizons: multiples of ``timesteps`` whose errors are summed (see the module's
            docstring); the sweep simulates ``timesteps * max(horizons)`` steps.

    Raises:
        ValueError: for a bad ``timesteps`` or ``horizons``.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        reference: fx.GraphModule,
        inputs: Sequence[torch.Tensor],
        timesteps: int,
        horizons: Sequence[int] = DEFAULT_HORIZONS,
    ) -> None:
        timesteps = positive_int("target timesteps", timesteps)
        multiples = check_horizons(horizons)
        self.gm = gm
        self.reference = reference
        self.inputs = list(inputs)
        self.horizons = tuple(timesteps * m for m in multiples)
        self.timesteps = self.horizons[-1]  # steps simulated
        self.nodes = [n for n in gm.graph.nodes if is_module(gm, n, IFNeuron)]
        ref_nodes = {n.name: n for n in reference.graph.nodes}
        missing = [n.name for n in self.nodes if n.name not in ref_nodes]
        if missing:
            raise RuntimeError(f"internal error: IF layers {missing} are not in the reference")

    def _targets(self) -> Dict[str, List[torch.Tensor]]:
        """The reference activations at every IF layer, per calibration batch."""
        wanted = {n.name for n in self.nodes}
        targets: Dict[str, List[torch.Tensor]] = {name: [] for name in wanted}

        class Capture(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in wanted:
                    targets[n.name].append(out.detach().float())
                return out

        for x in self.inputs:
            Capture(self.reference).run(x)
        return targets

    def _reference_threshold(self, node: fx.Node, channels: int) -> torch.Tensor:
        act = self.reference.get_submodule(str(node.target))
        thr = getattr(act, "threshold", None)
        thr = torch.ones(1) if thr is None else thr.detach().reshape(-1).float().cpu()
        return thr.expand(channels).clone()

    def run(self, calibrators: Sequence[LayerCalibrator], progress: bool = False) -> None:
        """Apply every calibrator to every IF layer, in graph order."""
        from tqdm.auto import tqdm

        if not self.nodes:
            return
        targets = self._targets()
        t = self.timesteps
        set_steps(self.gm, t)
        reset_state(self.gm)
        stateful = {id(m) for m in temporal_modules(self.gm)}
        done: set = set()
        interp = fx.Interpreter(self.gm)
        env: Dict[fx.Node, List[Any]] = {}
        remaining = len(self.nodes)
        placeholders = 0
        bar = tqdm(total=remaining, desc="calibrating layers", disable=not progress, leave=False)
        try:
            for node in self.gm.graph.nodes:
                if remaining == 0 or node.op == "output":
                    break
                if node.op == "placeholder":
                    done.add(node)
                    if placeholders == 0:  # the model's input, repeated for every step
                        env[node] = [
                            x.unsqueeze(0).expand((t,) + x.shape).reshape((-1,) + x.shape[1:])
                            for x in self.inputs
                        ]
                    else:  # an argument fixed by concrete_args: its default value
                        env[node] = [node.args[0] if node.args else None] * len(self.inputs)
                    placeholders += 1
                    continue
                if node in self.nodes:
                    self._calibrate(node, env[node.args[0]], targets.pop(node.name), calibrators)
                    remaining -= 1
                    bar.update(1)
                module = (
                    self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
                )
                outputs = []
                for b in range(len(self.inputs)):
                    interp.env = {n: env[n][b] for n in node.all_input_nodes}
                    if module is not None and id(module) in stateful:
                        module.reset()  # each call is all T steps of one batch
                    outputs.append(interp.run_node(node))
                env[node] = outputs
                done.add(node)
                for value in node.all_input_nodes:  # free what nothing will read again
                    if all(user in done for user in value.users):
                        env.pop(value, None)
        finally:
            bar.close()
            interp.env = {}
            set_steps(self.gm, 1)
            reset_state(self.gm)

    def _calibrate(
        self,
        node: fx.Node,
        inputs: List[torch.Tensor],
        targets: List[torch.Tensor],
        calibrators: Sequence[LayerCalibrator],
    ) -> None:
        t = self.timesteps
        currents = [
            z.reshape((t, z.shape[0] // t) + tuple(z.shape[1:])).float().contiguous()
            for z in inputs
        ]
        channels = currents[0].shape[2] if currents[0].dim() > 2 else 1
        neuron = self.gm.get_submodule(str(node.target))
        reference = self._reference_threshold(node, channels)
        layer = LayerData(neuron, currents, targets, reference, t, self.horizons)
        for calibrator in calibrators:
            calibrator.calibrate(self.gm, node, layer)
