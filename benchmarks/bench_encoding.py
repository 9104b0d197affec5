"""Accuracy versus T with the input as a constant current, Poisson spikes or Bernoulli
spikes, side by side in one run (issue 15, point 5).

Each model is converted once with the defaults except ``maxpool='cumulative'`` (max pooling
before the first neurons is exact for a constant current only), on the same seeded
calibration images as ``bench_accuracy.py``, and evaluated on the same test images with
each encoding (seed 0; batch i uses seed i)::

    python benchmarks/bench_encoding.py --models mnist_cnn fmnist_avgpool_cnn \\
        --test-limit 2000 --timesteps 8,16,32,64,128 --out docs/encoding
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_accuracy import bench_arguments, load_bench_data, load_results  # noqa: E402

import ann2snn  # noqa: E402
from ann2snn.analysis.evaluate import write_atomic  # noqa: E402

ENCODINGS = ("current", "poisson", "bernoulli")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = bench_arguments(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "encoding.json")
    results = load_results(path, argv)
    for spec in args.models:
        data = load_bench_data(
            spec, args.dataset, args.calib, args.calib_batch, args.test_limit, args.batch_size
        )
        snn = ann2snn.convert(data.ann, calib_data=data.calib, maxpool="cumulative")
        rows = {}
        for encoding in ENCODINGS:
            start = time.perf_counter()
            curve = ann2snn.evaluate(snn, data.test, timesteps, encoding=encoding, seed=0)
            rows[encoding] = {
                "accuracy": curve.accuracy,
                "seconds": round(time.perf_counter() - start, 1),
            }
            ann_accuracy, samples = curve.ann_accuracy, curve.samples
        results["models"][data.name] = {
            "ann_accuracy": ann_accuracy,
            "samples": samples,
            "encodings": rows,
        }
        print(f"\n{data.name}: ANN {ann_accuracy:.2f}% on {samples} test images")
        print(f"{'T':>5} " + " ".join(f"{e:>10}" for e in ENCODINGS))
        for t in timesteps:
            print(f"{t:>5} " + " ".join(f"{rows[e]['accuracy'][t]:>10.2f}" for e in ENCODINGS))
        write_atomic(path, json.dumps(results, indent=1).encode())
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
