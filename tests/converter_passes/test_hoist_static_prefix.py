import torch
from torch import nn

from ann2snn.converter_passes.hoist_static_prefix import hoist_static_prefix
from ann2snn.runtime.neuron import IFNeuron, RepeatInTime
from ann2snn.tracing import trace


class TwoPaths(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.if1 = IFNeuron(1.0)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.if2 = IFNeuron(1.0)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        a = self.conv(x)  # static: the input is constant
        h = self.if1(a)
        h = self.if2(self.conv2(h) + a)  # a static value meets a spiking one
        return self.fc(torch.flatten(h, 1))


def _step_by_step(model, x, steps):
    """Reference: the un-split graph run one time step per call."""
    for m in model.modules():
        if isinstance(m, IFNeuron):
            m.reset()
            m.steps = 1
    return torch.stack([model(x) for _ in range(steps)])


def test_static_prefix_is_computed_once_and_time_loop_matches_stepwise():
    torch.manual_seed(0)
    model = TwoPaths().eval()
    x = torch.rand(4, 1, 6, 6)
    expected = _step_by_step(model, x, 10)
    gm = hoist_static_prefix(trace(model), x[:2])
    static_targets = [n.target for n in gm.static_prefix.graph.nodes if n.op == "call_module"]
    assert static_targets == ["conv"]
    assert gm.get_submodule("time_loop.if1").static_input
    assert not gm.get_submodule("time_loop.if2").static_input
    repeats = [m for m in gm.time_loop.modules() if isinstance(m, RepeatInTime)]
    assert len(repeats) == 1  # only the add needs the static value materialized over time
    for m in gm.modules():
        if isinstance(m, IFNeuron):
            m.reset()
    outs = []
    for steps in (3, 3, 4):  # chunks of different lengths
        for m in gm.time_loop.modules():
            if isinstance(m, (IFNeuron, RepeatInTime)):
                m.steps = steps
        static = gm.static_prefix(x)
        outs.append(gm.time_loop(*static).reshape(steps, 4, 3))
    torch.testing.assert_close(torch.cat(outs), expected)
