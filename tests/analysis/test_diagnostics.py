"""ann2snn.analysis.diagnostics: spike counts, fan-out, synaptic operations, MACs and energy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.analysis.diagnostics import (
    ENERGY_PER_AC_PJ,
    ENERGY_PER_MAC_PJ,
    ann_macs,
    layer_report,
    structure_table,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _manual_spikes(currents: torch.Tensor, threshold: torch.Tensor, steps: int) -> float:
    """Count the spikes of IF neurons with soft reset under a constant input current."""
    v = 0.5 * threshold.expand_as(currents).clone()
    total = 0.0
    for _ in range(steps):
        v = v + currents
        s = (v >= threshold).float()
        v = v - s * threshold
        total += float(s.sum())
    return total


def test_mlp_counts_by_hand() -> None:
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.rand(10, 3)
    snn = ann2snn.convert(ann, mode="max", calib_data=[x])
    steps = 12
    report = layer_report(snn, [x[:6], x[6:]], timesteps=steps)
    (row,) = report.rows
    currents = snn.graph_module.static_prefix(x)[0]
    ((name, neuron),) = snn.neurons()
    spikes = _manual_spikes(currents, neuron.threshold, steps)
    assert row.name == name and row.neurons == 4
    assert row.spikes == pytest.approx(spikes / 10)
    assert row.firing_rate == pytest.approx(spikes / (10 * 4 * steps))
    assert row.fan_out == 2.0  # every hidden neuron feeds the 2 outputs
    assert row.synops == pytest.approx(2.0 * spikes / 10)
    assert row.ann_macs == 4 * 2
    assert report.static_macs == 3 * 4  # the first layer runs once per input
    assert report.ann_macs_total == 3 * 4 + 4 * 2
    assert report.samples == 10 and report.timesteps == steps
    assert report.ann_energy_uj == pytest.approx(20 * ENERGY_PER_MAC_PJ * 1e-6)
    assert report.snn_energy_uj == pytest.approx(
        (row.synops * ENERGY_PER_AC_PJ + 12 * ENERGY_PER_MAC_PJ) * 1e-6
    )
    assert not neuron._forward_hooks  # recording is switched off again


def test_conv_fan_out_and_macs() -> None:
    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
    ).eval()
    x = torch.rand(4, 1, 6, 6)
    assert ann_macs(ann, x) == {"0": 2 * 36 * 9, "2": 3 * 16 * 18, "6": 12 * 5}
    snn = ann2snn.convert(ann, mode="max", calib_data=[x])
    report = layer_report(snn, [x], timesteps=4)
    first, second = report.rows
    # Conv(2->3, 3x3) on 2x6x6: 864 connections over 72 inputs.
    assert first.fan_out == pytest.approx(864 / 72) and first.ann_macs == 864
    # Through pooling and flatten to a Linear with 5 outputs.
    assert second.fan_out == 5.0 and second.ann_macs == 60
    assert second.neurons == 3 * 4 * 4
    assert report.ann_macs_total == 648 + 864 + 60 and report.static_macs == 648


def test_residual_spikes_count_one_operation_per_neuron_reached() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.out(torch.relu(self.b(h) + h))

    torch.manual_seed(0)
    x = torch.rand(8, 4)
    snn = ann2snn.convert(Residual().eval(), mode="max", calib_data=[x])
    report = layer_report(snn, [x], timesteps=4)
    assert [r.fan_out for r in report.rows] == [6.0 + 1.0, 3.0]


def test_trained_model_report(fmnist_test) -> None:
    from torch.utils.data import DataLoader, Subset

    from ann2snn.models import load_pretrained

    def loader(dataset, n, batch_size=256, offset=0):
        return DataLoader(Subset(dataset, range(offset, offset + n)), batch_size=batch_size)

    snn = ann2snn.convert(
        load_pretrained("fmnist_avgpool_cnn"), calib_data=loader(fmnist_test, 256, offset=1000)
    )
    data = loader(fmnist_test, 64, batch_size=32)
    short = layer_report(snn, data, timesteps=8)
    long = layer_report(snn, data, timesteps=16, max_batches=2)
    assert [r.name for r in short.rows] == [n for n, _ in snn.neurons()]
    for r in short.rows:
        assert 0.0 < r.firing_rate < 0.5
    # Spikes grow about linearly with T (rates settle).
    assert 1.6 < long.synops_total / short.synops_total < 2.4
    text = short.table()
    assert "SynOps/inf" in text and "4.6 pJ" in text and "uJ" in text
    layout = structure_table(snn)
    for name, _ in snn.neurons():
        assert name in layout
    assert "static_prefix.0" in layout and "computed once per input" in layout


def test_bad_arguments() -> None:
    ann = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    snn = ann2snn.convert(ann, calib_data=[torch.rand(4, 3)])
    with pytest.raises(ValueError, match="positive integer"):
        layer_report(snn, [torch.rand(2, 3)], timesteps=0)
    with pytest.raises(ValueError, match="no batch"):
        layer_report(snn, [], timesteps=4)
