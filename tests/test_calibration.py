import numpy as np
import pytest
import torch

from ann2snn.calibration import (
    ActivationObserver,
    calibrate,
    needed_top_count,
    quantile_from_top,
)


@pytest.mark.parametrize("n, q", [(1, 0.5), (10, 0.999), (1000, 0.9), (12345, 0.9999)])
def test_quantile_from_top_matches_numpy(n, q):
    values = torch.rand(n, generator=torch.Generator().manual_seed(n))
    k = needed_top_count(n, q)
    top = torch.sort(values).values[-k:]
    expected = np.percentile(values.numpy().astype(np.float64), q * 100)
    assert float(quantile_from_top(top, n, q)) == pytest.approx(expected, rel=1e-6)


def _relu_batches(n_batches, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.relu(torch.randn((shape[0] + i % 3,) + shape[1:], generator=g))
        for i in range(n_batches)
    ]


def test_exact_percentile_beyond_two_to_the_24_elements():
    # 18 batches of 1M values: 18.9M elements, more than torch.quantile accepts (2^24).
    batches = [
        torch.relu(torch.randn(1_050_000, generator=torch.Generator().manual_seed(i)))
        for i in range(18)
    ]
    obs = ActivationObserver(quantile=0.999)
    obs.batches_upper = len(batches)
    for b in batches:
        obs(b)
    everything = torch.cat(batches).numpy().astype(np.float64)
    assert everything.size > 2**24
    assert float(obs.statistic()) == pytest.approx(np.percentile(everything, 99.9), rel=1e-7)
    assert float(obs.max_value) == float(everything.max())
    assert obs.top.numel() <= needed_top_count(18 * 1_050_000, 0.999)


def test_channelwise_percentile_and_max():
    batches = [b[:7] for b in _relu_batches(5, (7, 4, 6, 6))]
    obs = ActivationObserver(quantile=0.99, channel_axis=1)
    obs.batches_upper = 5
    for b in batches:
        obs(b)
    per_channel = torch.cat(batches).transpose(0, 1).reshape(4, -1).numpy().astype(np.float64)
    expected = np.percentile(per_channel, 99, axis=1)
    np.testing.assert_allclose(obs.statistic().numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(obs.max_value.numpy(), per_channel.max(axis=1).astype(np.float32))


class _Observed(torch.nn.Module):
    def __init__(self, q):
        super().__init__()
        self.obs = ActivationObserver(quantile=q)

    def forward(self, x):
        return self.obs(torch.relu(x))


@pytest.mark.parametrize("kind", ["list", "generator", "growing_batches", "dicts", "pairs"])
def test_calibrate_is_exact_for_every_kind_of_data(kind):
    g = torch.Generator().manual_seed(3)
    sizes = [4, 4, 4, 3] if kind != "growing_batches" else [2, 5, 9, 3]
    xs = [torch.randn(s, 50, generator=g) for s in sizes]
    if kind == "generator":
        data = (x for x in xs)
    elif kind == "dicts":
        data = [{"image": x, "label": torch.zeros(len(x))} for x in xs]
    elif kind == "pairs":
        data = [(x, torch.zeros(len(x))) for x in xs]
    else:
        data = xs
    model = _Observed(0.95)
    calibrate(model, data)
    expected = np.percentile(torch.relu(torch.cat(xs)).numpy().astype(np.float64), 95)
    assert float(model.obs.statistic()) == pytest.approx(expected, rel=1e-6)
    assert model.obs.count == sum(sizes) * 50


def test_calibrate_respects_max_batches_and_rejects_empty_data():
    xs = [torch.full((2, 3), float(i)) for i in range(1, 6)]
    model = _Observed(None)
    calibrate(model, xs, max_batches=2)
    assert float(model.obs.statistic()) == 2.0
    with pytest.raises(ValueError, match="no batch"):
        calibrate(_Observed(None), [])


def test_calibration_batch_of_unknown_type_is_a_clear_error():
    with pytest.raises(TypeError, match="tensors, .input, label. pairs or dicts"):
        calibrate(_Observed(None), ["not a tensor"])
    with pytest.raises(TypeError, match="keys"):
        calibrate(_Observed(None), [{"pixels": 1}])
