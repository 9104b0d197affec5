"""benchmarks/device_check.sh --dry-run: every section on the CPU, and it fails on a mismatch.

The GPU run is the same code with device 'cuda' and full sizes; here the script runs as a
subprocess with small sizes and one torch thread (about 8 s per run on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "device_check.sh"
SECTIONS = ("build", "op_checks", "model", "bandwidth", "e2e")


@pytest.fixture(scope="module", autouse=True)
def _needs_fashion_mnist():
    from ann2snn.data.datasets import find_data_root
    from ann2snn.errors import DataNotFoundError

    try:
        find_data_root("fashion-mnist", download=False)
    except DataNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not found: {exc}")


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_CHECK_TIMEOUT": "300"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_dry_run_passes_and_writes_every_section(tmp_path):
    result = _run(tmp_path)
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, log
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["ok"] and report["failures"] == [], log
    assert report["meta"]["dry_run"] is True and report["meta"]["device"] == "cpu"
    assert tuple(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["ok"] and section["failures"] == [], name
    s = report["sections"]
    assert s["build"]["backend_info"]["cpu"] == "compiled"
    assert s["op_checks"]["groups"]["opcheck"]["cases"] >= 6
    assert all(g["failed"] == 0 for g in s["op_checks"]["groups"].values())
    model = s["model"]
    assert model["replay"]["calls"] > 0 and model["replay"]["mismatched_calls"] == 0
    assert model["spikes"]["elements"] > 0 and model["spikes"]["differing"] == 0
    accuracy = model["accuracy"]
    assert accuracy["cpu_correct"] == accuracy["device_correct"] > 0.8 * accuracy["images"]
    assert {r["op"] for r in s["bandwidth"]["rows"]} == {
        "copy",
        "if_multistep",
        "cumulative_max_pool2d",
    }
    assert len(s["bandwidth"]["rows"]) == 9 and all(r["ms"] > 0 for r in s["bandwidth"]["rows"])
    assert {"ours", "ann_x_T"} <= set(s["e2e"]["ms"]) and "spikingjelly" in s["e2e"]
    # The printed table says these are CPU figures.
    assert "CPU DRY RUN (not GPU figures)" in result.stdout
    assert "overall: OK" in result.stdout


def test_injected_mismatches_make_it_fail(tmp_path):
    result = _run(
        tmp_path,
        "--sections",
        "op_checks,model",
        "--inject-mismatch",
        "if_multistep",
        "--inject-mismatch",
        "model",
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert not report["ok"] and tuple(report["sections"]) == ("op_checks", "model")
    ops, model = report["sections"]["op_checks"], report["sections"]["model"]
    assert not ops["ok"] and ops["groups"]["if_multistep"]["failed"] > 0
    # The pooling op was not perturbed: its cases still pass.
    assert ops["groups"]["cumulative_max_pool2d"]["failed"] == 0
    assert not model["ok"] and model["replay"]["mismatched_calls"] > 0
    assert model["accuracy"]["prediction_disagreements"] == 1
    assert any("predicted differently" in f for f in model["failures"])
    assert "overall: FAIL" in result.stdout
