"""Where the SNN's accuracy gap lives: the ANN, the ANN rounded to T levels, and our SNN.

For each model and T, in one run on the same calibration and test images as
``bench_accuracy.py``:

* ``ANN``: the trained network;
* ``rounded to T levels``: the ANN with every activation clipped at its conversion
  threshold and rounded to the nearest of ``0, 1/T, ..., 1`` of it
  (:func:`ann2snn.analysis.rounding_ceiling.quantized_ann`): what a rate-coded SNN with
  these thresholds
  computes if its spikes arrive perfectly evenly. ANN minus this row is the clipping and
  quantization error of the thresholds; this row minus the SNN is the error of the spike
  dynamics (negative where calibrated potentials round better than to the nearest level);
* ``ours (default)``: ``ann2snn.convert(model, '99.9%', calib_data=...)`` simulated for T.

``--oracle T`` also searches one threshold factor per layer for the rounded ANN at T, over
every combination of ``--factors``, scored **on the test set itself**: an upper bound on
what per-layer threshold choices can give, not a method (models with at most
``--oracle-max-layers`` activation layers)::

    python benchmarks/bench_ceiling.py --threads 1
    python benchmarks/bench_ceiling.py --models fmnist_avgpool_cnn --oracle 4

Writes ``<out>/ceiling.json`` and prints a Markdown table per model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_accuracy import bench_arguments, load_bench_data, load_results  # noqa: E402

import ann2snn  # noqa: E402
from ann2snn.analysis.evaluate import accuracy, evaluate, write_atomic  # noqa: E402
from ann2snn.analysis.rounding_ceiling import quantized_ann, rounded_activations, set_levels  # noqa: E402

FACTORS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.15)


@torch.no_grad()
def oracle(q: torch.nn.Module, loader: DataLoader, levels: int, factors: Sequence[float]) -> Dict:
    """The best per-layer threshold factors of the rounded ANN at ``levels``, on ``loader``."""
    layers = rounded_activations(q)
    set_levels(q, levels)
    best: Dict[str, Any] = {"accuracy": -1.0}
    for combo in itertools.product(factors, repeat=len(layers)):
        for m, f in zip(layers, combo):
            m.factor = f
        acc = accuracy(q, loader)
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "factors": list(combo)}
    for m in layers:
        m.factor = 1.0
    best["combinations"] = len(factors) ** len(layers)
    return best


def run_model(spec: str, args: argparse.Namespace, timesteps: Sequence[int]) -> Dict[str, Any]:
    ann, name, ds, calib, test_loader = load_bench_data(
        spec, args.dataset, args.calib, args.calib_batch, args.test_limit, args.batch_size
    )
    start = time.perf_counter()
    q = quantized_ann(ann, "99.9%", calib_data=calib)
    rounded = {}
    for t in timesteps:
        set_levels(q, t)
        rounded[str(t)] = accuracy(q, test_loader)
    result: Dict[str, Any] = {
        "model": name,
        "dataset": ds,
        "calibration_images": args.calib,
        "test_images": len(test_loader.dataset),
        "rounded": rounded,
        "rounded_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"[{name}] rounded: {rounded} ({result['rounded_seconds']}s)", flush=True)
    start = time.perf_counter()
    snn = ann2snn.convert(ann, "99.9%", calib_data=calib)
    curve = evaluate(snn, test_loader, timesteps)
    result["ann_accuracy"] = curve.ann_accuracy
    result["ours"] = {str(t): a for t, a in curve.accuracy.items()}
    result["ours_seconds"] = round(time.perf_counter() - start, 1)
    print(f"[{name}] ours: {result['ours']} ({result['ours_seconds']}s)", flush=True)
    if args.oracle:
        layers = len(rounded_activations(q))
        if layers > args.oracle_max_layers:
            print(f"[{name}] oracle skipped: {layers} activation layers", flush=True)
        else:
            result["oracle"] = {"timesteps": args.oracle, "factors_tried": list(args.factors)}
            result["oracle"].update(oracle(q, test_loader, args.oracle, args.factors))
            print(f"[{name}] oracle: {result['oracle']}", flush=True)
    return result


def markdown(res: Dict[str, Any], timesteps: Sequence[int]) -> str:
    head = "| " + res["model"] + " | " + " | ".join(f"T={t}" for t in timesteps) + " |"
    lines = [head, "|---|" + "---:|" * len(timesteps)]
    rows = (
        ("ANN", {str(t): res["ann_accuracy"] for t in timesteps}),
        ("ANN rounded to T levels", res["rounded"]),
        ("ours (default)", res["ours"]),
    )
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(f"{vals[str(t)]:.2f}" for t in timesteps) + " |")
    diff = {str(t): res["ours"][str(t)] - res["rounded"][str(t)] for t in timesteps}
    lines.append(
        "| ours − rounded | " + " | ".join(f"{diff[str(t)]:+.2f}" for t in timesteps) + " |"
    )
    if "oracle" in res:
        o = res["oracle"]
        lines.append(
            f"\nOracle (scored on the test set) at T={o['timesteps']}: {o['accuracy']:.2f} "
            f"with per-layer factors {o['factors']} ({o['combinations']} combinations)."
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = bench_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--oracle", type=int, default=None, metavar="T")
    parser.add_argument("--oracle-max-layers", type=int, default=3)
    parser.add_argument(
        "--factors", type=lambda s: [float(v) for v in s.split(",")], default=list(FACTORS)
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.timesteps.split(",")]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ceiling.json")
    results = load_results(path, argv)
    for spec in args.models:
        res = run_model(spec, args, ts)
        results["models"][res["model"]] = res
        write_atomic(path, json.dumps(results, indent=1).encode())
        print(markdown(res, ts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
