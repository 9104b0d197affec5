import pytest
import torch
from torch import nn

from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.fold_batchnorm import fold_batchnorm, folded_conv_weights
from ann2snn.tracing import trace
from tests.conftest import pretrained


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


def _count_bn(gm):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())


def _shape_propagated(model, x):
    from torch.fx.passes.shape_prop import ShapeProp

    gm = canonicalize_activations(trace(model))
    ShapeProp(gm).propagate(x)
    return gm


@pytest.mark.parametrize(
    "layers, x",
    [
        ((nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5)), torch.randn(4, 3, 10)),
        ((nn.Conv2d(3, 5, 3, groups=1), nn.BatchNorm2d(5)), torch.randn(4, 3, 9, 9)),
        ((nn.Conv2d(4, 8, 3, groups=4, bias=False), nn.BatchNorm2d(8)), torch.randn(4, 4, 9, 9)),
        ((nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3)), torch.randn(2, 2, 5, 5, 5)),
        ((nn.Linear(6, 7), nn.BatchNorm1d(7)), torch.randn(5, 6)),
    ],
)
def test_conv_and_linear_with_batchnorm_fold_exactly(layers, x):
    model = _randomize_bn(nn.Sequential(*layers, nn.ReLU()))
    expected = model(x)
    gm = fold_batchnorm(_shape_propagated(model, x))
    assert _count_bn(gm) == 0
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_is_kept_where_it_must_not_fold():
    class NoFold(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.bn_after_relu = nn.BatchNorm2d(3)
            self.conv2 = nn.Conv2d(3, 3, 1)
            self.bn_shared_input = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.bn_after_relu(torch.relu(self.conv(x)))
            z = self.conv2(y)  # conv2's output has two users: BN and the add
            return self.bn_shared_input(z) + z

    model = _randomize_bn(NoFold())
    x = torch.randn(2, 2, 8, 8)
    gm = fold_batchnorm(_shape_propagated(model, x))
    assert _count_bn(gm) == 2
    torch.testing.assert_close(gm(x), model(x))


def test_linear_batchnorm_on_3d_input_is_not_folded():
    # BatchNorm1d on [N, C, L] normalizes dim 1, not the Linear's feature dim.
    model = _randomize_bn(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(5)))
    x = torch.randn(3, 5, 6)
    gm = fold_batchnorm(_shape_propagated(model, x))
    assert _count_bn(gm) == 1
    torch.testing.assert_close(gm(x), model(x))


def test_folded_weights_math():
    conv, bn = nn.Conv2d(2, 3, 1), _randomize_bn(nn.BatchNorm2d(3), seed=5)
    w, b = folded_conv_weights(conv, bn)
    x = torch.randn(1, 2, 1, 1)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x, w, b), bn(conv(x)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "name", ["mnist_cnn", "fmnist_maxpool_cnn", "fmnist_avgpool_cnn", "fmnist_resnet"]
)
def test_folding_real_checkpoints_matches_eager_to_1e5(name, fmnist_test):
    model = pretrained(name)
    x = fmnist_test.tensors[0][:200]
    expected = model(x)
    gm = fold_batchnorm(_shape_propagated(model, x[:2]))
    assert _count_bn(gm) == 0
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
