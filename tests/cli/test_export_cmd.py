"""``ann2snn export``: an SNN file to NIR; max pooling refused with no file written."""

from __future__ import annotations

import pytest
import torch

import ann2snn
from ann2snn.cli.main import main

nir = pytest.importorskip("nir")


def _snn_file(tmp_path, name):
    from ann2snn.data import load_dataset
    from ann2snn.models import load_pretrained

    x = load_dataset("fashion-mnist", "test", limit=16).tensors[0]
    snn = ann2snn.convert(load_pretrained(name), calib_data=[x], potential_calibration=False)
    path = tmp_path / f"{name}.pt"
    ann2snn.save_snn(snn, path)
    return snn, x, path


def test_export_writes_a_nir_file_that_reads_back(tmp_path, capsys):
    snn, x, path = _snn_file(tmp_path, "fmnist_avgpool_cnn")
    out = tmp_path / "net.nir"
    assert main(["export", str(path), "-o", str(out), "--timesteps", "16"]) == 0
    assert "wrote" in capsys.readouterr().out
    graph = nir.read(str(out))
    assert int(graph.metadata["timesteps"]) == 16
    assert torch.equal(ann2snn.from_nir(out)(x, 16), snn(x, 16))
    # an existing output needs --force
    assert main(["export", str(path), "-o", str(out)]) == 2


def test_export_refuses_max_pooling_and_writes_nothing(tmp_path, capsys):
    _, _, path = _snn_file(tmp_path, "fmnist_maxpool_cnn")
    out = tmp_path / "net.nir"
    assert main(["export", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "max pooling (SpikingMaxPool)" in err and "max pooling (MaxPool2d)" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))
