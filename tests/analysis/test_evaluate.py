import json

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.analysis.evaluate import AccuracyCurve


def test_curve_exports_table_csv_json_and_png(tmp_path):
    curve = AccuracyCurve(
        accuracy={1: 10.0, 8: 80.5, 64: 91.25},
        ann_accuracy=91.5,
        output_error={1: 0.9, 8: 0.2, 64: 0.01},
        samples=400,
        meta={"mode": "99.9%"},
    )
    table = curve.table()
    assert "ANN accuracy: 91.50%" in table and "80.50" in table and "-0.25" in table
    curve.to_csv(str(tmp_path / "c.csv"))
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0] == "timesteps,snn_accuracy,ann_accuracy,output_error"
    assert rows[2].startswith("8,80.5000,91.5,0.2")
    curve.to_json(str(tmp_path / "c.json"))
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["accuracy"]["64"] == 91.25 and data["ann_accuracy"] == 91.5
    curve.plot(str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_evaluate_converts_an_ann_on_the_fly_and_checks_timesteps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(200, 6)
    y = model(x).argmax(1)
    data = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]
    curve = ann2snn.evaluate(model, data, timesteps=[256, 1, 16], mode="max")
    assert sorted(curve.accuracy) == [1, 16, 256]
    assert curve.ann_accuracy == 100.0
    assert curve.accuracy[256] >= 97.0
    with pytest.raises(ValueError, match="positive integers"):
        ann2snn.evaluate(model, data, timesteps=[0, 4], mode="max")


def test_written_files_get_the_umask_permissions_not_mkstemps_private_ones(tmp_path):
    import os

    from ann2snn.analysis.evaluate import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(str(tmp_path / "curve.csv"), b"T,accuracy\n")
    finally:
        os.umask(old)
    assert (tmp_path / "curve.csv").read_bytes() == b"T,accuracy\n"
    assert (tmp_path / "curve.csv").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["curve.csv"]  # no temporary file left
