"""Benchmark of the integrate-and-fire op ``torch.ops.ann2snn.if_multistep`` on the CPU.

Times, on a float32 input of shape ``[T, batch, 32, 28, 28]`` (default batch 64):

- ``kernel``: the compiled C++ kernel (``torch.ops.ann2snn.if_multistep``);
- ``kernel_const``: the same with a constant input ``x0.unsqueeze(0).expand(T, ...)``,
  which the kernel reads without materializing it;
- ``reference``: the pure-torch per-step loop (``if_multistep_reference``);
- ``compiled_ref``: ``torch.compile`` of the reference (skipped if it fails here);
- ``spikingjelly``: SpikingJelly's ``IFNode(step_mode='m', v_reset=None)`` (soft reset),
  ``backend='torch'`` where that argument exists (SpikingJelly 2.0 dropped it and picks
  its CPU implementation itself); skipped if spikingjelly cannot be imported;
- ``copy``: ``y.copy_(x)`` into a preallocated ``y``: the memory-bandwidth floor;
- ``clone``: ``x.clone()``, i.e. a copy into a freshly allocated output, as the op must do.

Tables give the median and the minimum of ``--repeat`` runs after ``--warmup`` runs. Example::

    python benchmarks/bench_if_op.py --T 8 32 128 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ann2snn.ops import backend_info, if_multistep, if_multistep_reference

# perf_counter: wall time. process_time (--timer cpu): CPU time of all threads together,
# which on a shared, busy machine does not count the time the process was preempted.
_TIMER: Callable[[], float] = time.perf_counter


def _timings(fn: Callable[[], object], warmup: int, repeat: int) -> List[float]:
    """All ``repeat`` timings (seconds) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = _TIMER()
        fn()
        times.append(_TIMER() - start)
    return times


def _time_copy(x: torch.Tensor, warmup: int, repeat: int) -> List[float]:
    y = torch.empty_like(x)
    return _timings(lambda: y.copy_(x), warmup, repeat)


def _spikingjelly_node() -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    try:
        from spikingjelly.activation_based import functional, neuron
    except Exception as error:  # any import problem: report and skip
        print(f"spikingjelly: skipped ({type(error).__name__}: {error})")
        return None
    try:
        node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m", backend="torch")
    except TypeError:
        # SpikingJelly 2.0 has no `backend` argument: it picks the implementation by
        # device (on the CPU, a per-step torch loop).
        node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")

    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(node)
        return node(x)

    return run


def _compiled_reference() -> Optional[Callable]:
    try:
        fn = torch.compile(if_multistep_reference, dynamic=False)
        x = torch.rand(3, 2, 4, 5)
        got, expected = (
            fn(x, torch.zeros(2, 4, 5), torch.ones(1)),
            if_multistep_reference(x, torch.zeros(2, 4, 5), torch.ones(1)),
        )
        if not (torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])):
            print("compiled_ref: differs from the reference (still timed)")
        return fn
    except Exception as error:  # torch.compile needs a working C++ toolchain, etc.
        print(f"compiled_ref: skipped ({type(error).__name__}: {str(error)[:200]})")
        return None


def bench(
    T: int,
    batch: int,
    warmup: int,
    repeat: int,
    skip: List[str],
    compile_max_t: int,
    spikingjelly_max_t: int,
) -> Dict[str, List[float]]:
    """Times every variant for one T; returns the timings (seconds) by variant name."""
    shape = (T, batch, 32, 28, 28)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen) * 0.5  # keeps the neurons spiking at ~25%
    v = torch.zeros(shape[1:])
    threshold = torch.ones(1)
    times: Dict[str, List[float]] = {}

    times["copy"] = _time_copy(x, warmup, repeat)
    times["clone"] = _timings(lambda: x.clone(), warmup, repeat)

    expected = if_multistep(x, v, threshold)
    reference = if_multistep_reference(x, v, threshold)
    assert torch.equal(expected[0], reference[0]) and torch.equal(expected[1], reference[1])
    del expected, reference
    gc.collect()
    times["kernel"] = _timings(lambda: if_multistep(x, v, threshold), warmup, repeat)
    x_const = x[0].unsqueeze(0).expand(shape)
    times["kernel_const"] = _timings(lambda: if_multistep(x_const, v, threshold), warmup, repeat)
    if "reference" not in skip:
        times["reference"] = _timings(
            lambda: if_multistep_reference(x, v, threshold), warmup, repeat
        )
    if "compiled_ref" not in skip and T > compile_max_t:
        print(f"compiled_ref: skipped at T={T} > --compile-max-T={compile_max_t}")
    elif "compiled_ref" not in skip:
        fn = _compiled_reference()
        if fn is not None:
            times["compiled_ref"] = _timings(lambda: fn(x, v, threshold), warmup, repeat)
    if "spikingjelly" not in skip and T > spikingjelly_max_t:
        print(f"spikingjelly: skipped at T={T} > --spikingjelly-max-T={spikingjelly_max_t}")
    elif "spikingjelly" not in skip:
        node = _spikingjelly_node()
        if node is not None:
            out = node(x)
            assert torch.equal(out, if_multistep(x, v, threshold)[0]), "spikingjelly differs"
            del out
            times["spikingjelly"] = _timings(lambda: node(x), warmup, repeat)
    return times


def _print_table(
    rows: List[Tuple[int, Dict[str, List[float]]]],
    present: List[str],
    stat: Callable[[List[float]], float],
) -> None:
    header = f"{'T':>5} " + " ".join(f"{n:>13}" for n in present)
    header += f" {'kernel/copy':>12} {'kernel/clone':>13} {'ref/kernel':>11}"
    print(header)
    for T, timings in rows:
        t = {name: stat(values) for name, values in timings.items()}
        cells = " ".join(f"{t[n] * 1e3:13.1f}" if n in t else f"{'-':>13}" for n in present)
        ratio_ref = t["reference"] / t["kernel"] if "reference" in t else float("nan")
        print(
            f"{T:>5} {cells} {t['kernel'] / t['copy']:12.2f}"
            f" {t['kernel'] / t['clone']:13.2f} {ratio_ref:11.1f}"
        )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[8, 32, 128], help="time steps")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["reference", "compiled_ref", "spikingjelly"],
        help="variants to leave out",
    )
    parser.add_argument(
        "--compile-max-T",
        type=int,
        default=32,
        help="largest T for torch.compile of the reference: it unrolls the time loop, "
        "so compiling takes minutes at large T (default 32)",
    )
    parser.add_argument(
        "--spikingjelly-max-T",
        type=int,
        default=32,
        help="largest T for SpikingJelly, whose CPU path keeps ~4 input-sized tensors "
        "alive (6.4 GB at T=128; default 32)",
    )
    parser.add_argument(
        "--timer",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time summed over threads, "
        "robust to other load on the machine (use with --threads 1 to compare)",
    )
    args = parser.parse_args(argv)
    global _TIMER
    _TIMER = time.perf_counter if args.timer == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ops {backend_info()}")
    if hasattr(os, "getloadavg"):
        print("load average before: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    names = ["copy", "clone", "kernel", "kernel_const"]
    names += ["reference", "compiled_ref", "spikingjelly"]
    rows = []
    for T in args.T:
        gb = T * args.batch * 32 * 28 * 28 * 4 / 1e9
        print(f"T={T}: [{T}, {args.batch}, 32, 28, 28] float32, {gb:.2f} GB per tensor ...")
        times = bench(
            T,
            args.batch,
            args.warmup,
            args.repeat,
            args.skip,
            args.compile_max_T,
            args.spikingjelly_max_T,
        )
        rows.append((T, times))
        gc.collect()
    present = [n for n in names if any(n in times for _, times in rows)]
    print()
    if hasattr(os, "getloadavg"):
        print("load average after: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    for label, stat in (("median", statistics.median), ("minimum", min)):
        print(f"\n{args.timer} times in ms, {label} of {args.repeat} runs")
        _print_table(rows, present, stat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
