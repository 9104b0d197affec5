"""Accuracy versus time steps: our default, each technique alone, and SpikingJelly 2.0.

Every configuration converts the SAME ANN with the SAME calibration images and is
evaluated on the SAME test images, at every T in one simulation to the largest T::

    python benchmarks/bench_accuracy.py                      # the four bundled models
    python benchmarks/bench_accuracy.py --models fmnist_resnet --test-limit 2000
    python benchmarks/bench_accuracy.py --models my_model.pt --dataset fashion-mnist

Configurations (ours; ``ann2snn.convert(model, '99.9%', calib_data=...)``):

* ``ours (default)``: the defaults of :func:`ann2snn.convert`.
* ``baseline``: layer-wise 99.9%, initial potential 0.5, no calibration (the default
  before threshold search and potential calibration existed).
* each technique alone on top of the baseline: ``+channel-wise``, ``+threshold search``,
  ``+potential calibration``; ``v_init=0`` (the baseline without the half-threshold start);
  ``spike-count readout`` (the default with a spiking output layer);
  ``default + threshold search`` (the one technique the default leaves off);
  ``default, tuned at T=4 only`` (the calibration error measured after 4 steps only,
  instead of after 4 and 8); ``default, target T=8`` (tuned for 8 steps instead of 4).

SpikingJelly 2.0 (``spikingjelly.activation_based.ann2snn``): ``RateCodingRecipe`` with
``mode='max'``, ``'99.9%'``, ``0.5``; ``RateCodingRecipe('99.9%', channel_wise=True,
half_threshold=True, pre_spike_maxpool=True)``; ``LocalThresholdBalancingRecipe``. Their
SNNs run step by step (``step_mode='s'``) and read out the summed output, as in
SpikingJelly's own examples. SpikingJelly converts only ``nn.ReLU`` modules, so models that
call ``F.relu`` (or ``F.adaptive_avg_pool2d``) get equivalent modules first (same weights,
same function). ``nn.ReLU6`` becomes ``nn.ReLU`` for SpikingJelly: the same function only
where activations stay below 6, so the ANN accuracy of that network is printed and stored
as ``spikingjelly_ann_accuracy``.

Writes ``<out>/accuracy.json`` (every curve), ``<out>/accuracy_<model>.png`` and prints
Markdown tables (pasted into docs/accuracy.md). Runs split into several processes (e.g. by
``--configs``, each with its own ``--out``) are joined with ``--combine A.json B.json ...``:
the curves of each model are merged (the runs must have used the same test and
calibration sizes) and the tables and plots written as if from one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.analysis.evaluate import evaluate, write_atomic

TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128)
BUNDLED = ("fmnist_avgpool_cnn", "fmnist_maxpool_cnn", "fmnist_resnet", "mnist_cnn")

BASELINE = dict(channelwise=False, threshold_search=False, potential_calibration=False)
OURS: Dict[str, Dict[str, Any]] = {
    "ours (default)": {},
    "baseline": BASELINE,
    "+channel-wise": {**BASELINE, "channelwise": True},
    "+threshold search": {**BASELINE, "threshold_search": True},
    "+potential calibration": {**BASELINE, "potential_calibration": True},
    "v_init=0": {**BASELINE, "v_init": 0.0},
    "spike-count readout": {"readout": "spikes"},
    "default + threshold search": {"threshold_search": True},
    "default, tuned at T=4 only": {"calibration_horizons": (1,)},
    "default, target T=8": {"target_timesteps": 8},
}
SPIKINGJELLY = (
    "SJ 'max'",
    "SJ '99.9%'",
    "SJ 0.5",
    "SJ '99.9%' channel-wise + half threshold + pre-spike maxpool",
    "SJ local threshold balancing",
)


def _model(spec: str) -> Tuple[nn.Module, str, str]:
    """(ANN, display name, dataset) for a bundled name or a checkpoint path."""
    from ann2snn.frontends.checkpoint import load_model
    from ann2snn.models import MODEL_DATASETS, load_checkpoint

    loaded = load_model(spec)
    name = os.path.splitext(os.path.basename(spec))[0]
    dataset = MODEL_DATASETS.get(spec)
    if dataset is None and os.path.isfile(spec):
        try:
            dataset = load_checkpoint(spec).get("dataset")
        except (ValueError, RuntimeError, OSError):
            dataset = None
    return loaded.module.eval(), name, dataset


def _functional_as_modules(model: nn.Module) -> nn.Module:
    """The same network with functional ReLU / pooling calls as modules.

    SpikingJelly converts ``nn.ReLU`` modules only, and its step-mode adapter refuses
    functional pooling; the modules compute exactly the same function.
    """
    gm = fx.symbolic_trace(copy.deepcopy(model))
    count = 0
    for node in list(gm.graph.nodes):
        module: Optional[nn.Module] = None
        if (node.op == "call_function" and node.target in (F.relu, torch.relu)) or (
            node.op == "call_method" and node.target == "relu"
        ):
            module = nn.ReLU()
        elif node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.ReLU6):
            module = nn.ReLU()  # see relu6_replaced: not the same function above 6
        elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
            module = nn.AdaptiveAvgPool2d(size)
        if module is None:
            continue
        name = f"sj_module_{count}"
        count += 1
        gm.add_module(name, module)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    _fold_zero_pad_into_conv(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


def relu6_replaced(model: nn.Module) -> bool:
    """Whether :func:`_functional_as_modules` changes the function: SpikingJelly converts
    ``nn.ReLU`` only, so its runs get ``ReLU`` in place of ``ReLU6`` (the same function
    wherever an activation stays below 6), and their ANN accuracy is that network's."""
    return any(isinstance(m, nn.ReLU6) for m in model.modules())


def _fold_zero_pad_into_conv(gm: fx.GraphModule) -> None:
    """``ZeroPad2d(p)`` read only by a zero-padded ``Conv2d``: the convolution pads by ``p``
    more instead (the same function; SpikingJelly's step-mode adapter refuses ZeroPad2d)."""
    for node in list(gm.graph.nodes):
        pad = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(pad, nn.ZeroPad2d) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        conv = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
        left, right, top, bottom = pad.padding
        if (
            not isinstance(conv, nn.Conv2d)
            or conv.padding_mode != "zeros"
            or not isinstance(conv.padding, tuple)
            or left != right
            or top != bottom
        ):
            continue
        conv.padding = (conv.padding[0] + top, conv.padding[1] + left)
        user.replace_input_with(node, node.args[0])
        gm.graph.erase_node(node)


def _spikingjelly(name: str, ann: nn.Module, calib: List[torch.Tensor]) -> nn.Module:
    from spikingjelly.activation_based import ann2snn as sj

    recipes: Dict[str, Callable[[], Any]] = {
        "SJ 'max'": lambda: sj.RateCodingRecipe(calib, mode="max"),
        "SJ '99.9%'": lambda: sj.RateCodingRecipe(calib, mode="99.9%"),
        "SJ 0.5": lambda: sj.RateCodingRecipe(calib, mode=0.5),
        SPIKINGJELLY[3]: lambda: sj.RateCodingRecipe(
            calib, mode="99.9%", channel_wise=True, half_threshold=True, pre_spike_maxpool=True
        ),
        "SJ local threshold balancing": lambda: sj.LocalThresholdBalancingRecipe(calib),
    }
    return sj.Converter(recipes[name]()).convert(_functional_as_modules(ann)).eval()


@torch.no_grad()
def _evaluate_spikingjelly(
    snn: nn.Module, ann: nn.Module, loader: DataLoader, timesteps: Sequence[int]
) -> Dict[str, Any]:
    from spikingjelly.activation_based import functional

    ts = sorted(timesteps)
    correct = {t: 0 for t in ts}
    total = ann_correct = 0
    for x, y in loader:
        ann_correct += int((ann(x).argmax(1) == y).sum())
        functional.reset_net(snn)
        out = None
        for t in range(1, ts[-1] + 1):
            step = snn(x)
            out = step if out is None else out + step
            if t in correct:
                correct[t] += int((out.argmax(1) == y).sum())
        total += int(y.shape[0])
    functional.reset_net(snn)
    return {
        "accuracy": {t: 100.0 * c / total for t, c in correct.items()},
        "ann_accuracy": 100.0 * ann_correct / total,
    }


@torch.no_grad()
def _ann_accuracy(ann: nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    for x, y in loader:
        correct += int((ann(x).argmax(1) == y).sum())
        total += int(y.shape[0])
    return 100.0 * correct / total


class BenchData(NamedTuple):
    """One model and its images, the same for every configuration and benchmark."""

    ann: nn.Module
    name: str
    dataset: str
    calib: DataLoader
    test: DataLoader


def seeded_order(n: int) -> List[int]:
    """The fixed random order of the ``n`` training images that calibration sets (and
    ``bench_validation.py``'s validation set) are drawn from."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()


def load_bench_data(
    spec: str,
    dataset: Optional[str],
    calib_size: int,
    calib_batch: int,
    test_limit: Optional[int],
    batch_size: int,
) -> BenchData:
    """The ANN, ``calib_size`` seeded training images and the (first) test images.

    Raises:
        ValueError: when the dataset of a checkpoint is unknown and not given.
    """
    from ann2snn.data.datasets import load_dataset

    ann, name, ds = _model(spec)
    ds = dataset or ds
    if ds is None:
        raise ValueError(f"{spec}: say which dataset it was trained on (--dataset)")
    train = load_dataset(ds, "train")
    test = load_dataset(ds, "test", limit=test_limit)
    calib_set = Subset(train, seeded_order(len(train))[:calib_size])
    return BenchData(
        ann,
        name,
        ds,
        DataLoader(calib_set, batch_size=calib_batch),
        DataLoader(test, batch_size=batch_size),
    )


def run_model(
    spec: str,
    configs: Sequence[str],
    calib_size: int,
    calib_batch: int,
    test_limit: Optional[int],
    batch_size: int,
    timesteps: Sequence[int],
    dataset: Optional[str] = None,
) -> Dict[str, Any]:
    """Every configuration on one model. Returns ``{model, dataset, ann_accuracy, curves}``."""
    ann, name, ds, calib_loader, test_loader = load_bench_data(
        spec, dataset, calib_size, calib_batch, test_limit, batch_size
    )
    calib_images = [x for x, _ in calib_loader]
    result: Dict[str, Any] = {
        "model": name,
        "dataset": ds,
        "calibration_images": calib_size,
        "test_images": len(test_loader.dataset),
        "curves": {},
    }
    for config in configs:
        start = time.perf_counter()
        if config in OURS:
            snn = ann2snn.convert(ann, "99.9%", calib_data=calib_loader, **OURS[config])
            conv = time.perf_counter() - start
            curve = evaluate(snn, test_loader, timesteps)
            acc, ann_acc = curve.accuracy, curve.ann_accuracy
        else:
            snn = _spikingjelly(config, ann, calib_images)
            conv = time.perf_counter() - start
            out = _evaluate_spikingjelly(snn, ann, test_loader, timesteps)
            acc, ann_acc = out["accuracy"], out["ann_accuracy"]
            if relu6_replaced(ann) and "spikingjelly_ann_accuracy" not in result:
                sj_acc = _ann_accuracy(_functional_as_modules(ann), test_loader)
                result["spikingjelly_ann_accuracy"] = sj_acc
                print(
                    f"[{name}] SpikingJelly converts nn.ReLU only: its runs use ReLU for "
                    f"ReLU6 (that ANN: {sj_acc:.2f}%)",
                    flush=True,
                )
        total = time.perf_counter() - start
        result["ann_accuracy"] = ann_acc
        result["curves"][config] = {
            "accuracy": {str(t): a for t, a in acc.items()},
            "convert_seconds": round(conv, 2),
            "total_seconds": round(total, 1),
        }
        line = " ".join(f"{t}:{a:.2f}" for t, a in sorted(acc.items()))
        print(f"[{name}] {config}: {line} (convert {conv:.1f}s, all {total:.0f}s)", flush=True)
    return result


def markdown(result: Dict[str, Any], timesteps: Sequence[int]) -> str:
    """A Markdown table of one model's curves, with the best SpikingJelly row per T."""
    ts = sorted(timesteps)
    head = f"| {result['model']} (ANN {result['ann_accuracy']:.2f}%) | " + " | ".join(
        f"T={t}" for t in ts
    )
    lines = [head + " |", "|---" * (len(ts) + 1) + "|"]
    curves = result["curves"]
    for config, curve in curves.items():
        cells = [f"{curve['accuracy'][str(t)]:.2f}" for t in ts]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    sj = [c for c in curves if c.startswith("SJ ")]
    if sj and "ours (default)" in curves:
        best = [max(curves[c]["accuracy"][str(t)] for c in sj) for t in ts]
        ours = [curves["ours (default)"]["accuracy"][str(t)] for t in ts]
        lines.append("| best SpikingJelly | " + " | ".join(f"{b:.2f}" for b in best) + " |")
        lines.append(
            "| ours - best SJ | " + " | ".join(f"{o - b:+.2f}" for o, b in zip(ours, best)) + " |"
        )
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: str, timesteps: Sequence[int]) -> None:
    """PNG: accuracy vs T (log axis) for every configuration, with the ANN's accuracy."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = sorted(timesteps)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for config, curve in result["curves"].items():
        ys = [curve["accuracy"][str(t)] for t in ts]
        if config == "ours (default)":
            style = dict(color="C3", lw=2.5, marker="o", zorder=5)
        elif config.startswith("SJ "):
            style = dict(ls="--", marker="s", ms=3, lw=1.2)
        else:
            style = dict(ls=":", marker=".", lw=1.0, alpha=0.8)
        ax.plot(ts, ys, label=config, **style)
    ax.axhline(result["ann_accuracy"], color="k", lw=1, ls="-.", label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    low = max(0.0, min(result["ann_accuracy"] - 15.0, 80.0))
    ax.set_ylim(low, result["ann_accuracy"] + 1.5)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{result['model']}: {result['test_images']} test images, "
        f"{result['calibration_images']} calibration images"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def combine(paths: Sequence[str]) -> Dict[str, Any]:
    """Merge the ``accuracy.json`` files of split runs, model by model.

    Raises:
        ValueError: when two files measured one model on different test or calibration sets.
    """
    merged: Dict[str, Any] = {"command": [], "models": {}}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        merged["command"].append(data.get("command"))
        for name, res in data.get("models", {}).items():
            have = merged["models"].get(name)
            if have is None:
                merged["models"][name] = copy.deepcopy(res)
                continue
            for key in ("dataset", "calibration_images", "test_images"):
                if have.get(key) != res.get(key):
                    raise ValueError(
                        f"{path}: {name} has {key}={res.get(key)!r}, another file "
                        f"{have.get(key)!r}; only runs on the same images can be combined"
                    )
            have["curves"].update(res["curves"])
    return merged


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """The options every accuracy benchmark shares: models, images, T, threads, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--models", nargs="+", default=list(BUNDLED), help="bundled model names or checkpoint files"
    )
    parser.add_argument(
        "--dataset", default=None, help="dataset of a checkpoint that does not record it"
    )
    parser.add_argument("--calib", type=int, default=2000, help="calibration images")
    parser.add_argument("--calib-batch", type=int, default=200)
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="first N test images (default: the full test set)",
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="docs", help="folder for the JSON and the plots")
    return parser


def load_results(path: str, argv: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The results file of an earlier run (or a new one), with this run's command."""
    results: Dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    results["command"] = "python " + " ".join([sys.argv[0]] + list(argv or sys.argv[1:]))
    results.setdefault("models", {})
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = bench_arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(OURS) + list(SPIKINGJELLY),
        choices=list(OURS) + list(SPIKINGJELLY),
        metavar="CONFIG",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="measure nothing: merge these accuracy.json files of split runs into --out",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.timesteps.split(",")]
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "accuracy.json")
    if args.combine:
        merged = combine(args.combine)
        write_atomic(json_path, json.dumps(merged, indent=1).encode())
        for res in merged["models"].values():
            plot(res, os.path.join(args.out, f"accuracy_{res['model']}.png"), ts)
            print(markdown(res, ts), flush=True)
        return 0
    results = load_results(json_path, argv)
    for spec in args.models:
        res = run_model(
            spec,
            args.configs,
            args.calib,
            args.calib_batch,
            args.test_limit,
            args.batch_size,
            ts,
            args.dataset,
        )
        results["models"][res["model"]] = res
        write_atomic(json_path, json.dumps(results, indent=1).encode())
        plot(res, os.path.join(args.out, f"accuracy_{res['model']}.png"), ts)
        print(markdown(res, ts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
