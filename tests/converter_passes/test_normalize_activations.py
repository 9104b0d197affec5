import copy

import pytest
import torch
from torch import nn

from ann2snn.calibration import calibrate
from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.fold_batchnorm import fold_batchnorm
from ann2snn.converter_passes.insert_observers import insert_observers
from ann2snn.converter_passes.normalize_activations import (
    activation_scale,
    normalize_activations,
    scale_input_channels,
)
from ann2snn.modes import parse_mode
from ann2snn.runtime.neuron import Activation, Scale
from ann2snn.tracing import trace
from tests.conftest import pretrained


def _normalized(model, calib, mode="99.9%", channelwise=False):
    from torch.fx.passes.shape_prop import ShapeProp

    parsed = parse_mode(mode)
    # fx.GraphModule shares submodules with the traced model: work on a copy, as convert() does.
    gm = canonicalize_activations(trace(copy.deepcopy(model)))
    ShapeProp(gm).propagate(calib[0][:2])
    gm = fold_batchnorm(gm)
    gm = insert_observers(gm, parsed.quantile, 1 if channelwise else None)
    calibrate(gm, calib)
    return normalize_activations(gm, parsed)


def test_activation_scale_modes():
    mx, p = torch.tensor(4.0), torch.tensor(3.0)
    assert float(activation_scale(mx, parse_mode("max"))) == 4.0
    assert float(activation_scale(mx, parse_mode("99%"), p)) == 3.0
    assert float(activation_scale(mx, parse_mode(0.25))) == 1.0
    assert float(activation_scale(mx, parse_mode("max"), clip=torch.tensor(2.0))) == 2.0
    silent = activation_scale(torch.tensor([0.0, 2.0]), parse_mode("max"))
    assert silent.tolist() == [1.0, 2.0]


def test_grouped_conv_input_scaling_matches_scaling_the_input():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    x = torch.rand(2, 4, 5, 5)
    factor = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = conv(x * factor.view(1, -1, 1, 1))
    scale_input_channels(conv, factor)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("name", ["fmnist_avgpool_cnn", "fmnist_maxpool_cnn", "fmnist_resnet"])
def test_normalized_graph_predicts_like_the_ann(name, channelwise, fmnist_train, fmnist_test):
    model = pretrained(name)
    calib = [fmnist_train.tensors[0][i : i + 250] for i in range(0, 1000, 250)]
    gm = _normalized(model, calib, "99.9%", channelwise)
    x = fmnist_test.tensors[0][:1000]
    ann_out, norm_out = model(x), gm(x)
    assert torch.equal(ann_out.argmax(1), norm_out.argmax(1))
    torch.testing.assert_close(norm_out, ann_out, rtol=1e-4, atol=1e-4)
    acts = [m for m in gm.modules() if isinstance(m, Activation)]
    assert acts and all(m.scale is not None and torch.all(m.scale > 0) for m in acts)
    if channelwise:
        assert all(m.scale.numel() > 1 for m in acts)


def test_scales_fold_into_weights_of_a_plain_cnn():
    model = pretrained("fmnist_avgpool_cnn")
    calib = [torch.rand(50, 1, 28, 28)]
    gm = _normalized(model, calib, "max")
    assert not any(isinstance(m, Scale) for m in gm.modules())
    for act in (m for m in gm.modules() if isinstance(m, Activation)):
        assert torch.all(act.threshold == 1)  # folded into the producing conv/linear


def test_scale_kept_where_it_cannot_fold():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = torch.relu(self.a(x) + x)  # producer is an add: threshold keeps the scale
            return self.b(h) + h  # consumer is an add too: a Scale node is needed

    model = Residual().eval()
    x = torch.randn(64, 4)
    gm = _normalized(model, [x], "max")
    act = next(m for m in gm.modules() if isinstance(m, Activation))
    assert float(act.threshold) == pytest.approx(float(act.scale)) and float(act.scale) != 1.0
    assert sum(isinstance(m, Scale) for m in gm.modules()) == 1
    torch.testing.assert_close(gm(x), model(x))


def test_activations_read_by_a_max_pooling_keep_their_maximum():
    # A max pooling reads exactly the top of its input's range, which a percentile clips:
    # whatever the mode, an activation that reaches one (here through a concatenation)
    # gets its maximum; the others get the percentile.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.a(x))  # read by b, then by the pooling only through b
            g = torch.relu(self.b(h))
            return torch.amax(torch.cat([g, g], 1), dim=(2, 3))  # global max pooling

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(32, 1, 8, 8)
    gm = _normalized(model, [x], "99%", channelwise=True)
    first, second = [m for m in gm.modules() if isinstance(m, Activation)]
    with torch.no_grad():
        h = torch.relu(model.a(x))
        g = torch.relu(model.b(h))
    per_channel = g.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(second.scale, per_channel.amax(1))
    percentile = torch.quantile(h.transpose(0, 1).reshape(4, -1), 0.99, dim=1)
    torch.testing.assert_close(first.scale, percentile)
    assert torch.all(first.scale < h.transpose(0, 1).reshape(4, -1).amax(1))
    torch.testing.assert_close(gm(x), model(x))
