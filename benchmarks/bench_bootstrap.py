"""Plain conversion versus bootstrap fine-tuning at very few time steps (issue 5).

For each model, two conversions (calibration on the first --calib-limit training
images) are measured on the full test set at T = 4, 8, 16, 32:

* ``basic``: layer-wise 99.9% normalization, v_init 0.5, no low-T tuning (the pipeline
  the issue was written against: ``channelwise=False, threshold_search=False,
  potential_calibration=False`` where ``convert`` has those options);
* ``default``: ``ann2snn.convert``'s current defaults.

With ``--finetune`` (or ``--start finetune``), for each target T the ANN is first
fine-tuned with T-level quantized activations (``ann2snn.finetune``, --finetune-epochs)
and converted with the defaults: the ``finetune`` rows.

Then, for each ``--start`` conversion (``basic``, ``default`` and/or ``finetune``: the
fine-tuned one for the same T) and each target T, a copy of that conversion is
bootstrap-fine-tuned for --epochs passes over the training set (0: none) and measured
again at the same T's. Prints a markdown table (changes against both plain
conversions) and writes the numbers as JSON.

    python benchmarks/bench_bootstrap.py [--models fmnist_avgpool_cnn,...] [--targets 4,8]
        [--epochs 1] [--start basic,default] [--threads 1] [--json results.json]

``--checkpoint NAME=PATH`` replaces a bundled checkpoint (a file written by
``python -m ann2snn.models.train``), e.g. while the bundled one is being retrained.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from typing import Any, Dict, List

import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.data.datasets import load_dataset
from ann2snn.models import MODEL_DATASETS, load_pretrained, model_from_checkpoint

DEFAULT_MODELS = "fmnist_avgpool_cnn,fmnist_maxpool_cnn,fmnist_resnet"


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _model(name: str, overrides: Dict[str, str]) -> torch.nn.Module:
    if name in overrides:
        ckpt = torch.load(overrides[name], map_location="cpu", weights_only=False)
        return model_from_checkpoint(ckpt).eval()
    return load_pretrained(name)


def _changes(acc: Dict[int, float], row: Dict[str, Any], report: List[int]) -> str:
    """Table cells: accuracy (change against the basic / the default conversion)."""
    return " | ".join(
        f"{acc[t]:.2f} ({acc[t] - row['basic'][t]:+.2f} / {acc[t] - row['default'][t]:+.2f})"
        for t in report
    )


def _shuffled(train: Any, args: argparse.Namespace) -> DataLoader:
    """The training set, reshuffled every epoch by ``--seed`` (which also seeds torch)."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    return DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=gen)


BASIC_OPTIONS = {"channelwise": False, "threshold_search": False, "potential_calibration": False}


def basic_options() -> Dict[str, Any]:
    """The options of the basic conversion that this version of ``convert`` accepts."""
    accepted = inspect.signature(ann2snn.convert).parameters
    return {k: v for k, v in BASIC_OPTIONS.items() if k in accepted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--targets", default="4,8", help="target T values to bootstrap for")
    p.add_argument("--report", default="4,8,16,32", help="T values measured")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resample-every", type=float, default=0.25)
    p.add_argument("--segments", type=int, default=None)
    p.add_argument("--train-modes", default="hybrid", help="comma list of hybrid, ann")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calib-limit", type=int, default=2000)
    p.add_argument("--train-limit", type=int, default=None, help="default: all 60,000")
    p.add_argument("--test-limit", type=int, default=None, help="default: all 10,000")
    p.add_argument("--monitor-limit", type=int, default=1000, help="test images per check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    p.add_argument(
        "--start", default="basic", help="comma list: bootstrap from the basic and/or default"
    )
    p.add_argument("--finetune", action="store_true", help="add the finetune rows")
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.checkpoint)
    targets, report = _ints(args.targets), sorted(set(_ints(args.report)))
    starts = [s for s in args.start.split(",") if s]
    if not starts or any(s not in ("basic", "default", "finetune") for s in starts):
        p.error(f"--start takes basic, default and/or finetune, got {args.start!r}")
    finetuning = args.finetune or "finetune" in starts
    results: Dict[str, Any] = {"settings": vars(args), "models": {}}

    for name in [m for m in args.models.split(",") if m]:
        dataset = MODEL_DATASETS[name]
        train = load_dataset(dataset, "train", limit=args.train_limit)
        test = load_dataset(dataset, "test", limit=args.test_limit)
        test_loader = DataLoader(test, batch_size=500)
        monitor = DataLoader(Subset(test, range(min(args.monitor_limit, len(test)))), 500)
        calib = DataLoader(Subset(train, range(args.calib_limit)), batch_size=250)
        model = _model(name, overrides)
        conversions = {"basic": basic_options(), "default": {}}
        row: Dict[str, Any] = {"options": {"basic": conversions["basic"]}, "bootstrap": {}}
        snns = {}
        for kind, options in conversions.items():
            t0 = time.perf_counter()
            snns[kind] = ann2snn.convert(model, calib_data=calib, **options)
            curve = ann2snn.evaluate(snns[kind], test_loader, report)
            row["ann_accuracy"] = curve.ann_accuracy
            row[kind] = curve.accuracy
            row[f"{kind}_meta"] = {k: str(v) for k, v in snns[kind].meta.items()}
            print(
                f"== {name}: ANN {curve.ann_accuracy:.2f}%, {kind} conversion {curve.accuracy} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        row["finetune"] = {}
        for target in targets if finetuning else []:
            train_loader = _shuffled(train, args)
            t0 = time.perf_counter()
            tuned_ann, history = ann2snn.finetune(
                model,
                train_loader,
                levels=target,
                epochs=args.finetune_epochs,
                lr=args.finetune_lr,
                calib_data=calib,
                eval_loader=monitor,
            )
            snns[f"finetune {target}"] = ann2snn.convert(tuned_ann, calib_data=calib)
            train_s = time.perf_counter() - t0
            curve = ann2snn.evaluate(snns[f"finetune {target}"], test_loader, report)
            row["finetune"][f"L={target}"] = {
                "accuracy": curve.accuracy,
                "ann_accuracy": curve.ann_accuracy,
                "train_s": round(train_s, 1),
                "history": [vars(r) for r in history],
            }
            print(f"   finetune L={target}: {curve.accuracy} ({train_s:.0f} s)", flush=True)
        for start, mode, target in (
            (s, m, t)
            for s in starts
            for m in args.train_modes.split(",")
            for t in targets
            if args.epochs > 0
        ):
            snn = snns[f"finetune {target}" if start == "finetune" else start]
            key = f"T={target} {mode} from {start}"
            train_loader = _shuffled(train, args)
            t0 = time.perf_counter()
            tuned, history = ann2snn.bootstrap(
                snn,
                train_loader,
                timesteps=target,
                epochs=args.epochs,
                lr=args.lr,
                resample_every=args.resample_every,
                segments=args.segments,
                train_mode=mode,
                eval_loader=monitor,
                progress=True,
            )
            train_s = time.perf_counter() - t0
            curve = ann2snn.evaluate(tuned, test_loader, report)
            row["bootstrap"][key] = {
                "start": start,
                "target": target,
                "train_mode": mode,
                "accuracy": curve.accuracy,
                "train_s": round(train_s, 1),
                "history": [
                    {
                        "epoch": round(r.epoch, 3),
                        "loss": r.loss,
                        "snn_accuracy_monitor": r.snn_accuracy,
                        "fit_rmse": r.fit_rmse,
                    }
                    for r in history
                ],
            }
            print(f"   bootstrap {key}: {curve.accuracy} ({train_s:.0f} s)", flush=True)
        results["models"][name] = row
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)

    print()
    head = " | ".join(f"T={t}" for t in report)
    print(f"| model | SNN | {head} |")
    print("|---|---|" + "---|" * len(report))
    for name, row in results["models"].items():
        for kind in ("basic", "default"):
            cells = " | ".join(f"{row[kind][t]:.2f}" for t in report)
            label = f"{name} (ANN {row['ann_accuracy']:.2f})" if kind == "basic" else ""
            print(f"| {label} | {kind} conversion | {cells} |")
        for key, b in row["finetune"].items():
            cells = _changes(b["accuracy"], row, report)
            print(f"| | finetune {key}, {args.finetune_epochs:g} epoch(s) | {cells} |")
        for key, b in row["bootstrap"].items():
            cells = _changes(b["accuracy"], row, report)
            print(f"| | bootstrap {key}, {args.epochs:g} epoch(s) | {cells} |")
    print("(in parentheses: change against the basic / the default conversion at the same T)")


if __name__ == "__main__":
    main()
