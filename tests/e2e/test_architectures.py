"""Real architectures: every supported construct in one model, clipped activations that
saturate, and the bundled residual and max-pooling networks on real data."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.config import ConversionConfig
from ann2snn.converter_passes.pipeline import PIPELINE, ConversionContext, run_pipeline
from ann2snn.runtime.neuron import Scale
from ann2snn.tracing import trace
from benchmarks.torchvision_table import (
    build_model,
    fidelity,
    plain_options,
    random_images,
    realistic_batchnorm,
)
from tests.conftest import loader, pretrained

_BEFORE_NEURONS = {"replace_relu_with_if", "convert_maxpool", "hoist_static_prefix"}


def _normalized_ann(model: nn.Module, calib, **options) -> torch.fx.GraphModule:
    """The converted graph just before activations become neurons (still an ANN)."""
    # The defaults these tests were written for: the context's former defaults.
    options = {"mode": "max", "channelwise": False, "potential_calibration": False, **options}
    ctx = ConversionContext(
        config=ConversionConfig(**options), calib_data=calib, example_input=calib[0][:2]
    )
    stages = [s for s in PIPELINE if s.name not in _BEFORE_NEURONS]
    return run_pipeline(trace(copy.deepcopy(model)), ctx, stages)


class Everything(nn.Module):
    """Every construct of the issue in one network, written the ways users write them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.relu6 = nn.ReLU6(inplace=True)
        self.identity = nn.Identity()
        self.bn_after_add = nn.BatchNorm2d(8)  # a BatchNorm not preceded by a conv
        self.hardtanh = nn.Hardtanh(0.0, 3.0)
        self.avgpool = nn.AvgPool2d(2)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.maxpool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16 + 16 + 16 * 2 * 2, 24)
        self.bn1d = nn.BatchNorm1d(24)  # Linear followed by BatchNorm1d
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)), inplace=True)
        y = self.grouped(self.relu6(self.depthwise(x)))
        y += x  # in-place residual addition
        y = torch.add(y, self.identity(x))
        y = self.hardtanh(self.bn_after_add(y))
        n, c, h, w = y.size()  # channel shuffle, ShuffleNet style
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        a = self.avgpool(y)
        b = F.avg_pool2d(F.relu(self.branch(y)), 2)
        z = torch.cat([a, b], dim=1)  # 16 channels
        means = z.mean((2, 3))
        pooled = torch.flatten(self.gap(z), 1) + torch.flatten(F.adaptive_avg_pool2d(z, 1), 1)
        flat = self.maxpool(z).reshape(n, -1)
        h = torch.cat([means, pooled, flat], 1)
        return self.fc2(F.relu(self.bn1d(self.fc1(h))))


def _everything() -> nn.Module:
    torch.manual_seed(0)
    model = Everything()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 + 0.2 * torch.randn(m.bias.shape, generator=gen))
                m.momentum = None
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8, generator=gen))
    return model.eval()


def test_every_construct_converts_exactly_and_the_snn_converges():
    model = _everything()
    calib = [torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))]
    x = calib[0][:8]
    normalized = _normalized_ann(model, calib)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x), model(x), atol=1e-4, rtol=1e-4)
    modules = [type(m) for m in normalized.modules()]
    assert not any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in modules)
    assert nn.Identity not in modules

    snn = ann2snn.convert(model, "max", calib, **plain_options())
    assert len(snn.neurons()) == 5  # relu, relu6, hardtanh, relu(branch), relu(fc1)
    errors, agreement = fidelity(snn, model, x, (32, 128, 512))
    assert errors[512] < errors[128] < errors[32]
    assert errors[512] < 0.25 * errors[32] and errors[512] < 0.05, errors
    assert agreement[512] == 100.0


def test_clipped_activations_that_saturate_convert_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU6(),
        nn.Linear(32, 32),
        nn.Hardtanh(0.0, 2.0),
        nn.Linear(32, 4),
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # most ReLU6 units sit at the clip
        model[2].weight.mul_(4.0)
    calib = [torch.randn(256, 16, generator=torch.Generator().manual_seed(1))]
    x = calib[0][:32]
    with torch.no_grad():
        assert float((model[:2](x) == 6.0).float().mean()) > 0.25
        assert float((model[:4](x) == 2.0).float().mean()) > 0.2
    snn = ann2snn.convert(model, "max", calib, **plain_options())
    scales = [float(n.scale.max()) for _, n in snn.neurons()]
    assert scales == [6.0, 2.0]  # the scale is the clip: one spike per step is the clip
    errors, _ = fidelity(snn, model, x, (16, 64, 256))
    assert errors[256] < errors[64] < errors[16] and errors[256] < 0.01, errors


def test_mobilenet_v2_with_saturated_relu6_converges():
    model = realistic_batchnorm(build_model("mobilenet_v2"), 32)
    with torch.no_grad():  # shift the BatchNorms up so that many ReLU6 saturate
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.add_(5.0)
    gen = torch.Generator().manual_seed(1)
    calib = [random_images(8, 32, gen) for _ in range(2)]
    x = calib[0][:2]
    saturated = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: saturated.append(float((o == 6).float().mean())))
        for m in model.modules()
        if isinstance(m, nn.ReLU6)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert max(saturated) > 0.2
    normalized = _normalized_ann(model, calib)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x), model(x), atol=1e-3, rtol=1e-3)
    snn = ann2snn.convert(model, "max", calib, **plain_options())
    assert all(float(n.scale.max()) <= 6.0 for _, n in snn.neurons())
    errors, _ = fidelity(snn, model, x, (64, 256))
    assert errors[256] < 0.7 * errors[64], errors


def test_residual_network_needs_no_scale_nodes_on_foldable_paths():
    model = pretrained("fmnist_resnet")
    calib = [torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))]
    snn = ann2snn.convert(model, "99.9%", calib, **plain_options())
    scales = [m for m in snn.graph_module.modules() if isinstance(m, Scale)]
    # only the stem's output is read by an addition as well as by a convolution
    assert len(scales) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fmnist_resnet", "fmnist_maxpool_cnn"])
def test_bundled_network_keeps_its_accuracy_at_128_steps(name, fmnist_train, fmnist_test):
    snn = ann2snn.convert(pretrained(name), "99.9%", loader(fmnist_train, 2000, batch_size=500))
    curve = ann2snn.evaluate(snn, loader(fmnist_test, 1000, batch_size=500), timesteps=[128])
    assert abs(curve.accuracy[128] - curve.ann_accuracy) <= 1.0, curve.table()
