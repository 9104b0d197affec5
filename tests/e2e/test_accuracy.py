"""End-to-end accuracy of the default conversion on real test images (issue 4).

``ann2snn.convert(model, '99.9%', calib_data=...)`` with its defaults must be within 1 point
of the ANN at T=32 and 0.3 points at T=128, must not lose accuracy past T=32 (beyond
test-set noise) on every bundled model, and on MNIST must be within 0.1 points at T=50.

Every CI run checks the first 2,000 test images of each set; ``ANN2SNN_FULL_TESTS=1``
checks all 10,000 (the issue's figure; five times the images). The
comparison with SpikingJelly at every T is measured by ``benchmarks/bench_accuracy.py``
(docs/accuracy.md): it needs SpikingJelly and hours of CPU, so it is not a test.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from tests.conftest import pretrained

FASHION = ("fmnist_avgpool_cnn", "fmnist_maxpool_cnn", "fmnist_resnet")
FULL = os.environ.get("ANN2SNN_FULL_TESTS", "") not in ("", "0")
TEST_IMAGES = 10_000 if FULL else 2000
# Borderline images flip either way as T grows (measured: +-3 of 10,000 between T=32, 64
# and 128): 10 images on the full set, 3 on the first 2,000.
NOISE = 0.1 if FULL else 0.15


def _calibration(train, n: int = 2000) -> DataLoader:
    """The benchmark's calibration set: ``n`` training images in a seeded random order."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return DataLoader(Subset(train, perm[:n].tolist()), batch_size=200)


def _curve(name, train, test, timesteps):
    snn = ann2snn.convert(pretrained(name), "99.9%", calib_data=_calibration(train))
    test = Subset(test, range(TEST_IMAGES))
    curve = ann2snn.evaluate(snn, DataLoader(test, batch_size=1000), timesteps=timesteps)
    assert curve.samples == TEST_IMAGES
    return curve


@pytest.fixture(scope="module")
def mnist():
    from ann2snn.data.datasets import load_dataset

    return load_dataset("mnist", "train"), load_dataset("mnist", "test")


@pytest.mark.slow
def test_mnist_within_a_tenth_of_a_point_at_t50(mnist):
    train, test = mnist
    curve = _curve("mnist_cnn", train, test, [50])
    assert curve.accuracy[50] >= curve.ann_accuracy - 0.1, curve.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", FASHION + ("mnist_cnn",))
def test_default_converges_to_the_ann_and_never_falls_past_t32(
    name, fmnist_train, fmnist_test, mnist
):
    train, test = mnist if name == "mnist_cnn" else (fmnist_train, fmnist_test)
    curve = _curve(name, train, test, [32, 64, 128])
    acc, ann = curve.accuracy, curve.ann_accuracy
    assert acc[32] >= ann - 1.0, curve.table()
    assert acc[128] >= ann - 0.3, curve.table()
    # "Does not fall past T=32": no loss beyond test-set noise (NOISE); the rate-coding
    # recipes the issue compares with lose 1-3 points over the same range.
    assert min(acc[64], acc[128]) >= acc[32] - NOISE, curve.table()
