import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import trace


class AllSpellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.hardtanh = nn.Hardtanh(0.0, 2.5)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()

    def forward(self, x):
        a = F.relu(self.lin(x))
        b = torch.relu(self.lin(x) - 1)
        c = self.lin(x) + 1
        c.relu_()  # in place: c is read afterwards
        d = self.relu_inplace(self.lin(x) * 2)
        e = self.relu6(self.lin(x) * 3)
        f = self.hardtanh(self.lin(x) * 3)
        g = (self.lin(x) - 0.5).relu()
        h = F.dropout(self.drop(self.ident(a)), 0.3, training=self.training)
        return h + b + c + d + e + f + g


def _count(gm, cls):
    return sum(
        1
        for n in gm.graph.nodes
        if n.op == "call_module" and type(gm.get_submodule(n.target)) is cls
    )


def test_every_relu_spelling_becomes_one_activation_and_dropout_is_removed():
    model = AllSpellings().eval()
    x = torch.randn(16, 8)
    expected = model(x)
    gm = canonicalize_activations(trace(model))
    assert _count(gm, Activation) == 7
    assert _count(gm, nn.Dropout) == 0 and _count(gm, nn.Identity) == 0
    assert not any(n.target in (F.relu, torch.relu, F.dropout) for n in gm.graph.nodes)
    assert not any(n.op == "call_method" and n.target in ("relu", "relu_") for n in gm.graph.nodes)
    clips = sorted(
        float(m.clip) for m in gm.modules() if isinstance(m, Activation) and m.clip is not None
    )
    assert clips == [2.5, 6.0]
    torch.testing.assert_close(gm(x), expected)


def test_shared_relu_module_becomes_one_activation_per_call_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.b(self.relu(self.a(x))) + self.relu(x)

    gm = canonicalize_activations(trace(Shared().eval()))
    acts = [n.target for n in gm.graph.nodes if n.op == "call_module" and "relu" in n.target]
    assert len(acts) == 2 and len(set(acts)) == 2


def test_single_use_relu_module_keeps_its_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    gm = canonicalize_activations(trace(model))
    assert isinstance(gm.get_submodule("1"), Activation)


@pytest.mark.parametrize("act", [nn.LeakyReLU(), nn.Hardtanh(-1.0, 1.0), nn.GELU(), nn.Sigmoid()])
def test_non_relu_activations_are_left_alone(act):
    model = nn.Sequential(nn.Linear(4, 4), act).eval()
    gm = canonicalize_activations(trace(model))
    assert _count(gm, Activation) == 0
    assert type(gm.get_submodule("1")) is type(act)


def test_eval_mode_stochastic_depth_is_removed_like_dropout():
    from torchvision.ops import StochasticDepth, stochastic_depth

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.depth = StochasticDepth(0.2, "row")

        def forward(self, x):
            y = self.depth(F.relu(self.fc(x))) + x
            return stochastic_depth(y, 0.1, "row", self.training)

    model = Residual().eval()
    x = torch.randn(3, 4)
    gm = canonicalize_activations(trace(model))
    targets = [n.target for n in gm.graph.nodes]
    assert "depth" not in targets and stochastic_depth not in targets
    torch.testing.assert_close(gm(x), model(x))
