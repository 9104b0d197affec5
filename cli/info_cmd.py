"""``ann2snn info``: what is inside an SNN, and with data, how active each layer is."""

from __future__ import annotations

import argparse
import json
import warnings

from ann2snn.analysis.saturation import RangeWarning
from ann2snn.cli.common import (
    add_conversion_arguments,
    add_data_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    convert_opened,
    data_options,
    format_options,
    open_calibration,
    open_model,
    positive_int,
    to_device,
    validate_mode,
)
from ann2snn.cli.data_sources import open_data

SUMMARY = "show an SNN's layers, neurons and thresholds; with --data, activity and energy"
DESCRIPTION = """\
Describe a converted SNN: every layer (those computed once per input, those run every
time step), the number of neurons and each IF layer's threshold and normalization scale,
and which IF kernel runs the simulation (compiled C++/CUDA or the pure-torch reference).

With --data, also simulate T time steps (--timesteps) and report per IF layer: the firing
rate, spikes and synaptic operations (spikes x fan-out of the consuming layers) per
inference beside the ANN's multiply-accumulates over the same connections, and an energy
estimate at 45 nm: 4.6 pJ per 32-bit float MAC, 0.9 pJ per accumulate (Horowitz 2014),
and per layer the share of (input, neuron) pairs that saturated (sat %: spiked at every
step with an input above the threshold) and of inputs that drove it above the largest
value of the calibration data (beyond %), with the clip error and a warning when one is
large.

MODEL is an SNN file or an ANN input (converted first; then --calib is needed).
"""
EPILOG = """\
examples:
  ann2snn info snn.pt
  ann2snn info snn.pt --data fashion-mnist --limit 500 --timesteps 32 --json report.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an SNN file or a trained ANN")
    parser.add_argument(
        "--data",
        metavar="DATA",
        help="inputs for the per-layer activity report (dataset names use the test split)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=1000,
        metavar="N",
        help="examples for the activity report (default: %(default)s)",
    )
    parser.add_argument(
        "--timesteps",
        type=positive_int,
        default=32,
        metavar="T",
        help="time steps simulated for the activity report (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the activity report as JSON")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_model_arguments(parser)
    add_conversion_arguments(
        parser, calib_help="calibration data, needed when MODEL is an ANN (see DATA below)"
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def _backend_line() -> str:
    from ann2snn.ops import backend_info

    info = backend_info()
    cpu = info.get("cpu")
    cpu_text = "compiled C++ kernel" if cpu == "compiled" else "pure-torch reference"
    cuda = info.get("cuda")
    cuda_text = {
        "compiled": "compiled CUDA kernel",
        "reference": "pure-torch reference",
    }.get(str(cuda), str(cuda))
    line = f"IF kernel: CPU {cpu_text}; CUDA {cuda_text}"
    if info.get("reason") and cpu != "compiled":
        line += f" ({info['reason']})"
    return line


def run(args: argparse.Namespace) -> int:
    from ann2snn.analysis.diagnostics import layer_report, structure_table
    from ann2snn.frontends.sources import describe_source

    validate_mode(args.mode)
    check_outputs([args.json], args.force, [args.model])
    opened = open_model(args, args.model)
    print(f"model: {opened.description}")
    if opened.snn is None:
        calib = open_calibration(args, opened, "describing an ANN (it is converted first)")
        print(f"calibration data: {calib.description}")
        snn = convert_opened(args, opened, calib)
    else:
        snn = opened.snn
        prov = snn.meta.get("provenance") or {}
        if prov.get("input"):
            print(f"converted from: {prov['input']}")
        if prov.get("calibration"):
            print(f"calibrated on: {prov['calibration']}")
    if opened.loaded is not None:
        print(describe_source(opened.loaded.source))
    print(f"conversion: {format_options(snn.meta)}; input shape {snn.meta.get('input_shape')}")
    print(_backend_line())
    print()
    print(structure_table(snn))
    if not args.data:
        if args.json:
            print("(no --data: no activity report, so no JSON written)")
        return 0
    data = open_data(args.data, split="test", options=data_options(args, args.limit, opened.hints))
    print()
    print(f"activity data: {data.description}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeWarning)  # the table prints them
        report = layer_report(
            snn,
            to_device(data.loader, args.device),
            timesteps=args.timesteps,
            progress=not args.no_progress,
        )
    print(report.table())
    if args.json:
        from ann2snn.analysis.evaluate import write_atomic

        write_atomic(args.json, json.dumps(report.to_dict(), indent=2).encode())
        print(f"wrote {args.json}")
    return 0
