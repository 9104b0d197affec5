"""The deep reference networks (ResNet-20, 19 IF layers; VGG-16, 15; MobileNetV2, 23;
DenseNet, 27) convert with the defaults and follow their ANN on real Fashion-MNIST test
images.

A fast check of behaviour, not the accuracy table: docs/deep.md has the curves on 2,000
and 1,000 test images beside SpikingJelly (``benchmarks/bench_accuracy.py``)."""

from __future__ import annotations

import pytest
import torch

import ann2snn
from ann2snn.runtime.neuron import IFNeuron
from tests.conftest import loader, pretrained

DEEP = {"fmnist_resnet20": 19, "fmnist_vgg16": 15, "fmnist_mobilenetv2": 23, "fmnist_densenet": 27}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deep_network_converges_to_its_ann(name, fmnist_train, fmnist_test):
    torch.manual_seed(0)
    snn = ann2snn.convert(pretrained(name), calib_data=loader(fmnist_train, 1000))
    neurons = [m for m in snn.graph_module.modules() if isinstance(m, IFNeuron)]
    assert len(neurons) == DEEP[name]
    assert all(m.v_init_channels is not None for m in neurons)  # potential calibration ran
    curve = ann2snn.evaluate(snn, loader(fmnist_test, 500), timesteps=[8, 32])
    acc, ann = curve.accuracy, curve.ann_accuracy
    assert ann >= 90.0, curve.table()
    # Measured on these 500 images (calibration: the first 1,000 training images), at
    # T=8 / 32 (ANN): ResNet-20 90.4 / 94.4 (93.8), VGG-16 85.4 / 93.2 (93.6),
    # MobileNetV2 84.0 / 93.6 (93.8), DenseNet 89.2 / 92.6 (93.2).
    assert acc[8] >= ann - 15.0, curve.table()
    assert acc[32] >= ann - 1.0, curve.table()
