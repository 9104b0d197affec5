import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.check_supported import check_supported
from ann2snn.errors import ConversionError
from ann2snn.tracing import trace


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        g = torch.sigmoid(y)  # LINE-SIGMOID
        z = self.act(y) * g  # LINE-PRODUCT
        z = z.mean((2, 3))
        return self.fc(F.silu(z))  # LINE-SILU


def test_one_error_lists_every_unsupported_node_with_its_source_line():
    gm = canonicalize_activations(trace(Mixed().eval()))
    with pytest.raises(ConversionError) as err:
        check_supported(gm)
    msg = str(err.value)
    assert msg.startswith("4 operation(s) of Mixed cannot be converted")
    for what in ("sigmoid", "GELU", "silu", "multiplies two signals"):
        assert what in msg
    for marker in ("LINE-SIGMOID", "LINE-PRODUCT", "LINE-SILU"):
        assert marker in msg
    assert "test_check_supported.py:" in msg


def test_supported_model_passes_unchanged():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten()
    ).eval()
    gm = canonicalize_activations(trace(model))
    before = [n.format_node() for n in gm.graph.nodes]
    assert check_supported(gm) is gm
    assert [n.format_node() for n in gm.graph.nodes] == before


def test_scaling_by_a_constant_is_allowed_but_not_by_a_signal():
    class Scaled(nn.Module):
        def forward(self, x):
            return F.relu(x * 0.5) / 2.0

    check_supported(canonicalize_activations(trace(Scaled())))

    class Divided(nn.Module):
        def forward(self, x):
            return F.relu(x) / (x.sum() + 1)

    with pytest.raises(ConversionError, match="divides by a signal"):
        check_supported(canonicalize_activations(trace(Divided())))


def _checked(model, x):
    from torch.fx.passes.shape_prop import ShapeProp

    gm = canonicalize_activations(trace(model.eval()))
    ShapeProp(gm).propagate(x)
    return check_supported(gm)


def test_shape_checks_and_size_arithmetic_are_not_offenders():
    class ShapeLogic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            n, c, h, w = x.shape
            torch._assert(h == w, "square images only")
            y = F.relu(self.conv(x))
            y = y.view(n, 2, 2, h * w).transpose(1, 2).reshape(y.size(0), -1)
            return y * (1.0 / (h * w))

    _checked(ShapeLogic(), torch.randn(2, 3, 4, 4))
    # the same without recorded shapes (sizes are recognized by how they are computed)
    check_supported(canonicalize_activations(trace(ShapeLogic().eval())))


def test_comparing_signals_is_refused():
    class Compare(nn.Module):
        def forward(self, x):
            return F.relu(x) * (x > 0)

    with pytest.raises(ConversionError, match="gt"):
        _checked(Compare(), torch.randn(2, 3))


def test_batchnorm_with_batch_statistics_is_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ConversionError, match="track_running_stats=False"):
        _checked(model, torch.randn(4, 3))


def test_non_relu_nonlinearities_are_all_named_in_one_error():
    class Zoo(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.leaky, self.gelu, self.silu = nn.LeakyReLU(), nn.GELU(), nn.SiLU()
            self.hswish, self.sigmoid = nn.Hardswish(), nn.Sigmoid()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            y = self.leaky(self.fc(x)) + self.gelu(x) + self.silu(x) + self.hswish(x)
            y = y * self.sigmoid(x)  # gating: a product of two signals
            a, _ = self.attn(y.unsqueeze(1), y.unsqueeze(1), y.unsqueeze(1))
            return F.relu(a.squeeze(1)) + torch.tanh(x)

    with pytest.raises(ConversionError) as err:
        _checked(Zoo(), torch.randn(2, 8))
    msg = str(err.value)
    for name in ("'leaky'", "'gelu'", "'silu'", "'hswish'", "'sigmoid'", "'attn'", "tanh"):
        assert name in msg
    assert "multiplies two signals" in msg
    assert msg.startswith("8 operation(s)")  # 6 modules, the product, tanh; not getitem


def test_reductions_over_the_batch_dimension_are_refused():
    """In the time loop dim 0 holds steps * B rows: reducing it would mix time steps."""

    class Reductions(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = F.relu(self.conv(x))
            spatial = y.mean((2, 3)) + torch.sum(y, dim=(-1, -2))  # fine
            whole = y.sum()  # LINE-ALL
            first = torch.mean(y, dim=0)  # LINE-DIM0
            last = y.mean(-4)  # LINE-NEG
            return spatial + whole + first.sum(1).sum(1) + last.sum((1, 2))

    with pytest.raises(ConversionError) as err:
        _checked(Reductions(), torch.rand(2, 1, 6, 6))
    msg = str(err.value)
    assert msg.startswith("3 operation(s) of Reductions cannot be converted"), msg
    for marker in ("LINE-ALL", "LINE-DIM0", "LINE-NEG"):
        assert marker in msg
    assert "reduces the batch dimension 0" in msg
