"""Conversion time versus one plain ANN pass over the calibration images.

Prints, from one run, the wall time of ``ann2snn.convert`` (tracing, all passes and
calibration on N images) and of one plain ANN forward pass over the same N images, and
their ratio (goals: at most 3x for the small bundled networks, at most 5x for the deep
ones: ``fmnist_resnet20``, ``fmnist_vgg16``, ``fmnist_mobilenetv2``, ``fmnist_densenet``).

    python benchmarks/bench_convert.py [--model fmnist_avgpool_cnn] [--images 2000]
    python benchmarks/bench_convert.py --model fmnist_resnet20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.data.datasets import load_dataset
from ann2snn.models import MODEL_DATASETS, get_model, load_pretrained

#: The deep reference networks (issue 19), whose goal is 5x.
DEEP = ("fmnist_resnet20", "fmnist_vgg16", "fmnist_mobilenetv2", "fmnist_densenet")


def _model(name: str) -> torch.nn.Module:
    try:
        return load_pretrained(name)
    except Exception:
        return get_model(name).eval()  # timing does not depend on trained weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist_avgpool_cnn")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--mode", default="99.9%")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = _model(args.model)
    data = load_dataset(MODEL_DATASETS[args.model], "train")
    loader = DataLoader(Subset(data, range(args.images)), batch_size=args.batch_size)
    batches = [x for x, _ in loader]  # decode once: both timings see in-memory tensors
    ann2snn.convert(model, args.mode, batches[:1])  # warm up (kernel build, allocator)

    ann_times, conv_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                model(x)
        ann_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ann2snn.convert(model, args.mode, batches)
        conv_times.append(time.perf_counter() - t0)
    ann_t, conv_t = statistics.median(ann_times), statistics.median(conv_times)
    print(
        f"model {args.model}, {args.images} calibration images, mode {args.mode!r}, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(f"one ANN pass over the images : {ann_t * 1000:8.1f} ms")
    print(f"convert (trace+passes+calib) : {conv_t * 1000:8.1f} ms")
    goal = 5 if args.model in DEEP else 3
    print(f"ratio convert / ANN pass     : {conv_t / ann_t:8.2f}x  (goal <= {goal}x)")


if __name__ == "__main__":
    main()
