"""``torchrun -m ann2snn.cli convert|eval`` on 2 gloo processes gives the one-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ann2snn import snn_file as snn_io

MODEL = "fmnist_maxpool_cnn"
DATA = ["--calib", "fashion-mnist", "--calib-limit", "500", "--batch-size", "64", "--no-progress"]


def torchrun(args, nproc=2, timeout=600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m ann2snn.cli ARGS`` (1 thread each)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = launcher + [f"--nproc-per-node={nproc}", "-m", "ann2snn.cli"] + args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_convert_under_torchrun_writes_the_one_process_snn(tmp_path, cli):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = cli(["convert", MODEL, *DATA, "-o", str(one)])
    assert single.returncode == 0, single.stderr
    result = torchrun(["convert", MODEL, *DATA, "-o", str(two)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 1  # only rank 0 prints and writes

    a, b = snn_io.load_snn(str(one)), snn_io.load_snn(str(two))
    assert [n for n, _ in a.neurons()] == [n for n, _ in b.neurons()]
    for (name, x), (_, y) in zip(a.neurons(), b.neurons()):
        torch.testing.assert_close(y.threshold, x.threshold, rtol=1e-6, atol=0, msg=name)
        torch.testing.assert_close(y.scale, x.scale, rtol=1e-6, atol=0, msg=name)
    sa, sb = a.graph_module.state_dict(), b.graph_module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=1e-6, atol=0, msg=key)


def test_eval_under_torchrun_prints_the_one_process_curve_once(tmp_path, cli):
    args = ["eval", MODEL, *DATA, "--data", "fashion-mnist", "--limit", "300"]
    args += ["--timesteps", "4,16"]
    single = cli(args + ["--json", str(tmp_path / "one.json")])
    assert single.returncode == 0, single.stderr
    result = torchrun(args + ["--json", str(tmp_path / "two.json"), "--distributed"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ANN accuracy") == 1

    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["samples"] == one["samples"] == 300
    assert two["accuracy"] == one["accuracy"]  # from identical correct counts
    assert two["ann_accuracy"] == one["ann_accuracy"]


def test_distributed_flag_without_torchrun_says_how_to_start(cli):
    result = cli(["eval", MODEL, "--data", "fashion-mnist", "--distributed", "--no-progress"])
    assert result.returncode == 2
    assert "torchrun --nproc-per-node" in result.stderr and "MASTER_ADDR" in result.stderr
