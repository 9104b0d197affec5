"""Every user error: one message naming the problem and the fix, exit status 2, no
traceback (unless --debug), no output file left behind."""

from __future__ import annotations

import pathlib
import textwrap
import warnings
from typing import List

import numpy as np
import pytest
import torch
from torch import nn

from ann2snn.cli.main import main
from ann2snn.models import get_model

FMNIST = "fmnist_avgpool_cnn"


def run_main(args: List[str], capsys) -> tuple:
    rc = main(args + ["--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_user_error(rc: int, err: str, *phrases: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("ann2snn "), err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in:\n{err}"


def assert_nothing_written(folder: pathlib.Path, before: set) -> None:
    after = {p.name for p in folder.iterdir()}
    assert after == before, f"files left behind: {sorted(after - before)}"


@pytest.fixture()
def weights(tmp_path) -> pathlib.Path:
    path = tmp_path / "weights.pt"
    torch.save(get_model(FMNIST).state_dict(), path)
    return path


def convert_args(model, out, *extra: str) -> List[str]:
    return ["convert", str(model), "-o", str(out), *extra]


def test_missing_input_file(tmp_path, capsys) -> None:
    rc, _, err = run_main(
        convert_args(tmp_path / "nope.pt", tmp_path / "o.pt", "--calib", "mnist"), capsys
    )
    assert_user_error(rc, err, "nope.pt: no such file", "bundled model name")


def test_unknown_model_format(tmp_path, capsys) -> None:
    model = tmp_path / "model.bin2"
    model.write_text("not a model")
    before = {p.name for p in tmp_path.iterdir()}
    rc, _, err = run_main(convert_args(model, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "unknown model format", ".onnx")
    assert_nothing_written(tmp_path, before)


def test_corrupt_pt_file(tmp_path, capsys) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x00garbage")
    rc, _, err = run_main(convert_args(model, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "not a readable PyTorch file")


def test_torchscript_is_refused_with_alternatives(tmp_path, capsys) -> None:
    model = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(model))
    rc, _, err = run_main(convert_args(model, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "TorchScript", "state_dict", "--arch")


@pytest.mark.parametrize("mode", ["bogus", "101%", "1.5", "0"])
def test_bad_mode_string(tmp_path, weights, capsys, mode) -> None:
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", "mnist")
        + ["--mode", mode],
        capsys,
    )
    assert_user_error(rc, err, f"invalid normalization mode {mode!r}", "'max'", "99.9%")


def test_state_dict_without_arch(tmp_path, weights, capsys) -> None:
    rc, _, err = run_main(convert_args(weights, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "holds only weights", "--arch", "mnist_cnn")


def test_architecture_mismatch(tmp_path, weights, capsys) -> None:
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", "mnist_cnn", "--calib", "mnist"),
        capsys,
    )
    assert_user_error(rc, err, "do not fit the architecture 'mnist_cnn'", "shape mismatch")
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", "mnist")
        + ["--arch-kwargs", '{"width": 8}'],
        capsys,
    )
    assert_user_error(rc, err, "--arch-kwargs", "file [24, 1, 3, 3] vs model [8, 1, 3, 3]")


def test_unknown_arch_and_bad_kwargs(tmp_path, weights, capsys) -> None:
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", "resnet9000", "--calib", "mnist"),
        capsys,
    )
    assert_user_error(rc, err, "unknown architecture 'resnet9000'", "package.module:function")
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", "mnist")
        + ["--arch-kwargs", "{width: 8}"],
        capsys,
    )
    assert_user_error(rc, err, "not valid JSON")
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", "no_such_pkg.nets:build")
        + ["--calib", "mnist"],
        capsys,
    )
    assert_user_error(rc, err, "cannot import 'no_such_pkg.nets'", "PYTHONPATH")


def test_missing_calibration_data(tmp_path, weights, capsys) -> None:
    rc, _, err = run_main(convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST), capsys)
    assert_user_error(rc, err, "missing calibration data", "--calib DATA")


def test_missing_evaluation_data(weights, capsys) -> None:
    rc, _, err = run_main(["eval", str(weights), "--arch", FMNIST], capsys)
    assert_user_error(rc, err, "missing evaluation data", "--data DATA")


def test_ann_eval_without_calibration(weights, capsys) -> None:
    rc, _, err = run_main(["eval", str(weights), "--arch", FMNIST, "--data", "mnist"], capsys)
    assert_user_error(rc, err, "missing calibration data", "converted first")


def test_calibration_data_not_found(tmp_path, weights, capsys) -> None:
    base = convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST)
    rc, _, err = run_main(base + ["--calib", str(tmp_path / "nothing_here")], capsys)
    assert_user_error(rc, err, "neither an existing file or folder nor a dataset name")
    rc, _, err = run_main(base + ["--calib", f"mnist:{tmp_path / 'absent'}"], capsys)
    assert_user_error(rc, err, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_main(base + ["--calib", f"fashion-mnist:{empty}"], capsys)
    assert_user_error(rc, err, "does not hold the fashion-mnist train files")
    rc, _, err = run_main(base + ["--calib", str(empty)], capsys)
    assert_user_error(rc, err, "one sub-folder per class")


def test_unreadable_or_unlabelled_data(tmp_path, weights, capsys) -> None:
    table = tmp_path / "data.csv"
    table.write_text("1,2,3")
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", str(table)),
        capsys,
    )
    assert_user_error(rc, err, "unknown data format '.csv'")
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, pictures=np.zeros((4, 28, 28), np.uint8))
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", str(wrong_keys)),
        capsys,
    )
    assert_user_error(rc, err, "['pictures']", "x, images")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.zeros((4, 28, 28), np.uint8))
    rc, _, err = run_main(
        ["eval", str(weights), "--arch", FMNIST, "--data", str(unlabelled)], capsys
    )
    assert_user_error(rc, err, "has no labels")


def test_data_that_does_not_fit_the_model(tmp_path, weights, capsys) -> None:
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    before = {p.name for p in tmp_path.iterdir()}
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "o.pt", "--arch", FMNIST, "--calib", str(rgb)), capsys
    )
    assert_user_error(rc, err, "cannot run on the data", "[3, 32, 32]", "--channels")
    assert_nothing_written(tmp_path, before)


def test_unsupported_ops(tmp_path, capsys, monkeypatch) -> None:
    # A user's own architecture, named as package.module:factory, with a sigmoid gate.
    (tmp_path / "usernets.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Gated(nn.Module):
                def __init__(self, width=8):
                    super().__init__()
                    self.conv = nn.Conv2d(1, width, 3)
                    self.fc = nn.Linear(width * 26 * 26, 10)

                def forward(self, x):
                    h = torch.relu(self.conv(x))
                    h = h * torch.sigmoid(h)
                    return self.fc(torch.flatten(h, 1))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernets

    weights = tmp_path / "gated.pt"
    torch.save(usernets.Gated(width=4).state_dict(), weights)
    out = tmp_path / "o.pt"
    before = {p.name for p in tmp_path.iterdir()}
    rc, _, err = run_main(
        convert_args(weights, out, "--arch", "usernets:Gated", "--arch-kwargs", '{"width": 4}')
        + ["--calib", "mnist", "--calib-limit", "16"],
        capsys,
    )
    assert_user_error(rc, err, "cannot be converted", "sigmoid", "not supported", "Gated")
    assert "h * torch.sigmoid(h)" in err  # the user's source line
    assert_nothing_written(tmp_path, before)


def test_unsupported_onnx_ops(tmp_path, capsys) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Sigmoid())
    path = tmp_path / "sigmoid.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 1, 28, 28),), str(path), dynamo=False)
    rc, _, err = run_main(convert_args(path, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "Sigmoid", "What to do")


def test_pickled_module_needs_trust(tmp_path, capsys) -> None:
    model = tmp_path / "whole.pt"
    torch.save(get_model("mnist_cnn").eval(), model)
    out = tmp_path / "o.pt"
    rc, _, err = run_main(
        convert_args(model, out, "--calib", "mnist", "--calib-limit", "64"), capsys
    )
    assert_user_error(rc, err, "pickled Python objects", "--trust-checkpoint", "arbitrary code")
    assert not out.exists()
    rc, out_text, err = run_main(
        convert_args(model, out, "--calib", "mnist", "--calib-limit", "64")
        + ["--trust-checkpoint"],
        capsys,
    )
    assert rc == 0, err
    # The SNN file holds the converted graph, not the pickle: reading it needs no trust.
    rc, _, err = run_main(["info", str(out)], capsys)
    assert rc == 0, err


def test_checkpoint_with_objects_needs_trust(tmp_path, capsys) -> None:
    import argparse

    model = tmp_path / "ckpt.pt"
    net = get_model("mnist_cnn")
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, model)
    rc, _, err = run_main(
        convert_args(model, tmp_path / "o.pt", "--arch", "mnist_cnn", "--calib", "mnist"),
        capsys,
    )
    assert_user_error(rc, err, "argparse.Namespace", "--trust-checkpoint")


def test_exported_program_needs_trust(tmp_path, capsys) -> None:
    net = get_model("mnist_cnn").eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 28, 28),)), str(path))
    rc, _, err = run_main(convert_args(path, tmp_path / "o.pt", "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "torch.export program", "--trust-checkpoint")


def test_existing_output_and_output_equal_to_input(tmp_path, weights, capsys) -> None:
    out = tmp_path / "o.pt"
    out.write_bytes(b"old")
    rc, _, err = run_main(convert_args(weights, out, "--arch", FMNIST, "--calib", "mnist"), capsys)
    assert_user_error(rc, err, "already exists", "--force")
    assert out.read_bytes() == b"old"
    original = weights.read_bytes()
    rc, _, err = run_main(
        convert_args(weights, weights, "--arch", FMNIST, "--calib", "mnist", "--force"), capsys
    )
    assert_user_error(rc, err, "is also an input", "never modifies")
    assert weights.read_bytes() == original
    rc, _, err = run_main(
        ["eval", str(weights), "--arch", FMNIST, "--data", "mnist", "--csv", str(out)], capsys
    )
    assert_user_error(rc, err, "already exists")
    rc, _, err = run_main(
        convert_args(weights, tmp_path / "no" / "dir.pt", "--arch", FMNIST, "--calib", "mnist"),
        capsys,
    )
    assert_user_error(rc, err, "does not exist")


def test_bad_timesteps(weights, capsys) -> None:
    rc, _, err = run_main(["eval", str(weights), "--timesteps", "1,2,x"], capsys)
    assert_user_error(rc, err, "--timesteps '1,2,x'", "1,2,4,...,256")


@pytest.mark.parametrize("value", ["1,x", "0", "2,-1", ""])
def test_bad_calibration_horizons(tmp_path, weights, capsys, value) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    args = convert_args(weights, tmp_path / "snn.pt", "--arch", FMNIST, "--calib", "mnist")
    rc = main(args + ["--calibration-horizons", value, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--calibration-horizons" in err and "positive integers such as 1,2,4" in err
    assert_nothing_written(tmp_path, before)


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["convert", "model.pt"]) == 2  # -o is required
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 2


def test_debug_shows_the_traceback(tmp_path, capsys) -> None:
    rc = main(["convert", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.pt"), "--debug"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" in err and "FileNotFoundError" in err
    assert "nope.pt: no such file" in err


def test_error_from_the_installed_command(tmp_path, cli) -> None:
    # The same contract through a real process: stderr has one message, no traceback.
    result = cli(["convert", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.pt")])
    assert result.returncode == 2
    assert result.stderr.startswith("ann2snn convert: error:")
    assert "Traceback" not in result.stderr
    assert "no such file" in result.stderr
    assert result.stdout == ""


def test_eval_of_a_damaged_snn_file(tmp_path, snn_file, capsys) -> None:
    data = torch.load(snn_file, weights_only=True)
    name = next(k for k in data["snn_state"] if k.endswith(".threshold"))
    data["snn_state"][name][0] *= 1.5  # what one flipped exponent bit does
    damaged = tmp_path / "damaged.pt"
    torch.save(data, damaged)
    before = {p.name for p in tmp_path.iterdir()}
    rc, out, err = run_main(
        ["eval", str(damaged), "--data", "fashion-mnist", "--limit", "16", "--timesteps", "4"],
        capsys,
    )
    assert_user_error(rc, err, "is damaged", name, "does not match")
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert_nothing_written(tmp_path, before)
