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
