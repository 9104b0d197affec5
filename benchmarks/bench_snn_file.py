"""Loading an SNN file: the graph description (format 2) against rebuilding the ANN and
re-running the conversion passes (format 1), side by side in one run (issue 15).

For each bundled model: convert on 256 calibration images, save both formats, then time
``ann2snn.load_snn`` of each (median of ``--repeats``), check that both give the SNN's
outputs bit for bit, and print load times, their ratio and the file sizes.

    python benchmarks/bench_snn_file.py [--models mnist_cnn fmnist_resnet] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import torch

import ann2snn
from ann2snn.data.datasets import load_dataset
from ann2snn.models import MODEL_DATASETS, MODELS


def _median_load(path: pathlib.Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ann2snn.load_snn(path, trust_checkpoint=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} loads")
    header = (
        f"{'model':<20} {'format 2 (s)':>12} {'format 1 (s)':>12} {'ratio':>6} {'sizes (MB)':>13}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            images = load_dataset(MODEL_DATASETS[name], "train", limit=264).tensors[0]
            loaded = ann2snn.load_model(name)
            snn = ann2snn.convert(loaded.module, calib_data=[images[:256]])
            paths = {v: pathlib.Path(tmp) / f"{name}.v{v}.pt" for v in (1, 2)}
            for version, path in paths.items():
                ann2snn.save_snn(snn, path, format_version=version)
            expected = snn(images[256:], timesteps=8)
            for path in paths.values():
                again = ann2snn.load_snn(path, trust_checkpoint=True)
                if not torch.equal(again(images[256:], timesteps=8), expected):
                    raise SystemExit(f"{path.name}: outputs differ after loading")
            v2, v1 = (_median_load(paths[v], args.repeats) for v in (2, 1))
            sizes = "/".join(f"{paths[v].stat().st_size / 1e6:.2f}" for v in (2, 1))
            print(f"{name:<20} {v2:>12.3f} {v1:>12.3f} {v1 / v2:>5.1f}x {sizes:>13}")


if __name__ == "__main__":
    main()
