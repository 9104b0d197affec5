import copy

import pytest
import torch

from ann2snn.converter_passes.calibrate_layers import calibrate_layers
from ann2snn.converter_passes.layer_calibration.search_thresholds import (
    DEFAULT_THRESHOLD_CANDIDATES,
    best_candidate,
    scale_neuron_output,
)
from ann2snn.runtime.neuron import IFNeuron, Scale
from ann2snn.tracing import is_module
from tests.conftest import pretrained
from tests.converter_passes.layer_calibration.test_layer_sweep import ann_mode, flat_snn


def snn_output(gm, x, timesteps):
    """Time-averaged output of a flat spiking graph over ``timesteps`` steps."""
    temporal = [m for m in gm.modules() if hasattr(m, "steps") and hasattr(m, "reset")]
    for m in temporal:
        m.steps = timesteps
        m.reset()
    rep = x.unsqueeze(0).expand(timesteps, *x.shape).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        out = gm(rep)
    for m in temporal:
        m.steps = 1
        m.reset()
    return out.reshape(timesteps, x.shape[0], *out.shape[1:]).mean(0)


def relative_error(out, ref):
    return float((out - ref).abs().mean() / ref.abs().mean())


def _calib(fmnist_train, n=1000):
    return [fmnist_train.tensors[0][i : i + 250] for i in range(0, n, 250)]


def test_best_candidate_picks_per_channel_and_breaks_ties_toward_the_default():
    candidates = torch.tensor([0.5, 1.0, 2.0])
    errors = torch.tensor([[1.0, 5.0, 3.0], [2.0, 5.0, 1.0], [3.0, 5.0, 1.0]])
    assert best_candidate(errors, candidates, 1.0).tolist() == [0.5, 1.0, 1.0]
    assert best_candidate(errors, candidates, 2.0).tolist() == [0.5, 2.0, 2.0]


@pytest.mark.parametrize(
    "name, new_scales",
    [("fmnist_avgpool_cnn", 0), ("fmnist_resnet", 0), ("fmnist_maxpool_cnn", 1)],
)
def test_scaled_spikes_are_compensated_downstream(name, new_scales, fmnist_train, fmnist_test):
    gm, _, _ = flat_snn(pretrained(name), _calib(fmnist_train, 500))
    x = fmnist_test.tensors[0][:200]
    before = ann_mode(gm, x)
    modules_before = sum(1 for n in gm.graph.nodes if n.op == "call_module")
    torch.manual_seed(0)
    thresholds = {}
    for node in list(gm.graph.nodes):
        if is_module(gm, node, IFNeuron):
            neuron = gm.get_submodule(str(node.target))
            channels = node.meta["tensor_meta"].shape[1]
            factor = 0.5 + torch.rand(channels)
            thresholds[node.name] = (neuron.threshold.clone(), factor)
            scale_neuron_output(gm, node, factor)
    gm.recompile()
    after = ann_mode(gm, x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    added = sum(1 for n in gm.graph.nodes if n.op == "call_module") - modules_before
    assert added == new_scales  # a Scale node only where no consumer can absorb the factor
    for node in gm.graph.nodes:
        if node.name in thresholds:
            old, factor = thresholds[node.name]
            new = gm.get_submodule(str(node.target)).threshold
            torch.testing.assert_close(new, old.reshape(-1) * factor)


def test_a_neuron_with_a_shared_consumer_gets_a_scale_node():
    from torch import nn

    from ann2snn.tracing import trace

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.neuron = IFNeuron(1.0)

        def forward(self, x):
            return self.fc(self.neuron(self.fc(x)))  # fc is used twice: cannot be folded

    gm = trace(Shared())
    node = next(n for n in gm.graph.nodes if is_module(gm, n, IFNeuron))
    x = torch.randn(3, 4)
    before = ann_mode(gm, x)
    scale_neuron_output(gm, node, torch.tensor([2.0]))
    gm.recompile()
    assert sum(isinstance(m, Scale) for m in gm.modules()) == 1
    torch.testing.assert_close(ann_mode(gm, x), before)


@pytest.mark.parametrize("channelwise", [False, True])
def test_search_lowers_the_error_at_the_target_timesteps(channelwise, fmnist_train, fmnist_test):
    gm, reference, inputs = flat_snn(
        pretrained("fmnist_avgpool_cnn"), _calib(fmnist_train), channelwise, sweep_samples=256
    )
    x = fmnist_test.tensors[0][:500]
    ann = ann_mode(reference, x)
    plain = copy.deepcopy(gm)
    calibrate_layers(gm, reference, inputs, 4, potential_calibration=False)
    neurons = [m for m in gm.modules() if isinstance(m, IFNeuron)]
    plain_neurons = [m for m in plain.modules() if isinstance(m, IFNeuron)]
    for m, p in zip(neurons, plain_neurons):
        ratio = m.threshold / p.threshold
        assert ratio.numel() == (p.threshold.numel() if channelwise else 1)
        assert all(
            any(abs(float(r) - c) < 1e-5 for c in DEFAULT_THRESHOLD_CANDIDATES) for r in ratio
        )
    err_plain = relative_error(snn_output(plain, x, 4), ann)
    err_search = relative_error(snn_output(gm, x, 4), ann)
    assert err_search < 0.9 * err_plain, (err_plain, err_search)
