"""Device check of the CUDA path (issue 18): the kernels and a bundled model on a GPU.

Sections, each recorded in one JSON file (rewritten after every section):

- ``build``: build (or load) the compiled kernels and time it; on CUDA the CUDA kernels
  must be the ones in use (``ANN2SNN_BACKEND=compiled`` makes a failed build raise).
- ``op_checks``: ``torch.library.opcheck`` on ``if_multistep`` and
  ``cumulative_max_pool2d``; bit-identity of the device kernels with the pure-torch
  reference (run on the same device) and, on CUDA, with the CPU kernel: fixed and random
  shapes, per-channel thresholds, float16/bfloat16, special values, non-contiguous,
  constant-in-time (expanded) and zero-size inputs, the pooling fallbacks, chunks in time.
- ``model``: a bundled model (default ``fmnist_maxpool_cnn``) converted once on the CPU
  and simulated on the device and on the CPU. Every op call of the CPU simulation of a
  batch is replayed on the device: same bits as the CPU kernel and as the reference
  (strict). Then the spikes of both simulations and the accuracy counts on the test
  images are compared (see ``--count-tolerance`` and ``--spike-tolerance``).
- ``bandwidth``: ``if_multistep`` (and ``cumulative_max_pool2d``) on ``[T, 64, 32, 28, 28]``
  against a device-to-device copy of the same tensor, in GB/s (CUDA events, warm-up).
- ``e2e``: at T=32, batch 256: our SNN, the ANN run T times, SpikingJelly 2.0 (torch and,
  on CUDA with cupy, cupy backends) when ``spikingjelly`` imports (``bench_e2e.py``'s code).

``--dry-run`` runs the same code on the CPU with small sizes (the device kernels are then
the CPU kernels). ``--inject-mismatch`` (repeatable) perturbs compared outputs, to show
that the checker fails. Exit status: 0 when every check passed, 1 on any mismatch or error, 2 when
the run cannot start (no GPU without ``--dry-run``).

    python benchmarks/device_check.py --out out/device_check            # CUDA machine
    python benchmarks/device_check.py --dry-run --out /tmp/device_check  # CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("build", "op_checks", "model", "bandwidth", "e2e")
INJECT_TARGETS = ("if_multistep", "cumulative_max_pool2d", "model")


@dataclasses.dataclass(frozen=True)
class Sizes:
    calib_images: int
    test_images: int
    model_T: int
    model_batch: int
    replay_images: int
    bandwidth_shape: Tuple[int, ...]
    bandwidth_T: Tuple[int, ...]
    warmup: int
    repeat: int
    e2e_T: int
    e2e_batch: int
    e2e_repeat: int
    random_cases: int
    large_cases: bool


FULL = Sizes(
    calib_images=2000,
    test_images=2000,
    model_T=32,
    model_batch=250,
    replay_images=32,
    bandwidth_shape=(64, 32, 28, 28),
    bandwidth_T=(8, 32, 128),
    warmup=3,
    repeat=10,
    e2e_T=32,
    e2e_batch=256,
    e2e_repeat=5,
    random_cases=24,
    large_cases=True,
)
DRY = Sizes(
    calib_images=64,
    test_images=200,
    model_T=8,
    model_batch=100,
    replay_images=8,
    bandwidth_shape=(4, 8, 28, 28),
    bandwidth_T=(8, 32, 128),
    warmup=1,
    repeat=3,
    e2e_T=8,
    e2e_batch=32,
    e2e_repeat=2,
    random_cases=6,
    large_cases=False,
)


# ------------------------------------------------------------------ comparison helpers


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bitwise view (so -0.0 != +0.0); every NaN maps to one pattern (as tests/ops do)."""
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    t = t.contiguous()
    return torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t).view(ints[t.dtype])


def _difference(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> Optional[str]:
    """None when every pair has the same shape, dtype and bits; else what differs."""
    problems = []
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape or g.dtype != e.dtype:
            problems.append(f"output {i}: {g.dtype}{list(g.shape)} vs {e.dtype}{list(e.shape)}")
            continue
        differing = int((_bits(g.cpu()) != _bits(e.cpu())).sum())
        if differing:
            problems.append(f"output {i}: {differing} of {g.numel()} elements differ")
    return "; ".join(problems) or None


def _differing(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((_bits(a.cpu()) != _bits(b.cpu())).sum())


# The two ops (OpOverloads), set by _load_ann2snn once ann2snn has defined them.
IF_OP: Any = None
POOL_OP: Any = None


class Checker:
    """Runs the device ops (perturbing one output where asked) and collects cases."""

    def __init__(self, device: str, inject: Sequence[str]) -> None:
        self.device = device
        self.inject = set(inject)
        self.cases: List[Dict[str, Any]] = []

    def device_op(self, op: Any, *args: Any) -> Tuple[torch.Tensor, ...]:
        out = tuple(op(*args))
        name = "if_multistep" if op is IF_OP else "cumulative_max_pool2d"
        if name in self.inject and out[0].numel():
            first = out[0].clone()
            first.view(-1)[0] += 1.0  # a spike 0 -> 1 (or 1 -> 2): one element differs
            out = (first,) + out[1:]
        return out

    def record(self, group: str, name: str, error: Optional[str]) -> None:
        self.cases.append({"group": group, "name": name, "ok": error is None, "error": error})

    def run(self, group: str, name: str, fn: Callable[..., Optional[str]], *args: Any) -> None:
        """Record ``fn(*args)``: None (passed) or the error text; an exception fails too."""
        try:
            error = fn(*args)
        except Exception as exc:  # any exception is a failed case, reported by name
            error = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
        self.record(group, name, error)


# ------------------------------------------------------------------ setup


def _load_ann2snn() -> Any:
    global IF_OP, POOL_OP
    import ann2snn
    from ann2snn import ops

    IF_OP = torch.ops.ann2snn.if_multistep.default
    POOL_OP = torch.ops.ann2snn.cumulative_max_pool2d.default
    return ann2snn, ops


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def _meta(args: argparse.Namespace, device: str) -> Dict[str, Any]:
    meta: Dict[str, Any] = {
        "device": device,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "commit": _git_commit(),
        "argv": sys.argv[1:],
        "inject_mismatch": args.inject_mismatch,
        "install_seconds": float(os.environ["DEVICE_CHECK_INSTALL_S"])
        if os.environ.get("DEVICE_CHECK_INSTALL_S")
        else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            tf32="off (cudnn and matmul), so convolutions round like float32",
        )
    return meta


class Report:
    def __init__(self, path: Path, meta: Dict[str, Any]) -> None:
        self.path = path
        self.data: Dict[str, Any] = {"meta": meta, "ok": True, "failures": [], "sections": {}}
        self.start = time.perf_counter()

    def add(self, name: str, result: Dict[str, Any]) -> None:
        self.data["sections"][name] = result
        for failure in result.get("failures", []):
            self.data["failures"].append(f"{name}: {failure}")
        self.data["ok"] = not self.data["failures"]
        self.write()

    def write(self) -> None:
        self.data["meta"]["elapsed_seconds"] = round(time.perf_counter() - self.start, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)


# ------------------------------------------------------------------ timing


def _timings_ms(fn: Callable[[], Any], device: str, warmup: int, repeat: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _median_ms(fn: Callable[[], Any], device: str, warmup: int, repeat: int) -> float:
    return statistics.median(_timings_ms(fn, device, warmup, repeat))


# ------------------------------------------------------------------ section: build


def section_build(ops: Any, device: str) -> Dict[str, Any]:
    build_dir = os.environ.get("ANN2SNN_BUILD_DIR")
    cold = bool(build_dir) and not any(Path(build_dir).glob("*.so"))
    t0 = time.perf_counter()
    info = ops.backend_info()
    seconds = time.perf_counter() - t0
    failures = []
    if info["cpu"] != "compiled":
        failures.append(f"the CPU kernels are not compiled: {info['reason']}")
    if device == "cuda" and info["cuda"] != "compiled":
        failures.append(f"the CUDA kernels are not compiled: {info['reason']}")
    return {
        "ok": not failures,
        "failures": failures,
        "seconds": round(seconds, 2),
        "cold_build": cold,
        "build_dir": build_dir,
        "backend": os.environ.get("ANN2SNN_BACKEND", "auto"),
        "backend_info": info,
    }


# ------------------------------------------------------------------ section: op checks


def _pool_inputs(shape, geometry, device, seed=0):
    # As tests/ops/test_pool_op.py: spikes of per-channel height and a random state.
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=gen) < 0.4).float()
    x = x * (torch.rand(shape[2], generator=gen) + 0.5).view(1, 1, -1, 1, 1)
    total = torch.randn(shape[1:], generator=gen)
    last = torch.randn(F.max_pool2d(total, *geometry).shape, generator=gen)
    return x.to(device), total.to(device), last.to(device)


IF_SHAPES = [
    (1, 2, 3, 4, 5),
    (9, 2, 3, 4, 5),
    (7, 3, 5),
    (16, 37, 19, 3),
    (5, 3, 4, 7, 9),
    (5, 1000),
    (3, 2, 4, 64, 65),
]
POOL_GEOMETRIES = [
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 2), (1, 2), (1, 0), (2, 1), True),
    ((2, 2), (2, 2), (0, 0), (1, 1), True),
    ((3, 3), (3, 3), (0, 0), (1, 1), False),
]
POOL_SHAPES = [(6, 2, 3, 9, 7), (1, 1, 1, 4, 4), (17, 3, 5, 28, 28)]


def _random_if_shapes(n: int, seed: int) -> List[Tuple[Tuple[int, ...], bool]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(n):
        rank = int(torch.randint(1, 5, (1,), generator=gen))  # dims of S
        step = tuple(int(s) for s in torch.randint(1, 12, (rank,), generator=gen))
        T = int(torch.randint(1, 20, (1,), generator=gen))
        per_channel = rank >= 2 and bool(torch.randint(0, 2, (1,), generator=gen))
        shapes.append(((T,) + step, per_channel))
    return shapes


def section_op_checks(ops: Any, device: str, sizes: Sizes, inject: Sequence[str]) -> Dict:
    from ann2snn.ops.op_inputs import if_op_inputs  # the IF op tests' inputs

    chk = Checker(device, inject)
    ref_if, ref_pool = ops.if_multistep_reference, ops.cumulative_max_pool2d_reference

    def if_case(x, v, threshold) -> Optional[str]:
        v_before = v.clone()
        got = chk.device_op(IF_OP, x, v, threshold)
        errors = [_difference(got, ref_if(x, v, threshold))]
        if device != "cpu":  # the CUDA kernel against the CPU kernel too
            errors.append(_difference(got, IF_OP(x.cpu(), v.cpu(), threshold.cpu())))
        if _differing(v, v_before):
            errors.append("the op modified v")
        if not got[0].is_contiguous():
            errors.append("spikes are not contiguous")
        return "; ".join(e for e in errors if e) or None

    def pool_case(x, total, last, geometry) -> Optional[str]:
        before = (total.clone(), last.clone())
        lists = [list(g) for g in geometry[:4]] + [geometry[4]]
        got = chk.device_op(POOL_OP, x, total, last, *lists)
        errors = [_difference(got, ref_pool(x, total, last, *geometry))]
        if device != "cpu":
            cpu = POOL_OP(x.cpu(), total.cpu(), last.cpu(), *lists)
            errors.append(_difference(got, cpu))
        if _differing(total, before[0]) or _differing(last, before[1]):
            errors.append("the op modified its state inputs")
        return "; ".join(e for e in errors if e) or None

    # opcheck: schema, fake kernel, autograd registration, AOT dispatch.
    def opcheck(op, *args) -> None:
        torch.library.opcheck(op, args)

    for per_channel in (False, True):
        x, v, th = if_op_inputs((3, 2, 4, 3, 3), per_channel, device)
        chk.run("opcheck", f"if_multistep per_channel={per_channel}", opcheck, IF_OP, x, v, th)
    x, v, th = if_op_inputs((1, 2, 3, 4), True, device)
    chk.run("opcheck", "if_multistep expanded", opcheck, IF_OP, x.expand(5, 2, 3, 4), v, th)
    chk.run("opcheck", "if_multistep T=0", opcheck, IF_OP, x[:0], v, th)
    for geometry in (POOL_GEOMETRIES[0], POOL_GEOMETRIES[1]):
        x, total, last = _pool_inputs((4, 2, 3, 6, 6), geometry, device)
        lists = [list(g) for g in geometry[:4]] + [geometry[4]]
        name = f"cumulative_max_pool2d kernel={geometry[0]}"
        chk.run("opcheck", name, opcheck, POOL_OP, x, total, last, *lists)

    # if_multistep: the device kernel against the reference (and the CPU kernel).
    group = "if_multistep"
    for shape in IF_SHAPES:
        for per_channel in (False, True):
            if per_channel and len(shape) < 3:
                continue
            inputs = if_op_inputs(shape, per_channel, device)
            chk.run(group, f"{list(shape)} per_channel={per_channel}", if_case, *inputs)
    for i, (shape, per_channel) in enumerate(_random_if_shapes(sizes.random_cases, seed=18)):
        inputs = if_op_inputs(shape, per_channel, device, seed=100 + i)
        chk.run(group, f"random {list(shape)} per_channel={per_channel}", if_case, *inputs)
    for dtype in (torch.float16, torch.bfloat16):
        chk.run(group, f"x {dtype}", if_case, *if_op_inputs((6, 2, 3, 7), True, device, dtype))
    specials = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), float("nan"), 1e-38]
    )
    gen = torch.Generator().manual_seed(1)
    xs = specials[torch.randint(0, len(specials), (5, 2, 4, 8), generator=gen)].to(device)
    vs = specials[torch.randint(0, len(specials), (2, 4, 8), generator=gen)].to(device)
    ths = torch.tensor([1.0, 0.0, -1.0, float("inf")], device=device)
    chk.run(group, "special values (nan, inf, -0.0)", if_case, xs, vs, ths)
    for per_channel in (False, True):
        x, _, th = if_op_inputs((8, 4, 3, 6, 10), per_channel, device)
        channels_last = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        views = {
            "transposed": x.transpose(3, 4),
            "sliced_inner": x[..., 1:8],
            "strided_time": x[::3],
            "channels_last": channels_last.view(x.shape),
            "permuted_batch": x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4),
        }
        for name, xv in views.items():
            vv = (torch.randn(xv.shape[1:], generator=gen) * 0.3).to(device)
            chk.run(group, f"non-contiguous {name} per_channel={per_channel}", if_case, xv, vv, th)
        x1, v1, th1 = if_op_inputs((1, 3, 4, 5, 7), per_channel, device)
        const = x1[0].unsqueeze(0).expand(20, 3, 4, 5, 7)
        name = f"constant in time (stride 0) per_channel={per_channel}"
        chk.run(group, name, if_case, const, v1, th1)
    x, v, th = if_op_inputs((4, 2, 3, 5), True, device)
    chk.run(group, "zero-size T=0", if_case, x[:0], v, th)
    chk.run(group, "zero-size S", if_case, x[:, :0], v[:0], th)
    empty = (torch.zeros(0, device=device), torch.zeros((), device=device), th[:1])
    chk.run(group, "zero-size 1-D", if_case, *empty)

    def chunked() -> Optional[str]:
        x, v, th = if_op_inputs((13, 2, 3, 4, 4), True, device)
        whole = chk.device_op(IF_OP, x, v, th)
        s1, v1 = chk.device_op(IF_OP, x[:5], v, th)
        s2, v2 = chk.device_op(IF_OP, x[5:], v1, th)
        return _difference((torch.cat([s1, s2]), v2), whole)

    chk.run(group, "chunks in time = one call", chunked)
    if sizes.large_cases:
        for per_channel in (False, True):
            inputs = if_op_inputs((4, 3, 7, 211, 251), per_channel, device)
            chk.run(
                group, f"large {[4, 3, 7, 211, 251]} per_channel={per_channel}", if_case, *inputs
            )

    # cumulative_max_pool2d: the device kernel against the reference (and the CPU kernel).
    group = "cumulative_max_pool2d"
    for g in POOL_GEOMETRIES:
        for shape in POOL_SHAPES:
            name = f"{list(shape)} kernel={g[0]} stride={g[1]} pad={g[2]} dil={g[3]} ceil={g[4]}"
            chk.run(group, name, pool_case, *_pool_inputs(shape, g, device), g)
    # Planes too large for the CUDA kernel's shared memory / thread block: ATen fallback.
    g2 = POOL_GEOMETRIES[0]
    g_dense = ((2, 2), (1, 1), (0, 0), (1, 1), False)
    for name, shape, g in (
        ("plane 128x128 (> 48 KiB shared)", (3, 1, 2, 128, 128), g2),
        ("39x39 outputs (> 1024 per block)", (3, 1, 2, 40, 40), g_dense),
    ):
        chk.run(group, name, pool_case, *_pool_inputs(shape, g, device), g)
    x, total, last = _pool_inputs((5, 4, 3, 8, 8), g2, device)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    chk.run(group, "non-contiguous", pool_case, strided, total, last, g2)
    chk.run(group, "zero-size T=0", pool_case, x[:0], total, last, g2)
    chk.run(group, "zero-size N=0", pool_case, x[:, :0], total[:0], last[:0], g2)

    def pool_chunked() -> Optional[str]:
        x, _, _ = _pool_inputs((12, 2, 3, 8, 8), g2, device)
        state = (torch.zeros(2, 3, 8, 8, device=device), torch.zeros(2, 3, 4, 4, device=device))
        lists = [list(g) for g in g2[:4]] + [g2[4]]
        whole = chk.device_op(POOL_OP, x, *state, *lists)
        outs = []
        for part in (x[:5], x[5:6], x[6:]):
            out, *state = chk.device_op(POOL_OP, part, *state, *lists)
            outs.append(out)
        return _difference((torch.cat(outs), *state), whole)

    chk.run(group, "chunks in time = one call", pool_chunked)

    failed = [c for c in chk.cases if not c["ok"]]
    groups = {}
    for c in chk.cases:
        g = groups.setdefault(c["group"], {"cases": 0, "failed": 0})
        g["cases"] += 1
        g["failed"] += not c["ok"]
    return {
        "ok": not failed,
        "failures": [f"{c['group']} {c['name']}: {c['error']}" for c in failed],
        "groups": groups,
        "cases": chk.cases,
    }


# ------------------------------------------------------------------ section: model


class OpRecorder(TorchDispatchMode):
    """Records every call of the two ann2snn ops (inputs optionally, outputs on the CPU)."""

    def __init__(self, keep_inputs: bool) -> None:
        super().__init__()
        self.keep_inputs = keep_inputs
        self.calls: List[Dict[str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is IF_OP or func is POOL_OP:
            call = {"op": func, "outputs": [o.detach().cpu().clone() for o in out]}
            if self.keep_inputs:
                call["args"] = [_keep(a) for a in args]
            self.calls.append(call)
        return out


def _keep(a: Any) -> Any:
    """A copy of an op argument with its layout; expanded (stride 0) tensors stay views."""
    if not isinstance(a, torch.Tensor):
        return a
    if any(st == 0 and sz > 1 for st, sz in zip(a.stride(), a.shape)):
        return a.detach()  # a view of the static prefix's output, which nothing modifies
    return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device).copy_(a)


def _to_device(a: Any, device: str) -> Any:
    """Move an argument, keeping stride-0 (constant-in-time) dimensions expanded."""
    if not isinstance(a, torch.Tensor):
        return a
    base = a
    for d, (st, sz) in enumerate(zip(a.stride(), a.shape)):
        if st == 0 and sz > 1:
            base = base.narrow(d, 0, 1)
    return base.to(device).expand(a.shape)


def section_model(ctx: Context, device: str, sizes: Sizes, args: argparse.Namespace) -> Dict:
    ops, inject = ctx.ops, args.inject_mismatch
    chk = Checker(device, inject)
    snn = ctx.snn()
    snn_dev = copy.deepcopy(snn).to(device)
    T = sizes.model_T
    x_all, y_all = ctx.test.tensors
    failures: List[str] = []

    # 1. Replay every op call of the CPU simulation of one batch on the device (strict).
    xb = x_all[: sizes.replay_images]
    with OpRecorder(keep_inputs=True) as rec_cpu:
        snn(xb, timesteps=T)
    with OpRecorder(keep_inputs=False) as rec_dev:
        snn_dev(xb.to(device), timesteps=T)
    replay = {"calls": len(rec_cpu.calls), "elements": 0, "mismatched_calls": 0}
    references = {IF_OP: ops.if_multistep_reference, POOL_OP: ops.cumulative_max_pool2d_reference}
    for i, call in enumerate(rec_cpu.calls):
        dev_args = [_to_device(a, device) for a in call["args"]]
        got = chk.device_op(call["op"], *dev_args)
        expected_ref = references[call["op"]](*dev_args)
        error = _difference(got, call["outputs"]) or _difference(got, expected_ref)
        replay["elements"] += got[0].numel()
        if error:
            replay["mismatched_calls"] += 1
            name = "if_multistep" if call["op"] is IF_OP else "cumulative_max_pool2d"
            failures.append(f"replay call {i} ({name} {list(dev_args[0].shape)}): {error}")
    del rec_cpu

    # 2. The two whole simulations of that batch: spikes (outputs of every op call).
    spikes = {"calls": len(rec_dev.calls), "elements": 0, "differing": 0}
    # (the CPU calls are recorded again, without inputs, to pair them with the device's)
    with OpRecorder(keep_inputs=False) as rec_cpu:
        snn(xb, timesteps=T)
    if len(rec_cpu.calls) != len(rec_dev.calls):
        failures.append(
            f"{len(rec_cpu.calls)} op calls on the CPU, {len(rec_dev.calls)} on {device}"
        )
    for c, d in zip(rec_cpu.calls, rec_dev.calls):
        spikes["elements"] += c["outputs"][0].numel()
        spikes["differing"] += _differing(c["outputs"][0], d["outputs"][0])
    spikes["fraction"] = spikes["differing"] / max(1, spikes["elements"])
    if spikes["fraction"] > args.spike_tolerance:
        failures.append(
            f"spikes: {spikes['differing']} of {spikes['elements']} elements differ "
            f"({spikes['fraction']:.3g} > tolerance {args.spike_tolerance:g})"
        )

    # 3. Accuracy counts over the test images.
    counts = {"images": len(y_all), "T": T, "device": device, "cpu_correct": 0}
    counts["device_correct"] = 0
    counts.update(ann_correct=0, prediction_disagreements=0, max_abs_output_difference=0.0)
    ann = ctx.ann
    for start in range(0, len(y_all), sizes.model_batch):
        xb, yb = x_all[start : start + sizes.model_batch], y_all[start : start + sizes.model_batch]
        out_cpu = snn(xb, timesteps=T)
        out_dev = snn_dev(xb.to(device), timesteps=T).cpu()
        if "model" in inject and start == 0:  # the device predicts another class for image 0
            out_dev[0] = 0.0
            out_dev[0, (int(out_cpu[0].argmax()) + 1) % out_dev.shape[1]] = 1e6
        with torch.no_grad():
            counts["ann_correct"] += int((ann(xb).argmax(1) == yb).sum())
        pred_cpu, pred_dev = out_cpu.argmax(1), out_dev.argmax(1)
        counts["cpu_correct"] += int((pred_cpu == yb).sum())
        counts["device_correct"] += int((pred_dev == yb).sum())
        counts["prediction_disagreements"] += int((pred_cpu != pred_dev).sum())
        diff = float((out_cpu - out_dev).abs().max()) if len(yb) else 0.0
        counts["max_abs_output_difference"] = max(counts["max_abs_output_difference"], diff)
    count_diff = abs(counts["cpu_correct"] - counts["device_correct"])
    if count_diff > args.count_tolerance:
        failures.append(
            f"accuracy counts differ: cpu {counts['cpu_correct']}, {device} "
            f"{counts['device_correct']} of {counts['images']} "
            f"(tolerance {args.count_tolerance})"
        )
    if counts["prediction_disagreements"] > args.count_tolerance:
        failures.append(
            f"{counts['prediction_disagreements']} images predicted differently on cpu and "
            f"{device} (tolerance {args.count_tolerance})"
        )
    return {
        "ok": not failures,
        "failures": failures,
        "model": ctx.model_name,
        "calibration_images": sizes.calib_images,
        "replay": {**replay, "images": sizes.replay_images, "T": T},
        "spikes": {**spikes, "images": sizes.replay_images, "tolerance": args.spike_tolerance},
        "accuracy": {**counts, "count_tolerance": args.count_tolerance},
    }


# ------------------------------------------------------------------ section: bandwidth


def _bandwidth_rows(shape: Tuple[int, ...], device: str, sizes: Sizes) -> List[Dict[str, Any]]:
    """The ops and a device-to-device copy on one input of ``shape``; GB/s of bytes moved."""
    x = torch.rand(shape, device=device)
    y = torch.empty_like(x)
    v = torch.zeros(shape[1:], device=device)
    th = torch.tensor([0.5], device=device)
    total = torch.zeros(shape[1:], device=device)
    last = torch.zeros(shape[1:3] + (shape[3] // 2, shape[4] // 2), device=device)
    pool_args = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    calls = {
        "copy": lambda: y.copy_(x),
        "if_multistep": lambda: IF_OP(x, v, th),
        "cumulative_max_pool2d": lambda: POOL_OP(x, total, last, *pool_args),
    }
    moved = {  # bytes read + written
        "copy": 2 * x.nbytes,
        "if_multistep": 2 * x.nbytes + 2 * v.nbytes + th.nbytes,
        "cumulative_max_pool2d": x.nbytes + x.nbytes // 4 + 2 * total.nbytes + 2 * last.nbytes,
    }
    ms = {op: _median_ms(fn, device, sizes.warmup, sizes.repeat) for op, fn in calls.items()}
    return [
        {
            "op": op,
            "shape": list(shape),
            "ms": round(ms[op], 4),
            "GB_per_s": round(moved[op] / (ms[op] / 1000.0) / 1e9, 1),
            "time_vs_copy": round(ms[op] / ms["copy"], 3),
        }
        for op in calls
    ]


def section_bandwidth(device: str, sizes: Sizes) -> Dict:
    rows = []
    for T in sizes.bandwidth_T:
        rows += _bandwidth_rows((T,) + tuple(sizes.bandwidth_shape), device, sizes)
        if device == "cuda":
            torch.cuda.empty_cache()
    return {
        "ok": True,
        "failures": [],
        "timer": "CUDA events" if device == "cuda" else "perf_counter",
        "warmup": sizes.warmup,
        "repeat": sizes.repeat,
        "statistic": "median",
        "rows": rows,
    }


# ------------------------------------------------------------------ section: e2e


def section_e2e(ctx: Context, device: str, sizes: Sizes) -> Dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_e2e  # the side-by-side code of the CPU benchmark, reused

    T, batch = sizes.e2e_T, sizes.e2e_batch
    x = ctx.test.tensors[0][:batch].to(device)
    snn_dev = copy.deepcopy(ctx.snn()).to(device)
    ann_dev = copy.deepcopy(ctx.ann).to(device)

    def ours():
        return snn_dev(x, timesteps=T)

    def ann_t_times():
        with torch.no_grad():
            for _ in range(T):
                ann_dev(x)

    def timed(fn):
        return round(_median_ms(fn, device, 1, sizes.e2e_repeat), 3)

    rows = {"ours": timed(ours), "ann_x_T": timed(ann_t_times)}
    extra: Dict[str, Any] = {}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        ours()
        extra["ours_peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    sj_status: Dict[str, str] = {}
    try:
        import spikingjelly  # noqa: F401

        sj_available = True
    except Exception as exc:
        sj_available = False
        sj_status["torch"] = sj_status["cupy"] = f"skipped: not importable ({exc})"
    if sj_available:
        backends = ["torch"]
        if device == "cuda":
            try:
                import cupy  # noqa: F401

                backends.append("cupy")
            except Exception as exc:
                sj_status["cupy"] = f"skipped: cupy not importable ({exc})"
        else:
            sj_status["cupy"] = "skipped: cupy runs on CUDA only"
        for backend in backends:
            try:
                run = bench_e2e._spikingjelly(ctx.ann, ctx.calib, x, T, device, backend)
                if run is None:
                    sj_status[backend] = "skipped: its ann2snn converter does not import"
                    continue
                rows[f"spikingjelly_{backend}"] = timed(run)
                sj_status[backend] = "ran"
            except Exception as exc:  # optional: record, do not fail the check
                sj_status[backend] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
    ratios = {"ours_over_ann_x_T": round(rows["ours"] / rows["ann_x_T"], 3)}
    for key in ("spikingjelly_torch", "spikingjelly_cupy"):
        if key in rows:
            ratios[f"{key}_over_ours"] = round(rows[key] / rows["ours"], 3)
    return {
        "ok": True,
        "failures": [],
        "model": ctx.model_name,
        "T": T,
        "batch": batch,
        "repeat": sizes.e2e_repeat,
        "statistic": "median",
        "ms": rows,
        "ratios": ratios,
        "spikingjelly": sj_status,
        **extra,
    }


# ------------------------------------------------------------------ shared model and data


class Context:
    """The bundled ANN, its data and its SNN (converted once, on the CPU)."""

    def __init__(self, ann2snn: Any, ops: Any, model_name: str, sizes: Sizes) -> None:
        from ann2snn.data.datasets import load_dataset
        from ann2snn.models import MODEL_DATASETS, load_pretrained

        self.ann2snn, self.ops, self.model_name, self.sizes = ann2snn, ops, model_name, sizes
        self.ann = load_pretrained(model_name).eval()
        dataset = MODEL_DATASETS[model_name]
        train = load_dataset(dataset, "train", limit=sizes.calib_images)
        n_test = max(sizes.test_images, sizes.e2e_batch, sizes.replay_images)
        self.test = load_dataset(dataset, "test", limit=n_test)
        self.calib = torch.utils.data.DataLoader(train, batch_size=250)
        self._snn = None
        self.convert_seconds: Optional[float] = None

    def snn(self) -> Any:
        if self._snn is None:
            t0 = time.perf_counter()
            self._snn = self.ann2snn.convert(self.ann, "99.9%", self.calib)
            self.convert_seconds = round(time.perf_counter() - t0, 2)
        return self._snn


# ------------------------------------------------------------------ table


def _table(report: Dict[str, Any]) -> str:
    meta, sections = report["meta"], report["sections"]
    label = "CPU DRY RUN (not GPU figures)" if meta["dry_run"] else meta.get("gpu", meta["device"])
    lines = [
        f"device check: {label}; torch {meta['torch']} (CUDA {meta['torch_cuda']}), "
        f"python {meta['python']}, commit {str(meta['commit'])[:10]}",
        "",
        f"{'section':<12} {'result':<6} summary",
    ]
    for name, s in sections.items():
        summary = s.get("summary", "")
        lines.append(f"{name:<12} {'ok' if s['ok'] else 'FAIL':<6} {summary}")
    bw = sections.get("bandwidth")
    if bw and bw.get("rows"):
        lines += ["", f"{'op':<22} {'shape':<24} {'ms':>9} {'GB/s':>8} {'x copy':>7}"]
        for r in bw["rows"]:
            shape = "x".join(str(d) for d in r["shape"])
            lines.append(
                f"{r['op']:<22} {shape:<24} {r['ms']:>9.3f} {r['GB_per_s']:>8.1f} "
                f"{r['time_vs_copy']:>7.2f}"
            )
    e2e = sections.get("e2e")
    if e2e and e2e.get("ms"):
        lines += ["", f"end to end, {e2e['model']}, T={e2e['T']}, batch {e2e['batch']}:"]
        for k, ms in e2e["ms"].items():
            lines.append(f"  {k:<22} {ms:>10.2f} ms")
        for k, r in e2e["ratios"].items():
            lines.append(f"  {k:<32} {r:>7.2f}x")
        for k, status in e2e["spikingjelly"].items():
            if status != "ran":
                lines.append(f"  spikingjelly {k}: {status}")
    if report["failures"]:
        lines += ["", f"FAILURES ({len(report['failures'])}):"]
        lines += [f"  - {f}" for f in report["failures"][:40]]
    lines += ["", f"overall: {'OK' if report['ok'] else 'FAIL'} in {meta['elapsed_seconds']} s"]
    return "\n".join(lines)


def _summary(name: str, s: Dict[str, Any]) -> str:
    if "error" in s:
        return s["error"].splitlines()[-1][:100]
    if name == "build":
        info = s["backend_info"]
        return f"{s['seconds']} s (cold: {s['cold_build']}); cpu {info['cpu']}, cuda {info['cuda']}"
    if name == "op_checks":
        n = sum(g["cases"] for g in s["groups"].values())
        bad = sum(g["failed"] for g in s["groups"].values())
        return f"{n - bad}/{n} cases identical/passing ({', '.join(s['groups'])})"
    if name == "model":
        a, r, sp = s["accuracy"], s["replay"], s["spikes"]
        return (
            f"replay {r['calls'] - r['mismatched_calls']}/{r['calls']} calls identical; "
            f"spikes differ {sp['differing']}/{sp['elements']}; correct: cpu {a['cpu_correct']}, "
            f"{a['device']} {a['device_correct']} of {a['images']} (ANN "
            f"{a['ann_correct']}), {a['prediction_disagreements']} disagree"
        )
    if name == "bandwidth":
        return f"{len(s['rows'])} timings ({s['timer']}, median of {s['repeat']})"
    if name == "e2e":
        return ", ".join(f"{k} {v}x" for k, v in s["ratios"].items())
    return ""


# ------------------------------------------------------------------ main


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="run on the CPU with small sizes")
    p.add_argument("--out", default="out/device_check", help="folder for device_check.json")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    p.add_argument("--model", default="fmnist_maxpool_cnn")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 with --dry-run, whose timings are otherwise "
        "at the mercy of OpenMP spin-waits on a busy machine; else torch's default)",
    )
    p.add_argument(
        "--inject-mismatch",
        choices=INJECT_TARGETS,
        action="append",
        default=[],
        help="perturb the device output of this op (every call) or, for 'model', the "
        "device's prediction of the first test image; repeatable",
    )
    p.add_argument(
        "--count-tolerance",
        type=int,
        default=None,
        help="accuracy counts and predictions may differ in this many images "
        "(default: 0 on the CPU, 2 on CUDA, whose convolutions round differently)",
    )
    p.add_argument(
        "--spike-tolerance",
        type=float,
        default=None,
        help="fraction of spikes that may differ between the two whole simulations "
        "(default: 0 on the CPU, 1e-3 on CUDA)",
    )
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if args.dry_run:
        device, sizes = "cpu", DRY
    else:
        if not torch.cuda.is_available():
            print("device_check: no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
            return 2
        device, sizes = "cuda", FULL
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads or args.dry_run:
        torch.set_num_threads(args.threads or 1)
    if args.count_tolerance is None:
        args.count_tolerance = 0 if device == "cpu" else 2
    if args.spike_tolerance is None:
        args.spike_tolerance = 0.0 if device == "cpu" else 1e-3

    ann2snn, ops = _load_ann2snn()
    report = Report(Path(args.out) / "device_check.json", _meta(args, device))
    report.data["meta"]["sizes"] = dataclasses.asdict(sizes)
    report.write()
    ctx: Optional[Context] = None
    for name in sections:
        print(f"[device_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "build":
                result = section_build(ops, device)
            elif name == "op_checks":
                result = section_op_checks(ops, device, sizes, args.inject_mismatch)
            elif name == "bandwidth":
                result = section_bandwidth(device, sizes)
            else:
                ctx = ctx or Context(ann2snn, ops, args.model, sizes)
                if name == "model":
                    result = section_model(ctx, device, sizes, args)
                else:
                    result = section_e2e(ctx, device, sizes)
                result["convert_seconds"] = ctx.convert_seconds
            result["summary"] = _summary(name, result)
        except Exception as exc:  # a section that crashes is a failed section
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            result = {"ok": False, "failures": [f"{type(exc).__name__}: {exc}"], "error": text}
            result["summary"] = _summary(name, result)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report.add(name, result)
    print(_table(report.data))
    print(f"[device_check] wrote {report.path}")
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
