"""Fixtures for the command-line tests: the installed command, real checkpoints, real data."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from typing import List, Optional

import pytest
import torch

MODEL = "fmnist_avgpool_cnn"
CALIB_LIMIT = 300  # calibration images for the shared SNN file


def ann2snn_command() -> List[str]:
    """The installed console script (falls back to ``python -m ann2snn.cli``)."""
    exe = shutil.which("ann2snn", path=str(pathlib.Path(sys.executable).parent))
    exe = exe or shutil.which("ann2snn")
    return [exe] if exe else [sys.executable, "-m", "ann2snn.cli"]


def run_cli(
    args: List[str], cwd: Optional[pathlib.Path] = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``ann2snn ARGS`` in a subprocess (one torch thread, no progress bars in logs)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        ann2snn_command() + args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli():
    """``cli(["convert", ...])`` runs the installed command in a subprocess."""
    return run_cli


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def checkpoint() -> pathlib.Path:
    """The bundled trained checkpoint of the demo model (written by ann2snn.models.train)."""
    from ann2snn.models import checkpoint_path

    path = checkpoint_path(MODEL)
    assert path.is_file(), f"bundled checkpoint {path} is missing"
    return path


@pytest.fixture(scope="session")
def trained(checkpoint: pathlib.Path) -> torch.nn.Module:
    from ann2snn.models import load_pretrained

    return load_pretrained(MODEL)


@pytest.fixture(scope="session")
def state_dict_file(tmp_path_factory, trained) -> pathlib.Path:
    """The trained weights as a DataParallel-style state_dict (``module.`` prefixes)."""
    path = tmp_path_factory.mktemp("weights") / "weights.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def snn_file(tmp_path_factory, state_dict_file) -> pathlib.Path:
    """An SNN converted by the installed command (shared by the eval/info tests)."""
    out = tmp_path_factory.mktemp("snn") / "snn.pt"
    result = run_cli(
        [
            "convert",
            str(state_dict_file),
            "--arch",
            MODEL,
            "--calib",
            "fashion-mnist",
            "--calib-limit",
            str(CALIB_LIMIT),
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    return out
