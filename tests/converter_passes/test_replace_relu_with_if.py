import torch
from torch import nn

import ann2snn
from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.replace_relu_with_if import replace_relu_with_if
from ann2snn.runtime.neuron import Activation, IFNeuron
from ann2snn.tracing import trace


def test_each_activation_becomes_an_if_neuron_with_its_threshold():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 2))
    gm = canonicalize_activations(trace(model))
    acts = [m for m in gm.modules() if isinstance(m, Activation)]
    acts[0].threshold = torch.tensor(2.5)
    acts[0].scale = torch.tensor(2.5)
    gm = replace_relu_with_if(gm, v_init=0.25)
    neurons = [m for m in gm.modules() if isinstance(m, IFNeuron)]
    assert len(neurons) == 2 and not any(isinstance(m, Activation) for m in gm.modules())
    assert float(neurons[0].threshold) == 2.5 and float(neurons[1].threshold) == 1.0
    assert all(n.v_init == 0.25 for n in neurons)
    assert float(neurons[0].scale) == 2.5


def test_graph_without_activations_is_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    gm = replace_relu_with_if(trace(model))
    assert not any(isinstance(m, IFNeuron) for m in gm.modules())
    x = torch.randn(2, 3)
    torch.testing.assert_close(gm(x), model(x))


def test_clipped_activations_under_fluctuating_input_converge_to_the_ann() -> None:
    # Hardtanh(0, a) and ReLU6 behind a spiking layer (fluctuating input), driven far
    # beyond the clip: as T grows the SNN converges to the ANN, and neurons whose ANN
    # value is 0 stay (almost) silent (issue: 'fires at rate 0.31').
    from ann2snn.runtime.recorders import SpikeRecorder

    torch.manual_seed(0)
    for clip_act in (nn.Hardtanh(0.0, 0.3), nn.ReLU6()):
        model = nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            clip_act,
            nn.Flatten(),
            nn.Linear(8 * 36, 5),
        ).eval()
        with torch.no_grad():
            model[2].weight.mul_(8 * clip_act.max_val / 0.3)
            x = torch.randn(16, 2, 6, 6)
            ann_value, ref = model[:4](x), model(x)
        snn = ann2snn.convert(model, mode="max", calib_data=[x])
        name, neuron = snn.neurons()[1]
        # the neuron keeps the activation's largest calibration value (ANN units)
        expected = ann_value.transpose(0, 1).reshape(8, -1).amax(1)
        torch.testing.assert_close(neuron.calib_max, expected)
        with SpikeRecorder(snn, per_neuron=True) as rec, torch.no_grad():
            out = snn(x, timesteps=2048)
            _, rate = rec.means(name, 2048)
        at_clip = ann_value >= clip_act.max_val
        assert at_clip.float().mean() > 0.01  # the clip is reached
        assert float(rate[ann_value == 0].max()) < 0.01
        assert float(rate[at_clip].min()) > 0.99
        assert float((out - ref).norm() / ref.norm()) < 0.005
