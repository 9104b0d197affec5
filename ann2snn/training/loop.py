"""What the two training routines (``bootstrap`` and ``finetune``) share: checking the
training data and the schedule, and drawing batches across epochs."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F


def check_epochs(epochs: Any) -> float:
    """``epochs`` if it is a positive (possibly fractional) number."""
    if not (isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0):
        raise ValueError(f"epochs must be a positive number, got {epochs!r}")
    return epochs


def epoch_length(train_loader: Iterable[Any]) -> int:
    """Batches in one pass over ``train_loader``, which must be re-iterable and sized.

    Raises:
        ValueError: for a one-shot iterator, an unsized iterable or an empty one.
    """
    if isinstance(train_loader, Iterator):
        raise ValueError(
            "train_loader is read once per epoch: pass a DataLoader or a list of batches, "
            "not an iterator (a generator, or iter() of a loader)"
        )
    try:
        batches = len(train_loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError("train_loader must have a length (a DataLoader or a list)") from exc
    if batches == 0:
        raise ValueError("train_loader is empty")
    return batches


def total_steps(epochs: float, batches_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * batches_per_epoch))


def endless(train_loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``train_loader``, one epoch after another, until the caller stops.

    Raises:
        ValueError: when a pass yields no batch although the loader has a length.
    """
    while True:
        drawn = False
        for batch in train_loader:
            drawn = True
            yield batch
        if not drawn:
            raise ValueError("train_loader yielded no batch although its length is positive")


def optimize(
    train_loader: Iterable[Any],
    steps: int,
    forward: Callable[[Any], Tuple[torch.Tensor, torch.Tensor]],
    params: Sequence[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    every: int,
    measure: Callable[[int, float, float], None],
    desc: str,
    progress: bool,
) -> None:
    """``steps`` steps of Adam on ``params`` (learning rate ``lr`` annealed by a cosine
    schedule) against the cross-entropy of ``forward(batch) -> (logits, labels)``, under a
    progress bar labelled ``desc`` (shown when ``progress``).

    Every ``every`` steps and at the last one, ``measure(step, mean loss, accuracy %)``
    gets the figures since the previous call.
    """
    from tqdm import tqdm

    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_sum, correct, seen = 0.0, 0, 0
    with tqdm(total=steps, desc=desc, disable=not progress) as bar:
        for step, batch in zip(range(1, steps + 1), endless(train_loader)):
            out, y = forward(batch)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}%")
            if step % every == 0 or step == steps:
                measure(step, loss_sum / seen, 100.0 * correct / seen)
                loss_sum, correct, seen = 0.0, 0, 0
