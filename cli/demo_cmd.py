"""``ann2snn demo``: the whole job on a bundled model, no arguments needed."""

from __future__ import annotations

import argparse
import time

from ann2snn.cli.common import add_runtime_arguments, check_outputs, positive_int

MODEL = "fmnist_avgpool_cnn"
SUMMARY = f"convert and evaluate the bundled {MODEL} on Fashion-MNIST (no arguments needed)"
DESCRIPTION = f"""\
Run the whole job on a bundled example: load the trained {MODEL} (a small CNN with
average pooling), convert it with mode 99.9% calibrating on the first 2,000
Fashion-MNIST training images, and evaluate the SNN on the Fashion-MNIST test set at
T = 1, 2, 4, ..., 128 beside the ANN's accuracy. The full test set takes a few minutes
on a laptop CPU; --limit makes it faster.
"""
EPILOG = """\
examples:
  ann2snn demo
  ann2snn demo --limit 2000 --plot demo.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate on the first N test images (default: all 10,000)",
    )
    parser.add_argument(
        "--calib-limit",
        type=positive_int,
        default=2000,
        metavar="N",
        help="calibration images (default: %(default)s)",
    )
    parser.add_argument(
        "--timesteps",
        default="1,2,4,...,128",
        metavar="LIST",
        help="time steps to report (default: %(default)s)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also plot accuracy versus T")
    parser.add_argument("-o", "--output", metavar="OUT.pt", help="also save the SNN file")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import ann2snn
    from ann2snn import snn_file as snn_io
    from ann2snn.analysis.diagnostics import count_neurons
    from ann2snn.cli.common import parse_timesteps, to_device
    from ann2snn.data.datasets import make_loader
    from ann2snn.frontends.checkpoint import load_model
    from ann2snn.models import pretrained_info

    timesteps = parse_timesteps(args.timesteps)
    check_outputs([args.plot, args.output], args.force, [])
    info = pretrained_info(MODEL)
    loaded = load_model(MODEL)
    model = loaded.module.to(args.device)
    print(
        f"ANN: bundled {MODEL} ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"trained on {info['dataset']}, recorded test accuracy {info['test_accuracy']:.2f}%)"
    )
    calib = make_loader(info["dataset"], "train", batch_size=256, limit=args.calib_limit)
    test = make_loader(info["dataset"], "test", batch_size=256, limit=args.limit)
    print(
        f"converting with mode 99.9% on {len(calib.dataset):,} training images; "
        f"evaluating on {len(test.dataset):,} test images at T = "
        f"{', '.join(map(str, timesteps))}"
    )
    start = time.perf_counter()
    snn = ann2snn.convert(
        model, mode="99.9%", calib_data=to_device(calib, args.device), progress=not args.no_progress
    )
    layers, neurons = count_neurons(snn)
    print(
        f"converted in {time.perf_counter() - start:.1f} s: {layers} IF layers, "
        f"{neurons:,} neurons per image"
    )
    start = time.perf_counter()
    curve = ann2snn.evaluate(
        snn, to_device(test, args.device), timesteps=timesteps, progress=not args.no_progress
    )
    print(f"simulated in {time.perf_counter() - start:.1f} s\n")
    print(curve.table())
    if args.plot:
        curve.plot(args.plot, title=f"{MODEL} on {info['dataset']}: SNN accuracy vs T")
        print(f"wrote {args.plot}")
    if args.output:
        snn_io.save_snn(
            snn,
            args.output,
            source=loaded.source,
            provenance={
                "input": MODEL,
                "calibration": f"{len(calib.dataset):,} examples of {info['dataset']} (train)",
                "dataset": info["dataset"],
            },
        )
        print(f"wrote {args.output}")
    return 0
