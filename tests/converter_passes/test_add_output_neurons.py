import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.converter_passes.add_output_neurons import add_output_neurons
from ann2snn.errors import ConversionError
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import trace
from tests.conftest import loader, pretrained


def test_an_activation_is_added_before_the_output():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    gm = add_output_neurons(trace(model))
    out = next(n for n in gm.graph.nodes if n.op == "output")
    assert isinstance(gm.get_submodule(str(out.args[0].target)), Activation)
    x = torch.randn(5, 4)
    torch.testing.assert_close(gm(x), torch.relu(model(x)))


def test_each_output_of_a_tuple_gets_its_own_activation():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x), self.b(x)

    gm = add_output_neurons(trace(Two()))
    assert sum(isinstance(m, Activation) for m in gm.modules()) == 2
    x = torch.randn(2, 4)
    with torch.no_grad():
        a, b = gm(x)
    assert a.shape == (2, 2) and b.shape == (2, 3) and float(a.min()) >= 0


def test_a_model_without_tensor_output_is_refused():
    class Const(nn.Module):
        def forward(self, x):
            return 3

    with pytest.raises(ConversionError, match="readout='membrane'"):
        add_output_neurons(trace(Const()))


def test_spike_count_readout_end_to_end(fmnist_train, fmnist_test):
    model = pretrained("mnist_cnn")
    calib = loader(fmnist_train, 500)
    membrane = ann2snn.convert(
        model, calib_data=calib, threshold_search=False, potential_calibration=False
    )
    spikes = ann2snn.convert(
        model,
        calib_data=calib,
        readout="spikes",
        threshold_search=False,
        potential_calibration=False,
    )
    assert len(spikes.neurons()) == len(membrane.neurons()) + 1
    x = fmnist_test.tensors[0][:64]
    out = spikes(x, timesteps=8)
    assert float(out.min()) >= 0.0
    with pytest.raises(ValueError, match="invalid readout"):
        ann2snn.convert(model, calib_data=calib, readout="count")
