import pytest
import torch
from torch import fx

from ann2snn.converter_passes.layer_sweep import LayerSweep, collect_inputs
from ann2snn.converter_passes.pipeline import PIPELINE, ConversionContext, run_pipeline
from ann2snn.modes import parse_mode
from ann2snn.neuron import IFNeuron
from ann2snn.tracing import is_module, trace
from tests.conftest import pretrained


def flat_snn(model, calib, channelwise=True, sweep_samples=256):
    """The spiking graph just before layer calibration, its reference ANN and the inputs."""
    ctx = ConversionContext(
        mode=parse_mode("99.9%"),
        calib_data=calib,
        example_input=calib[0][:2],
        channelwise=channelwise,
        threshold_search=True,
        sweep_samples=sweep_samples,
    )
    stop = [s.name for s in PIPELINE].index("calibrate_layers")
    with torch.no_grad():
        gm = run_pipeline(trace(model), ctx, PIPELINE[:stop])
    return gm, ctx.extras["reference"], ctx.extras["sweep_inputs"]


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
    LayerSweep(gm, reference, inputs, timesteps=5).run([rec])
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


def test_sweep_rejects_bad_timesteps(fmnist_train):
    model = pretrained("mnist_cnn")
    calib = [fmnist_train.tensors[0][:64]]
    gm, reference, inputs = flat_snn(model, calib, sweep_samples=16)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            LayerSweep(gm, reference, inputs, timesteps=bad)
