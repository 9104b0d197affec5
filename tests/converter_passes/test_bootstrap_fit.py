"""bootstrap_fit: sampling (mean current, rate) pairs of IF layers and the monotone fit."""

import inspect

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.converter_passes.bootstrap_fit import (
    BINS_PER_SEGMENT,
    bootstrap_fit,
    fit_error,
    fit_monotone_pwl,
    nnls,
    sample_rates,
)
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.training.bootstrap import BootstrapModel, PiecewiseLinear, fits_of, pwl_eval
from tests.conftest import loader, pretrained

LO, HI, SEGMENTS = -1.0, 2.0, 12


def basic_convert(model, data, **kwargs):
    """Convert without the low-T tuning of newer defaults (layer-wise 99.9%, v_init 0.5):
    such an SNN loses accuracy at small T, which is what bootstrap addresses."""
    options = {"channelwise": False, "threshold_search": False, "potential_calibration": False}
    accepted = inspect.signature(ann2snn.convert).parameters
    chosen = {k: v for k, v in options.items() if k in accepted}
    return ann2snn.convert(model, calib_data=data, **chosen, **kwargs)


# -- the fit (pure functions) -----------------------------------------------------------


def test_fit_reproduces_points_of_a_monotone_pwl_exactly():
    values = torch.tensor([0, 0, 0, 0, 0.05, 0.3, 0.5, 0.7, 0.8, 0.95, 1, 1, 1.0])
    x = torch.linspace(LO - 0.5, HI + 0.5, 500)
    y = pwl_eval(x, values, LO, HI)
    fit = fit_monotone_pwl(x, y, torch.ones_like(x), LO, HI, SEGMENTS, prior_weight=0.0)
    assert torch.allclose(fit, values, atol=1e-5)
    assert torch.allclose(pwl_eval(x, fit, LO, HI), y, atol=1e-5)


def test_fit_is_monotone_least_squares_on_noisy_points():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, generator=g) * (HI - LO) + LO
    y = x.clamp(0, 1) + 0.2 * torch.randn(4000, generator=g)
    w = torch.ones_like(x)
    fit = fit_monotone_pwl(x, y, w, LO, HI, SEGMENTS)
    assert bool((fit[1:] >= fit[:-1]).all())
    assert float(fit.min()) >= 0.0 and float(fit.max()) <= 1.0
    # the truth is within the noise, and the fit beats ReLU-clamp on the same points
    assert torch.allclose(fit, torch.linspace(LO, HI, SEGMENTS + 1).clamp(0, 1), atol=0.06)
    sse_fit = float(((pwl_eval(x, fit, LO, HI) - y) ** 2).sum())
    sse_truth = float(((x.clamp(0, 1) - y) ** 2).sum())
    assert sse_fit <= sse_truth


def test_fit_follows_a_decreasing_stretch_with_a_flat_segment_not_a_dip():
    x = torch.linspace(LO, HI, 301)
    y = x.clamp(0, 1)
    bump = (x > 0.4) & (x < 0.6)
    y = torch.where(bump, torch.full_like(y, 0.2), y)  # a dip the fit must not follow down
    fit = fit_monotone_pwl(x, y, torch.ones_like(x), LO, HI, SEGMENTS)
    assert bool((fit[1:] >= fit[:-1]).all())


def test_fit_ignores_empty_bins_and_falls_back_to_the_ideal_rate():
    x = torch.tensor([0.1, 0.2, float("nan")])
    y = torch.tensor([0.1, 0.2, float("nan")])
    w = torch.tensor([5.0, 5.0, 0.0])
    fit = fit_monotone_pwl(x, y, w, LO, HI, SEGMENTS)
    knots = torch.linspace(LO, HI, SEGMENTS + 1)
    assert torch.allclose(fit, knots.clamp(0, 1), atol=0.02)


def test_fit_rejects_bad_options():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="segments"):
        fit_monotone_pwl(x, x, x, LO, HI, 0)
    with pytest.raises(ValueError, match="lo < hi"):
        fit_monotone_pwl(x, x, x, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="one shape"):
        fit_monotone_pwl(x, torch.zeros(2), x, LO, HI, 4)


def test_nnls_satisfies_the_optimality_conditions():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 8, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    z = nnls(a, b)
    grad = a.T @ (a @ z - b)
    assert bool((z >= 0).all())
    assert torch.allclose(grad[z > 0], torch.zeros(1, dtype=torch.float64), atol=1e-8)
    assert bool((grad[z == 0] >= -1e-8).all())
    # with a positive unconstrained solution it is ordinary least squares
    b2 = a @ torch.rand(8, generator=g, dtype=torch.float64).add(0.5)
    assert torch.allclose(nnls(a, b2), torch.linalg.lstsq(a, b2.unsqueeze(1)).solution[:, 0])


# -- sampling ---------------------------------------------------------------------------


def _reference_if_rates(current: torch.Tensor, timesteps: int, v_init: float) -> torch.Tensor:
    """Spikes / T of soft-reset IF neurons (threshold 1) under a constant current."""
    v = torch.full_like(current, v_init)
    count = torch.zeros_like(current)
    for _ in range(timesteps):
        v = v + current
        s = (v >= 1.0).float()
        v = v - s
        count += s
    return count / timesteps


def test_sampling_matches_a_direct_if_simulation_of_the_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    x = torch.randn(96, 1, 4, 4)
    snn = basic_convert(model, [x], mode="max", v_init=0.5)
    t = 5
    samples = sample_rates(snn, [x[:48], x[48:]], t, sample_range=(LO, HI), bins=30)
    (name, neuron), *_ = snn.neurons()
    assert neuron.static_input
    with torch.no_grad():
        current32 = snn.graph_module.static_prefix(x)[0] / neuron.threshold
    rate = _reference_if_rates(current32, t, 0.5).reshape(-1)
    current = current32.double().reshape(-1)
    s = samples[name]
    assert s.total == current.numel()
    inside = (current >= LO) & (current < HI)
    idx = ((current[inside] - LO) * (30 / (HI - LO))).long()
    count = torch.bincount(idx, minlength=30).double()
    mean_rate = torch.bincount(idx, weights=rate[inside].double(), minlength=30)
    assert torch.equal(s.count, count)
    ok = count > 0
    assert torch.allclose(s.rate[ok], (mean_rate[ok] / count[ok]), atol=1e-6)
    assert s.below == float((current < LO).sum())
    assert s.above == float((current >= HI).sum())


def test_sampling_rejects_bad_arguments():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(8, 1, 2, 2)
    snn = basic_convert(model, [x], mode="max")
    with pytest.raises(ValueError, match="contain"):
        sample_rates(snn, [x], 4, sample_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="timesteps"):
        sample_rates(snn, [x], 0)
    with pytest.raises(ValueError, match="no batch"):
        sample_rates(snn, [], 4)


# -- the pass on a real trained model ---------------------------------------------------


@pytest.fixture(scope="module")
def converted(fmnist_train):
    return basic_convert(pretrained("fmnist_avgpool_cnn"), loader(fmnist_train, 500))


def test_pass_fits_every_if_layer_and_leaves_the_snn_unchanged(converted, fmnist_train):
    import copy

    snn = copy.deepcopy(converted)
    x = fmnist_train.tensors[0][:32]
    before = snn(x, timesteps=4)
    nodes_before = [len(snn.graph_module.time_loop.graph.nodes)]
    gm = bootstrap_fit(snn.graph_module, loader(fmnist_train, 300), 4, segments=SEGMENTS)
    assert gm is snn.graph_module
    assert [len(gm.time_loop.graph.nodes)] == nodes_before
    assert torch.equal(snn(x, timesteps=4), before)
    fits = fits_of(gm)
    names = [n for n, _ in snn.neurons()]
    assert len(names) == 3 and len(fits) == 3
    for name, neuron in snn.neurons():
        fit = fits[name]
        assert isinstance(fit, PiecewiseLinear) and fit.segments == SEGMENTS
        assert torch.equal(fit.threshold, neuron.threshold)
        v = fit.values()
        assert bool((v[1:] >= v[:-1]).all())
        stats = gm.meta["bootstrap_fit"][name]
        # most currents lie in the fitted range; those below it do not fire
        assert stats["in_range"] > 0.8
        assert stats["rate_below"] < 0.01


def test_fit_reproduces_the_sampled_points_of_a_real_snn(converted, fmnist_train):
    for t in (4, 64):
        samples = sample_rates(
            converted, loader(fmnist_train, 100), t, bins=SEGMENTS * BINS_PER_SEGMENT
        )
        for name, s in samples.items():
            values = fit_monotone_pwl(s.current, s.rate, s.count, LO, HI, SEGMENTS)
            # within the spread of a 1/T quantized rate around its bin mean
            assert fit_error(s, values) < 0.05, (t, name)
            if t == 64 and name == converted.neurons()[0][0]:
                # a static-input layer at large T is the ideal clamp(x, 0, 1)
                ideal = torch.linspace(LO, HI, SEGMENTS + 1).clamp(0, 1)
                assert torch.allclose(values, ideal, atol=0.03)


def test_pass_refuses_a_graph_in_ann_mode_or_a_plain_graph(converted, fmnist_train):
    import copy

    snn = copy.deepcopy(converted)
    data = loader(fmnist_train, 100)
    bootstrap_fit(snn.graph_module, data, 4)
    boot = BootstrapModel(snn).ann_mode()
    assert not any(isinstance(m, IFNeuron) for m in snn.graph_module.modules())
    with pytest.raises(ValueError, match="ANN mode"):
        bootstrap_fit(snn.graph_module, data, 4)
    boot.snn_mode()
    with pytest.raises(ValueError, match="spiking graph"):
        bootstrap_fit(torch.fx.symbolic_trace(nn.Linear(2, 2)), data, 4)
    with pytest.raises(ValueError, match="segments"):
        bootstrap_fit(snn.graph_module, data, 4, segments=0)
