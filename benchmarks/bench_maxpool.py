"""Measure the max-pooling conversion methods on the Fashion-MNIST max-pooling CNN.

Each method of ``ann2snn.convert(..., maxpool=...)`` converts the bundled
``fmnist_maxpool_cnn`` (calibration on the first 2,000 training images, mode 99.9%), then
one simulation to the largest T gives the accuracy on the test set at every T.

Usage::

    python benchmarks/bench_maxpool.py                       # full 10k test set
    python benchmarks/bench_maxpool.py --limit 1000 --methods auto cumulative
    python benchmarks/bench_maxpool.py --checkpoint /tmp/fmnist_maxpool_cnn.pt

Prints a markdown table (rows: methods, columns: T) for docs/architectures.md.
"""

from __future__ import annotations

import argparse
import time
from typing import List, Optional, Sequence

import torch

import ann2snn
from ann2snn.converter_passes.convert_maxpool import MAXPOOL_METHODS
from ann2snn.data.datasets import make_loader
from ann2snn.models import load_checkpoint, load_pretrained, model_from_checkpoint

TIMESTEPS = (4, 8, 16, 32, 64, 128)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(MAXPOOL_METHODS))
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--calib", type=int, default=2000, help="calibration images")
    parser.add_argument("--mode", default="99.9%")
    parser.add_argument("--checkpoint", default=None, help="default: the bundled one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    else:
        model = load_pretrained("fmnist_maxpool_cnn")
    calib = make_loader("fashion-mnist", "train", batch_size=500, limit=args.calib)
    test = make_loader("fashion-mnist", "test", batch_size=args.batch_size, limit=args.limit)
    rows: List[str] = []
    ann_acc = None
    for method in args.methods:
        start = time.time()
        snn = ann2snn.convert(model, args.mode, calib, maxpool=method)
        curve = ann2snn.evaluate(snn, test, timesteps=TIMESTEPS)
        ann_acc = curve.ann_accuracy
        if not rows:
            options = {k: v for k, v in snn.meta.items() if k not in ("input_shape", "maxpool")}
            print(f"conversion options: {options}", flush=True)
        cells = " | ".join(f"{curve.accuracy[t]:.2f}" for t in TIMESTEPS)
        rows.append(f"| `{method}` | {cells} |")
        print(f"{method}: {cells}  ({time.time() - start:.0f} s)", flush=True)
    header = "| method | " + " | ".join(f"T={t}" for t in TIMESTEPS) + " |"
    print()
    print(f"ANN accuracy: {ann_acc:.2f}% ({curve.samples} test images), mode {args.mode}")
    print(header)
    print("|" + "---|" * (len(TIMESTEPS) + 1))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
