"""Converted and bootstrapped SNNs against direct SNN training on its own tutorials (issue 16).

Two public tutorials train an SNN directly (surrogate gradients, many epochs on a GPU):

* SpikingJelly's convolutional SNN on Fashion-MNIST (``fmnist_cnn128``: the tutorial's
  network as an ANN), 93.3 % at T=4 after 64 epochs;
* lava-dl's bootstrap tutorial on MNIST, a dense 784-512-512-10 network (``mnist_mlp``),
  99.22 % best / 99.15 % final at T=16 after 100 epochs.

For each network this script takes the ANN (a ``--checkpoint``, the cached or bundled one,
or it trains it with ``train.RECIPES`` and seed 0), converts it with ``ann2snn.convert``'s
defaults (calibration on 2,000 training images), fine-tunes the ANN for the tutorial's T
and converts it again where ``FINETUNE`` says so (``ann2snn.finetune``), bootstraps that
conversion at T, and measures every SNN on the full test set at T, 2T and 4T (and the
curve of ``--curve`` T's for the plot). Every setting was chosen on the 5,000 training
images that ``train.validation_split`` holds out; the ANN never trains on them, and
the bootstrap monitors on them. Prints one table, with the CPU time and epochs of each
stage beside the tutorial's. ANNs this script trains are cached in
``$ANN2SNN_CACHE/seeds`` (default ``~/.cache/ann2snn/seeds``).

    python benchmarks/bench_seeds.py [--networks mnist_mlp,fmnist_cnn128] [--threads 2]
        [--json docs/seeds/results.json] [--plot docs/seeds/curves.png]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from typing import Any, Dict, List

import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.data.datasets import load_dataset
from ann2snn.models import MODEL_DATASETS, checkpoint_path, load_checkpoint, model_from_checkpoint
from ann2snn.models.train import (
    RECIPES,
    AugmentedBatches,
    save_checkpoint,
    train_model,
    validation_split,
)

#: The tutorials' direct-training figures (test accuracy, percent) and settings.
TUTORIALS: Dict[str, Dict[str, Any]] = {
    "fmnist_cnn128": {
        "tutorial": "SpikingJelly conv_fashion_mnist",
        "timesteps": 4,
        "accuracy": 93.3,
        "epochs": 64,
        "hardware": "GPU",
    },
    "mnist_mlp": {
        "tutorial": "lava-dl bootstrap MNIST (99.15 final)",
        "timesteps": 16,
        "accuracy": 99.22,
        "epochs": 100,
        "hardware": "GPU",
    },
}

#: Bootstrap settings per network, chosen on the validation images (docs/seeds.md).
BOOTSTRAP: Dict[str, Dict[str, Any]] = {
    # lr 3e-4 was ResNet-20's best (docs/deep.md); validation, the first ANN recipe: T=4
    # 90.66 -> 91.62 after 1 epoch (docs/seeds.md). Here it starts from the finetune:
    # validation T=4 93.64 -> 93.82 (15-epoch ANN), 93.06 -> 93.92 (25-epoch ANN).
    "fmnist_cnn128": {"epochs": 1, "lr": 3e-4, "resample_every": 0.5},
    # validation, T=16, 2 epochs: lr 1e-3 99.02, 1e-4 99.32, 2e-5 99.16 (docs/seeds.md)
    "mnist_mlp": {"epochs": 2, "lr": 1e-4, "resample_every": 0.5},
}

#: QCFS-style ANN fine-tuning (``ann2snn.finetune``, L = the tutorial's T) before the
#: conversion that bootstrap starts from, per network; None: none (docs/seeds.md).
FINETUNE: Dict[str, Any] = {
    # validation (15-epoch ANN), 1 epoch, clips from the 99th percentile: SNN at T=4 91.98
    # (plain conversion) -> 93.26 with lr 1e-3, 93.64 with lr 3e-4; 2 epochs at 3e-4: 93.52
    "fmnist_cnn128": {"epochs": 1, "lr": 3e-4, "init_percentile": 99.0},
    "mnist_mlp": None,
}

CALIB_IMAGES = 2000


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("ANN2SNN_CACHE") or pathlib.Path.home() / ".cache" / "ann2snn"
    return pathlib.Path(root) / "seeds"


def _holds_out_validation(ckpt: Dict[str, Any], name: str) -> bool:
    return ckpt["train"].get("val_images") == RECIPES[name]["val_images"]


def ann_checkpoint(name: str, override: str | None, retrain: bool) -> Dict[str, Any]:
    """The ANN's checkpoint: ``override``, the bundled or cached file, or a new training."""
    if override:
        print(f"== {name}: ANN from {override}", flush=True)
        return load_checkpoint(override)
    for path in [] if retrain else [checkpoint_path(name), _cache_dir() / f"{name}.pt"]:
        if path.is_file() and _holds_out_validation(ckpt := load_checkpoint(path), name):
            print(f"== {name}: ANN from {path}", flush=True)
            return ckpt
    print(f"== {name}: training the ANN ({RECIPES[name]['epochs']} epochs, seed 0)", flush=True)
    ckpt = train_model(name, seed=0, progress=True)
    out = save_checkpoint(ckpt, _cache_dir() / f"{name}.pt")
    print(f"   wrote {out}", flush=True)
    return ckpt


def run_network(name: str, args: argparse.Namespace, override: str | None) -> Dict[str, Any]:
    tut = TUTORIALS[name]
    T = tut["timesteps"]
    report = sorted({T, 2 * T, 4 * T, *args.curve})
    dataset = MODEL_DATASETS[name]
    ckpt = ann_checkpoint(name, override, args.retrain)
    if not _holds_out_validation(ckpt, name):
        raise SystemExit(f"{name}: the ANN was not trained with the validation images held out")
    model = model_from_checkpoint(ckpt)

    train = load_dataset(dataset, "train")
    keep, val_idx = validation_split(len(train), RECIPES[name]["val_images"])
    images, labels = train.tensors
    calib = DataLoader(Subset(train, keep[:CALIB_IMAGES].tolist()), batch_size=250)
    val = DataLoader(Subset(train, val_idx.tolist()), batch_size=500)
    if args.validation:  # choosing settings: report on the held-out training images
        test_loader = val
    else:
        test = load_dataset(dataset, "test", limit=args.test_limit)
        test_loader = DataLoader(test, batch_size=500)
    row: Dict[str, Any] = {
        "tutorial": tut,
        "ann": {
            "test_accuracy": ckpt["test_accuracy"],
            "epochs": ckpt["train"]["epochs"],
            "wall_s": ckpt["train"]["wall_time_s"],
            "threads": ckpt["train"]["threads"],
            "val_history": ckpt["train"].get("val_history"),
            "recipe": {k: v for k, v in ckpt["train"].items() if k != "val_history"},
        },
    }

    t0, c0 = time.perf_counter(), time.process_time()
    snn = ann2snn.convert(model, calib_data=calib)
    row["convert"] = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }
    curve = ann2snn.evaluate(snn, test_loader, report)
    row["ann"]["measured"] = curve.ann_accuracy
    row["convert"]["accuracy"] = curve.accuracy
    print(f"== {name}: ANN {curve.ann_accuracy:.2f}%, conversion {curve.accuracy}", flush=True)

    start = snn
    ft_settings = None if args.no_finetune else FINETUNE[name]
    if ft_settings is not None:
        ft_settings = dict(ft_settings)
        for key in ("epochs", "lr"):
            if getattr(args, f"finetune_{key}") is not None:
                ft_settings[key] = getattr(args, f"finetune_{key}")
        torch.manual_seed(0)
        ft_batches = AugmentedBatches(
            images[keep],
            labels[keep],
            128,
            RECIPES[name]["augment"],
            generator=torch.Generator().manual_seed(1),
        )
        t0, c0 = time.perf_counter(), time.process_time()
        tuned_ann, ft_history = ann2snn.finetune(
            model, ft_batches, levels=T, calib_data=calib, eval_loader=val, **ft_settings
        )
        start = ann2snn.convert(tuned_ann, calib_data=calib)
        row["finetune"] = {
            "settings": ft_settings,
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "val_history": [
                {"epoch": round(r.epoch, 3), "loss": r.loss, "val_quantized": r.eval_accuracy}
                for r in ft_history
            ],
        }
        curve = ann2snn.evaluate(start, test_loader, report)
        row["finetune"]["ann_accuracy"] = curve.ann_accuracy
        row["finetune"]["accuracy"] = curve.accuracy
        print(f"== {name}: finetune L={T} + conversion: {curve.accuracy}", flush=True)
    if args.no_bootstrap:
        return row
    settings = dict(BOOTSTRAP[name])
    for key in ("epochs", "lr"):
        if getattr(args, f"bootstrap_{key}") is not None:
            settings[key] = getattr(args, f"bootstrap_{key}")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    batches = AugmentedBatches(
        images[keep], labels[keep], 128, RECIPES[name]["augment"], generator=gen
    )
    t0, c0 = time.perf_counter(), time.process_time()
    tuned, history = ann2snn.bootstrap(
        start,
        batches,
        timesteps=T,
        calib_data=calib,
        eval_loader=val,
        eval_timesteps=[2 * T],
        progress=True,
        **settings,
    )
    row["bootstrap"] = {
        "settings": settings,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "val_history": [
            {"epoch": round(r.epoch, 3), "loss": r.loss, "val": r.snn_accuracy} for r in history
        ],
    }
    curve = ann2snn.evaluate(tuned, test_loader, report)
    row["bootstrap"]["accuracy"] = curve.accuracy
    print(f"== {name}: bootstrap T={T}: {curve.accuracy}", flush=True)
    return row


def _cells(stage: Any, T: int) -> str:
    if not stage or "accuracy" not in stage:
        return "-"
    acc = {int(t): v for t, v in stage["accuracy"].items()}
    return " / ".join(f"{acc[t]:.2f}" for t in (T, 2 * T, 4 * T))


def _times(row: Dict[str, Any]) -> str:
    ann = row["ann"]
    parts = [
        f"ANN {ann['epochs']} epochs {ann['wall_s'] / 60:.0f} min ({ann['threads']} thr)",
        f"conversion {row['convert']['wall_s']:.0f} s",
    ]
    threads = row["settings"]["threads"]
    for key in ("finetune", "bootstrap"):
        if key in row:
            stage = row[key]
            parts.append(
                f"{key} {stage['settings']['epochs']:g} epochs "
                f"{stage['wall_s'] / 60:.1f} min ({threads} thr)"
            )
    return ", ".join(parts)


def print_table(results: Dict[str, Any]) -> None:
    print()
    print(
        "| network | tutorial (direct SNN training) | our ANN | conversion T / 2T / 4T | "
        "finetune + conversion | + bootstrap at T | our CPU time and epochs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in results["networks"].items():
        tut, T = row["tutorial"], row["tutorial"]["timesteps"]
        print(
            f"| {name} | {tut['tutorial']}: {tut['accuracy']:.2f} at T={T}, "
            f"{tut['epochs']} epochs ({tut['hardware']}) | {row['ann']['measured']:.2f} | "
            f"{_cells(row['convert'], T)} | {_cells(row.get('finetune'), T)} | "
            f"{_cells(row.get('bootstrap'), T)} | {_times(row)} |"
        )


def plot(results: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["networks"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        row = results["networks"][name]
        tut = row["tutorial"]
        stages = [k for k in ("convert", "finetune", "bootstrap") if k in row]
        for key, label, style in (
            ("convert", "conversion", "o-"),
            ("finetune", "finetune + conversion", "^-"),
            ("bootstrap", "+ bootstrap" if "finetune" in row else "bootstrap", "s-"),
        ):
            if key not in row:
                continue
            acc = {int(t): v for t, v in row[key]["accuracy"].items()}
            ts = sorted(acc)
            ax.plot(ts, [acc[t] for t in ts], style, label=f"{label} (ann2snn)")
        ax.axhline(row["ann"]["measured"], color="grey", ls="--", label="ANN")
        ax.plot([tut["timesteps"]], [tut["accuracy"]], "r*", ms=12, label=tut["tutorial"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("timesteps T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name)
        values = [v for k in stages for v in row[k]["accuracy"].values()]
        top = max(row["ann"]["measured"], tut["accuracy"], *values)
        ax.set_ylim(max(min(*values, tut["accuracy"]) - 0.5, top - 8), top + 0.4)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", default="mnist_mlp,fmnist_cnn128")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--retrain", action="store_true", help="train the ANNs even if cached")
    p.add_argument("--no-finetune", action="store_true", help="bootstrap the plain conversion")
    p.add_argument("--finetune-epochs", type=float, default=None)
    p.add_argument("--finetune-lr", type=float, default=None)
    p.add_argument("--no-bootstrap", action="store_true", help="stop before bootstrap")
    p.add_argument("--bootstrap-epochs", type=float, default=None)
    p.add_argument("--bootstrap-lr", type=float, default=None)
    p.add_argument("--curve", type=_ints, default=[1, 2, 4, 8, 16, 32, 64], help="T's plotted")
    p.add_argument("--test-limit", type=int, default=None, help="default: all 10,000")
    p.add_argument(
        "--validation",
        action="store_true",
        help="report on the held-out training images (5,000) instead of the test set "
        "(how the settings were chosen)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write the curves here (PNG)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.checkpoint)
    names = [n for n in args.networks.split(",") if n]
    unknown = [n for n in names if n not in TUTORIALS]
    if unknown:
        p.error(f"unknown network {unknown[0]!r}; expected {', '.join(TUTORIALS)}")
    results: Dict[str, Any] = {"networks": {}}
    if args.json and pathlib.Path(args.json).is_file():  # one file for runs made apart
        results = json.loads(pathlib.Path(args.json).read_text())
    for name in names:
        row = run_network(name, args, overrides.get(name))
        row["settings"] = {k: v for k, v in vars(args).items() if k != "checkpoint"}
        results["networks"][name] = row
        if args.json:
            pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    print_table(results)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
