"""The ``ann2snn`` command: ``convert``, ``eval``, ``info``, ``demo``, ``bootstrap``,
``finetune`` and ``export``.

Each subcommand is one module with ``SUMMARY``, ``DESCRIPTION``, ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int``, registered once in
:data:`SUBCOMMANDS`. Adding a subcommand means writing such a module and adding one
entry there.

Exit status: 0 on success, 2 for problems with the command line or its inputs (the
message says what is wrong and how to fix it; ``--debug`` adds the traceback), 1 for
unexpected internal errors, 130 when interrupted.

Ctrl-C prints one line and exits 130 wherever it lands. This module imports nothing heavy
at import time (neither does ``ann2snn/__init__.py``): torch and the subcommands are
imported inside :func:`main`, where an interrupt is handled. An interrupt that a library
turns into another error (torch's lazy imports leave a half-initialized module behind,
and the next import of it fails) is still reported as the interrupt: :func:`main`
records every SIGINT it receives.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

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


#: Subcommand name -> its module in ``ann2snn.cli``, in the order ``ann2snn --help`` lists
#: them. ``SUBCOMMANDS`` (name -> :class:`Subcommand`) imports them on first use.
_SUBCOMMAND_MODULES: Dict[str, str] = {
    "convert": "convert_cmd",
    "eval": "eval_cmd",
    "info": "info_cmd",
    "demo": "demo_cmd",
    "bootstrap": "bootstrap_cmd",
    "finetune": "finetune_cmd",
    "export": "export_cmd",
}
_subcommands: Optional[Dict[str, Subcommand]] = None
SUBCOMMANDS: Dict[str, Subcommand]  # provided by the module's __getattr__ (imports on use)


def subcommands() -> Dict[str, Subcommand]:
    """Subcommand name -> :class:`Subcommand` (imports the subcommand modules once)."""
    global _subcommands
    if _subcommands is None:
        _subcommands = {
            name: Subcommand.from_module(importlib.import_module(f"ann2snn.cli.{module}"))
            for name, module in _SUBCOMMAND_MODULES.items()
        }
    return _subcommands


def __getattr__(name: str) -> Any:
    if name == "SUBCOMMANDS":
        return subcommands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    for name, sub in subcommands().items():
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


def _ignore(signum: int, frame: Any) -> None:
    """A SIGINT handler that does nothing."""


class _Interrupts:
    """SIGINT while :func:`main` runs: raise KeyboardInterrupt (as Python's own handler
    does), remember it, and raise it again every second until :func:`main` handles it.

    A library can swallow a KeyboardInterrupt: torch calls Python from C++ while it
    records stack traces and drops the exception, leaving a half-imported module. The
    memory lets :func:`main` report a later error caused by that as the interrupt; the
    repetition stops a command that would otherwise go on as if Ctrl-C had not been
    pressed.
    """

    REPEAT_S = 1.0

    def __init__(self) -> None:
        self.seen = False
        self.handled = threading.Event()
        self.previous: Any = None
        self.installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.seen:
            self.seen = True
            # What libraries log while they are being interrupted is noise: an import of
            # triton cut short makes torch warn "triton not found" (seen once in a local
            # CI run of the interrupt test). After Ctrl-C the command prints one line.
            logging.disable(logging.WARNING)
            threading.Thread(target=self._repeat, daemon=True).start()
        raise KeyboardInterrupt

    def _repeat(self) -> None:
        while not self.handled.wait(self.REPEAT_S):
            signal.raise_signal(signal.SIGINT)

    def handle(self) -> int:
        """Stop listening to SIGINT and report the interrupt: exit status 130."""
        if self.installed:
            # A repeat already in flight meets a handler that does nothing (with SIG_IGN
            # Python would print "Signal 2 ignored due to race condition").
            signal.signal(signal.SIGINT, _ignore)
        self.handled.set()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

    def __enter__(self) -> _Interrupts:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        except ValueError:  # not the main thread: Python's handler stays
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handled.set()
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ann2snn`` command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 2 a problem with the inputs, 1 an internal error,
        130 interrupted (Ctrl-C).
    """
    with _Interrupts() as interrupts:
        try:
            return _main(argv, interrupts)
        except KeyboardInterrupt:
            return interrupts.handle()
        except Exception:
            # Ctrl-C in the start-up imports (building the parser) can surface as another
            # error: numpy's C extension, interrupted while loading, refuses to load again.
            if interrupts.seen:
                return interrupts.handle()
            raise


def _main(argv: Optional[Sequence[str]], interrupts: _Interrupts) -> int:
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()  # imports torch and the subcommands
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        _check_device(args)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return interrupts.handle()
    except Exception as exc:
        if interrupts.seen:  # e.g. an import that Ctrl-C left half-done, failing later
            return interrupts.handle()
        return _report(args, exc, debug)


def _check_device(args: argparse.Namespace) -> None:
    """Refuse a ``--device`` that is not there before any work (CLIError)."""
    if getattr(args, "device", None) is not None:
        from ann2snn.cli.common import check_device

        check_device(args.device)


def _report(args: argparse.Namespace, exc: Exception, debug: bool) -> int:
    """Print ``exc`` as one paragraph; 2 for the user's mistakes, 1 for ours."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, _user_errors()):
        print(f"{PROG} {args.command}: error: {_one_paragraph(exc)}", file=sys.stderr)
        return 2
    # A bug: say so, and how to see more.
    print(
        f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_paragraph(exc)}"
        + (
            "" if debug else "\n(run again with --debug to see the traceback, and please report it)"
        ),
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
