"""``ann2snn convert`` end to end: the installed command on real checkpoints and data."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

import ann2snn
from ann2snn import snn_file as snn_io
from ann2snn.data.datasets import load_dataset

MODEL = "fmnist_avgpool_cnn"
CALIB_LIMIT = 300  # as in conftest.snn_file


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _test_images(n: int = 64) -> torch.Tensor:
    return load_dataset("fashion-mnist", "test", limit=n).tensors[0]


def test_state_dict_converts_like_the_python_api(snn_file, state_dict_file, trained) -> None:
    # The shared snn_file fixture ran: convert weights.pth --arch ... --calib fashion-mnist.
    data = torch.load(snn_file, map_location="cpu", weights_only=True)
    assert data["format"] == snn_io.SNN_FORMAT
    assert data["ann_description"].startswith("ANN: bundled architecture fmnist_avgpool_cnn")
    assert data["options"]["mode"] == "99.9%"
    assert "fashion-mnist" in data["provenance"]["calibration"]

    snn = snn_io.load_snn(snn_file)
    calib = load_dataset("fashion-mnist", "train", limit=CALIB_LIMIT)
    loader = torch.utils.data.DataLoader(calib, batch_size=256)
    expected = ann2snn.convert(trained, mode="99.9%", calib_data=loader)
    x = _test_images()
    assert torch.equal(snn(x, timesteps=16), expected(x, timesteps=16))
    # The ANN reference is the graph with its activations put back: the ANN's function up
    # to the rounding of the folded weights.
    torch.testing.assert_close(snn.ann(x), trained(x), rtol=0, atol=1e-4)


def test_input_is_not_modified_and_force_replaces_the_output(tmp_path, checkpoint, cli) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(checkpoint.read_bytes())
    before = _sha(src)
    out = tmp_path / "snn.pt"
    out.write_bytes(b"keep me")
    args = [
        "convert",
        str(src),
        "--calib",
        "fashion-mnist",
        "--calib-limit",
        "100",
        "--mode",
        "max",
        "-o",
        str(out),
        "--no-progress",
    ]
    # (Refusing without --force is checked in test_errors.py, in process.)
    done = cli(args + ["--force"])
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "3 IF layers" in done.stdout
    assert _sha(src) == before
    snn = snn_io.load_snn(out)
    assert snn.meta["mode"] == "max"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_onnx_file_and_npz_calibration(tmp_path, trained, cli) -> None:
    # The ONNX path end to end: an .onnx export of the trained model, calibrated on an
    # .npz of uint8 images, gives the SNN of the torch module (to 1e-5).
    calib = load_dataset("fashion-mnist", "train", limit=200).tensors[0]
    npz = tmp_path / "calib.npz"
    np.savez(npz, images=(calib[:, 0] * 255).round().to(torch.uint8).numpy())
    onnx_path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            trained,
            (calib[:2],),
            str(onnx_path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    out = tmp_path / "snn.pt"
    result = cli(["convert", str(onnx_path), "--calib", str(npz), "-o", str(out), "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert "ONNX" in result.stdout
    snn = snn_io.load_snn(out)
    assert torch.load(out, weights_only=True)["ann_description"].startswith("ANN: ONNX model")
    expected = ann2snn.convert(trained, mode="99.9%", calib_data=[calib])
    x = _test_images()
    torch.testing.assert_close(snn(x, timesteps=32), expected(x, timesteps=32), rtol=0, atol=1e-5)


def test_bundled_model_name_as_input(tmp_path, cli) -> None:
    out = tmp_path / "snn.pt"
    result = cli(
        [
            "convert",
            MODEL,
            "--calib",
            "fashion-mnist",
            "--calib-batches",
            "1",
            "--batch-size",
            "64",
            "--layerwise",
            "--no-potential-calibration",
            "--threshold-search",
            "--target-timesteps",
            "8",
            "--calibration-horizons",
            "1,4",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "threshold search for T=8/32" in result.stdout
    data = torch.load(out, weights_only=True)
    assert data["options"]["channelwise"] is False
    assert data["options"]["potential_calibration"] is False
    assert data["options"]["threshold_search"] is True
    assert data["options"]["target_timesteps"] == 8
    assert data["options"]["calibration_horizons"] == [1, 4]
    assert data["provenance"]["calib_batches"] == 1
    scales = [m.scale for _, m in snn_io.load_snn(out).neurons()]
    assert all(t.numel() == 1 for t in scales)  # one scale per layer
