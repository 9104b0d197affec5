"""Wall time of ``evaluate`` over the full Fashion-MNIST test set with 1 and N processes (issue 7).

Without torchrun variables in the environment the script is the launcher: for each
configuration (processes x threads per process) it starts
``torchrun --standalone --nproc-per-node N benchmarks/bench_distributed.py --worker ...``,
reads the JSON line rank 0 prints, and prints a table plus the exact commands. Each
worker converts the model (calibration sharded too, not timed), waits at a barrier, then
times ``ann2snn.evaluate`` over the whole test set to T (default 64) and the barrier after
it, so the time is that of the slowest rank.

    python benchmarks/bench_distributed.py                      # 1x1, 1x2, 2x1 on the CPU
    python benchmarks/bench_distributed.py --configs 1x1,2x1 --T 64
    python benchmarks/bench_distributed.py --device cuda --configs 1x1,2x1   # NCCL, 1 GPU/rank
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Tuple

HERE = os.path.abspath(__file__)


def _worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader

    import ann2snn
    from ann2snn import distributed
    from ann2snn.data.datasets import load_dataset
    from ann2snn.models import load_checkpoint, load_pretrained, model_from_checkpoint

    torch.set_num_threads(args.threads)
    backend = "nccl" if args.device == "cuda" else "gloo"
    distributed.init_from_env(backend=backend)
    device = distributed.local_device() if args.device == "cuda" else torch.device("cpu")
    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    else:
        model = load_pretrained(args.model)
    model = model.to(device)
    calib = load_dataset("fashion-mnist", "train", limit=args.calib_limit)
    test = load_dataset("fashion-mnist", "test", limit=args.test_limit)
    if device.type == "cuda":
        calib = [(x.to(device), y.to(device)) for x, y in DataLoader(calib, args.batch)]
        test_loader = [(x.to(device), y.to(device)) for x, y in DataLoader(test, args.batch)]
    else:
        calib = DataLoader(calib, batch_size=args.batch)
        test_loader = DataLoader(test, batch_size=args.batch)
    snn = ann2snn.convert(model, mode=args.mode, calib_data=calib)
    timesteps = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t < args.T} | {args.T})

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        if distributed.is_distributed():
            torch.distributed.barrier()

    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    curve = ann2snn.evaluate(snn, test_loader, timesteps=timesteps)
    cpu = time.process_time() - cpu_start
    sync()
    seconds = time.perf_counter() - start
    (cpu_all,) = distributed.all_reduce_sum([cpu])
    distributed.print0(
        json.dumps(
            {
                "processes": distributed.world_size(),
                "threads": args.threads,
                "backend": backend if distributed.is_distributed() else "none",
                "device": str(device.type),
                "seconds": round(seconds, 2),
                "cpu_seconds_all_ranks": round(cpu_all, 1),
                "samples": curve.samples,
                "T": args.T,
                "accuracy_at_T": curve.accuracy[args.T],
                "ann_accuracy": curve.ann_accuracy,
            }
        ),
        flush=True,
    )


def _configs(text: str) -> List[Tuple[int, int]]:
    out = []
    for part in text.split(","):
        procs, _, threads = part.strip().partition("x")
        out.append((int(procs), int(threads or 1)))
    return out


def _command(args: argparse.Namespace, procs: int, threads: int) -> List[str]:
    worker = [
        HERE,
        "--worker",
        "--threads",
        str(threads),
        "--T",
        str(args.T),
        "--batch",
        str(args.batch),
        "--model",
        args.model,
        "--device",
        args.device,
        "--mode",
        args.mode,
        "--calib-limit",
        str(args.calib_limit),
    ]
    if args.checkpoint:
        worker += ["--checkpoint", args.checkpoint]
    if args.test_limit:
        worker += ["--test-limit", str(args.test_limit)]
    if procs == 1:
        return [sys.executable] + worker
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    return torchrun + ["--standalone", f"--nproc-per-node={procs}"] + worker


def _launch(args: argparse.Namespace) -> None:
    rows: List[Dict] = []
    for procs, threads in _configs(args.configs):
        cmd = _command(args, procs, threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        print(f"$ {shlex.join(cmd)}", flush=True)
        load_before = os.getloadavg()[0]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"worker failed with exit status {done.returncode}")
        row = json.loads(lines[-1])
        row["load_before"] = round(load_before, 1)
        row["command"] = shlex.join(cmd)
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0]["seconds"]
    print()
    print(
        f"evaluate(), Fashion-MNIST test set ({rows[0]['samples']} images), T<={args.T}, "
        f"batch {args.batch}, {args.model}"
    )
    print(
        f"{'procs x threads':>15}  {'backend':>7}  {'wall s':>8}  {'speed-up':>8}  "
        f"{'CPU s':>7}  {'load':>5}  acc@T"
    )
    for r in rows:
        print(
            f"{r['processes']:>9} x {r['threads']:<3}  {r['backend']:>7}  {r['seconds']:>8.1f}  "
            f"{base / r['seconds']:>7.2f}x  {r['cpu_seconds_all_ranks']:>7.1f}  "
            f"{r['load_before']:>5.1f}  {r['accuracy_at_T']:.2f}%"
        )
    same = len({(r["samples"], r["accuracy_at_T"]) for r in rows}) == 1
    print(f"identical accuracy in every configuration: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--configs", default="1x1,1x2,2x1", help="PROCSxTHREADS list (default %(default)s)"
    )
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--model", default="fmnist_maxpool_cnn")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the bundled one")
    p.add_argument("--mode", default="99.9%")
    p.add_argument("--calib-limit", type=int, default=2000)
    p.add_argument("--test-limit", type=int, help="first N test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args()
    if args.worker:
        _worker(args)
    else:
        _launch(args)


if __name__ == "__main__":
    main()
