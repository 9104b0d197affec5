"""Random networks from every construct ``check_supported`` accepts, for the conversion fuzz.

A network is a :class:`NetSpec`: plain frozen dataclasses whose ``repr`` is valid Python,
so a failing case prints as a reproducer that :func:`build` turns back into the same
model (weights and data follow from ``spec.seed``). :func:`random_spec` draws one from a
seed; :func:`run_case` converts it with the library defaults and measures the relative
output error ``||snn(x, T) - ann(x)|| / ||ann(x)||`` on held-out inputs drawn like the
calibration inputs; :func:`shrink` removes blocks and simplifies activations and the
head while a failure persists.

Reproduce a case from the command line::

    python -m tests.fuzz.netgen 17            # seed 17: spec, errors, diagnostics
    python -m tests.fuzz.netgen 17 --shrink   # and the smallest spec that still fails
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

# -- activation spellings ---------------------------------------------------------------

RELU_SPELLINGS = (
    "nn.ReLU",
    "nn.ReLU(inplace)",
    "nn.ReLU(shared)",  # one nn.ReLU module called at several places
    "F.relu",
    "F.relu(inplace)",
    "torch.relu",
    "torch.relu_",
    "x.relu",
    "x.relu_",
)
CLIPPED_SPELLINGS = ("nn.ReLU6", "F.relu6", "nn.Hardtanh", "F.hardtanh")
SPELLINGS = RELU_SPELLINGS + CLIPPED_SPELLINGS


@dataclass(frozen=True)
class Act:
    """An activation: ``spelling`` from :data:`SPELLINGS`; ``clip`` for the Hardtanh ones
    (``Hardtanh(0, clip)``), in units of the pre-activation's standard deviation."""

    spelling: str = "nn.ReLU"
    clip: float = 1.0


# -- blocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """``conv [-> BatchNorm] [-> act]``; ``groups``: 1, 'dw' (depthwise) or 2."""

    out: int = 8
    kernel: int = 3
    stride: int = 1
    groups: Union[int, str] = 1
    bn: bool = False
    act: Optional[Act] = Act()


@dataclass(frozen=True)
class Residual:
    """``x (op) conv-act-conv(x)`` with an optional 1x1 projection shortcut, a BatchNorm
    after the combination and an activation after it. ``op``: '+', '+=', 'torch.add',
    'x.add', 'x.add_', '-', 'torch.sub', 'x.sub'."""

    op: str = "+"
    inner: Act = Act()
    bn: bool = True
    proj: bool = False
    bn_after: bool = False
    act: Optional[Act] = Act()


@dataclass(frozen=True)
class Concat:
    """``cat([conv-act(x), x or conv-act(x)], 1)``; ``op``: 'torch.cat' or 'torch.concat'."""

    out: int = 4
    op: str = "torch.cat"
    both: bool = False
    act: Act = Act()


@dataclass(frozen=True)
class Split:
    """Split the channels in two (``op``: 'torch.chunk', 'torch.split', 'x.chunk',
    'x.split'), conv-act the first part and concatenate them again."""

    op: str = "torch.chunk"
    act: Act = Act()
    swap: bool = False


@dataclass(frozen=True)
class Pool:
    """A 2x2 pooling: 'nn.MaxPool2d', 'F.max_pool2d', 'nn.AvgPool2d', 'F.avg_pool2d'."""

    kind: str = "nn.MaxPool2d"


@dataclass(frozen=True)
class Norm:
    """A BatchNorm that no convolution precedes, optionally followed by an activation."""

    act: Optional[Act] = None


Block = Union[Conv, Residual, Concat, Split, Pool, Norm]

HEADS = ("gap", "mean", "flatten", "gmp", "amax", "F.adaptive_max_pool2d")
MAX_HEADS = ("gmp", "amax", "F.adaptive_max_pool2d")


@dataclass(frozen=True)
class NetSpec:
    """One random network and its data.

    Attributes:
        seed: weights, channel ranges and data follow from it.
        channels: input channels; size: input side.
        signed: standard-normal inputs (else uniform in [0, 1)).
        decades: per-channel ranges are ``10 ** U(-decades, decades)`` (inputs and every
            pre-activation).
        blocks: the body, in order.
        head: how the feature map becomes a vector (:data:`HEADS`).
        hidden: width of a hidden Linear layer after the head (0: none).
        hidden_bn: a BatchNorm1d after that Linear.
        hidden_act: the activation after it.
        classes: outputs.
        calib: calibration images.
    """

    seed: int = 0
    channels: int = 3
    size: int = 8
    signed: bool = True
    decades: float = 1.5
    blocks: Tuple[Block, ...] = (Conv(),)
    head: str = "gap"
    hidden: int = 0
    hidden_bn: bool = False
    hidden_act: Act = Act()
    classes: int = 5
    calib: int = 64


# -- modules -------------------------------------------------------------------------------


class ActModule(nn.Module):
    """Applies one activation spelling (traced as the user's own call)."""

    def __init__(self, act: Act, shared: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.spelling = act.spelling
        self.clip = float(act.clip) * scale
        s = act.spelling
        if s == "nn.ReLU":
            self.m = nn.ReLU()
        elif s == "nn.ReLU(inplace)":
            self.m = nn.ReLU(inplace=True)
        elif s == "nn.ReLU(shared)":
            self.m = shared
        elif s == "nn.ReLU6":
            self.m = nn.ReLU6()
        elif s == "nn.Hardtanh":
            self.m = nn.Hardtanh(0.0, self.clip)

    def set_clip(self, clip: float) -> None:
        self.clip = float(clip)
        if self.spelling == "nn.Hardtanh":
            self.m.max_val = self.clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spelling
        if s.startswith("nn."):
            return self.m(x)
        if s == "F.relu":
            return F.relu(x)
        if s == "F.relu(inplace)":
            return F.relu(x, inplace=True)
        if s == "torch.relu":
            return torch.relu(x)
        if s == "torch.relu_":
            return torch.relu_(x)
        if s == "x.relu":
            return x.relu()
        if s == "x.relu_":
            return x.relu_()
        if s == "F.relu6":
            return F.relu6(x)
        if s == "F.hardtanh":
            return F.hardtanh(x, 0.0, self.clip)
        raise ValueError(f"unknown activation spelling {s!r}")


def _maybe_act(act: Optional[Act], shared: nn.Module) -> nn.Module:
    return nn.Identity() if act is None else ActModule(act, shared)


def _groups(groups: Union[int, str], cin: int, cout: int) -> Tuple[int, int]:
    """(groups, out channels) that fit ``cin``."""
    if groups == "dw":
        return cin, cin
    if groups == 2 and cin % 2 == 0 and cout % 2 == 0:
        return 2, cout
    return 1, cout


class ConvModule(nn.Module):
    def __init__(self, b: Conv, cin: int, shared: nn.Module) -> None:
        super().__init__()
        groups, cout = _groups(b.groups, cin, b.out)
        self.conv = nn.Conv2d(cin, cout, b.kernel, b.stride, b.kernel // 2, groups=groups)
        self.bn = nn.BatchNorm2d(cout) if b.bn else nn.Identity()
        self.act = _maybe_act(b.act, shared)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualModule(nn.Module):
    def __init__(self, b: Residual, c: int, shared: nn.Module) -> None:
        super().__init__()
        self.op = b.op
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(c) if b.bn else nn.Identity()
        self.inner = ActModule(b.inner, shared)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(c) if b.bn else nn.Identity()
        self.proj = nn.Conv2d(c, c, 1) if b.proj else nn.Identity()
        self.bn_after = nn.BatchNorm2d(c) if b.bn_after else nn.Identity()
        self.act = _maybe_act(b.act, shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.inner(self.bn1(self.conv1(x)))))
        s = self.proj(x)
        op = self.op
        if op == "+":
            out = s + y
        elif op == "+=":
            y += s
            out = y
        elif op == "torch.add":
            out = torch.add(s, y)
        elif op == "x.add":
            out = y.add(s)
        elif op == "x.add_":
            out = y.add_(s)
        elif op == "-":
            out = s - y
        elif op == "torch.sub":
            out = torch.sub(y, s)
        elif op == "x.sub":
            out = s.sub(y)
        else:
            raise ValueError(f"unknown residual op {op!r}")
        return self.act(self.bn_after(out))


class ConcatModule(nn.Module):
    def __init__(self, b: Concat, cin: int, shared: nn.Module) -> None:
        super().__init__()
        self.op = b.op
        self.a = nn.Conv2d(cin, b.out, 3, 1, 1)
        self.act_a = ActModule(b.act, shared)
        self.both = b.both
        self.b = nn.Conv2d(cin, b.out, 1) if b.both else nn.Identity()
        self.act_b = ActModule(b.act, shared) if b.both else nn.Identity()
        self.out_channels = b.out + (b.out if b.both else cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.act_a(self.a(x)), self.act_b(self.b(x))]
        return torch.cat(parts, 1) if self.op == "torch.cat" else torch.concat(parts, dim=1)


class SplitModule(nn.Module):
    def __init__(self, b: Split, c: int, shared: nn.Module) -> None:
        super().__init__()
        self.op, self.swap = b.op, b.swap
        self.first = (c + 1) // 2
        self.conv = nn.Conv2d(self.first, self.first, 3, 1, 1)
        self.act = ActModule(b.act, shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        if op == "torch.chunk":
            a, b = torch.chunk(x, 2, 1)
        elif op == "torch.split":
            a, b = torch.split(x, self.first, 1)
        elif op == "x.chunk":
            a, b = x.chunk(2, dim=1)
        else:
            a, b = x.split(self.first, dim=1)
        a = self.act(self.conv(a))
        return torch.cat([b, a] if self.swap else [a, b], 1)


class PoolModule(nn.Module):
    def __init__(self, b: Pool) -> None:
        super().__init__()
        self.kind = b.kind
        if b.kind == "nn.MaxPool2d":
            self.m = nn.MaxPool2d(2)
        elif b.kind == "nn.AvgPool2d":
            self.m = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "F.max_pool2d":
            return F.max_pool2d(x, 2)
        if self.kind == "F.avg_pool2d":
            return F.avg_pool2d(x, 2)
        return self.m(x)


class NormModule(nn.Module):
    def __init__(self, b: Norm, c: int, shared: nn.Module) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = _maybe_act(b.act, shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class FuzzNet(nn.Module):
    """The network of a :class:`NetSpec` (build it with :func:`build`)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        shared = nn.ReLU()
        c, size = spec.channels, spec.size
        body: List[nn.Module] = []
        for b in spec.blocks:
            if isinstance(b, Conv):
                m = ConvModule(b, c, shared)
                c, size = m.out_channels, (size + 2 * (b.kernel // 2) - b.kernel) // b.stride + 1
            elif isinstance(b, Residual):
                m = ResidualModule(b, c, shared)
            elif isinstance(b, Concat):
                m = ConcatModule(b, c, shared)
                c = m.out_channels
            elif isinstance(b, Split):
                if c < 2:
                    continue
                m = SplitModule(b, c, shared)
            elif isinstance(b, Pool):
                if size < 2:
                    continue
                m, size = PoolModule(b), size // 2
            else:
                m = NormModule(b, c, shared)
            body.append(m)
        self.body = nn.Sequential(*body)
        self.head = spec.head
        feats = c * size * size if spec.head == "flatten" else c
        if spec.head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
        elif spec.head == "gmp":
            self.pool = nn.AdaptiveMaxPool2d(1)
        self.hidden = nn.Linear(feats, spec.hidden) if spec.hidden else nn.Identity()
        self.hidden_bn = nn.BatchNorm1d(spec.hidden) if spec.hidden and spec.hidden_bn else None
        self.hidden_act = ActModule(spec.hidden_act, shared) if spec.hidden else nn.Identity()
        self.fc = nn.Linear(spec.hidden or feats, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.head in ("gap", "gmp"):
            x = torch.flatten(self.pool(x), 1)
        elif self.head == "mean":
            x = x.mean((2, 3))
        elif self.head == "amax":
            x = x.amax((2, 3))
        elif self.head == "F.adaptive_max_pool2d":
            x = F.adaptive_max_pool2d(x, 1).flatten(1)
        else:
            x = x.reshape(x.size(0), -1)
        x = self.hidden(x)
        if self.hidden_bn is not None:
            x = self.hidden_bn(x)
        return self.fc(self.hidden_act(x))


# -- data and weights ------------------------------------------------------------------


def _generator(spec: NetSpec, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(spec.seed * 7919 + purpose)


def _decade_scales(n: int, decades: float, gen: torch.Generator) -> torch.Tensor:
    return 10.0 ** ((2 * torch.rand(n, generator=gen) - 1) * decades)


def inputs(spec: NetSpec, n: int, split: str) -> torch.Tensor:
    """``n`` inputs; ``split`` 'calib' or 'test' (disjoint draws, same distribution)."""
    scales = _decade_scales(spec.channels, spec.decades, _generator(spec, 1))
    gen = _generator(spec, {"calib": 2, "test": 3}.get(split, 5))
    shape = (n, spec.channels, spec.size, spec.size)
    x = torch.randn(shape, generator=gen) if spec.signed else torch.rand(shape, generator=gen)
    return x * scales.reshape(1, -1, 1, 1)


class _Order:
    """The Conv/Linear/BatchNorm/activation modules in the order a forward pass calls them."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.modules: List[nn.Module] = []
        kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, ActModule)
        handles = [
            m.register_forward_hook(lambda m, i, o: self.modules.append(m))
            for m in model.modules()
            if isinstance(m, kinds)
        ]
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()


def _captured(model: nn.Module, module: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    seen: List[Tuple[torch.Tensor, torch.Tensor]] = []
    h = module.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen[0]


def _channel_stats(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation; the deviation is floored so that a channel
    that hardly varies (dead units upstream) is not blown up to float noise."""
    dims = [0] + list(range(2, t.dim()))
    mean, std = t.mean(dim=dims), t.std(dim=dims)
    floor = 1e-2 * (float(std.max()) + mean.abs()) + 1e-6
    return mean, torch.maximum(std, floor)


def build(spec: NetSpec) -> FuzzNet:
    """The eval-mode model of ``spec``: random weights, then every pre-activation channel
    standardized on calibration-like data and given the range ``10 ** U(-d, d)`` and a
    random offset (so some channels are mostly active, some mostly silent). Clip values
    of Hardtanh are in units of the channel range of their input."""
    torch.manual_seed(spec.seed)
    model = FuzzNet(spec).eval()
    gen = _generator(spec, 4)
    x = inputs(spec, 128, "shape")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
                m.bias.zero_()
        for m in _Order(model, x[:2]).modules:
            inp, out = _captured(model, m, x)
            if isinstance(m, ActModule):
                # a clip between 1 and 3 standard deviations of the typical channel
                m.set_clip(m.clip * float(inp.abs().mean()) * 2.0)
                continue
            last = m is model.fc
            n = out.shape[1]
            target = torch.ones(n) if last else _decade_scales(n, spec.decades, gen)
            offset = torch.zeros(n) if last else 0.7 * torch.randn(n, generator=gen)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                mean, std = _channel_stats(inp)
                m.running_mean.copy_(mean)
                m.running_var.copy_(std**2 - m.eps)
                m.weight.copy_(target * (0.5 + torch.rand(n, generator=gen)))
                m.bias.copy_(target * offset)
                continue
            mean, std = _channel_stats(out)
            factor = target / std
            view = (-1,) + (1,) * (m.weight.dim() - 1)
            m.weight.mul_(factor.reshape(view))
            m.bias.copy_((m.bias - mean) * factor + target * offset)
    return model


# -- random specs --------------------------------------------------------------------------


def _act(rng: random.Random, clipped_share: float = 0.3) -> Act:
    if rng.random() < clipped_share:
        spelling = rng.choice(CLIPPED_SPELLINGS)
    else:
        spelling = rng.choice(RELU_SPELLINGS)
    return Act(spelling, round(rng.uniform(0.5, 1.5), 2))


def random_spec(
    seed: int, decades: Optional[float] = 1.5, calib: int = 64, width: int = 1
) -> NetSpec:
    """A random :class:`NetSpec` from ``seed`` (``decades=None``: drawn too); ``width``
    multiplies the channel counts and doubles the input side when above 1."""
    rng = random.Random(seed)
    blocks: List[Block] = []
    size0 = size = rng.choice((4, 6, 8)) * (2 if width > 1 else 1)
    c0 = c = rng.choice((1, 2, 3))
    if rng.random() < 0.15:
        blocks.append(Norm(act=None))
    depth = rng.randint(1, 4)
    for i in range(depth):
        kind = rng.choices(
            ("conv", "residual", "concat", "split", "pool", "norm"), (5, 3, 2, 2, 2, 1)
        )[0]
        if i == 0 or kind == "conv":
            out = rng.choice((4, 6, 8)) * width
            groups = rng.choice((1, 1, "dw", 2)) if i else 1
            stride = rng.choice((1, 1, 2)) if size > 2 else 1
            act = _act(rng) if rng.random() < 0.9 or i == depth - 1 else None
            blocks.append(Conv(out, rng.choice((1, 3)), stride, groups, rng.random() < 0.4, act))
            c = c if groups == "dw" else out
            size = (size - 1) // stride + 1
        elif kind == "residual":
            ops = ("+", "+=", "torch.add", "x.add", "x.add_", "-", "torch.sub", "x.sub")
            act = _act(rng) if rng.random() < 0.8 else None
            bn_after = rng.random() < 0.25
            blocks.append(
                Residual(rng.choice(ops), _act(rng), rng.random() < 0.5, rng.random() < 0.3,
                         bn_after, act)
            )  # fmt: skip
        elif kind == "concat":
            out = rng.choice((2, 4)) * width
            op = rng.choice(("torch.cat", "torch.concat"))
            both = rng.random() < 0.5
            blocks.append(Concat(out, op, both, _act(rng)))
            c = out + (out if both else c)
        elif kind == "split":
            op = rng.choice(("torch.chunk", "torch.split", "x.chunk", "x.split"))
            blocks.append(Split(op, _act(rng), rng.random() < 0.5))
        elif kind == "pool" and size >= 2:
            blocks.append(Pool(rng.choice(("nn.MaxPool2d", "F.max_pool2d", "nn.AvgPool2d",
                                           "F.avg_pool2d"))))  # fmt: skip
            size //= 2
        else:
            blocks.append(Norm(act=_act(rng) if rng.random() < 0.7 else None))
    hidden = rng.choice((0, 0, 8, 16)) * width
    return NetSpec(
        seed=seed,
        channels=c0,
        size=size0,
        signed=rng.random() < 0.6,
        decades=rng.choice((0.0, 0.5, 1.0, 1.5)) if decades is None else decades,
        blocks=tuple(blocks),
        head=rng.choices(HEADS, (3, 2, 2, 1, 1, 1))[0],
        hidden=hidden,
        hidden_bn=bool(hidden) and rng.random() < 0.4,
        hidden_act=_act(rng),
        classes=5,
        calib=calib,
    )


# -- running a case ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case gave: relative errors per T, or the crash; and the time it took."""

    spec: NetSpec
    errors: Dict[int, float] = field(default_factory=dict)
    crash: Optional[str] = None
    diagnostics: Dict[str, float] = field(default_factory=dict)
    warned: List[str] = field(default_factory=list)
    flags: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def error(self, t: int) -> float:
        return self.errors.get(t, float("nan"))

    @property
    def flagged(self) -> bool:
        """The library's saturation and coverage diagnostics warned about this case."""
        return bool(self.flags)


def relative_errors(
    snn: Any, ann: nn.Module, x: torch.Tensor, timesteps: Sequence[int]
) -> Dict[int, float]:
    """``{T: ||snn(x, T) - ann(x)|| / ||ann(x)||}`` from one simulation to ``max(T)``."""
    with torch.no_grad():
        ref = ann(x)
        wanted = sorted(set(timesteps))
        errors: Dict[int, float] = {}
        total, done = None, 0
        for chunk in snn.simulate(x, wanted[-1]):
            for out in chunk:
                total = out.clone() if total is None else total.add_(out)
                done += 1
                if done in wanted:
                    diff = torch.linalg.vector_norm(total / done - ref)
                    errors[done] = float(diff / torch.linalg.vector_norm(ref).clamp_min(1e-12))
    return errors


def run_case(
    spec: NetSpec,
    timesteps: Sequence[int] = (32, 256),
    test: int = 32,
    diagnose: bool = True,
    **options: Any,
) -> Outcome:
    """Build, convert (library defaults unless ``options``) and simulate one case.

    With ``diagnose``, ``ann2snn.evaluate`` also runs on the same held-out inputs: its
    saturation and coverage shares go to ``diagnostics`` and its warnings to ``warned``.
    Any exception is recorded as the crash, with its traceback.
    """
    import traceback

    import ann2snn

    start = time.perf_counter()
    outcome = Outcome(spec)
    try:
        model = build(spec)
        calib = inputs(spec, spec.calib, "calib")
        batches = list(calib.split(32))
        x = inputs(spec, test, "test")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            snn = ann2snn.convert(model, calib_data=batches, **options)
            outcome.errors = relative_errors(snn, model, x, timesteps)
            if diagnose:
                labels = torch.zeros(x.shape[0], dtype=torch.long)
                curve = ann2snn.evaluate(snn, [(x, labels)], timesteps=[max(timesteps)])
                found = getattr(curve, "saturation", None) or {}
                outcome.diagnostics = {
                    k: found[k] for k in ("saturated", "out_of_range", "clip_error") if k in found
                }
                if found:
                    from ann2snn.analysis.saturation import range_warnings

                    outcome.flags = range_warnings(found)
        outcome.warned = [str(w.message) for w in caught]
    except Exception:  # noqa: BLE001 - the fuzz records every crash
        outcome.crash = traceback.format_exc()
    outcome.seconds = time.perf_counter() - start
    return outcome


# -- shrinking -----------------------------------------------------------------------------


def _simpler(spec: NetSpec):
    """Specs one step simpler than ``spec``, most drastic first."""
    blocks = spec.blocks
    for i in range(len(blocks)):
        if len(blocks) > 1:
            yield dataclasses.replace(spec, blocks=blocks[:i] + blocks[i + 1 :])
    if spec.hidden:
        yield dataclasses.replace(spec, hidden=0, hidden_bn=False)
    if spec.head != "gap" and spec.head not in MAX_HEADS:
        yield dataclasses.replace(spec, head="gap")
    if spec.head in MAX_HEADS and spec.head != "gmp":
        yield dataclasses.replace(spec, head="gmp")
    plain = Act()
    for i, b in enumerate(blocks):
        for name in ("act", "inner"):
            act = getattr(b, name, None)
            if isinstance(act, Act) and act.spelling in RELU_SPELLINGS and act != plain:
                new = dataclasses.replace(b, **{name: plain})
                yield dataclasses.replace(spec, blocks=blocks[:i] + (new,) + blocks[i + 1 :])
        for name, simple in (("bn", False), ("proj", False), ("bn_after", False), ("both", False)):
            if getattr(b, name, simple) != simple:
                new = dataclasses.replace(b, **{name: simple})
                yield dataclasses.replace(spec, blocks=blocks[:i] + (new,) + blocks[i + 1 :])
    if spec.channels > 1:
        yield dataclasses.replace(spec, channels=1)
    if spec.size > 4:
        yield dataclasses.replace(spec, size=4)


def shrink(spec: NetSpec, fails: Callable[[NetSpec], bool], budget: int = 60) -> NetSpec:
    """The smallest spec reachable from ``spec`` by :func:`_simpler` steps for which
    ``fails`` still holds (greedy; at most ``budget`` evaluations)."""
    tried = 0
    progress = True
    while progress and tried < budget:
        progress = False
        for candidate in _simpler(spec):
            tried += 1
            if fails(candidate):
                spec, progress = candidate, True
                break
            if tried >= budget:
                break
    return spec


def fuzz(
    seeds: Sequence[int],
    decades: Optional[float] = 1.5,
    calib: int = 64,
    progress: bool = False,
    width: int = 1,
    **options: Any,
) -> List[Outcome]:
    """Run :func:`run_case` on the :func:`random_spec` of every seed."""
    outcomes = []
    for seed in seeds:
        out = run_case(random_spec(seed, decades, calib, width), **options)
        outcomes.append(out)
        if progress:
            status = "CRASH" if out.crash else f"{out.error(32):.4f} -> {out.error(256):.4f}"
            diag = " ".join(f"{k} {v:.4f}" for k, v in out.diagnostics.items() if v is not None)
            flag = " FLAGGED" if out.flagged else ""
            print(f"seed {seed:>4}: {status}  {diag}{flag}  ({out.seconds:.1f} s)", flush=True)
    return outcomes


def summary(outcomes: Sequence[Outcome], bound: float = 0.1) -> str:
    """Crashes, nets above ``bound`` at T=256 and nets whose error grew from T=32."""
    crashes = [o.spec.seed for o in outcomes if o.crash]
    above = [o.spec.seed for o in outcomes if not o.crash and o.error(256) > bound]
    grew = [o.spec.seed for o in outcomes if not o.crash and o.error(256) > o.error(32)]
    unflagged = [o.spec.seed for o in outcomes if o.spec.seed in above and not o.flagged]
    flagged = [o.spec.seed for o in outcomes if o.flagged]
    seconds = sum(o.seconds for o in outcomes)
    return (
        f"{len(outcomes)} nets, {len(crashes)} crashes {crashes}, "
        f"{len(above)} above {bound} at T=256 {above}, "
        f"{len(unflagged)} of them not flagged {unflagged}, "
        f"{len(flagged)} flagged in all, "
        f"{len(grew)} with error(256) > error(32) {grew}; {seconds:.0f} s"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seeds", type=int, nargs="*", help="show these cases in full")
    parser.add_argument("--count", type=int, default=0, help="run seeds 0..N-1, summarized")
    parser.add_argument("--decades", type=float, default=1.5)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--mode", default=None, help="conversion mode (default: the library's)")
    parser.add_argument("--shrink", action="store_true", help="shrink a failing case")
    parser.add_argument("--bound", type=float, default=0.1, help="error at T=256 that fails")
    args = parser.parse_args(argv)
    options = {} if args.mode is None else {"mode": args.mode}
    if args.count:
        outcomes = fuzz(range(args.count), args.decades, args.calib, True, args.width, **options)
        print(summary(outcomes, args.bound))
    for seed in args.seeds:
        spec = random_spec(seed, args.decades, args.calib, args.width)
        out = run_case(spec, **options)
        print(repr(spec))
        print(f"errors {out.errors} diagnostics {out.diagnostics} ({out.seconds:.1f} s)")
        if out.crash:
            print(out.crash)
        if args.shrink and (out.crash or out.error(256) > args.bound):

            def fails(s: NetSpec) -> bool:
                o = run_case(s, **options)
                return bool(o.crash) or o.error(256) > args.bound

            print("shrunk:", repr(shrink(spec, fails)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
