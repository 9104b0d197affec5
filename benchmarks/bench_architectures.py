"""ANN vs SNN accuracy of the bundled Fashion-MNIST architectures, with the library defaults.

Each model converts with ``ann2snn.convert(model, '99.9%', calib)`` (calibration on the
first 2,000 training images, every other option at its default unless ``--option`` says
otherwise), then one simulation to the largest T gives the test accuracy at every T.

Usage::

    python benchmarks/bench_architectures.py                      # full 10k test set
    python benchmarks/bench_architectures.py fmnist_resnet --limit 1000
    python benchmarks/bench_architectures.py --option channelwise=False

Prints a markdown table (rows: models, columns: ANN and T) for docs/architectures.md.
"""

from __future__ import annotations

import argparse
import ast
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

import ann2snn
from ann2snn.data.datasets import make_loader
from ann2snn.models import load_pretrained

MODELS = ("fmnist_resnet", "fmnist_maxpool_cnn")
TIMESTEPS = (16, 32, 64, 128)


def parse_options(items: Sequence[str]) -> Dict[str, Any]:
    """``['key=value', ...]`` -> keyword arguments of ``convert`` (values as Python literals)."""
    options: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option expects key=value, got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--calib", type=int, default=2000, help="calibration images")
    parser.add_argument("--mode", default="99.9%")
    parser.add_argument("--option", action="append", default=[], help="convert() key=value")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = parse_options(args.option)

    calib = make_loader("fashion-mnist", "train", batch_size=500, limit=args.calib)
    test = make_loader("fashion-mnist", "test", batch_size=args.batch_size, limit=args.limit)
    rows: List[str] = []
    for name in args.models:
        start = time.time()
        model = load_pretrained(name)
        snn = ann2snn.convert(model, args.mode, calib, **options)
        curve = ann2snn.evaluate(snn, test, timesteps=TIMESTEPS)
        settings = {k: v for k, v in snn.meta.items() if k not in ("input_shape", "model_class")}
        print(f"{name}: conversion options {settings}", flush=True)
        cells = " | ".join(f"{curve.accuracy[t]:.2f}" for t in TIMESTEPS)
        gap = curve.ann_accuracy - curve.accuracy[TIMESTEPS[-1]]
        rows.append(
            f"| `{name}` | {curve.ann_accuracy:.2f} | {cells} | {gap:+.2f} | {curve.samples} |"
        )
        print(rows[-1] + f"  ({time.time() - start:.0f} s)", flush=True)
    print()
    print(
        "| model | ANN | "
        + " | ".join(f"T={t}" for t in TIMESTEPS)
        + f" | ANN - SNN at T={TIMESTEPS[-1]} | test images |"
    )
    print("|" + "---|" * (len(TIMESTEPS) + 4))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
