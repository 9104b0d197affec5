"""``ann2snn convert``: turn a trained ANN into a spiking network file."""

from __future__ import annotations

import argparse
import time

from ann2snn.analysis.diagnostics import count_neurons
from ann2snn.cli.common import (
    CLIError,
    add_conversion_arguments,
    add_data_arguments,
    add_distributed_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    convert_opened,
    file_size,
    format_options,
    missing_calibration,
    open_calibration,
    open_model,
    start_distributed,
    validate_mode,
)
from ann2snn.distributed import is_main

SUMMARY = "convert a trained ANN into a spiking network (SNN) file"
DESCRIPTION = """\
Convert a trained ReLU network into a spiking network of integrate-and-fire neurons.
Activation ranges are measured on calibration data (--calib), the ReLUs become IF
neurons whose thresholds come from those ranges, and the result is written to -o.

INPUT is one of:
  a bundled model name            e.g. fmnist_avgpool_cnn (its trained weights)
  a .pt/.pth state_dict           plus --arch (a bundled name or package.module:factory)
  a training checkpoint dict      its state_dict is found under 'state_dict', 'model' ...
  a whole pickled nn.Module       only with --trust-checkpoint (unpickling runs code)
  a .pt2 torch.export program     only with --trust-checkpoint (torch.export.load unpickles)
  an .onnx file                   external weight files next to it are read too

The output file holds everything needed to run and inspect the SNN again
(ann2snn eval / ann2snn info): the ANN's source, the conversion options and every
threshold and folded weight. It is read with torch.load(weights_only=True).
"""
EPILOG = """\
examples:
  ann2snn convert fmnist_avgpool_cnn --calib fashion-mnist --calib-limit 2000 -o snn.pt
  ann2snn convert weights.pt --arch mnist_cnn --calib mnist --mode 99.99% -o snn.pt
  ann2snn convert net.pt --arch mypkg.nets:build --arch-kwargs '{"width": 64}' \\
      --calib images/train --image-size 32 --mean 0.5 --std 0.25 -o snn.pt
  ann2snn convert model.onnx --calib calib.npz -o snn.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="the trained ANN (see above)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT.pt", help="where to write the SNN file"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT.pt if it exists")
    add_model_arguments(parser)
    add_conversion_arguments(
        parser,
        calib_help="calibration data (required): a few thousand training inputs, see DATA below",
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)
    add_distributed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ann2snn import snn_file as snn_io

    distributed = start_distributed(args)  # under torchrun: this rank's share of the data
    validate_mode(args.mode)
    check_outputs([args.output], args.force, [args.input])
    opened = open_model(args, args.input)
    if not args.calib:
        raise missing_calibration("conversion")
    if opened.snn is not None:
        raise CLIError(
            f"{args.input} is already a converted SNN file; convert takes the trained ANN. "
            "Use ann2snn eval or ann2snn info on it."
        )
    calib = open_calibration(args, opened, "conversion")
    print(f"model: {opened.description}")
    print(f"calibration data: {calib.description}")
    start = time.perf_counter()
    snn = convert_opened(args, opened, calib)
    seconds = time.perf_counter() - start
    if distributed and not is_main():
        return 0  # every rank built the same SNN; rank 0 writes it
    provenance = {
        "input": args.input,
        "calibration": calib.description,
        "calib_batches": args.calib_batches,
        "dataset": calib.dataset_name,
    }
    layers, neurons = count_neurons(snn)
    snn_io.save_snn(
        snn, args.output, source=opened.loaded.source, provenance=provenance, overwrite=True
    )
    print(
        f"converted in {seconds:.1f} s: {layers} IF layers, {neurons:,} neurons per input "
        f"({format_options(snn.meta)})"
    )
    print(f"wrote {args.output} ({file_size(args.output)})")
    data_hint = f" --data {calib.dataset_name}" if calib.dataset_name else " --data DATA"
    print(f"next: ann2snn eval {args.output}{data_hint}   |   ann2snn info {args.output}")
    return 0
