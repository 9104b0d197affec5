"""``ann2snn export``: write a converted SNN as a NIR graph for other SNN tools."""

from __future__ import annotations

import argparse
import io

from ann2snn.cli.common import (
    CLIError,
    add_conversion_arguments,
    add_data_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_outputs,
    convert_opened,
    open_calibration,
    open_model,
    positive_int,
    validate_mode,
)

SUMMARY = "write an SNN as a NIR graph (Norse, sinabs, snnTorch, ... read it)"
DESCRIPTION = """\
Export a converted SNN to NIR (https://neuroir.org), the exchange format of SNN
simulators and neuromorphic hardware. IF layers become nir.IF nodes with full-shape
parameters; what NIR does not describe (reset by subtraction, spikes on v >= threshold,
one spike a step, dt = 1, the initial potential, T, the constant-current input and the
time-averaged readout) is written as metadata on every IF node and on the graph. Average
pooling becomes SumPool2d with 1/k folded into the next layer's weights.

NIR has no max pooling: an SNN holding any is refused with one message listing every
node that cannot be exported. ann2snn.from_nir reads the file back (same spikes), and
ann2snn.interop loads it into Norse and sinabs with the semantics made exact
(docs/interop.md).

MODEL is an SNN file or an ANN input (converted first; then --calib is needed).
"""
EPILOG = """\
examples:
  ann2snn export snn.pt -o net.nir
  ann2snn export fmnist_avgpool_cnn --calib fashion-mnist -o net.nir --timesteps 64
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an SNN file or a trained ANN")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the NIR file to write"
    )
    parser.add_argument(
        "--timesteps",
        type=positive_int,
        default=32,
        metavar="T",
        help="time steps recorded in the file's metadata (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_model_arguments(parser)
    add_conversion_arguments(
        parser, calib_help="calibration data, needed when MODEL is an ANN (see DATA below)"
    )
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    validate_mode(args.mode)
    check_outputs([args.output], args.force, [args.model])
    try:
        import nir
    except ImportError as exc:
        raise CLIError("export needs the 'nir' package: pip install 'ann2snn[nir]'") from exc
    from ann2snn.analysis.evaluate import write_atomic
    from ann2snn.interop import NIRExportError, to_nir

    opened = open_model(args, args.model)
    print(f"model: {opened.description}")
    if opened.snn is None:
        calib = open_calibration(args, opened, "exporting an ANN (it is converted first)")
        print(f"calibration data: {calib.description}")
        snn = convert_opened(args, opened, calib)
    else:
        snn = opened.snn
    try:
        graph = to_nir(snn.cpu(), timesteps=args.timesteps)
    except NIRExportError as exc:
        raise CLIError(f"cannot export {args.model} to NIR: {exc}") from exc
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    write_atomic(args.output, buffer.getvalue())
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
    print(f"wrote {args.output}: {len(graph.nodes)} NIR nodes ({', '.join(kinds)})")
    return 0
