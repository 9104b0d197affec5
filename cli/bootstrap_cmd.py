"""``ann2snn bootstrap``: fine-tune a converted SNN for very few time steps."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

from ann2snn.cli.common import (
    CLIError,
    add_conversion_arguments,
    add_data_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    convert_opened,
    format_options,
    open_model,
    parse_timesteps,
    positive_float,
    positive_int,
    to_device,
    validate_mode,
)
from ann2snn.cli.training_common import (
    add_evaluation_arguments,
    add_training_arguments,
    open_calibration_or_training,
    open_training_data,
    shuffled_loader,
)

SUMMARY = "fine-tune an SNN for very few time steps T (bootstrap training)"
DESCRIPTION = """\
At a handful of time steps an IF neuron takes only a few firing rates and saturates, so
the ReLU no longer describes what the SNN does and accuracy drops. bootstrap measures
what every IF layer really does at the target T (SAMPLING), fits it as a monotone
piecewise-linear function of the input current (FIT), trains the network with those
functions in place of the neurons (an ordinary, differentiable ANN pass), and switches
back to the SNN, which keeps the trained weights. Sampling and fitting are repeated every
--resample-every epochs, and the SNN's accuracy at T is printed each time.

MODEL is an SNN file from `ann2snn convert`, or any ANN input that `convert` accepts
(it is then converted first; --calib defaults to the training data). The result is an
ordinary SNN file (-o) that `ann2snn eval` and `ann2snn info` read.
"""
EPILOG = """\
examples:
  ann2snn bootstrap snn.pt --timesteps 4 -o snn_t4.pt
  ann2snn bootstrap fmnist_avgpool_cnn --calib-limit 2000 --timesteps 8 --epochs 1 \\
      --report 4,8,16,32 --json history.json -o snn_t8.pt
"""


def _sample_range(text: str) -> List[float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH such as -1,2 (input current in units of the threshold), "
            f"got {text!r}"
        ) from None
    return [lo, hi]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ann2snn.training.bootstrap import DEFAULT_SAMPLE_RANGE, DEFAULT_SEGMENTS

    parser.add_argument("model", metavar="MODEL", help="an SNN file or a trained ANN")
    parser.add_argument(
        "-T",
        "--timesteps",
        type=positive_int,
        required=True,
        metavar="T",
        help="the number of time steps the SNN will run for (e.g. 4 or 8)",
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.pt", help="write the fine-tuned SNN file here"
    )
    parser.add_argument("--json", metavar="FILE", help="write the history and results as JSON")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    tr = add_training_arguments(parser, epochs=2.0, lr=1e-3)
    tr.add_argument(
        "--resample-every",
        type=positive_float,
        default=0.25,
        metavar="E",
        help="re-sample the SNN and re-fit every E epochs (default: %(default)s)",
    )
    tr.add_argument(
        "--segments",
        type=positive_int,
        default=DEFAULT_SEGMENTS,
        metavar="N",
        help="linear segments per fitted function (default: %(default)s)",
    )
    tr.add_argument(
        "--range",
        type=_sample_range,
        default=list(DEFAULT_SAMPLE_RANGE),
        metavar="LOW,HIGH",
        help="input current range sampled and fitted, in units of the threshold; it must "
        "contain 0..1 (default: %(default)s)",
    )
    tr.add_argument(
        "--sample-batches",
        type=positive_int,
        default=8,
        metavar="N",
        help="batches of training data simulated per sampling (default: %(default)s)",
    )
    tr.add_argument(
        "--train-mode",
        choices=("hybrid", "ann"),
        default="hybrid",
        help="hybrid: train on the SNN's own output with the fitted functions' gradients; "
        "ann: train the ANN view with the fitted functions only (default: %(default)s)",
    )
    add_evaluation_arguments(parser)
    add_model_arguments(parser)
    add_conversion_arguments(
        parser,
        calib_help="calibration data when MODEL is an ANN (default: the training data)",
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import ann2snn
    from ann2snn import snn_file as snn_io
    from ann2snn.analysis.evaluate import write_atomic
    from ann2snn.training.bootstrap import check_sample_range

    validate_mode(args.mode)
    try:
        check_sample_range(args.range)
    except ValueError as exc:
        raise CLIError(f"--range: {exc}") from None
    report = sorted({args.timesteps, *(parse_timesteps(args.report) if args.report else [])})
    check_outputs([args.output, args.json], args.force, [args.model])
    opened = open_model(args, args.model)
    train, evaluation, train_spec = open_training_data(args, opened)
    print(f"model: {opened.description}")
    if opened.snn is None:
        calib = open_calibration_or_training(args, opened, train_spec)
        print(f"calibration data: {calib.description}")
        snn = convert_opened(args, opened, calib)
        source = opened.loaded.source
    else:
        snn = opened.snn
        source = snn_io.read_snn_header(args.model).get("ann_source")  # version 1 files
    print(f"conversion: {format_options(snn.meta)}")
    print(f"training data: {train.description}")
    if evaluation is not None:
        print(f"evaluation data: {evaluation.description}")
    train_loader = shuffled_loader(train, args)
    tuned, history = ann2snn.bootstrap(
        snn,
        to_device(train_loader, args.device),
        timesteps=args.timesteps,
        epochs=args.epochs,
        resample_every=args.resample_every,
        lr=args.lr,
        segments=args.segments,
        sample_range=tuple(args.range),
        sample_batches=args.sample_batches,
        eval_loader=None if evaluation is None else to_device(evaluation.loader, args.device),
        eval_timesteps=report,
        train_mode=args.train_mode,
        progress=not args.no_progress,
    )
    if evaluation is not None:
        before, after = history[0].snn_accuracy, history[-1].snn_accuracy
        print()
        print(
            f"SNN accuracy on {evaluation.size} examples (%), bootstrapped for T={args.timesteps}"
        )
        print(f"{'T':>6}  {'before':>7}  {'after':>7}  {'change':>7}")
        for t in report:
            print(f"{t:>6}  {before[t]:>7.2f}  {after[t]:>7.2f}  {after[t] - before[t]:>+7.2f}")
    if args.output:
        provenance = {"input": args.model, "bootstrap_training": train.description}
        snn_io.save_snn(tuned, args.output, source=source, provenance=provenance, overwrite=True)
        print(f"wrote {args.output}")
    if args.json:
        payload: Dict[str, Any] = {
            "model": args.model,
            "bootstrap": tuned.meta["bootstrap"],
            "history": [_record(r) for r in history],
        }
        write_atomic(args.json, json.dumps(payload, indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def _record(r: Any) -> Dict[str, Optional[Any]]:
    return {
        "epoch": r.epoch,
        "step": r.step,
        "loss": r.loss,
        "train_accuracy": r.train_accuracy,
        "snn_accuracy": {str(t): a for t, a in r.snn_accuracy.items()},
        "fit_rmse": r.fit_rmse,
    }
