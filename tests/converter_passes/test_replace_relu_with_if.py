import torch
from torch import nn

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
