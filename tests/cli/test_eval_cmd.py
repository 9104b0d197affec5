"""``ann2snn eval`` end to end: accuracy table, CSV, JSON and PNG from the installed command."""

from __future__ import annotations

import csv
import json

import ann2snn
from ann2snn import snn_file as snn_io
from ann2snn.data.datasets import make_loader

LIMIT = 200
TIMESTEPS = [1, 2, 4, 8, 16]


def test_eval_snn_file_writes_table_csv_json_plot(tmp_path, snn_file, cli) -> None:
    paths = {ext: tmp_path / f"curve.{ext}" for ext in ("csv", "json", "png")}
    result = cli(
        [
            "eval",
            str(snn_file),
            "--data",
            "fashion-mnist",
            "--limit",
            str(LIMIT),
            "--timesteps",
            "1,2,...,16",
            "--csv",
            str(paths["csv"]),
            "--json",
            str(paths["json"]),
            "--plot",
            str(paths["png"]),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr

    # The same numbers as the Python API on the same data.
    snn = snn_io.load_snn(snn_file)
    loader = make_loader("fashion-mnist", "test", batch_size=256, limit=LIMIT)
    expected = ann2snn.evaluate(snn, loader, timesteps=TIMESTEPS)

    assert f"ANN accuracy: {expected.ann_accuracy:.2f}%" in result.stdout
    table_rows = [ln.split() for ln in result.stdout.splitlines() if ln.split()[:1]]
    by_t = {int(r[0]): float(r[1]) for r in table_rows if r[0].isdigit() and len(r) >= 3}
    assert sorted(by_t) == TIMESTEPS
    for t in TIMESTEPS:
        assert by_t[t] == round(expected.accuracy[t], 2)

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [int(r["timesteps"]) for r in rows] == TIMESTEPS
    assert [float(r["snn_accuracy"]) for r in rows] == [
        round(expected.accuracy[t], 4) for t in TIMESTEPS
    ]
    data = json.loads(paths["json"].read_text())
    assert data["samples"] == LIMIT
    assert data["accuracy"] == {str(t): expected.accuracy[t] for t in TIMESTEPS}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Saturation and coverage at the largest T, printed and in the JSON.
    from ann2snn.analysis.saturation import range_line

    assert range_line(expected.saturation) in result.stdout
    assert data["saturation"]["out_of_range"] == expected.saturation["out_of_range"]
    assert data["saturation"]["saturated"] == expected.saturation["saturated"]
    # Rate coding: the output error shrinks as T grows.
    errors = [expected.output_error[t] for t in TIMESTEPS]
    assert errors[-1] < errors[0]


def test_eval_ann_is_converted_on_the_fly(checkpoint, cli) -> None:
    # MODEL is the trained ANN: it is converted first with the given options; --data
    # defaults to the dataset recorded in the checkpoint.
    result = cli(
        [
            "eval",
            str(checkpoint),
            "--calib",
            "fashion-mnist",
            "--calib-limit",
            "256",
            "--mode",
            "max",
            "--limit",
            "100",
            "--timesteps",
            "4,32",
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "calibration data: 256 examples of fashion-mnist (train split)" in result.stdout
    assert "evaluation data: 100 examples of fashion-mnist (test split)" in result.stdout
    assert "mode max" in result.stdout
    rows = {ln.split()[0]: ln.split() for ln in result.stdout.splitlines() if ln.split()[:1]}
    assert "4" in rows and "32" in rows
    # Columns: T, SNN accuracy, difference to the ANN, relative output error. On 100
    # images accuracy can wobble by an image; the output error shrinks with T.
    assert float(rows["32"][3]) < float(rows["4"][3])
