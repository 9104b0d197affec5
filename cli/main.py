"""The ``ann2snn`` command: ``convert``, ``eval``, ``info``, ``demo`` and ``bootstrap``.

Each subcommand is one module with ``SUMMARY``, ``DESCRIPTION``, ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int``, registered once in
:data:`SUBCOMMANDS`. Adding a subcommand means writing such a module and adding one
entry there.

Exit status: 0 on success, 2 for problems with the command line or its inputs (the
message says what is wrong and how to fix it; ``--debug`` adds the traceback), 1 for
unexpected internal errors, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

from ann2snn.cli import bootstrap_cmd, convert_cmd, demo_cmd, eval_cmd, info_cmd

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main"]

PROG = "ann2snn"


@dataclass(frozen=True)
class Subcommand:
    """One ``ann2snn`` subcommand: its help texts, its options and what it does."""

    summary: str
    description: str
    epilog: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    @classmethod
    def from_module(cls, module: ModuleType) -> Subcommand:
        return cls(
            module.SUMMARY, module.DESCRIPTION, module.EPILOG, module.add_arguments, module.run
        )


#: Subcommand name -> :class:`Subcommand`, in the order ``ann2snn --help`` lists them.
SUBCOMMANDS: Dict[str, Subcommand] = {
    "convert": Subcommand.from_module(convert_cmd),
    "eval": Subcommand.from_module(eval_cmd),
    "info": Subcommand.from_module(info_cmd),
    "demo": Subcommand.from_module(demo_cmd),
    "bootstrap": Subcommand.from_module(bootstrap_cmd),
}

DESCRIPTION = """\
ann2snn converts trained ReLU networks (PyTorch or ONNX) into spiking neural networks of
integrate-and-fire neurons, and measures how well the spiking network matches the
original as the number of simulated time steps T grows.

new here? run `ann2snn demo`: it converts a bundled Fashion-MNIST model and prints its
accuracy for T = 1 ... 128 beside the original network's.
"""

EPILOG = """\
typical use:
  ann2snn convert model.pt --arch mnist_cnn --calib mnist -o snn.pt
  ann2snn eval snn.pt --data mnist --plot accuracy.png
  ann2snn info snn.pt --data mnist

`ann2snn COMMAND --help` explains each command. Problems are reported in one message
with exit status 2; add --debug to see the Python traceback.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=92)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from ann2snn import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"ann2snn {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full Python traceback when something fails"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, sub in SUBCOMMANDS.items():
        p = subparsers.add_parser(
            name,
            help=sub.summary,
            description=sub.description,
            epilog=sub.epilog,
            formatter_class=_Formatter,
        )
        sub.add_arguments(p)
        p.set_defaults(_run=sub.run)
    return parser


def _user_errors() -> tuple:
    from ann2snn.distributed import DistributedError
    from ann2snn.errors import ConversionError

    errors = (ValueError, FileNotFoundError, FileExistsError, ConversionError, OSError)
    return errors + (DistributedError,)  # names the failing rank and its cause


def _one_paragraph(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ann2snn`` command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 2 a problem with the inputs, 1 an internal error.
    """
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {_one_paragraph(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so, and how to see more
        if debug:
            traceback.print_exc()
        print(
            f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_paragraph(exc)}"
            + (
                ""
                if debug
                else "\n(run again with --debug to see the traceback, and please report it)"
            ),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
