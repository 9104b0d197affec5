"""Quantization-aware ANN fine-tuning before conversion (after QCFS, Bu et al. 2022).

An IF neuron simulated for T steps from half a threshold outputs one of the T + 1 rates
``k / T``: the rounded, clipped value of its (constant) input. ``finetune`` trains the
ANN with that function in place of every ReLU-family activation,

    y = lam * clamp(floor(x * L / lam + 1/2) / L, 0, 1),

L levels (the target T), a trainable clip ``lam`` per layer and a straight-through
gradient for the floor. The weights learn to live with the SNN's quantization before
conversion, at the cost of a few ANN epochs (cheap: no simulation). The result is an
ordinary model with ``nn.Hardtanh(0, lam)`` activations, which ``convert`` turns into IF
neurons whose thresholds are capped at ``lam``.

Example:
    >>> tuned, history = ann2snn.finetune(model, train_loader, levels=4,
    ...                                   calib_data=calib, eval_loader=val)  # doctest: +SKIP
    >>> snn = ann2snn.convert(tuned, calib_data=calib)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch
from torch import fx, nn
from tqdm import tqdm

from ann2snn._checks import positive_int
from ann2snn.calibration import batch_input, iter_inputs
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import finish, replace_submodule
from ann2snn.training.loop import check_epochs, epoch_length, optimize, total_steps

__all__ = ["FinetuneRecord", "QuantClip", "finetune"]

#: Calibration batches read to initialise each clip.
_INIT_BATCHES = 8
#: Activation values kept per layer for the initial percentile.
_INIT_SAMPLES = 1 << 20


class QuantClip(nn.Module):
    """``lam * clamp(floor(x * levels / lam + shift) / levels, 0, 1)`` with a trainable
    ``lam`` and a straight-through floor: the rate an IF neuron reaches in ``levels``
    steps, in the ANN's units.

    Args:
        levels: number of quantization steps L (the target T).
        lam: initial clip (positive).
        shift: offset before the floor, in steps (1/2: the neuron starts half-charged).
        clip: the original activation's clip (ReLU6: 6), which ``lam`` never exceeds.
    """

    def __init__(
        self, levels: int, lam: float, shift: float = 0.5, clip: Optional[float] = None
    ) -> None:
        super().__init__()
        self.levels, self.shift, self.clip = levels, shift, clip
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam.abs().clamp_min(1e-6)
        if self.clip is not None:
            lam = lam.clamp_max(self.clip)
        z = x * (self.levels / lam) + self.shift
        z = z + (z.floor() - z).detach()  # straight-through floor
        return lam * (z / self.levels).clamp(0.0, 1.0)

    def clip_value(self) -> float:
        lam = float(self.lam.detach().abs().clamp_min(1e-6))
        return lam if self.clip is None else min(lam, self.clip)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={self.clip_value():.4g}, shift={self.shift}"


@dataclass
class FinetuneRecord:
    """One row of the finetune history: epochs done, mean loss and training accuracy (%)
    since the previous row, and the quantized ANN's accuracy (%) on the evaluation data."""

    epoch: float
    step: int
    loss: Optional[float] = None
    train_accuracy: Optional[float] = None
    eval_accuracy: Optional[float] = None

    def line(self) -> str:
        parts = [f"epoch {self.epoch:.2f} (step {self.step})"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}, train acc {self.train_accuracy:.2f}%")
        if self.eval_accuracy is not None:
            parts.append(f"quantized ANN acc {self.eval_accuracy:.2f}%")
        return ", ".join(parts)


def _initial_clips(
    gm: fx.GraphModule, names: Sequence[str], calib_data: Iterable[Any], percentile: float
) -> Dict[str, float]:
    """The ``percentile`` of each activation's outputs on a few calibration batches."""
    samples: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    gen = torch.Generator().manual_seed(0)

    def keep(name: str):
        def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            flat = out.detach().flatten().float().cpu()
            if flat.numel() > _INIT_SAMPLES // _INIT_BATCHES:
                pick = torch.randint(flat.numel(), (_INIT_SAMPLES // _INIT_BATCHES,), generator=gen)
                flat = flat[pick]
            samples[name].append(flat)

        return hook

    handles = [gm.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for x in iter_inputs(calib_data, _INIT_BATCHES):
                gm(x.to(device=device, dtype=torch.float32))
    finally:
        for h in handles:
            h.remove()
    clips = {}
    for name in names:
        values = torch.cat(samples[name])
        positive = values[values > 0]
        lam = float(torch.quantile(positive, percentile / 100)) if positive.numel() else 1.0
        clips[name] = lam if lam > 0 else 1.0
    return clips


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    levels: int = 4,
    epochs: float = 1,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    calib_data: Optional[Iterable[Any]] = None,
    init_percentile: float = 99.0,
    eval_loader: Optional[Iterable[Any]] = None,
    evals_per_epoch: int = 1,
    leaf_modules: Iterable[Type[nn.Module]] = (),
    concrete_args: Optional[Dict[str, Any]] = None,
    progress: bool = True,
) -> Tuple[fx.GraphModule, List[FinetuneRecord]]:
    """Fine-tune an ANN with quantized, clipped activations (QCFS) before conversion.

    Every ReLU-family activation (ReLU, ReLU6, Hardtanh(0, a), in any spelling) becomes a
    :class:`QuantClip` with ``levels`` steps and its clip initialised to the
    ``init_percentile`` of its outputs on ``calib_data``; Dropout is removed. All weights,
    BatchNorm statistics included, and the clips are trained with Adam (cosine-annealed
    learning rate) on cross-entropy. The returned model has ``nn.Hardtanh(0, lam)``
    activations: convert it with :func:`ann2snn.convert` and simulate it for about
    ``levels`` steps (or more: it converges to the clipped ANN).

    Args:
        model: the trained ANN (not changed: a traced copy is trained).
        train_loader: ``(input, label)`` batches with a length; an epoch is one pass.
        levels: quantization steps L, the target number of time steps.
        epochs: training epochs (may be fractional).
        lr: Adam learning rate (3e-4: the better of 1e-3 and 3e-4 on the width-128 CNN's
            validation images, docs/seeds.md).
        weight_decay: Adam weight decay.
        calib_data: batches that initialise the clips (default: ``train_loader``).
        init_percentile: percentile of the positive activations the clips start at.
        eval_loader: ``(input, label)`` batches on which the quantized ANN is measured at
            the start, ``evals_per_epoch`` times per epoch and at the end.
        evals_per_epoch: measurements per epoch (with ``eval_loader``).
        leaf_modules, concrete_args: as for :func:`ann2snn.convert`'s tracing.
        progress: progress bar and a line per measurement.

    Returns:
        ``(model, history)``: an eval-mode ``fx.GraphModule`` with Hardtanh activations
        (its ``meta['finetune']`` records the settings and clips) and the list of
        :class:`FinetuneRecord`.

    Raises:
        ValueError: on bad options, an empty ``train_loader`` or a model without
            ReLU-family activations.
        ConversionError: when the model cannot be traced.
    """
    from ann2snn.analysis.evaluate import _labels, accuracy
    from ann2snn.api import traced_copy
    from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations

    positive_int("levels", levels)
    positive_int("evals_per_epoch", evals_per_epoch)
    check_epochs(epochs)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not 0 < init_percentile <= 100:
        raise ValueError(f"init_percentile must be in (0, 100], got {init_percentile!r}")
    batches_per_epoch = epoch_length(train_loader)
    calib = calib_data if calib_data is not None else train_loader

    traced = traced_copy("finetune", model, calib, leaf_modules, concrete_args)
    gm = canonicalize_activations(traced.gm)
    acts = [n for n, m in gm.named_modules() if type(m) is Activation]
    if not acts:
        raise ValueError("the model has no ReLU-family activation to fine-tune")
    clips = _initial_clips(gm, acts, traced.calib_data, init_percentile)
    for name in acts:
        act = gm.get_submodule(name)
        clip = None if act.clip is None else float(act.clip)
        lam = clips[name] if clip is None else min(clips[name], clip)
        replace_submodule(gm, name, QuantClip(levels, lam, clip=clip))
    gm = finish(gm)
    device = traced.device

    params = [p for p in gm.parameters() if p.requires_grad]
    steps = total_steps(epochs, batches_per_epoch)
    eval_every = max(1, round(batches_per_epoch / evals_per_epoch))
    history: List[FinetuneRecord] = []

    def measure(step: int, loss: Optional[float], acc: Optional[float]) -> None:
        rec = FinetuneRecord(step / batches_per_epoch, step, loss, acc)
        if eval_loader is not None:
            rec.eval_accuracy = accuracy(gm, eval_loader)
        history.append(rec)
        if progress:
            tqdm.write(f"finetune L={levels}: {rec.line()}")

    measure(0, None, None)
    gm.train()

    def forward(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        x = batch_input(batch).to(device=device, dtype=torch.float32)
        return gm(x), _labels(batch).to(device)

    optimize(
        train_loader,
        steps,
        forward,
        params,
        lr=lr,
        weight_decay=weight_decay,
        every=eval_every,
        measure=measure,
        desc=f"finetune L={levels}",
        progress=progress,
    )
    gm.eval()
    final = {}
    for name in acts:
        lam = gm.get_submodule(name).clip_value()
        final[name] = lam
        replace_submodule(gm, name, nn.Hardtanh(0.0, lam))
    gm = finish(gm)
    gm.meta["finetune"] = {
        "levels": levels,
        "epochs": epochs,
        "steps": steps,
        "lr": lr,
        "init_percentile": init_percentile,
        "clips": final,
    }
    return gm, history
