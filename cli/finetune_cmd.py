"""``ann2snn finetune``: quantization-aware ANN fine-tuning (QCFS), then conversion."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any, Dict

from ann2snn.analysis.saturation import RangeWarning
from ann2snn.cli.common import (
    CLIError,
    add_conversion_arguments,
    add_data_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    check_runs,
    conversion_options,
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

SUMMARY = "fine-tune the ANN for few time steps (quantized activations), then convert"
DESCRIPTION = """\
An IF neuron simulated for T steps outputs one of T + 1 rates. finetune trains the ANN
with that quantization in place of every ReLU: a clip-floor-shift activation with L = T
levels and a learned clip per layer (after QCFS, Bu et al. 2022), for an epoch or two of
ordinary, cheap ANN training. The fine-tuned ANN, whose activations are Hardtanh(0, clip),
is then converted with the conversion options given here and written as an SNN file (-o)
that `ann2snn eval`, `info` and `bootstrap` read.

MODEL is a trained ANN (any input `convert` accepts), not an SNN file.
"""
EPILOG = """\
examples:
  ann2snn finetune fmnist_maxpool_cnn --levels 4 --calib-limit 2000 -o snn_l4.pt
  ann2snn finetune model.pt --arch resnet18 --train data/train --levels 8 --epochs 2 \\
      --report 8,16,32 --json history.json -o snn_l8.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a trained ANN")
    parser.add_argument(
        "-L",
        "--levels",
        type=positive_int,
        required=True,
        metavar="L",
        help="quantization levels: the number of time steps the SNN will run for (e.g. 4)",
    )
    parser.add_argument("-o", "--output", metavar="OUT.pt", help="write the SNN file here")
    parser.add_argument("--json", metavar="FILE", help="write the history and results as JSON")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    tr = add_training_arguments(parser, epochs=1.0, lr=3e-4)
    tr.add_argument(
        "--init-percentile",
        type=positive_float,
        default=99.0,
        metavar="P",
        help="each layer's clip starts at this percentile of its activations on the "
        "calibration data (default: %(default)s)",
    )
    add_evaluation_arguments(parser)
    add_model_arguments(parser)
    add_conversion_arguments(
        parser,
        calib_help="initialises the clips and calibrates the conversion (default: "
        "the training data)",
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import ann2snn
    from ann2snn import snn_file as snn_io
    from ann2snn.analysis.evaluate import write_atomic

    validate_mode(args.mode)
    if args.init_percentile > 100:
        raise CLIError(f"--init-percentile must be at most 100, got {args.init_percentile:g}")
    report = sorted({args.levels, *(parse_timesteps(args.report) if args.report else [])})
    check_outputs([args.output, args.json], args.force, [args.model])
    opened = open_model(args, args.model)
    if opened.snn is not None:
        raise CLIError(
            f"{args.model} is an SNN file: finetune trains the ANN before conversion. Pass "
            "the ANN, or fine-tune the SNN with `ann2snn bootstrap`."
        )
    train, evaluation, train_spec = open_training_data(args, opened)
    calib = open_calibration_or_training(args, opened, train_spec)
    model = opened.loaded.module
    check_runs(model, calib, args.device)
    print(f"model: {opened.description}")
    print(f"training data: {train.description}")
    print(f"calibration data: {calib.description}")
    if evaluation is not None:
        print(f"evaluation data: {evaluation.description}")
    eval_loader = None if evaluation is None else to_device(evaluation.loader, args.device)
    tuned_ann, history = ann2snn.finetune(
        model,
        to_device(shuffled_loader(train, args), args.device),
        levels=args.levels,
        epochs=args.epochs,
        lr=args.lr,
        init_percentile=args.init_percentile,
        calib_data=to_device(calib.loader, args.device),
        eval_loader=eval_loader,
        progress=not args.no_progress,
    )
    snn = ann2snn.convert(
        tuned_ann,
        calib_data=to_device(calib.loader, args.device),
        calib_batches=args.calib_batches,
        progress=not args.no_progress,
        **conversion_options(args),
    )
    print(f"conversion: {format_options(snn.meta)}")
    results: Dict[str, Any] = {}
    if eval_loader is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RangeWarning)  # the table prints them
            curve = ann2snn.evaluate(snn, eval_loader, report, progress=not args.no_progress)
        results = {"ann_accuracy": curve.ann_accuracy, "snn_accuracy": curve.accuracy}
        print()
        print(
            f"quantized ANN (L={args.levels}) on {evaluation.size} examples: "
            f"{history[0].eval_accuracy:.2f}% before fine-tuning, "
            f"{history[-1].eval_accuracy:.2f}% after"
        )
        print(curve.table())
    if args.output:
        provenance = {"input": args.model, "finetune_training": train.description}
        # The file holds the converted graph itself; the original source would rebuild
        # the weights from before fine-tuning, so only its description is kept.
        snn.meta["ann_description"] = (
            f"{opened.description}, fine-tuned for L={args.levels} by ann2snn finetune"
        )
        snn_io.save_snn(snn, args.output, provenance=provenance, overwrite=True)
        print(f"wrote {args.output}")
    if args.json:
        payload = {
            "model": args.model,
            "finetune": tuned_ann.meta["finetune"],
            "history": [vars(r) for r in history],
            "results": {
                k: v if not isinstance(v, dict) else {str(t): a for t, a in v.items()}
                for k, v in results.items()
            },
        }
        write_atomic(args.json, json.dumps(payload, indent=2).encode())
        print(f"wrote {args.json}")
    return 0
