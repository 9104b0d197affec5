import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import ann2snn
from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.check_supported import check_supported
from ann2snn.converter_passes.convert_maxpool import (
    MAXPOOL_METHODS,
    check_maxpool_method,
    convert_maxpool,
    is_maxpool,
    pool_before_neurons,
    pool_module,
)
from ann2snn.converter_passes.replace_relu_with_if import replace_relu_with_if
from ann2snn.errors import ConversionError
from ann2snn.runtime.neuron import Activation
from ann2snn.runtime.pooling import GatedMaxPool, SpikingMaxPool
from ann2snn.tracing import trace
from benchmarks.torchvision_table import plain_options


class PoolForms(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.adaptive = nn.AdaptiveMaxPool2d(2)

    def forward(self, x):
        return (
            self.pool(x),
            self.adaptive(x),
            F.max_pool2d(x, 2),
            F.max_pool2d(x, kernel_size=3, stride=1, padding=1, ceil_mode=True),
            torch.max_pool2d(x, 2),
            F.adaptive_max_pool2d(x, 1),
            torch.amax(x, (2, 3)),
            x.amax(dim=3, keepdim=True),
        )


def test_every_max_pooling_form_becomes_an_equivalent_module():
    model = PoolForms().eval()
    gm = trace(model)
    x = torch.randn(2, 3, 9, 9)
    pools = [n for n in gm.graph.nodes if is_maxpool(gm, n)]
    assert len(pools) == 8
    env = dict(zip([n.name for n in pools], model(x)))
    for node in pools:
        torch.testing.assert_close(pool_module(gm, node)(x), env[node.name])


def test_pooling_that_returns_indices_is_refused_by_name():
    class WithIndices(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            return self.pool(x)[0] + F.max_pool2d(x, 2, return_indices=True)[0]

    gm = trace(WithIndices())
    node = next(n for n in gm.graph.nodes if is_maxpool(gm, n))
    with pytest.raises(ConversionError, match="return_indices"):
        pool_module(gm, node)
    with pytest.raises(ConversionError, match="2 operation") as err:
        check_supported(gm)
    assert "'pool'" in str(err.value) and "max_pool2d_with_indices" in str(err.value)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()


def _prepared(model, x):
    gm = canonicalize_activations(trace(model))
    ShapeProp(gm).propagate(x)
    return gm


def _order(gm):
    return [
        "act"
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Activation)
        else ("pool" if is_maxpool(gm, n) else None)
        for n in gm.graph.nodes
    ]


@pytest.mark.parametrize("method, moved", [("current", 2), ("auto", 1), ("cumulative", 0)])
def test_pools_move_before_neurons_only_where_the_method_says(method, moved):
    model, x = _cnn(), torch.rand(5, 1, 16, 16)
    gm = _prepared(model, x)
    before = [o for o in _order(gm) if o]
    assert before == ["act", "pool", "act", "pool"]
    pool_before_neurons(gm, method)
    after = [o for o in _order(gm) if o]
    swapped = sum(1 for i in (0, 2) if after[i : i + 2] == ["pool", "act"])
    assert swapped == moved
    torch.testing.assert_close(gm(x), model(x))  # ReLU and max commute: the ANN is unchanged
    pooled = [n for n in gm.graph.nodes if is_maxpool(gm, n)]
    for node in pooled:  # recorded shapes follow the nodes
        assert tuple(node.meta["tensor_meta"].shape) == tuple(
            gm.get_submodule(node.target)(torch.zeros(node.args[0].meta["tensor_meta"].shape)).shape
        )


def test_an_activation_read_elsewhere_keeps_its_pool_after_it():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            a = F.relu(self.conv(x))
            return F.max_pool2d(a, 2).sum((1, 2, 3)) + a.mean((1, 2, 3))

    x = torch.rand(2, 1, 8, 8)
    gm = _prepared(TwoReaders().eval(), x)
    before = [n.format_node() for n in gm.graph.nodes]
    pool_before_neurons(gm, "current")
    assert [n.format_node() for n in gm.graph.nodes] == before


@pytest.mark.parametrize(
    "method, expected", [("cumulative", SpikingMaxPool), ("gate", GatedMaxPool), ("spikes", None)]
)
def test_pools_of_spike_trains_are_replaced_and_static_pools_kept(method, expected):
    class StaticThenSpiking(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            x = F.max_pool2d(x, 2)  # on the input: static, computed once
            return F.max_pool2d(F.relu(self.conv(x)), 2)

    gm = canonicalize_activations(trace(StaticThenSpiking().eval()))
    gm = convert_maxpool(replace_relu_with_if(gm), method)
    kinds = [
        type(gm.get_submodule(n.target)) if n.op == "call_module" else n.target
        for n in gm.graph.nodes
        if n.op in ("call_module", "call_function")
    ]
    assert kinds[0] is F.max_pool2d
    if expected is None:
        assert kinds[-1] is F.max_pool2d
    else:
        assert kinds[-1] is expected


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="'cumulative'") as err:
        check_maxpool_method("fast")
    for method in MAXPOOL_METHODS:
        assert repr(method) in str(err.value)
    with pytest.raises(ValueError, match="unknown maxpool method"):
        ann2snn.convert(_cnn(), "max", [torch.rand(2, 1, 16, 16)], maxpool="fast")


def test_every_method_converges_and_exact_methods_beat_pooling_spikes():
    # the plain conversion (no tuning for one T), whose output converges to the ANN's
    model, x = _cnn(), torch.rand(4, 1, 16, 16)
    calib = [torch.rand(16, 1, 16, 16)]
    with torch.no_grad():
        ref = model(x)
    errors = {}
    for method in MAXPOOL_METHODS:
        snn = ann2snn.convert(model, "max", calib, maxpool=method, **plain_options())
        assert snn.meta["maxpool"] == method
        errors[method] = {
            t: float((snn(x, timesteps=t) - ref).abs().mean() / ref.abs().mean()) for t in (32, 512)
        }
    for method in ("auto", "cumulative"):
        assert errors[method][512] < 0.5 * errors[method][32], errors
        assert errors[method][512] < 0.5 * errors["spikes"][512], errors
