"""Conversion options compared on validation images carved from the training set.

Settings are chosen here, never on the test set: a seeded permutation of the training
images (the one ``bench_accuracy.py`` draws its calibration set from) gives the first
``--calib`` images for calibration and the next ``--val`` for validation. Each
configuration is converted on the same calibration images and evaluated on the same
validation images at every T, with its conversion time::

    python benchmarks/bench_validation.py fmnist_resnet20 \\
        '{"512": {"sweep_samples": 512}, "256": {"sweep_samples": 256}}'

MODEL is a bundled model name or a checkpoint of ``ann2snn.models.train``; CONFIGS a JSON
object mapping a label to keyword arguments of ``ann2snn.convert``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.data.datasets import load_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_accuracy import _model, seeded_order  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="bundled model name or checkpoint file")
    p.add_argument("configs", help="JSON: {label: convert kwargs}")
    p.add_argument("--timesteps", default="2,4,8,16,32,64")
    p.add_argument("--calib", type=int, default=2000)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # range warnings: the numbers are what is compared
    configs = json.loads(args.configs)
    ts = [int(t) for t in args.timesteps.split(",")]
    ann, _, dataset = _model(args.model)
    if dataset is None:
        raise SystemExit(f"{args.model}: not a bundled model or training checkpoint")
    train = load_dataset(dataset, "train")
    perm = seeded_order(len(train))
    calib = [x for x, _ in DataLoader(Subset(train, perm[: args.calib]), batch_size=200)]
    val = DataLoader(Subset(train, perm[args.calib : args.calib + args.val]), batch_size=500)
    ann2snn.convert(ann, calib_data=calib[:1], sweep_samples=16)  # warm-up: kernel build
    print(f"{args.model}: {args.calib} calibration and {args.val} validation training images")
    for label, kwargs in configs.items():
        start = time.perf_counter()
        snn = ann2snn.convert(ann, calib_data=calib, **kwargs)
        seconds = time.perf_counter() - start
        curve = ann2snn.evaluate(snn, val, ts)
        cells = " ".join(f"T{t}:{curve.accuracy[t]:.2f}" for t in ts)
        print(f"{label:28s} conv {seconds:5.1f}s ANN {curve.ann_accuracy:.2f} | {cells}")


if __name__ == "__main__":
    main()
