"""rebind_batch_sizes: ``y.view(x.size(0), -1)`` with ``x`` the input still works in the SNN,
where ``y`` carries the time steps stacked along the batch dimension."""

from __future__ import annotations

import torch
from torch import fx, nn

import ann2snn
from ann2snn.converter_passes.rebind_batch_sizes import rebind_batch_sizes


class BatchFromInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        b = x.size(0)  # read once at the top, as many models do
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(y.view(b, -1))


def _shaped(model, x):
    gm = fx.symbolic_trace(model)
    fx.passes.shape_prop.ShapeProp(gm).propagate(x)
    return gm


def test_reshape_reads_its_own_leading_size():
    torch.manual_seed(0)
    model, x = BatchFromInput().eval(), torch.rand(5, 1, 8, 8)
    gm = rebind_batch_sizes(_shaped(model, x))
    view = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "view")
    size = view.args[1]
    assert size.op == "call_method" and size.target == "size" and size.args == (view.args[0], 0)
    assert torch.equal(gm(x), model(x))  # the ANN is unchanged
    # The input's size read was only used by the view: it is gone.
    assert sum(n.op == "call_method" and n.target == "size" for n in gm.graph.nodes) == 1


def test_snn_of_such_a_model_converges_instead_of_mixing_time_into_features():
    torch.manual_seed(0)
    model, x = BatchFromInput().eval(), torch.rand(8, 1, 8, 8)
    snn = ann2snn.convert(model, "max", [torch.rand(64, 1, 8, 8)])
    out, ref = snn(x, timesteps=256), model(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
