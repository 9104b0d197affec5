"""The rounding ceiling (ann2snn/analysis/rounding_ceiling.py): the ANN with activations
rounded to T levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.analysis.rounding_ceiling import (
    quantized_ann,
    round_rate,
    rounded_activations,
    set_levels,
)
from tests.conftest import loader, pretrained


def test_round_rate_clips_at_the_threshold_and_rounds_ties_up():
    rates = torch.tensor([-0.2, 0.0, 0.124, 0.125, 0.5, 0.874, 0.875, 1.3])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert torch.equal(round_rate(rates, 4), expected)


def test_unrounded_network_computes_the_ann(fmnist_train, fmnist_test):
    ann = pretrained("fmnist_avgpool_cnn").eval()
    q = quantized_ann(ann, "99.9%", calib_data=loader(fmnist_train, 500))
    assert len(rounded_activations(q)) == 3
    x, _ = next(iter(loader(fmnist_test, 256, batch_size=256)))
    with torch.no_grad():
        torch.testing.assert_close(q(x), ann(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("timesteps", [1, 3, 8])
def test_rounded_network_is_the_snn_when_spikes_are_even(fmnist_train, fmnist_test, timesteps):
    # One hidden layer fed by the image: a constant input current, so its spikes are as
    # even as they can be and the SNN computes exactly the ANN rounded to T levels.
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    calib = loader(fmnist_train, 500)
    q = set_levels(quantized_ann(ann, "99.9%", calib_data=calib), timesteps)
    snn = ann2snn.convert(ann, "99.9%", calib_data=calib, potential_calibration=False)
    x, _ = next(iter(loader(fmnist_test, 500, batch_size=500)))
    with torch.no_grad():
        rounded, spiking, exact = q(x), snn(x, timesteps=timesteps), ann(x)
    torch.testing.assert_close(spiking, rounded, atol=1e-4, rtol=1e-4)
    assert (rounded - exact).abs().max() > 1e-2  # the rounding is real


def test_factor_moves_the_clipping_point(fmnist_train, fmnist_test):
    ann = pretrained("fmnist_avgpool_cnn").eval()
    q = set_levels(quantized_ann(ann, "99.9%", calib_data=loader(fmnist_train, 500)), 4)
    layer = rounded_activations(q)[0]
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x, _ = next(iter(loader(fmnist_test, 64, batch_size=64)))
    with torch.no_grad():
        q(x)
        layer.factor = 0.5
        q(x)
    assert seen[0].max() == 1.0 and seen[1].max() == 0.5
    assert set(torch.unique(seen[1] * 8).tolist()) <= set(range(5))  # steps of 0.5 / 4


@pytest.mark.parametrize("levels", [0, -1, 2.5, True])
def test_bad_levels_are_rejected(fmnist_train, levels):
    q = quantized_ann(pretrained("fmnist_avgpool_cnn"), calib_data=loader(fmnist_train, 200))
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        set_levels(q, levels)


def test_needs_calibration_data():
    with pytest.raises(ValueError, match="needs calib_data"):
        quantized_ann(pretrained("fmnist_avgpool_cnn"), "99.9%")
