"""torchvision's classifiers: every ReLU-family model converts and converges, every other
one is refused with one error naming all its offending nodes.

Random weights with realistic BatchNorm statistics (see benchmarks/torchvision_table.py,
which also writes the full table of docs/architectures.md); the smallest member of each
family, at a reduced input size.
"""

import re

import pytest
import torch
from torch import nn

from benchmarks.torchvision_table import (
    classification_models,
    convert_random,
    fidelity,
    offending_ops,
    random_images,
    refusal,
    supported,
)

torchvision = pytest.importorskip("torchvision")

#: (model, input side, (T low, T high)): one per family of ReLU-family classifiers.
RELU_FAMILIES = {
    "alexnet": ("alexnet", 64, (64, 256)),
    "densenet": ("densenet121", 32, (64, 256)),
    "googlenet": ("googlenet", 32, (64, 256)),
    "inception": ("inception_v3", 80, (64, 1024)),  # 94 IF layers deep
    "mnasnet": ("mnasnet0_5", 32, (64, 256)),
    "mobilenet_v2": ("mobilenet_v2", 32, (64, 256)),
    "regnet_x": ("regnet_x_400mf", 32, (64, 256)),
    "resnet": ("resnet18", 32, (64, 256)),
    "resnext": ("resnext50_32x4d", 32, (64, 256)),
    "shufflenet_v2": ("shufflenet_v2_x0_5", 32, (64, 256)),
    "squeezenet": ("squeezenet1_1", 32, (64, 256)),
    "vgg": ("vgg11_bn", 32, (64, 256)),
}
RELU_PREFIXES = (
    "alexnet",
    "densenet",
    "googlenet",
    "inception",
    "mnasnet",
    "mobilenet_v2",
    "regnet_x",
    "resnet",
    "resnext",
    "shufflenet",
    "squeezenet",
    "vgg",
    "wide_resnet",
)

#: Refused families: (model, module types every instance of which must be named).
REFUSED = {
    "convnext": ("convnext_tiny", (nn.GELU, nn.LayerNorm)),
    "efficientnet": ("efficientnet_b0", (nn.SiLU, nn.Sigmoid)),
    "efficientnet_v2": ("efficientnet_v2_s", (nn.SiLU, nn.Sigmoid)),
    "maxvit": ("maxvit_t", (nn.GELU, nn.SiLU, nn.Sigmoid)),
    "mobilenet_v3": ("mobilenet_v3_small", (nn.Hardswish, nn.Hardsigmoid)),
    "regnet_y": ("regnet_y_400mf", (nn.Sigmoid,)),
    "swin": ("swin_t", (nn.GELU, nn.LayerNorm)),
    "vit": ("vit_b_32", (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", sorted(RELU_FAMILIES))
def test_relu_family_converts_and_its_output_converges_to_the_ann(family):
    name, size, (t_low, t_high) = RELU_FAMILIES[family]
    snn, ann, size = convert_random(name, size=size)
    x = random_images(2, size, torch.Generator().manual_seed(12345))
    errors, _ = fidelity(snn, ann, x, (t_low, t_high))
    assert errors[t_high] < 0.7 * errors[t_low], errors
    assert snn.neurons()


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_other_families_are_refused_naming_every_offending_node(family):
    name, types = REFUSED[family]
    count, ops, message = refusal(name)
    model = torchvision.models.get_model(name, weights=None)
    expected = [n for n, m in model.named_modules() if type(m) in types]
    assert expected
    for module_name in expected:
        assert f"module '{module_name}'" in message
    listed = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(listed) == count >= len(expected)
    # shape bookkeeping and eval-mode no-ops are not offenders
    for harmless in ("getitem", "_assert", "size", "stochastic_depth", "Dropout", "eq"):
        assert harmless not in ops
    assert sum(ops.values()) == count


def test_error_count_matches_the_nodes_listed():
    count, ops, message = refusal("mobilenet_v3_small")
    assert re.search(rf"\b{count} operation\(s\) of MobileNetV3 cannot be converted", message)
    assert ops["Hardswish"] == 19 and ops["Hardsigmoid"] == 9
    assert offending_ops(message) == ops


@pytest.mark.slow
def test_every_torchvision_classifier_converts_or_is_refused():
    names = classification_models()
    assert len(names) >= 80
    verdict = {name: supported(name) for name in names}
    for name, ok in verdict.items():
        assert ok == name.startswith(RELU_PREFIXES), name


def test_refusal_helper_rejects_a_convertible_model():
    with pytest.raises(AssertionError, match="converted"):
        refusal("squeezenet1_1")
