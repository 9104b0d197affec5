"""Problems the command can see before any work: a device that is not there, an output
folder it cannot write. One line naming the user's value, exit 2, nothing done."""

from __future__ import annotations

import pathlib
import tempfile

import pytest
import torch

from tests.cli.test_errors import assert_nothing_written, assert_user_error, run_main

MODEL = "fmnist_avgpool_cnn"
NO_GPU = "no CUDA GPU is available (torch.cuda.is_available() is False); use --device cpu"


def _convert(out, *extra: str):
    return ["convert", MODEL, "--calib", "fashion-mnist", "--calib-limit", "100", "-o", str(out)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys, device) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    rc, out, err = run_main(_convert(tmp_path / "snn.pt") + ["--device", device], capsys)
    assert_user_error(rc, err, f"--device {device}: {NO_GPU}")
    assert out == ""  # refused before the model or the data were read
    assert_nothing_written(tmp_path, before)
    rc, _, err = run_main(["eval", MODEL, "--data", "fashion-mnist", "--device", device], capsys)
    assert_user_error(rc, err, f"--device {device}: {NO_GPU}")


def test_a_device_name_torch_does_not_know(tmp_path, capsys) -> None:
    rc, out, err = run_main(_convert(tmp_path / "snn.pt") + ["--device", "gpu"], capsys)
    assert_user_error(rc, err, "--device gpu", "cpu, cuda or cuda:N")
    assert out == ""


def _writable(folder: pathlib.Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder nobody can create files in (as root, chmod is not enough: sysfs then)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _writable(folder):
            folder = pathlib.Path("/sys")
            if not folder.is_dir() or _writable(folder):
                pytest.skip("no folder on this machine refuses new files")
        yield folder
    finally:
        (tmp_path / "read-only").chmod(0o755)


def test_a_read_only_output_folder_is_refused_before_converting(read_only_folder, capsys):
    target = read_only_folder / "snn.pt"
    rc, out, err = run_main(_convert(target), capsys)
    assert_user_error(rc, err, f"cannot write {target}", "not writable")
    assert ".tmp-" not in err  # names the user's path, not the hidden temporary file
    assert out == ""  # refused before the model or the data were read


def test_every_output_of_eval_is_checked(tmp_path, read_only_folder, capsys):
    plot = read_only_folder / "curve.png"
    args = ["eval", MODEL, "--data", "fashion-mnist", "--limit", "50"]
    rc, out, err = run_main(args + ["--csv", str(tmp_path / "c.csv"), "--plot", str(plot)], capsys)
    assert_user_error(rc, err, f"cannot write {plot}")
    assert out == "" and not (tmp_path / "c.csv").exists()
