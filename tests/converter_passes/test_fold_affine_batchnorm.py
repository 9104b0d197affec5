import pytest
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ann2snn.converter_passes.canonicalize_activations import canonicalize_activations
from ann2snn.converter_passes.fold_affine_batchnorm import (
    affine_into_next_layer,
    fold_affine_batchnorm,
)
from ann2snn.converter_passes.fold_batchnorm import fold_batchnorm
from ann2snn.runtime.affine import ChannelAffine, batchnorm_affine
from ann2snn.tracing import trace


def _random_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen))
        bn.running_var.copy_(0.2 + torch.rand(bn.running_var.shape, generator=gen))
    return bn.eval()


def test_batchnorm_is_an_affine_map_in_eval_mode():
    bn = _random_bn(nn.BatchNorm2d(5))
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(ChannelAffine.from_batchnorm(bn)(x), bn(x))
    with pytest.raises(ValueError, match="running statistics"):
        batchnorm_affine(nn.BatchNorm2d(5, track_running_stats=False))


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(6, 4, 3),
        nn.Conv2d(6, 4, 3, groups=2, bias=False),
        nn.Conv2d(6, 6, 3, groups=6),
        nn.Conv1d(6, 3, 2, stride=2),
        nn.Linear(6, 3),
    ],
)
def test_affine_folds_into_the_next_layer_without_padding(layer):
    torch.manual_seed(0)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    x = torch.randn(2, 6, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(2, 6, 7)
    if isinstance(layer, nn.Linear):
        x = torch.randn(2, 6)
    view = (1, -1) + (1,) * (x.dim() - 2)
    expected = layer(x * scale.reshape(view) + shift.reshape(view))
    weight, bias = affine_into_next_layer(layer, scale, shift)
    layer.weight.data, layer.bias = weight, nn.Parameter(bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


class BatchNormEverywhere(nn.Module):
    """BatchNorms after a concatenation, an addition, the input, and before a Linear."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_cat = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 1)  # no padding: the BatchNorm before it folds in
        self.bn_add = nn.BatchNorm2d(8)
        self.d = nn.Conv2d(8, 8, 3, padding=1)  # zero padding: no folding
        self.fc1 = nn.Linear(8, 6)
        self.bn_fc = nn.BatchNorm1d(6)  # Linear + BatchNorm1d: folds backwards
        self.bn_pre = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        x = self.bn_in(x)
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        y = self.c(self.bn_cat(y))
        z = self.bn_add(y + torch.relu(y))
        z = torch.relu(self.d(z)).mean((2, 3))
        z = torch.relu(self.bn_fc(self.fc1(z)))
        return self.fc2(self.bn_pre(z))


def test_every_batchnorm_folds_or_becomes_affine_and_the_function_is_unchanged():
    model = BatchNormEverywhere()
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _random_bn(m, i)
    model.eval()
    x = torch.randn(4, 3, 6, 6)
    gm = canonicalize_activations(trace(model))
    ShapeProp(gm).propagate(x)
    gm = fold_affine_batchnorm(fold_batchnorm(gm))
    kinds = {
        n.target: type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"
    }
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds.values())
    assert kinds["bn_in"] is ChannelAffine  # feeds two convolutions
    assert kinds["bn_add"] is ChannelAffine  # the next conv pads with zeros
    assert "bn_cat" not in kinds and "bn_pre" not in kinds and "bn_fc" not in kinds
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-4)
    gm.train()  # a converted graph has no batch statistics to switch to
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-4)
