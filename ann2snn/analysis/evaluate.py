"""Accuracy versus time steps, read from one simulation to the largest T."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ann2snn import distributed
from ann2snn._checks import device_of, positive_int
from ann2snn.analysis.saturation import RangeTally, RangeWarning, range_report, range_warnings
from ann2snn.calibration import batch_count_bound, batch_input
from ann2snn.input_checks import logits_of
from ann2snn.runtime.recorders import SpikeRecorder
from ann2snn.runtime.spiking_model import SpikingModel

DEFAULT_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class AccuracyCurve:
    """Accuracy (percent) of an SNN at each number of time steps.

    Attributes:
        accuracy: T -> accuracy in percent.
        ann_accuracy: the ANN's accuracy on the same data, when the ANN is known.
        output_error: T -> mean |SNN output - ANN output| / mean |ANN output|, when known.
        samples: number of evaluated samples.
        meta: conversion settings (mode, v_init ...).
        saturation: the share of (input, neuron) pairs that saturated at the largest T,
            the share of inputs beyond the calibrated range and the clip error, overall
            and per IF layer (:mod:`ann2snn.analysis.saturation`); empty when not
            measured.
    """

    accuracy: Dict[int, float]
    ann_accuracy: Optional[float] = None
    output_error: Dict[int, float] = field(default_factory=dict)
    samples: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)
    saturation: Dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A readable table of accuracy per T, beside the ANN's accuracy."""
        lines = []
        if self.ann_accuracy is not None:
            lines.append(f"ANN accuracy: {self.ann_accuracy:.2f}%  ({self.samples} samples)")
        header = f"{'T':>6}  {'SNN acc %':>9}"
        if self.ann_accuracy is not None:
            header += f"  {'vs ANN':>7}"
        if self.output_error:
            header += f"  {'rel. output error':>17}"
        lines += [header, "-" * len(header)]
        for t in sorted(self.accuracy):
            row = f"{t:>6}  {self.accuracy[t]:>9.2f}"
            if self.ann_accuracy is not None:
                row += f"  {self.accuracy[t] - self.ann_accuracy:>+7.2f}"
            if self.output_error:
                row += f"  {self.output_error.get(t, float('nan')):>17.4f}"
            lines.append(row)
        lines += range_report(self.saturation)
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        d["output_error"] = {str(k): v for k, v in self.output_error.items()}
        return d

    def to_json(self, path: Optional[str] = None) -> str:
        """The curve as JSON; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_atomic(path, text.encode())
        return text

    def to_csv(self, path: Optional[str] = None) -> str:
        """Rows ``T, snn_accuracy, ann_accuracy, output_error``; written to ``path`` if given."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["timesteps", "snn_accuracy", "ann_accuracy", "output_error"])
        for t in sorted(self.accuracy):
            w.writerow([t, f"{self.accuracy[t]:.4f}", self.ann_accuracy, self.output_error.get(t)])
        text = buf.getvalue()
        if path is not None:
            write_atomic(path, text.encode())
        return text

    def plot(self, path: str, title: Optional[str] = None) -> None:
        """Save a PNG plot of accuracy versus T (log2 axis) with the ANN's accuracy."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ts = sorted(self.accuracy)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot(ts, [self.accuracy[t] for t in ts], "o-", label="SNN")
        if self.ann_accuracy is not None:
            ax.axhline(self.ann_accuracy, color="k", ls="--", lw=1, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title or f"SNN accuracy vs time steps ({self.meta.get('mode', '')})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        write_atomic(path, buf.getvalue())


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The file gets the permissions a plain ``open(path, "wb")`` would give it (``0o666``
    less the umask), not ``mkstemp``'s private ``0o600``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _labels(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    if isinstance(batch, dict):
        for key in ("label", "labels", "target", "targets", "y"):
            if key in batch:
                return batch[key]
    raise TypeError("evaluation batches must be (input, label) pairs or dicts with a 'label' key")


def _check_timesteps(timesteps: Any) -> List[int]:
    """The sorted distinct T values of ``timesteps`` (one T, or a sequence of them).

    Raises:
        ValueError: for anything but positive integers, or an empty sequence.
    """
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__iter__"):
        timesteps = [timesteps]
    elif isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.reshape(-1).tolist()
    try:
        ts = sorted({positive_int("timesteps", t) for t in timesteps})
    except ValueError:
        raise ValueError(f"timesteps must be positive integers, got {list(timesteps)}") from None
    if not ts:
        raise ValueError("timesteps must name at least one number of time steps, got none")
    return ts


@torch.no_grad()
def accuracy(
    model: nn.Module, loader: Iterable[Any], *, max_batches: Optional[int] = None
) -> float:
    """Top-1 accuracy (percent) of a model that maps a batch to logits (an ANN, a rounded
    ANN, or an SNN wrapped to a fixed T), over ``(input, label)`` batches.

    The model is put in eval mode for the pass and restored afterwards.

    Raises:
        ValueError: ``loader`` yields no batch, or the model returns several tensors.
    """
    device = device_of(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            y = _labels(batch).to(device)
            logits = logits_of(model(batch_input(batch).to(device)))
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the data for the accuracy yielded no batch")
    return 100.0 * correct / total


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    *,
    ann: Optional[nn.Module] = None,
    max_batches: Optional[int] = None,
    progress: bool = False,
    encoding: Optional[str] = None,
    seed: Optional[int] = None,
    time_major: bool = False,
    **convert_kwargs: Any,
) -> AccuracyCurve:
    """Accuracy at every requested T from ONE simulation to the largest T per batch.

    Args:
        model: a :class:`SpikingModel`, or an ANN, which is then converted with
            ``convert_kwargs`` calibrating on ``loader``.
        loader: batches of ``(input, label)``.
        timesteps: the T values to report.
        ann: the ANN for reference (default: the SNN's own copy of its ANN).
        max_batches: evaluate only this many batches.
        encoding: how static inputs enter the SNN: ``"current"`` (default), ``"poisson"``
            or ``"bernoulli"`` (:mod:`ann2snn.runtime.encoding`).
        seed: seed of a random encoding; batch ``i`` uses ``seed + i`` (reproducible runs).
        time_major: for inputs that change over time (one more dimension than the
            model's input), whether batches are ``[T, B, ...]``; by default they are
            ``[B, T, ...]``, as a DataLoader stacks sequences. The SNN gets one frame per
            step (the largest requested T must not exceed the sequence length); the ANN
            reference sees the mean frame.

    Returns:
        An :class:`AccuracyCurve`.

    Raises:
        ValueError: no batch, bad ``timesteps``, or a model that returns several tensors
            (a tuple or dict holding only the logits is fine).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, SpikingModel):
        from ann2snn.api import convert

        ann = model if ann is None else ann
        model = convert(model, calib_data=loader, **convert_kwargs)
    ts = _check_timesteps(timesteps)
    ann = ann if ann is not None else model.ann
    # float64/float16 data: the SNN casts its input to float32; the ANN reference gets
    # its own parameters' dtype
    ann_dtype = (
        next((p.dtype for p in ann.parameters()), torch.float32) if ann is not None else None
    )
    device = device_of(model)
    sharded = distributed.is_distributed()
    if sharded:  # this rank's batches only; counts are summed over ranks below
        loader, max_batches = distributed.shard(loader, max_batches), None
        progress = progress and distributed.is_main()
    t_max = ts[-1]
    correct = {t: 0 for t in ts}
    err_sum = {t: 0.0 for t in ts}
    ann_norm = 0.0
    ann_correct = 0
    total = 0
    n_batches = batch_count_bound(loader, max_batches)
    bar = tqdm(total=n_batches, desc=f"evaluating T<={t_max}", disable=not progress, leave=False)
    tally = RangeTally(t_max, model)
    with distributed.failure_check("evaluation"), SpikeRecorder(model, ranges=True) as rec:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = batch_input(batch).to(device)
            y = _labels(batch).to(device)
            if model.is_sequence(x) and not time_major:
                x = x.transpose(0, 1)  # [B, T, ...] -> [T, B, ...]
            static = x.mean(0) if model.is_sequence(x) else x
            if static.is_floating_point():
                static = static.to(ann_dtype or torch.float32)
            ref = logits_of(ann(static)) if ann is not None else None
            if ref is not None:
                ann_correct += int((ref.argmax(1) == y).sum())
                ann_norm += float(ref.abs().mean(dim=tuple(range(1, ref.dim()))).sum())
            batch_seed = None if seed is None else int(seed) + i
            for t, out in model.cumulative_outputs(x, ts, encoding=encoding, seed=batch_seed):
                cum = logits_of(out)
                correct[t] += int((cum.argmax(1) == y).sum())
                if ref is not None:
                    avg = cum / t
                    dims = tuple(range(1, ref.dim()))
                    err_sum[t] += float((avg - ref).abs().mean(dim=dims).sum())
            tally.add_spikes(rec.saturation_counts(t_max))
            tally.add_inputs(static.float())
            rec.clear()
            total += int(y.shape[0])
            bar.update(1)
    bar.close()
    if sharded:
        ints = distributed.all_reduce_sum(
            [correct[t] for t in ts] + [ann_correct, total], dtype=torch.int64
        )
        floats = distributed.all_reduce_sum([err_sum[t] for t in ts] + [ann_norm])
        correct, err_sum = dict(zip(ts, ints)), dict(zip(ts, floats))
        ann_correct, total, ann_norm = ints[-2], ints[-1], floats[-1]
        tally.all_reduce()
    if total == 0:
        raise ValueError("the evaluation data yielded no batch")
    curve = AccuracyCurve(
        accuracy={t: 100.0 * correct[t] / total for t in ts},
        ann_accuracy=100.0 * ann_correct / total if ann is not None else None,
        output_error=(
            {t: err_sum[t] / max(ann_norm, 1e-12) for t in ts} if ann is not None else {}
        ),
        samples=total,
        meta=dict(model.meta),
        saturation=tally.summary(),
    )
    for message in range_warnings(curve.saturation):
        warnings.warn(message, RangeWarning, stacklevel=3)  # past torch.no_grad's wrapper
    if encoding not in (None, "current"):
        curve.meta["input_encoding"] = encoding
        curve.meta["encoding_seed"] = seed
    return curve
