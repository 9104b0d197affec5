"""ann2snn.snn_graph: a converted graph described as data and rebuilt, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.snn_graph import UnsupportedGraphError, ann_view, build_graph, describe_graph


class Mixed(nn.Module):
    """Residual add, concatenation, a clipped activation, max and average pooling, a
    BatchNorm with no convolution before it, and a view that reads the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(2)
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.bn_in(x)
        y = F.relu(self.a(x))
        z = F.relu6(self.b(y)) + y
        z = torch.cat([z, y], dim=1)
        z = self.pool(F.relu(self.c(z)))
        z = F.avg_pool2d(z, 2)
        return self.fc(z.view(z.size(0), -1))


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 2, 16, 16, generator=gen), torch.randn(6, 2, 16, 16, generator=gen)


@pytest.mark.parametrize("maxpool", ["cumulative", "gate"])
def test_rebuilt_graph_is_bit_identical(data, maxpool) -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        model.bn_in.running_mean.uniform_(-0.5, 0.5)
    calib, test = data
    snn = ann2snn.convert(model, calib_data=[calib], maxpool=maxpool, fold_scales=False)
    desc, tensors = describe_graph(snn.graph_module)
    # Data only: what torch.load(weights_only=True) reads back.
    buf = __import__("io").BytesIO()
    torch.save({"d": desc, "t": tensors}, buf)
    buf.seek(0)
    raw = torch.load(buf, weights_only=True)
    gm = build_graph(raw["d"], raw["t"])
    again = ann2snn.SpikingModel(gm, meta=snn.meta)
    assert torch.equal(again(test, timesteps=12), snn(test, timesteps=12))
    kinds = {type(m).__name__ for m in gm.modules()}
    assert {"IFNeuron", "Conv2d", "Linear"} <= kinds
    assert ("SpikingMaxPool" if maxpool == "cumulative" else "GatedMaxPool") in kinds
    # The ANN view computes the ANN, ReLU6 clip included.
    with torch.no_grad():
        torch.testing.assert_close(ann_view(gm)(test), model(test), rtol=0, atol=1e-4)


def test_modules_outside_the_closed_set_are_refused() -> None:
    class Custom(nn.Module):
        def forward(self, x):
            return x

    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3)))
    gm.add_submodule("custom", Custom())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        node = gm.graph.call_module("custom", (out.args[0],))
    out.args = (node,)
    gm.recompile()
    with pytest.raises(UnsupportedGraphError, match="custom of type .*Custom"):
        describe_graph(gm)


def test_unknown_names_in_a_description_are_refused() -> None:
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3)))
    desc, tensors = describe_graph(gm)
    desc["root"]["children"]["0"]["type"] = "Exec"
    with pytest.raises(UnsupportedGraphError, match="unknown module type 'Exec'"):
        build_graph(desc, tensors)
    desc, tensors = describe_graph(gm)
    desc["root"]["nodes"][1] = {**desc["root"]["nodes"][1], "op": "call_function"}
    desc["root"]["nodes"][1]["target"] = "os.system"
    with pytest.raises(ValueError, match="unknown function 'os.system'"):
        build_graph(desc, tensors)


class Passthrough(nn.Module):
    """A module type outside the closed set (module level, so a format-1 file can pickle)."""

    def forward(self, x):
        return x


def test_graph_outside_the_closed_set_falls_back_to_the_source_format(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 4)).eval()
    calib = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    snn = ann2snn.convert(model, calib_data=[calib])
    loop = snn.graph_module.time_loop
    loop.add_submodule("extra", Passthrough())
    out = next(n for n in loop.graph.nodes if n.op == "output")
    with loop.graph.inserting_before(out):
        out.args = (loop.graph.call_module("extra", (out.args[0],)),)
    loop.recompile()
    path = tmp_path / "snn.pt"
    with pytest.warns(UserWarning, match="Passthrough.*format version 1"):
        ann2snn.save_snn(snn, path)
    assert torch.load(path, weights_only=True)["version"] == 1
    again = ann2snn.load_snn(path, trust_checkpoint=True)  # the ANN was pickled
    assert torch.equal(again(calib[:4], timesteps=8), snn(calib[:4], timesteps=8))
