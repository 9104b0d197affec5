"""What ``ann2snn bootstrap`` and ``ann2snn finetune`` share: the training and evaluation
arguments, the data they open and the shuffled training loader."""

from __future__ import annotations

import argparse
from typing import Any, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ann2snn.cli.common import CLIError, Opened, data_options, positive_float, positive_int
from ann2snn.cli.data_sources import DataSource, open_data


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: float, lr: float) -> Any:
    """``--train``, ``--train-limit``, ``--epochs``, ``--lr`` and ``--seed``; returns the
    argument group so that a command can add its own."""
    tr = parser.add_argument_group("training")
    tr.add_argument(
        "--train",
        metavar="DATA",
        help="labelled training data (dataset names use the train split; default: the "
        "dataset the model was trained on, when known)",
    )
    tr.add_argument(
        "--train-limit", type=positive_int, metavar="N", help="train on the first N examples"
    )
    tr.add_argument(
        "--epochs",
        type=positive_float,
        default=epochs,
        metavar="E",
        help="passes over the training data, may be fractional (default: %(default)s)",
    )
    tr.add_argument(
        "--lr", type=positive_float, default=lr, help="Adam learning rate (default: %(default)s)"
    )
    tr.add_argument("--seed", type=int, default=0, help="shuffling seed (default: %(default)s)")
    return tr


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--limit`` and ``--report``."""
    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--data",
        metavar="DATA",
        help="labelled evaluation data (test split for dataset names; default: the dataset "
        "the model was trained on, when known)",
    )
    ev.add_argument(
        "--limit", type=positive_int, metavar="N", help="evaluate on the first N examples"
    )
    ev.add_argument(
        "--report",
        metavar="LIST",
        help="time steps to report besides T, e.g. 4,8,16,32 (default: T only)",
    )


def open_training_data(
    args: argparse.Namespace, opened: Opened
) -> Tuple[DataSource, Optional[DataSource], str]:
    """The training data, the evaluation data (None when none is known) and the training
    data's spec (the default calibration data)."""
    train_spec = args.train or opened.hints.dataset
    if not train_spec:
        raise CLIError(
            "missing training data: pass --train DATA with labelled training examples (e.g. "
            "--train fashion-mnist, an image folder, or an .npz/.pt file with x and y)."
        )
    train = open_data(
        train_spec,
        split="train",
        options=data_options(args, args.train_limit, opened.hints),
        need_labels=True,
    )
    eval_spec = (
        args.data or opened.hints.dataset or (train.dataset_name if not args.train else None)
    )
    evaluation = None
    if eval_spec:
        evaluation = open_data(
            eval_spec,
            split="test",
            options=data_options(args, args.limit, opened.hints),
            need_labels=True,
        )
    return train, evaluation, train_spec


def open_calibration_or_training(
    args: argparse.Namespace, opened: Opened, train_spec: str
) -> DataSource:
    """``--calib`` (default: the training data), limited by ``--calib-limit``."""
    return open_data(
        args.calib or train_spec,
        split="train",
        options=data_options(args, args.calib_limit, opened.hints),
    )


def shuffled_loader(train: DataSource, args: argparse.Namespace) -> DataLoader:
    """The training data in ``--batch-size`` batches, reshuffled every epoch by ``--seed``."""
    return DataLoader(
        train.loader.dataset,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        num_workers=0,
    )
