"""Convert every classification model of ``torchvision.models`` and measure its fidelity.

Each model is built with random weights (``weights=None``, a fixed seed). BatchNorm
layers get realistic, non-trivial statistics: random affine parameters (gamma in
[0.5, 1.5], beta ~ N(0.5, 0.2)), then their running mean and variance are measured on
random images in training mode. (With zero-mean beta, deep random BatchNorm networks are
chaotic: a perturbation grows by about 1.2x per layer, so the quantization error of the
first layers decorrelates the output of a 60-layer network at any practical T. Trained
networks are not like that; a positive shift keeps the random ones in the ordered regime.)

Models whose nonlinearities are all ReLU-family activations are converted (calibration on
16 random images, mode ``max``, layer-wise scales: 16 random images do not cover held-out
ones channel by channel; otherwise the library's defaults, i.e. initial potentials
calibrated layer by layer, whose effect fades as 1/T; ``--plain`` leaves that out as
well) and simulated; the fidelity is the relative output error
``mean |SNN average output - ANN output| / mean |ANN output|`` over held-out random images
at each T, plus the top-1 agreement with the ANN. Every other model must be refused with
one ``ConversionError``; the table lists the offending ops.

Usage::

    python benchmarks/torchvision_table.py                  # all models (~5 min, 1 thread)
    python benchmarks/torchvision_table.py resnet18 vgg11   # some models
    python benchmarks/torchvision_table.py --markdown out.md
    python benchmarks/torchvision_table.py inception_v3 --timesteps 64 256 1024
    python benchmarks/torchvision_table.py --plain          # no potential calibration

Large models run at reduced input sizes (see :func:`input_size`); models over 300M
parameters that are refused are checked on the traced graph without the shape pass (their
shape pass alone would need several GB).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import re
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

import ann2snn

#: Input side (pixels) per model; 32 unless listed: AlexNet's 11x11 stride-4 stem and
#: three max pools need 64, Inception-v3 at least 75, the vision transformers a fixed 224.
SIZES: Dict[str, int] = {"alexnet": 64, "inception_v3": 80}
FIXED_SIZE_PREFIXES = ("vit_", "swin_", "maxvit_")
DEFAULT_SIZE = 32
TIMESTEPS = (64, 256)


def input_size(name: str) -> int:
    """The input side used for ``name``."""
    if name.startswith(FIXED_SIZE_PREFIXES):
        return 224
    return SIZES.get(name, DEFAULT_SIZE)


def classification_models() -> List[str]:
    """Every classification model name in ``torchvision.models``."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, seed: int = 0, device: str = "cpu") -> nn.Module:
    """A torchvision classifier with random weights (fixed seed), in eval mode."""
    import torchvision

    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": True}
    torch.manual_seed(seed)
    with torch.device(device):
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return model.eval()


@torch.no_grad()
def realistic_batchnorm(
    model: nn.Module, size: int, seed: int = 0, batches: int = 2, batch_size: int = 8
) -> nn.Module:
    """Give every BatchNorm random affine parameters and measured running statistics.

    Args:
        model: the model (modified in place; returned in eval mode).
        size: input side of the random images the statistics are measured on.
        seed: random seed.
        batches: random batches run in training mode (cumulative averages).
        batch_size: images per batch.

    Returns:
        ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    for bn in norms:
        if bn.affine:
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.5 + 0.2 * torch.randn(bn.bias.shape, generator=gen))
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for _ in range(batches):
        model(random_images(batch_size, size, gen))
    return model.eval()


def random_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random RGB images (standard-normal pixels, as after ImageNet normalization)."""
    return torch.randn((n, 3, size, size), generator=gen)


@torch.no_grad()
def fidelity(
    snn: ann2snn.SpikingModel, ann: nn.Module, x: torch.Tensor, timesteps: Sequence[int]
) -> Tuple[Dict[int, float], Dict[int, float]]:
    """Relative output error and top-1 agreement of the SNN with the ANN at each T.

    One simulation to ``max(timesteps)``.

    Returns:
        ``({T: mean |avg SNN - ANN| / mean |ANN|}, {T: % of samples with the ANN's class})``.
    """
    ref = ann(x)
    ts = sorted(set(timesteps))
    errors, agreement = {}, {}
    for t, total in snn.cumulative_outputs(x, ts):
        avg = total / t
        errors[t] = float((avg - ref).abs().mean() / ref.abs().mean().clamp_min(1e-12))
        agreement[t] = 100.0 * float((avg.argmax(1) == ref.argmax(1)).float().mean())
    return errors, agreement


def plain_options() -> Dict[str, object]:
    """Options of ``ann2snn.convert`` for the plain rate-coded conversion, whose output
    converges to the ANN's as T grows: layer-wise scales and no tuning of thresholds or
    initial potentials for one particular T (where this version of ``convert`` has it)."""
    accepted = inspect.signature(ann2snn.convert).parameters
    options: Dict[str, object] = {"channelwise": False}
    for tuning in ("threshold_search", "potential_calibration"):
        if tuning in accepted:
            options[tuning] = False
    return options


def convert_random(
    name: str,
    seed: int = 0,
    calib_images: int = 16,
    mode: str = "max",
    size: Optional[int] = None,
    **convert_kwargs,
) -> Tuple[ann2snn.SpikingModel, nn.Module, int]:
    """Build ``name`` with realistic random weights and convert it on random images
    (with :func:`plain_options` unless ``convert_kwargs`` say otherwise).

    Returns:
        ``(snn, ann, input side)``.

    Raises:
        ConversionError: for models that cannot be converted.
    """
    size = size or input_size(name)
    model = realistic_batchnorm(build_model(name, seed), size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [random_images(8, size, gen) for _ in range(max(1, calib_images // 8))]
    snn = ann2snn.convert(model, mode, calib, **{**plain_options(), **convert_kwargs})
    return snn, model, size


_NODE = re.compile(r"^  - node '[^']+': (.*?)(?: at .*)?: (.*)$")


def offending_ops(message: str) -> collections.Counter:
    """Count the offending nodes of a ConversionError message by op (module type/function)."""
    counts: collections.Counter = collections.Counter()
    for line in message.splitlines():
        m = _NODE.match(line)
        if not m:
            continue
        what, reason = m.groups()
        module = re.search(r"\(([\w.]+)\)$", what)
        if module:
            op = module.group(1).rsplit(".", 1)[-1]
        else:
            op = what.split()[-1].rsplit(".", 1)[-1]
            if "multiplies two signals" in reason:
                op += " (signal x signal)"
        counts[op] += 1
    return counts


def _build_anywhere(name: str, seed: int) -> Tuple[nn.Module, bool]:
    """The model on the meta device when its builder allows it (no memory), else on CPU."""
    try:
        return build_model(name, seed, device="meta"), True
    except NotImplementedError:  # builders that compute with tensors (RegNet)
        return build_model(name, seed), False


def _graph_check(model: nn.Module, size: Optional[int]) -> None:
    """What convert() does up to the support check, without copying the model."""
    from torch.fx.passes.shape_prop import ShapeProp

    from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
    from ann2snn.converter_passes.check_supported import check_supported
    from ann2snn.tracing import trace

    gm = canonicalize_activations(trace(model))
    if size is not None:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.randn(2, 3, size, size))
    check_supported(gm)


def supported(name: str, seed: int = 0) -> bool:
    """A quick check on the traced graph (no shapes, no copies): does ``name`` convert?"""
    model, _ = _build_anywhere(name, seed)
    try:
        _graph_check(model, None)
    except ann2snn.ConversionError:
        return False
    return True


def refusal(name: str, seed: int = 0) -> Tuple[int, collections.Counter, str]:
    """The error converting ``name`` raises: (number of offending nodes, ops, message).

    Models over 300M parameters are checked on their traced graph without the copies that
    ``convert`` makes (and without the shape pass when built on the meta device).

    Raises:
        AssertionError: when the model converts although it should not.
    """
    size = input_size(name)
    model, on_meta = _build_anywhere(name, seed)
    try:
        if sum(p.numel() for p in model.parameters()) > 3e8:
            _graph_check(model, None if on_meta else size)
        else:
            model = build_model(name, seed) if on_meta else model
            ann2snn.convert(model, "max", [torch.randn(2, 3, size, size)], **plain_options())
    except ann2snn.ConversionError as exc:
        message = str(exc)
        first = message.splitlines()[0]
        count = int(re.search(r"(\d+) operation\(s\)", first).group(1))
        return count, offending_ops(message), message
    raise AssertionError(f"{name} converted although it has non-ReLU nonlinearities")


def _format_ops(ops: collections.Counter, limit: int = 6) -> str:
    parts = [f"{op} x{n}" for op, n in ops.most_common(limit)]
    if len(ops) > limit:
        parts.append(f"+{len(ops) - limit} more kinds")
    return ", ".join(parts)


def table_options(plain: bool = False) -> Dict[str, object]:
    """The table's conversion options beyond :func:`plain_options`: the library's default
    potential calibration unless ``plain``."""
    accepted = inspect.signature(ann2snn.convert).parameters
    return (
        {} if plain or "potential_calibration" not in accepted else {"potential_calibration": True}
    )


def run(
    names: Iterable[str],
    timesteps: Sequence[int] = TIMESTEPS,
    samples: int = 2,
    plain: bool = False,
) -> List[str]:
    """Markdown rows, one per model (printed as they come)."""
    rows = []
    for name in names:
        start = time.time()
        try:
            if not supported(name):
                raise ann2snn.ConversionError(name)
            snn, ann, size = convert_random(name, **table_options(plain))
        except ann2snn.ConversionError:
            count, ops, _ = refusal(name)
            row = (
                f"| {name} | refused: {count} nodes | {input_size(name)} | "
                + "- | " * (len(timesteps) + 1)
                + f"{_format_ops(ops)} |"
            )
        else:
            gen = torch.Generator().manual_seed(12345)
            x = random_images(samples, size, gen)
            err, agree = fidelity(snn, ann, x, timesteps)
            neurons = len(snn.neurons())
            cells = " | ".join(f"{err[t]:.4f}" for t in timesteps)
            row = (
                f"| {name} | converted ({neurons} IF layers) | {size} | {cells} | "
                f"{agree[timesteps[-1]]:.0f}% | |"
            )
        rows.append(row)
        print(row + f"  <!-- {time.time() - start:.0f} s -->", flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="default: every classification model")
    parser.add_argument("--samples", type=int, default=2, help="held-out random images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument(
        "--plain", action="store_true", help="no potential calibration (the first table)"
    )
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="T to report"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or classification_models()
    ts = sorted(set(args.timesteps))
    errors = " | ".join(f"rel. error T={t}" for t in ts)
    header = (
        f"| model | result | input | {errors} | top-1 agreement T={ts[-1]} | offending ops |\n"
        + "|---" * (len(ts) + 5)
        + "|"
    )
    print(header, flush=True)
    rows = run(names, timesteps=ts, samples=args.samples, plain=args.plain)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
