"""Options and steps shared by the ``ann2snn`` subcommands."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ann2snn.cli.data_sources import DataOptions, DataSource, open_data, parse_floats


class CLIError(ValueError):
    """A problem with the command line or its inputs; printed without a traceback."""


# ---------------------------------------------------------------------------------------
# Argument groups


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--arch / --arch-kwargs / --trust-checkpoint: how to read an ANN file."""
    g = parser.add_argument_group("reading the model")
    g.add_argument(
        "--arch",
        metavar="NAME|MODULE:FACTORY",
        help="architecture for a .pt/.pth file that holds only weights (a state_dict): a "
        "bundled model name (mnist_cnn, fmnist_maxpool_cnn, fmnist_avgpool_cnn, "
        "fmnist_resnet) or package.module:function returning your nn.Module",
    )
    g.add_argument(
        "--arch-kwargs",
        metavar="JSON",
        help="keyword arguments for --arch as a JSON object, e.g. '{\"width\": 16}'",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow files that run code when read: whole pickled models, checkpoints "
        "holding Python objects, .pt2 programs, and SNN files built from such models. "
        "Use only for files you trust",
    )


def api_default(name: str) -> Any:
    """The default of conversion option ``name`` (the CLI never overrides it)."""
    from ann2snn.config import ConversionConfig

    return ConversionConfig.default(name)


def _default_text(name: str) -> str:
    value = api_default(name)
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    return str(value).replace("%", "%%")  # argparse %-formats help texts


_FLAG_TYPES = {"positive_int": lambda text: _positive_int(text), "horizons": lambda t: _horizons(t)}


def _add_option_flag(group: Any, name: str) -> None:
    """The flag(s) of conversion option ``name``, as its ``ConversionConfig`` field says."""
    from ann2snn.config import ConversionConfig

    spec = ConversionConfig.cli(name)
    kind, flag = spec["kind"], "--" + name.replace("_", "-")
    text = spec.get("help", "").replace("{default}", _default_text(name))
    if kind == "switch":
        _add_bool_flag_pair(group, name, spec["on"], spec["off"])
    elif kind == "off":
        group.add_argument(spec["flag"], dest=name, action="store_const", const=False, help=text)
    elif kind == "choice":
        choices = spec["choices"]
        if not text:
            text = f"how max pooling converts (default: {_default_text(name)}): " + "; ".join(
                f"{k}: {v}" for k, v in choices.items()
            )
        group.add_argument(flag, choices=sorted(choices), default=None, help=text)
    elif kind == "value":
        parser = _FLAG_TYPES.get(spec.get("type"), spec.get("type"))
        group.add_argument(flag, type=parser, metavar=spec.get("metavar"), help=text)


def add_conversion_arguments(parser: argparse.ArgumentParser, *, calib_help: str) -> None:
    """--mode / --calib / --calib-batches / --calib-limit, then one flag (or pair) per
    conversion option of ``ann2snn.config.ConversionConfig``: --channelwise / --v-init /
    --maxpool / --target-timesteps / --calibration-horizons / --[no-]potential-calibration /
    --[no-]threshold-search / --readout / --no-fold.

    Options left out take ``ann2snn.convert``'s defaults, so the command converts exactly
    as the Python API does.
    """
    g = parser.add_argument_group("conversion")
    _add_option_flag(g, "mode")
    g.add_argument("--calib", metavar="DATA", help=calib_help)
    g.add_argument(
        "--calib-batches",
        type=_positive_int,
        metavar="N",
        help="calibrate on at most N batches of --batch-size examples (default: all)",
    )
    g.add_argument(
        "--calib-limit",
        type=_positive_int,
        metavar="N",
        help="calibrate on the first N examples only (default: all; 2,000 is usually enough)",
    )
    for name in _flag_order():
        _add_option_flag(g, name)


def _flag_order() -> List[str]:
    """The conversion options with a flag, in the order ``--help`` lists them."""
    from ann2snn.config import ConversionConfig

    names = [
        n
        for n in ConversionConfig.option_names()
        if n != "mode" and ConversionConfig.cli(n)["kind"] != "none"
    ]
    # --no-fold has always come last in the help.
    return sorted(names, key=lambda n: ConversionConfig.cli(n)["kind"] == "off")


def _add_bool_flag_pair(group: Any, dest: str, on: Tuple[str, str], off: Tuple[str, str]) -> None:
    """A pair of exclusive flags setting the boolean option ``dest`` of ``ann2snn.convert``
    to True (``on = (flag, help)``) or False (``off``); the default's help says so."""
    default = api_default(dest)
    flags = group.add_mutually_exclusive_group()
    for (flag, text), value in ((on, True), (off, False)):
        flags.add_argument(
            flag,
            dest=dest,
            action="store_const",
            const=value,
            help=text + (" (the default)" if default is value else ""),
        )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for reading DATA arguments."""
    g = parser.add_argument_group(
        "data",
        "DATA is mnist or fashion-mnist (optionally NAME:FOLDER), a folder of MNIST IDX\n"
        "files, an image folder with one sub-folder per class, or an .npz/.pt file holding\n"
        "inputs x (and labels y). Pixels are scaled to [0, 1] before --mean/--std.",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="examples per batch (default: %(default)s)",
    )
    g.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="PX",
        help="resize image-folder images to PX x PX (default: the model's input size when known)",
    )
    g.add_argument(
        "--resize",
        type=_positive_int,
        metavar="PX",
        help="ImageNet-style preprocessing: resize the shorter side of image-folder images to "
        "PX, then center-crop to --image-size (ImageNet: --resize 256 --image-size 224 "
        "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)",
    )
    g.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="image-folder images as 1 (grayscale) or 3 (RGB) channels (default: what the "
        "model's first layer takes)",
    )
    g.add_argument("--mean", metavar="M[,M,M]", help="subtract this mean (per channel)")
    g.add_argument("--std", metavar="S[,S,S]", help="then divide by this std (per channel)")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """--distributed / --dist-timeout: one rank of a torchrun job (docs/distributed.md)."""
    g = parser.add_argument_group(
        "several processes",
        "Started by torchrun (torchrun --nproc-per-node N -m ann2snn.cli ...), each process\n"
        "works on its share of the data; results equal one process's; rank 0 prints/writes.",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="require a torchrun job (one is joined automatically when torchrun starts more "
        "than one process)",
    )
    g.add_argument(
        "--dist-timeout",
        type=_positive_float,
        metavar="S",
        help="stop when another process has not answered for S seconds (default: "
        "$ANN2SNN_DIST_TIMEOUT or 1800)",
    )


def start_distributed(args: argparse.Namespace) -> bool:
    """Join the torchrun job, if there is one; on ranks other than 0, print nothing.

    Raises:
        CLIError: --distributed without torchrun.
    """
    from ann2snn import distributed

    try:
        joined = distributed.init_from_env(timeout_s=args.dist_timeout, required=args.distributed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if joined and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # for the rest of this process
    return joined


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device / --no-progress / --debug."""
    g = parser.add_argument_group("running")
    g.add_argument(
        "--device",
        default="cpu",
        help="where to run: cpu, cuda or cuda:N (default: %(default)s)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full Python traceback when something fails",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


positive_int = _positive_int


def _horizons(text: str) -> List[int]:
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,2,4, got {text!r}"
        )
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


positive_float = _positive_float


# ---------------------------------------------------------------------------------------
# Parsing helpers


def parse_timesteps(text: str) -> List[int]:
    """Parse ``"1,2,4,...,256"``, ``"8,16,32"`` or ``"64"`` into sorted time steps.

    ``...`` continues the progression before it up to the value after it: doubling after
    two powers of two (``1,2,...``), a constant ratio or step after three values
    (``1,3,9,...``), else a constant step (``10,20,...``). The end value is always included.

    Raises:
        CLIError: an unreadable list.
    """
    parts = [p.strip() for p in str(text).split(",")]
    bad = CLIError(
        f"--timesteps {text!r} is not a list of positive integers. Write e.g. 1,2,4,...,256 "
        "(a doubling or evenly spaced progression), 8,16,32, or a single number."
    )
    values: List[int] = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if p in ("...", "\u2026"):
            if len(values) < 2 or i + 1 >= len(parts) or not parts[i + 1].isdigit():
                raise bad
            a, b, end = values[-2], values[-1], int(parts[i + 1])
            if end <= b:  # "2,4,...,3": the progression must go on past its last value
                raise bad
            c = values[-3] if len(values) >= 3 else None
            if c is not None:
                geometric = c > 0 and a * a == b * c and b > a
            else:
                # 1,2,... and 8,16,... double; 10,20,... counts in tens.
                geometric = a > 0 and b == 2 * a and a & (a - 1) == 0
            if geometric:
                v = b * b // a
                while v < end:
                    values.append(v)
                    v = v * b // a
            elif b > a and (c is None or a - c == b - a):
                v = b + (b - a)
                while v < end:
                    values.append(v)
                    v += b - a
            else:
                raise bad
            i += 1
            continue
        if not p.isdigit() or int(p) < 1:
            raise bad
        values.append(int(p))
        i += 1
    if not values:
        raise bad
    return sorted(set(values))


def _cannot_create_in(folder: str) -> Optional[str]:
    """Why no file can be created in ``folder`` (None if one can): outputs are written
    through a temporary file there and a rename, so this is what writing needs. Tried
    with a real file, as permission bits do not tell (root, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".ann2snn-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_device(device: str) -> None:
    """Refuse a ``--device`` that is not a device, or a GPU that is not there.

    Raises:
        CLIError: naming the value and what to use instead.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(
            f"--device {device}: not a device; use cpu, cuda or cuda:N (the N-th GPU)"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(
                f"--device {device}: no CUDA GPU is available (torch.cuda.is_available() "
                "is False); use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise CLIError(
                f"--device {device}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: no MPS device is available; use --device cpu")


def check_outputs(outputs: Sequence[Optional[str]], force: bool, inputs: Sequence[str]) -> None:
    """Refuse outputs that exist (without --force), overwrite an input, or lack a folder
    that exists and can be written to.

    Raises:
        CLIError: naming the path and the fix.
    """
    resolved_inputs = {os.path.realpath(p) for p in inputs if p and os.path.exists(p)}
    for out in outputs:
        if not out:
            continue
        real = os.path.realpath(out)
        if real in resolved_inputs:
            raise CLIError(
                f"the output {out} is also an input; ann2snn never modifies its inputs. "
                "Choose another output path."
            )
        if os.path.isdir(out):
            raise CLIError(f"the output {out} is a folder; give a file name")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise CLIError(f"cannot write {out}: the folder {parent} does not exist")
        problem = _cannot_create_in(parent)
        if problem:
            raise CLIError(
                f"cannot write {out}: the folder {parent} is not writable ({problem}). "
                "Choose an output path in a folder you can write to."
            )
        if os.path.exists(out) and not force:
            raise CLIError(
                f"the output {out} already exists; pass --force to replace it, or choose "
                "another path"
            )


def data_options(args: argparse.Namespace, limit: Optional[int], hint: ModelHints) -> DataOptions:
    return DataOptions(
        batch_size=args.batch_size,
        limit=limit,
        image_size=args.image_size or hint.image_size,
        resize=getattr(args, "resize", None),
        channels=args.channels or hint.channels,
        mean=parse_floats(args.mean, "--mean"),
        std=parse_floats(args.std, "--std"),
    )


# ---------------------------------------------------------------------------------------
# Models


@dataclass
class ModelHints:
    """What is known about a model's inputs and training data."""

    channels: Optional[int] = None
    image_size: Optional[int] = None
    dataset: Optional[str] = None


def _hints_from_module(module: nn.Module, shape: Optional[Sequence[int]]) -> ModelHints:
    hints = ModelHints()
    if shape:
        hints.channels = int(shape[0]) if shape[0] in (1, 3) else None
        if len(shape) == 3 and shape[1] == shape[2]:
            hints.image_size = int(shape[1])
    if hints.channels is None:
        for m in module.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                hints.channels = m.in_channels if m.in_channels in (1, 3) else None
                break
    return hints


@dataclass
class Opened:
    """A MODEL argument: a loaded SNN, or an ANN still to convert."""

    snn: Any = None
    loaded: Any = None  # ann2snn.frontends.checkpoint.LoadedModel
    hints: ModelHints = None  # type: ignore[assignment]
    description: str = ""


def open_model(args: argparse.Namespace, path: str) -> Opened:
    """Read MODEL: an SNN file (``ann2snn convert`` output) or any ANN input."""
    from ann2snn import snn_file as snn_io
    from ann2snn.frontends.checkpoint import load_model
    from ann2snn.frontends.sources import describe_source
    from ann2snn.models import MODEL_DATASETS

    if os.path.isfile(path) and snn_io.is_snn_file(path):
        header = snn_io.read_snn_header(path)
        snn = snn_io.load_snn(path, trust_checkpoint=args.trust_checkpoint)
        snn = snn.to(args.device)
        hints = _hints_from_module(snn.ann, snn.meta.get("input_shape"))
        hints.dataset = header.get("provenance", {}).get("dataset")
        ann = header.get("ann_description") or describe_source(header["ann_source"])
        desc = f"SNN file {path} ({ann})"
        return Opened(snn=snn, hints=hints, description=desc)
    loaded = load_model(
        path,
        arch=args.arch,
        arch_kwargs=args.arch_kwargs,
        trust_checkpoint=args.trust_checkpoint,
    )
    loaded.module.to(args.device)
    hints = _hints_from_module(loaded.module, loaded.input_shape)
    src = loaded.source
    if src.get("kind") == "registry":
        hints.dataset = loaded.dataset or (
            MODEL_DATASETS.get(src["arch"]) if path == src["arch"] else None
        )
    return Opened(loaded=loaded, hints=hints, description=loaded.description)


def conversion_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``ann2snn.convert`` options given on the command line (others keep the defaults)."""
    from ann2snn.config import ConversionConfig

    names = ConversionConfig.option_names()
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def convert_opened(args: argparse.Namespace, opened: Opened, calib: DataSource) -> Any:
    """Convert ``opened.loaded.module`` with the command line's conversion options."""
    import ann2snn

    model = opened.loaded.module
    check_runs(model, calib, args.device)
    return ann2snn.convert(
        model,
        calib_data=to_device(calib.loader, args.device),
        calib_batches=args.calib_batches,
        progress=not args.no_progress,
        **conversion_options(args),
    )


class _to_device:
    """Iterate a loader, moving inputs to a device (keeps ``len`` for progress bars)."""

    def __init__(self, loader: Any, device: str) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)


def to_device(loader: Any, device: str) -> Any:
    from ann2snn import distributed

    # convert() and evaluate() move each batch to the model's device themselves; a plain
    # DataLoader lets each rank of a torchrun job read only its own batches.
    if device == "cpu" or distributed.is_distributed():
        return loader
    return _to_device(loader, device)


def check_runs(
    model: nn.Module, data: DataSource, device: str, input_rank: Optional[int] = None
) -> None:
    """Run the ANN on two examples; a failure means the data does not fit the model.
    Examples with one more dimension than ``input_rank`` (the model's batched input rank)
    are sequences ``[T, ...]``; the ANN sees their mean frame.

    Raises:
        CLIError: with the data's shape and the model's complaint.
    """
    x, _ = next(iter(data.loader))
    x = x[:2].to(device)
    if input_rank is not None and x.dim() == input_rank + 1:
        x = x.mean(1)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(
            f"the model cannot run on the data ({data.description}): inputs of shape "
            f"{list(x.shape[1:])} per example give '{first}'. Check that the data matches "
            "what the model was trained on (use --channels / --image-size for image folders, "
            "--mean/--std for normalization)."
        ) from exc


def open_calibration(args: argparse.Namespace, opened: Opened, need: str) -> DataSource:
    """Open --calib (training split for dataset names).

    Raises:
        CLIError: when --calib is missing.
    """
    if not args.calib:
        raise missing_calibration(need)
    return open_data(
        args.calib,
        split="train",
        options=data_options(args, args.calib_limit, opened.hints),
    )


def missing_calibration(need: str) -> CLIError:
    return CLIError(
        f"missing calibration data: {need} needs --calib DATA (e.g. --calib mnist, "
        "--calib fashion-mnist, an image folder or an .npz/.pt file of training inputs) "
        "to measure activation ranges."
    )


def validate_mode(text: Optional[str]) -> None:
    from ann2snn.modes import parse_mode

    if text is None:
        return
    try:
        parse_mode(text)
    except ValueError as exc:
        raise CLIError(f"{exc}. Pass it as --mode, e.g. --mode 99.9%.") from None


def format_options(meta: Dict[str, Any]) -> str:
    from ann2snn.config import describe_options

    return describe_options(meta)


def file_size(path: str) -> str:
    n = pathlib.Path(path).stat().st_size
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
