"""``ann2snn eval``: SNN accuracy at each number of time steps, beside the ANN's."""

from __future__ import annotations

import argparse
import warnings

from ann2snn.analysis.saturation import RangeWarning
from ann2snn.cli.common import (
    CLIError,
    add_conversion_arguments,
    add_data_arguments,
    add_distributed_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    check_runs,
    convert_opened,
    data_options,
    format_options,
    open_calibration,
    open_model,
    parse_timesteps,
    positive_int,
    start_distributed,
    to_device,
    validate_mode,
)
from ann2snn.cli.data_sources import open_data
from ann2snn.distributed import is_main
from ann2snn.runtime.encoding import ENCODINGS

SUMMARY = "measure SNN accuracy for each number of time steps T"
DESCRIPTION = """\
Simulate the SNN on labelled data and print its accuracy at every requested number of
time steps T beside the ANN's accuracy, with the SNN's mean output error relative to
the ANN. All T values come from ONE simulation up to the largest T.

Below the table: the share of (input, neuron) pairs that saturated at the largest T
(spiked at every step with an input above the threshold), the share of inputs that drove
an activation above the largest value of the calibration data, and the clip error (the
output error the neurons' clipping alone causes, about what the SNN's error approaches as
T grows), with a warning when one is large (docs/accuracy.md, "Saturation and
calibration coverage").

MODEL is an SNN file from `ann2snn convert`, or any ANN input that `convert` accepts;
an ANN is converted first with the conversion options below (then --calib is needed).
"""
EPILOG = """\
examples:
  ann2snn eval snn.pt --data fashion-mnist
  ann2snn eval snn.pt --data fashion-mnist --limit 1000 --timesteps 1,2,4,...,256 \\
      --csv curve.csv --json curve.json --plot curve.png
  ann2snn eval mnist_cnn --calib mnist --calib-limit 2000 --data mnist --mode max
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an SNN file or a trained ANN")
    parser.add_argument(
        "--data",
        metavar="DATA",
        help="labelled evaluation data (dataset names use the test split; default: the "
        "dataset the model was trained on, when the file records it)",
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="evaluate the first N examples only"
    )
    parser.add_argument(
        "--timesteps",
        default="1,2,4,...,256",
        metavar="LIST",
        help="time steps to report, e.g. 1,2,4,...,256 (the default), 8,16,32 or 64",
    )
    parser.add_argument(
        "--encoding",
        choices=sorted(ENCODINGS),
        default="current",
        help="how the input enters the SNN: a constant current (the default), or Poisson / "
        "Bernoulli rate-coded spikes (signed; see docs/accuracy.md)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of a random --encoding (batch i uses seed + i; default: %(default)s)",
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    out.add_argument("--json", metavar="FILE", help="write the results as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="plot accuracy versus T as a PNG")
    out.add_argument("--force", action="store_true", help="replace existing output files")
    add_model_arguments(parser)
    add_conversion_arguments(
        parser, calib_help="calibration data, needed when MODEL is an ANN (see DATA below)"
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)
    add_distributed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import ann2snn

    timesteps = parse_timesteps(args.timesteps)
    distributed = start_distributed(args)  # under torchrun: this rank's share of the data
    validate_mode(args.mode)
    check_outputs([args.csv, args.json, args.plot], args.force, [args.model])
    opened = open_model(args, args.model)
    data_spec = args.data or opened.hints.dataset
    if not data_spec:
        raise CLIError(
            "missing evaluation data: pass --data DATA with labelled examples (e.g. --data "
            "mnist, --data fashion-mnist, an image folder, or an .npz/.pt file with x and y)."
        )
    data = open_data(
        data_spec,
        split="test",
        options=data_options(args, args.limit, opened.hints),
        need_labels=True,
    )
    print(f"model: {opened.description}")
    if opened.snn is None:
        calib = open_calibration(args, opened, "evaluating an ANN (it is converted first)")
        print(f"calibration data: {calib.description}")
        snn = convert_opened(args, opened, calib)
    else:
        snn = opened.snn
        if snn.ann is not None:
            check_runs(snn.ann, data, args.device, len(snn.meta.get("input_shape", ())) + 1)
    print(f"conversion: {format_options(snn.meta)}")
    print(f"evaluation data: {data.description}{'' if args.data else ' (from the model file)'}")
    if args.encoding != "current":
        print(f"input encoding: {args.encoding} (seed {args.seed})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeWarning)  # the table prints them
        curve = ann2snn.evaluate(
            snn,
            to_device(data.loader, args.device),
            timesteps=timesteps,
            progress=not args.no_progress,
            encoding=args.encoding,
            seed=args.seed,
        )
    if distributed and not is_main():
        return 0  # every rank has the same curve; rank 0 prints and writes it
    print()
    print(curve.table())
    if args.csv:
        curve.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        curve.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        curve.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0
