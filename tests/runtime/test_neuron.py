import pytest
import torch

from ann2snn.runtime.neuron import Activation, IFNeuron


def _if_by_hand(x_seq, threshold, v_init):
    """DESIGN.md section 2, written out per step."""
    v = torch.full_like(x_seq[0], v_init * threshold)
    spikes = []
    for x in x_seq:
        v = v + x
        s = (v >= threshold).float()
        v = v - s * threshold
        spikes.append(s)
    return torch.stack(spikes), v


@pytest.mark.parametrize("v_init", [0.0, 0.5])
@pytest.mark.parametrize("steps", [1, 4, 12])
def test_if_neuron_soft_reset_semantics(v_init, steps):
    g = torch.Generator().manual_seed(0)
    x_seq = torch.rand(12, 3, 5, generator=g) * 1.5
    neuron = IFNeuron(0.8, v_init=v_init)
    neuron.steps = steps
    out = [neuron(x_seq[t : t + steps].reshape(-1, 5)) for t in range(0, 12, steps)]
    spikes = torch.cat(out).reshape(12, 3, 5)
    expected, v_end = _if_by_hand(x_seq, 0.8, v_init)
    assert torch.equal(spikes, expected)
    assert torch.equal(neuron.v, v_end)


def test_if_neuron_rate_approaches_clipped_input():
    x = torch.linspace(-0.5, 1.5, 41).reshape(1, -1)
    neuron = IFNeuron(1.0, v_init=0.5)
    neuron.steps, neuron.static_input = 1000, True
    rate = neuron(x).reshape(1000, -1).mean(0)
    torch.testing.assert_close(rate, x.clamp(0, 1).reshape(-1), atol=1e-3, rtol=0)


def test_per_channel_threshold_and_reset():
    neuron = IFNeuron(torch.tensor([1.0, 2.0]), v_init=0.0)
    x = torch.ones(1, 2, 3)
    assert neuron(x)[0, :, 0].tolist() == [1.0, 0.0]
    assert neuron(x)[0, :, 0].tolist() == [1.0, 1.0]
    neuron.reset()
    assert neuron.v is None
    with pytest.raises(ValueError, match="positive"):
        IFNeuron(torch.tensor([1.0, 0.0]))


def test_activation_clip_and_threshold_units():
    act = Activation(clip=6.0)
    x = torch.tensor([-1.0, 3.0, 9.0])
    assert act(x).tolist() == [0.0, 3.0, 6.0]
    act.threshold = torch.tensor(2.0)
    assert act(x).tolist() == [0.0, 1.5, 3.0]
