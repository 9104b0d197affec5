"""End-to-end simulation speed and peak memory (issue 6), side by side in one run.

At T time steps and batch B on a bundled model (default: the Fashion-MNIST max-pooling
CNN), times: our SNN (``snn(x, timesteps=T)``), the same ANN run T times, and
SpikingJelly 2.0's converted SNN of the same ANN (``FXConverter`` with
``RateCodingRecipe``, simulated step by step as its examples do). Then the peak memory
our simulation adds at T=32 and T=256 (Linux: peak RSS reset through
``/proc/self/clear_refs`` before each run).

    python benchmarks/bench_e2e.py [--model fmnist_maxpool_cnn] [--T 32] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time

import torch

import ann2snn
from ann2snn.data.datasets import load_dataset
from ann2snn.models import MODEL_DATASETS, get_model, load_pretrained


def _median_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _spikingjelly(ann, calib, x, T, device="cpu", backend="torch"):
    """SpikingJelly's converted SNN of ``ann`` as a function running T steps on ``x``.

    ``device`` is where SpikingJelly calibrates and simulates (``x`` must be there);
    ``backend`` (``"torch"`` or ``"cupy"``) is set on every neuron that supports it.
    Returns None when SpikingJelly cannot be imported.
    """
    try:
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.ann2snn import FXConverter, RateCodingRecipe
    except Exception as exc:  # not installed, or its imports fail
        print(f"SpikingJelly unavailable: {exc}")
        return None
    recipe = RateCodingRecipe(dataloader=calib, mode="99.9%")
    snn = FXConverter(recipe=recipe, device=device).convert(copy.deepcopy(ann)).eval()
    if backend != "torch":
        neurons = [m for m in snn.modules() if backend in getattr(m, "supported_backends", ())]
        if not neurons:
            raise RuntimeError(f"no SpikingJelly neuron supports backend {backend!r}")
        for m in neurons:
            m.backend = backend

    def run():
        with torch.no_grad():
            functional.reset_net(snn)
            out = 0
            for _ in range(T):
                out = out + snn(x)
            return out / T

    return run


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _peak_added_mib(fn) -> float:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist_maxpool_cnn")
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-T", default="32,256")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        ann = load_pretrained(args.model)
    except Exception:
        ann = get_model(args.model).eval()
    train = load_dataset(MODEL_DATASETS[args.model], "train", limit=2000)
    test = load_dataset(MODEL_DATASETS[args.model], "test", limit=args.batch)
    calib = torch.utils.data.DataLoader(train, batch_size=250)
    x = test.tensors[0]
    snn = ann2snn.convert(ann, "99.9%", calib)
    T = args.T

    def ours():
        return snn(x, timesteps=T)

    def ann_t_times():
        with torch.no_grad():
            for _ in range(T):
                ann(x)

    t_ours = _median_time(ours, args.repeats)
    t_ann = _median_time(ann_t_times, args.repeats)
    sj = _spikingjelly(ann, calib, x, T)
    t_sj = _median_time(sj, args.repeats) if sj else float("nan")
    print(
        f"model {args.model}, T={T}, batch {args.batch}, {args.threads} threads, "
        f"median of {args.repeats}; kernel backend: {ann2snn.ops.backend_info()['cpu']}"
    )
    print(f"{'ours (ann2snn SNN)':<34}{t_ours * 1000:9.1f} ms")
    print(f"{'ANN forward x T':<34}{t_ann * 1000:9.1f} ms")
    print(f"{'SpikingJelly 2.0 SNN':<34}{t_sj * 1000:9.1f} ms")
    print(f"ours / (ANN x T)       : {t_ours / t_ann:6.2f}x   (goal <= 1.0x)")
    print(f"SpikingJelly / ours    : {t_sj / t_ours:6.2f}x   (goal >= 2x)")
    mems = {}
    for t in (int(v) for v in args.memory_T.split(",")):
        mems[t] = _peak_added_mib(lambda t=t: snn(x, timesteps=t))
        print(f"peak memory added by simulation at T={t:<4}: {mems[t]:8.1f} MiB")
    if len(mems) == 2:
        a, b = sorted(mems)
        print(f"peak memory T={b} / T={a}  : {mems[b] / max(mems[a], 1e-9):6.2f}x   (goal <= 1.5x)")


if __name__ == "__main__":
    main()
