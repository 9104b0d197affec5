"""Bootstrap fine-tuning for very few time steps.

At small T an IF neuron is not a ReLU: it takes only the rates ``k / T``, starts from
``v_init``, saturates at one spike per step and reacts to the timing of its input. The
bootstrap loop (after Intel lava-dl's bootstrap training, rewritten for any converted
graph) alternates

1. SAMPLING + FIT (:func:`ann2snn.converter_passes.bootstrap_fit.bootstrap_fit`): simulate
   the SNN at the target T and fit each IF layer's (mean input current -> rate) relation
   as a monotone piecewise-linear function;
2. ANN mode (:class:`BootstrapModel`): run the converted graph once, without time, with
   every IF layer replaced by its fitted :class:`PiecewiseLinear`, and train the shared
   Conv/Linear weights with ordinary PyTorch training;
3. SNN mode: put the IF neurons back. They sit between the very same layer objects, so
   the trained weights are the SNN's weights.

By default (``train_mode='hybrid'``) step 2 trains on the SNN's own output: each batch is
simulated for T steps, the measured rates of every IF layer stand in for the fitted
functions' values, and the gradients flow through the fitted functions (a
straight-through pass, :meth:`BootstrapModel.hybrid`). ``train_mode='ann'`` trains the
pure ANN view.

Example:
    >>> snn = ann2snn.convert(model, calib_data=train_loader, calib_batches=8)  # doctest: +SKIP
    >>> snn, history = ann2snn.bootstrap(snn, train_loader, timesteps=4,
    ...                                  eval_loader=test_loader)  # doctest: +SKIP
    >>> snn(images, timesteps=4)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import fx, nn
from tqdm import tqdm

from ann2snn._checks import positive_int
from ann2snn.analysis.saturation import RangeWarning, refresh_calibrated_ranges
from ann2snn.calibration import batch_input
from ann2snn.converter_passes.bootstrap_fit import (
    DEFAULT_SAMPLE_RANGE,
    DEFAULT_SEGMENTS,
    check_sample_range,
)
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.runtime.pooling import GatedMaxPool, SpikingMaxPool
from ann2snn.runtime.recorders import SpikeRecorder
from ann2snn.runtime.spiking_model import SpikingModel
from ann2snn.runtime.temporal import reset_state, set_steps
from ann2snn.tracing import replace_submodule
from ann2snn.training.loop import check_epochs, epoch_length, optimize, total_steps
from ann2snn.training.pwl import PiecewiseLinear, drop_fits, fits_of, pwl_eval

__all__ = [
    "DEFAULT_SAMPLE_RANGE",
    "DEFAULT_SEGMENTS",
    "BootstrapModel",
    "BootstrapRecord",
    "check_sample_range",
    "PiecewiseLinear",
    "bootstrap",
    "drop_fits",
    "fits_of",
    "pwl_eval",
]


class BootstrapModel(nn.Module):
    """Two views of one converted graph that share every Conv/Linear layer.

    * SNN mode (the start): the graph with its IF neurons, simulated over time.
    * ANN mode: the same graph run once, without time, each IF layer replaced by its
      fitted :class:`PiecewiseLinear`; differentiable, for ordinary PyTorch training.

    Switching swaps the modules in place (parent + ``setattr``), so the weights trained
    in ANN mode are the SNN's weights.

    Args:
        snn: the converted model. It is used (and changed by training) in place.
    """

    def __init__(self, snn: SpikingModel) -> None:
        super().__init__()
        if not isinstance(snn, SpikingModel):
            raise TypeError(f"BootstrapModel needs a SpikingModel, got {type(snn).__name__}")
        self.snn = snn
        self._neurons: Dict[str, IFNeuron] = {}
        self._pools: Dict[str, nn.Module] = {}

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.snn.graph_module

    @property
    def mode(self) -> str:
        """``'ann'`` or ``'snn'``."""
        return "ann" if self._neurons else "snn"

    def layer_parameters(self) -> List[nn.Parameter]:
        """The trainable weights of the converted graph (not the reference ANN's)."""
        return [p for p in self.graph_module.parameters() if p.requires_grad]

    def fit(
        self, calib_data: Iterable[Any], timesteps: int, **options: Any
    ) -> Dict[str, Dict[str, Any]]:
        """Re-sample the SNN and re-fit every layer (see ``bootstrap_fit``); keeps the mode.

        Returns:
            Fit statistics per IF layer (``rmse``, ``in_range`` ...).
        """
        from ann2snn.converter_passes.bootstrap_fit import bootstrap_fit

        was_ann = self.mode == "ann"
        self.snn_mode()
        bootstrap_fit(self.graph_module, calib_data, timesteps, **options)
        if was_ann:
            self.ann_mode()
        return self.graph_module.meta["bootstrap_fit"]

    def ann_mode(self) -> BootstrapModel:
        """Replace each IF layer by its fitted function.

        Raises:
            ValueError: when a layer has no fit yet (call :meth:`fit` first).
        """
        if self.mode == "ann":
            return self
        fits = fits_of(self.graph_module)
        neurons = self.snn.neurons()
        missing = [name for name, _ in neurons if name not in fits]
        if missing:
            raise ValueError(
                f"no fitted activation for IF layer(s) {missing}: call fit(calib_data, "
                "timesteps) (or bootstrap_fit on the graph) before switching to ANN mode"
            )
        for name, neuron in neurons:
            neuron.reset()
            replace_submodule(self.graph_module, name, fits[name])
            self._neurons[name] = neuron
        # One step of a spike-train max pooling from a fresh state is the max pooling of
        # its input; the plain pooling is differentiable (the fused pooling op has no
        # backward, so gradients would stop there).
        for name, pool in list(self.graph_module.named_modules()):
            if isinstance(pool, (SpikingMaxPool, GatedMaxPool)):
                plain = copy.deepcopy(pool.pool)
                if hasattr(plain, "return_indices"):
                    plain.return_indices = False
                pool.reset()
                replace_submodule(self.graph_module, name, plain)
                self._pools[name] = pool
        return self

    def snn_mode(self) -> BootstrapModel:
        """Put the IF neurons back (with their thresholds); the weights stay as trained."""
        for name, module in {**self._neurons, **self._pools}.items():
            replace_submodule(self.graph_module, name, module)
        self._neurons, self._pools = {}, {}
        self.snn.reset()  # drop state (and autograd history) left by ANN-mode passes
        return self

    def hybrid(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """The SNN's output with ANN-mode gradients (a straight-through pass).

        The SNN runs ``timesteps`` steps (no gradient) and every IF layer's measured rates
        replace the fitted function's values in an ANN-mode pass, while gradients flow
        through the fitted functions. Between IF layers the graph is linear in the rates
        (or max-pools them), so the returned values are the SNN's time-averaged output
        and the loss is the SNN's own. Leaves the model in ANN mode.
        """
        self.snn_mode()
        with torch.no_grad(), SpikeRecorder(self.snn, per_neuron=True) as rec:
            for _ in self.snn.simulate(x, timesteps):
                pass
            rates = {name: rec.means(name, timesteps)[1] for name in rec.neurons}
        self.ann_mode()
        fits = fits_of(self.graph_module)
        handles = [
            fits[name].register_forward_hook(_straight_through(r)) for name, r in rates.items()
        ]
        try:
            return self(x)
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, timesteps: Optional[int] = None) -> torch.Tensor:
        """ANN mode: one differentiable pass. SNN mode: the output averaged over
        ``timesteps`` steps (required)."""
        if self.mode == "snn":
            if timesteps is None:
                raise ValueError("SNN mode needs timesteps; call model(x, timesteps=T)")
            return self.snn(x, timesteps=timesteps)
        gm = self.graph_module
        _one_step_fresh(gm.time_loop)
        return gm.time_loop(*gm.static_prefix(x))


def _straight_through(measured: torch.Tensor):
    def replace(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output + (measured - output).detach()

    return replace


def _one_step_fresh(module: nn.Module) -> None:
    """Set every module that lives in time (steps + reset: the simulator's contract, e.g.
    max pooling over spike trains) to one step from a fresh state: a single pass then
    computes their rate function (the max pooling of the rates)."""
    set_steps(module, 1)
    reset_state(module)


@dataclass
class BootstrapRecord:
    """One row of the bootstrap history.

    Attributes:
        epoch: training epochs done (fractional between epoch ends).
        step: optimizer steps done.
        loss: mean training loss since the previous record (None at the start).
        train_accuracy: training accuracy (%) since the previous record, of the output
            that was trained (the SNN's in ``'hybrid'`` mode, the ANN view's in ``'ann'``).
        snn_accuracy: T -> the SNN's accuracy (%) on the evaluation data, when measured.
        fit_rmse: mean over IF layers of the fit's RMS error on the sampled points.
    """

    epoch: float
    step: int
    loss: Optional[float] = None
    train_accuracy: Optional[float] = None
    snn_accuracy: Dict[int, float] = field(default_factory=dict)
    fit_rmse: Optional[float] = None

    def line(self) -> str:
        parts = [f"epoch {self.epoch:.2f} (step {self.step})"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.train_accuracy is not None:
            parts.append(f"train acc {self.train_accuracy:.2f}%")
        for t, acc in sorted(self.snn_accuracy.items()):
            parts.append(f"SNN acc @T={t} {acc:.2f}%")
        if self.fit_rmse is not None:
            parts.append(f"fit rmse {self.fit_rmse:.4f}")
        return ", ".join(parts)


def _labels(batch: Any) -> torch.Tensor:
    from ann2snn.analysis.evaluate import _labels as labels_of

    return labels_of(batch)


def bootstrap(
    model: Union[SpikingModel, nn.Module],
    train_loader: Iterable[Any],
    *,
    timesteps: int,
    epochs: float = 2,
    resample_every: float = 0.25,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    calib_data: Optional[Iterable[Any]] = None,
    sample_batches: Optional[int] = 8,
    segments: Optional[int] = None,
    sample_range: Optional[Tuple[float, float]] = None,
    eval_loader: Optional[Iterable[Any]] = None,
    eval_batches: Optional[int] = None,
    eval_timesteps: Sequence[int] = (),
    train_mode: str = "hybrid",
    progress: bool = True,
    **convert_kwargs: Any,
) -> Tuple[SpikingModel, List[BootstrapRecord]]:
    """Fine-tune a converted SNN for ``timesteps`` steps with fitted piecewise-linear
    activations (SAMPLE -> FIT -> train in ANN mode -> back to SNN, re-fitted on a schedule).

    Args:
        model: a :class:`SpikingModel` (deep-copied; the input is not changed), or an ANN,
            which is then converted with ``convert_kwargs`` calibrating on ``calib_data``
            (default: ``train_loader``).
        train_loader: ``(input, label)`` batches; one epoch is one pass over it.
        timesteps: the target number of time steps T.
        epochs: training epochs (may be fractional).
        resample_every: re-sample and re-fit every this many epochs (and measure the SNN
            when ``eval_loader`` is given).
        lr: Adam learning rate (cosine-annealed to zero over the run).
        weight_decay: Adam weight decay.
        calib_data: batches the SNN is sampled on (default: ``train_loader``); a one-shot
            iterator (a generator) is read once into a list, since every re-fit samples it.
        sample_batches: use at most this many batches of it per sampling (None: all).
        segments: linear segments per fitted function (default: the pass's).
        sample_range: current range fitted, threshold units (default: the pass's).
        eval_loader: ``(input, label)`` batches on which the SNN's accuracy is measured at
            the start, at every re-fit and at the end.
        eval_batches: use at most this many evaluation batches per measurement.
        eval_timesteps: more time steps to report besides ``timesteps``.
        train_mode: ``'hybrid'`` (default): the forward values are the SNN's own
            (simulated for ``timesteps`` steps, no gradient), the gradients those of the
            ANN view (see :meth:`BootstrapModel.hybrid`); ``'ann'``: train the ANN view
            alone (fitted functions, one pass; cheaper, but it learns the SNN's average
            behaviour, not its output; see docs/bootstrap.md for the measured difference).
        progress: progress bars, and a line per measurement.
        **convert_kwargs: passed to :func:`ann2snn.convert` when ``model`` is an ANN.

    Returns:
        ``(snn, history)``: the fine-tuned :class:`SpikingModel` (its ``meta['bootstrap']``
        records the settings) and the list of :class:`BootstrapRecord`.

    Raises:
        ValueError: on bad options or an empty ``train_loader``.
        TypeError: when ``model`` is not an ``nn.Module``.
    """
    from ann2snn.analysis.evaluate import evaluate
    from ann2snn.api import convert
    from ann2snn.converter_passes import bootstrap_fit as fit_pass

    positive_int("timesteps", timesteps)
    check_epochs(epochs)
    if not (isinstance(resample_every, (int, float)) and resample_every > 0):
        raise ValueError(
            f"resample_every must be a positive number of epochs, got {resample_every!r}"
        )
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if train_mode not in ("ann", "hybrid"):
        raise ValueError(f"train_mode must be 'ann' or 'hybrid', got {train_mode!r}")
    eval_ts = sorted({timesteps, *(positive_int("eval_timesteps", t) for t in eval_timesteps)})
    batches_per_epoch = epoch_length(train_loader)

    if isinstance(calib_data, Iterator):
        # a one-shot iterator (a generator): sampled again at every re-fit, so kept
        calib_data = list(calib_data)
    if isinstance(model, SpikingModel):
        snn = copy.deepcopy(model)
    elif isinstance(model, nn.Module):
        calib = calib_data if calib_data is not None else train_loader
        snn = convert(model, calib_data=calib, **convert_kwargs)
    else:
        raise TypeError(f"model must be a SpikingModel or an nn.Module, got {type(model).__name__}")
    sampling = calib_data if calib_data is not None else train_loader
    fit_options: Dict[str, Any] = {"max_batches": sample_batches, "progress": progress}
    if segments is not None:
        fit_options["segments"] = segments
    if sample_range is not None:
        fit_options["sample_range"] = sample_range

    boot = BootstrapModel(snn)
    params = boot.layer_parameters()
    device = params[0].device if params else torch.device("cpu")
    steps = total_steps(epochs, batches_per_epoch)
    refit_every = max(1, round(resample_every * batches_per_epoch))
    history: List[BootstrapRecord] = []

    def measure(step: int, loss: Optional[float], acc: Optional[float], refit: bool) -> None:
        stats = boot.fit(sampling, timesteps, **fit_options) if refit else None
        rec = BootstrapRecord(epoch=step / batches_per_epoch, step=step, loss=loss)
        rec.train_accuracy = acc
        if stats:
            rec.fit_rmse = sum(s["rmse"] for s in stats.values()) / len(stats)
        if eval_loader is not None:
            was_ann = boot.mode == "ann"
            boot.snn_mode()
            with warnings.catch_warnings():  # progress checks; saturation is not the point
                warnings.simplefilter("ignore", RangeWarning)
                curve = evaluate(snn, eval_loader, eval_ts, max_batches=eval_batches)
            rec.snn_accuracy = dict(curve.accuracy)
            if was_ann:
                boot.ann_mode()
        history.append(rec)
        if progress:
            tqdm.write(f"bootstrap T={timesteps}: {rec.line()}")

    measure(0, None, None, refit=True)
    boot.ann_mode()

    def forward(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        x = batch_input(batch).to(device)
        out = boot.hybrid(x, timesteps) if train_mode == "hybrid" else boot(x)
        return out, _labels(batch).to(device)

    try:
        optimize(
            train_loader,
            steps,
            forward,
            params,
            lr=lr,
            weight_decay=weight_decay,
            every=refit_every,
            measure=lambda step, loss, acc: measure(step, loss, acc, refit=step < steps),
            desc=f"bootstrap T={timesteps}",
            progress=progress,
        )
    finally:
        boot.snn_mode()
        snn.graph_module.zero_grad(set_to_none=True)
        drop_fits(snn.graph_module)
    # The weights moved: coverage is judged against their ranges on all the calibration data.
    refresh_calibrated_ranges(snn, sampling)
    snn.meta["bootstrap"] = {
        "timesteps": timesteps,
        "epochs": epochs,
        "steps": steps,
        "lr": lr,
        "train_mode": train_mode,
        "resample_every": resample_every,
        "segments": fit_options.get("segments", fit_pass.DEFAULT_SEGMENTS),
        "sample_range": list(fit_options.get("sample_range", fit_pass.DEFAULT_SAMPLE_RANGE)),
    }
    return snn, history
