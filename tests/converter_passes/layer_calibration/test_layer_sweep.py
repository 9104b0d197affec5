import pytest
import torch
from torch import fx

from ann2snn.config import ConversionConfig
from ann2snn.converter_passes.layer_calibration.layer_sweep import (
    LayerData,
    LayerSweep,
    collect_inputs,
)
from ann2snn.converter_passes.pipeline import PIPELINE, ConversionContext, run_pipeline
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.tracing import is_module, trace
from tests.conftest import pretrained


def flat_snn(model, calib, channelwise=True, sweep_samples=256):
    """The spiking graph just before layer calibration, its reference ANN and the inputs."""
    ctx = ConversionContext(
        config=ConversionConfig(
            mode="99.9%",
            channelwise=channelwise,
            threshold_search=True,
            potential_calibration=False,
            sweep_samples=sweep_samples,
        ),
        calib_data=calib,
        example_input=calib[0][:2],
    )
    stop = [s.name for s in PIPELINE].index("calibrate_layers")
    with torch.no_grad():
        gm = run_pipeline(trace(model), ctx, PIPELINE[:stop])
    return gm, ctx.reference, ctx.sweep_inputs


def ann_mode(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """The rate-coded function of a flat spiking graph: every IF layer as relu(x)/threshold."""

    class Rates(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            m = self.module.get_submodule(target)
            if isinstance(m, IFNeuron):
                z = args[0]
                thr = m.threshold
                view = (
                    thr.reshape(())
                    if thr.numel() == 1
                    else thr.reshape(1, -1, *[1] * (z.dim() - 2))
                )
                return torch.relu(z) / view
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        return Rates(gm).run(x)


class Recorder:
    def __init__(self):
        self.seen = {}

    def calibrate(self, gm, node, layer):
        self.seen[node.name] = layer


def test_collect_inputs_takes_the_first_samples_and_rebatches():
    data = [(torch.full((100, 3), float(i)), torch.zeros(100)) for i in range(5)]
    batches = collect_inputs(data, max_samples=250)
    assert sum(b.shape[0] for b in batches) == 250
    assert all(b.shape[0] <= 128 for b in batches)
    assert torch.cat(batches)[:, 0].tolist() == [0.0] * 100 + [1.0] * 100 + [2.0] * 50
    assert sum(b.shape[0] for b in collect_inputs(data, max_batches=1)) == 100
    with pytest.raises(ValueError, match="no input"):
        collect_inputs([])
    with pytest.raises(ValueError, match="positive number of samples"):
        collect_inputs(data, max_samples=0)


def test_sweep_sees_the_currents_the_simulator_computes(fmnist_train):
    model = pretrained("fmnist_avgpool_cnn")
    calib = [fmnist_train.tensors[0][i : i + 250] for i in range(0, 500, 250)]
    gm, reference, inputs = flat_snn(model, calib, sweep_samples=64)
    rec = Recorder()
    LayerSweep(gm, reference, inputs, timesteps=5, horizons=(1,)).run([rec])
    layers = [n.name for n in gm.graph.nodes if is_module(gm, n, IFNeuron)]
    assert list(rec.seen) == layers and len(layers) == 3  # every IF layer, in graph order

    # Reference: run the flat graph step by step, recording each IF layer's input.
    x = inputs[0]
    seen = {}
    hooks = []
    for node in gm.graph.nodes:
        if node.name in rec.seen:
            mod = gm.get_submodule(str(node.target))
            hooks.append(
                mod.register_forward_pre_hook(
                    lambda m, args, name=node.name: seen.setdefault(name, []).append(args[0])
                )
            )
    for m in gm.modules():
        if isinstance(m, IFNeuron):
            m.reset()
    with torch.no_grad():
        for _ in range(5):
            gm(x)
    for h in hooks:
        h.remove()
    for name, layer in rec.seen.items():
        step_by_step = torch.stack(seen[name])
        assert layer.currents[0].shape == step_by_step.shape
        torch.testing.assert_close(layer.currents[0], step_by_step, rtol=1e-4, atol=1e-4)
        # The targets are the ANN's activations in rate units (relu(z)/threshold).
        assert layer.targets[0].shape == step_by_step.shape[1:]
        assert float(layer.targets[0].min()) >= 0.0
    # The ANN targets of the first layer are the rates of its (constant) input current.
    first = next(iter(rec.seen.values()))
    thr = first.reference_threshold.reshape(1, -1, 1, 1)
    torch.testing.assert_close(first.targets[0], torch.relu(first.currents[0][0]) / thr)


def test_sweep_simulates_the_longest_horizon(fmnist_train):
    model = pretrained("mnist_cnn")
    calib = [fmnist_train.tensors[0][:64]]
    gm, reference, inputs = flat_snn(model, calib, sweep_samples=16)
    rec = Recorder()
    sweep = LayerSweep(gm, reference, inputs, timesteps=3, horizons=(4, 1, 2))
    assert sweep.horizons == (3, 6, 12)
    sweep.run([rec])
    for layer in rec.seen.values():
        assert layer.currents[0].shape[0] == 12 and layer.horizons == (3, 6, 12)


def test_squared_errors_sum_the_horizons_weighted_by_length():
    torch.manual_seed(0)
    currents = [torch.rand(8, 5, 3) * 1.2]  # [T, B, C]
    targets = [torch.rand(5, 3)]
    neuron = IFNeuron(threshold=torch.tensor([1.0, 0.8, 1.5]))
    thr, v0, gain = neuron.threshold, torch.full((3,), 0.3), torch.tensor([1.0, 2.0, 0.5])

    def by_hand(h):
        v = (v0 * thr).expand(5, 3).clone()
        count = torch.zeros(5, 3)
        for t in range(h):
            v = v + currents[0][t]
            s = (v >= thr).float()
            v = v - s * thr
            count += s
        return ((count / h) * gain - targets[0]).pow(2).sum(0).double()

    one = LayerData(neuron, currents, targets, torch.ones(3), 8, horizons=(2,))
    torch.testing.assert_close(one.squared_errors(thr, v0, gain), by_hand(2))
    both = LayerData(neuron, currents, targets, torch.ones(3), 8, horizons=(2, 8))
    expected = by_hand(2) + 4 * by_hand(8)  # each square weighted by h / shortest
    torch.testing.assert_close(both.squared_errors(thr, v0, gain), expected)
    with pytest.raises(ValueError, match="horizons"):
        LayerData(neuron, currents, targets, torch.ones(3), 8, horizons=(2, 9))


def test_sweep_rejects_bad_timesteps(fmnist_train):
    model = pretrained("mnist_cnn")
    calib = [fmnist_train.tensors[0][:64]]
    gm, reference, inputs = flat_snn(model, calib, sweep_samples=16)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            LayerSweep(gm, reference, inputs, timesteps=bad)
    for bad in ((), (0, 1), (1.5,), (True,), "12", None):
        with pytest.raises(ValueError, match="calibration_horizons"):
            LayerSweep(gm, reference, inputs, timesteps=4, horizons=bad)
