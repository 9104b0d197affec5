import pytest
import torch
from torch import nn

from ann2snn.runtime.neuron import IFNeuron, RepeatInTime
from ann2snn.runtime.pooling import AMax, GatedMaxPool, SpikingMaxPool
from ann2snn.runtime.temporal import TemporalModule


def _spike_trains(rates: torch.Tensor, steps: int) -> torch.Tensor:
    """Regular spike trains [steps, *rates.shape] with the given rates (an IF neuron's)."""
    neuron = IFNeuron(1.0, v_init=0.5)
    neuron.steps = steps
    neuron.static_input = True
    return neuron(rates).reshape((steps,) + tuple(rates.shape))


def _run(module: nn.Module, trains: torch.Tensor, chunk: int) -> torch.Tensor:
    """Feed ``trains`` [T, B, ...] through ``module`` in chunks; outputs [T, B, ...]."""
    module.reset()
    outs = []
    for start in range(0, trains.shape[0], chunk):
        part = trains[start : start + chunk]
        module.steps = part.shape[0]
        out = module(part.reshape((-1,) + tuple(part.shape[2:])))
        outs.append(out.reshape((part.shape[0], part.shape[1]) + tuple(out.shape[1:])))
    return torch.cat(outs)


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.AdaptiveMaxPool2d(1),
    ],
)
def test_spiking_maxpool_average_is_exactly_the_pool_of_the_average(pool):
    torch.manual_seed(0)
    trains = _spike_trains(torch.rand(3, 4, 6, 6), 40)
    out = _run(SpikingMaxPool(pool), trains, chunk=7)
    cumulative_out = out.cumsum(0)
    cumulative_in = trains.cumsum(0)
    for t in (0, 5, 17, 39):
        expected = pool(cumulative_in[t])
        torch.testing.assert_close(cumulative_out[t], expected, atol=1e-5, rtol=0)
    # spikes in, spikes out: the running max grows by at most one per step
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_spiking_maxpool_does_not_overcount_like_pooling_spikes():
    rates = torch.tensor([0.3, 0.5, 0.2, 0.45]).reshape(1, 1, 2, 2)
    trains = _spike_trains(rates, 200)
    naive = nn.MaxPool2d(2)(trains.reshape(-1, 1, 2, 2)).mean()
    exact = _run(SpikingMaxPool(nn.MaxPool2d(2)), trains, chunk=32).mean()
    assert abs(float(exact) - 0.5) < 0.01
    assert float(naive) > 0.7  # the OR of the trains, not their max rate


def test_chunking_and_reset_do_not_change_results():
    torch.manual_seed(1)
    trains = _spike_trains(torch.rand(2, 3, 4, 4), 30)
    for cls in (SpikingMaxPool, GatedMaxPool):
        module = cls(nn.MaxPool2d(2))
        one = _run(module, trains, chunk=1)
        many = _run(module, trains, chunk=11)
        again = _run(module, trains, chunk=30)
        assert torch.equal(one, many) and torch.equal(one, again)


def test_gated_maxpool_passes_the_most_active_unit_and_converges():
    rates = torch.tensor([0.1, 0.6, 0.3, 0.55]).reshape(1, 1, 2, 2)
    trains = _spike_trains(rates, 400)
    out = _run(GatedMaxPool(nn.MaxPool2d(2)), trains, chunk=64)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(out[200:].mean()) - 0.6) < 0.01  # the winner's spikes, once it leads
    assert torch.equal(out[-50:].flatten(), trains[-50:, 0, 0, 0, 1])


def test_gated_maxpool_refuses_pools_without_positions():
    with pytest.raises(TypeError, match="cumulative"):
        GatedMaxPool(AMax((2, 3)))


def test_amax_module_matches_torch_and_refuses_the_batch_dim():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(AMax((2, 3), keepdim=True)(x), x.amax((2, 3), keepdim=True))
    with pytest.raises(ValueError, match="batch dimension"):
        AMax((0, 1))


def test_temporal_modules_follow_the_protocol():
    for module in (IFNeuron(), RepeatInTime(), SpikingMaxPool(nn.MaxPool2d(2))):
        assert isinstance(module, TemporalModule)
    assert not isinstance(nn.MaxPool2d(2), TemporalModule)
