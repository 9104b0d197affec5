"""``ann2snn info`` end to end: structure, kernel backend, per-layer activity report."""

from __future__ import annotations

import json

from ann2snn import snn_file as snn_io
from ann2snn.analysis.diagnostics import ENERGY_PER_AC_PJ, ENERGY_PER_MAC_PJ


def test_info_structure_and_activity_report(tmp_path, snn_file, cli) -> None:
    report_path = tmp_path / "report.json"
    result = cli(
        [
            "info",
            str(snn_file),
            "--data",
            "fashion-mnist",
            "--limit",
            "100",
            "--timesteps",
            "8",
            "--json",
            str(report_path),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "IF kernel: CPU" in out
    assert "bundled architecture fmnist_avgpool_cnn" in out
    snn = snn_io.load_snn(snn_file)
    names = [name for name, _ in snn.neurons()]
    for name in names:
        assert name in out
    assert f"{len(names)} IF layers" in out
    assert "4.6 pJ per 32-bit float MAC" in out and "0.9 pJ per accumulate" in out

    report = json.loads(report_path.read_text())
    assert report["timesteps"] == 8 and report["samples"] == 100
    assert [r["name"] for r in report["rows"]] == names
    assert "sat %" in out and "beyond %" in out and "saturation at T=8" in out
    layers = report["saturation"]["layers"]
    for row in report["rows"]:
        assert row["saturated"] == layers[row["name"]]["saturated"]
        assert row["out_of_range"] == layers[row["name"]]["out_of_range"]
        assert 0.0 < row["firing_rate"] < 1.0
        assert abs(row["synops"] - row["spikes"] * row["fan_out"]) <= 1e-6 * row["synops"]
        expected_spikes = row["firing_rate"] * row["neurons"] * 8
        assert abs(row["spikes"] - expected_spikes) <= 1e-6 * row["spikes"]
    expected_snn = (
        report["synops_total"] * ENERGY_PER_AC_PJ + report["static_macs"] * ENERGY_PER_MAC_PJ
    ) * 1e-6
    assert abs(report["snn_energy_uj"] - expected_snn) < 1e-9
    assert abs(report["ann_energy_uj"] - report["ann_macs_total"] * ENERGY_PER_MAC_PJ * 1e-6) < 1e-9


def _summary(t) -> str:
    """A scalar, or the range of per-channel values, as the layer table prints them."""
    t = t.flatten()
    return f"{t.item():.4g}" if t.numel() == 1 else f"{t.min().item():.3g}..{t.max().item():.3g}"


def test_info_without_data_lists_thresholds(snn_file, capsys) -> None:
    from ann2snn.cli.main import main

    assert main(["info", str(snn_file)]) == 0
    out = capsys.readouterr().out
    snn = snn_io.load_snn(snn_file)
    for name, neuron in snn.neurons():
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert f"threshold {_summary(neuron.threshold)}" in line
        assert f"scale {_summary(neuron.scale)}" in line
    assert "per-layer activity" not in out
