"""Image folders (torchvision ImageFolder layout) with ImageNet-style preprocessing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ann2snn.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_folder_dataset,
    image_folder_loader,
)
from ann2snn.errors import DataNotFoundError

COLORS = {"cat": (200, 10, 90), "dog": (30, 160, 250)}


@pytest.fixture
def folder(tmp_path):
    """Two classes of solid-colour images of different, non-square sizes."""
    root = tmp_path / "images"
    for cls, color in COLORS.items():
        (root / cls).mkdir(parents=True)
        for i, size in enumerate([(40, 30), (30, 50), (64, 64)]):
            Image.new("RGB", size, color).save(root / cls / f"{cls}{i}.png")
    return root


def test_imagenet_preprocessing_resizes_crops_and_normalizes(folder):
    ds = image_folder_dataset(folder, image_size=24, resize=32)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        color = torch.tensor(COLORS[ds.classes[y]], dtype=torch.float32) / 255
        expected = (color - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(x, expected.reshape(3, 1, 1).expand_as(x), atol=1e-5, rtol=0)
    assert [ds[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]  # sorted folder names


def test_grayscale_no_normalization_and_limit(folder):
    ds = image_folder_dataset(
        folder, image_size=8, resize=None, mean=None, std=None, grayscale=True, limit=4
    )
    assert len(ds) == 4 and ds.classes == ["cat", "dog"]
    x, _ = ds[0]
    assert x.shape == (1, 8, 8)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_loader_batches_in_file_order(folder):
    loader = image_folder_loader(folder, batch_size=4, image_size=16, resize=16)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_or_empty_folders_say_what_is_expected(tmp_path):
    with pytest.raises(DataNotFoundError, match="one sub-folder per class"):
        image_folder_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="ImageFolder layout"):
        image_folder_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 300, "resize": 256}, "larger than resize"),
        ({"mean": (0.5,), "std": (0.5,)}, "need 3 values"),
        ({"mean": (0.5, 0.5, 0.5), "std": None}, "both mean and std"),
        ({"std": (0.2, 0.0, 0.2)}, "positive"),
        ({"image_size": 0}, "positive int"),
        ({"limit": -1}, "positive int"),
    ],
)
def test_bad_options_are_rejected(folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        image_folder_dataset(folder, **kwargs)


def test_loader_rejects_bad_batch_size(folder):
    with pytest.raises(ValueError, match="batch_size"):
        image_folder_loader(folder, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        image_folder_loader(folder, num_workers=-1)
