"""DATA arguments: dataset names, IDX folders, image folders, .npz/.pt tensor files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ann2snn.cli.data_sources import DataOptions, open_data, parse_floats
from ann2snn.data.datasets import find_data_root, load_dataset

N = 12


@pytest.fixture(scope="module")
def reference():
    return load_dataset("fashion-mnist", "test", limit=N).tensors


def _all(source):
    xs, ys = zip(*source.loader)
    return torch.cat(xs), torch.cat(ys)


def test_dataset_name_splits_limit_and_normalization(reference) -> None:
    x_ref, y_ref = reference
    src = open_data("fmnist", split="test", options=DataOptions(batch_size=5, limit=N))
    x, y = _all(src)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert src.dataset_name == "fashion-mnist" and src.size == N and src.has_labels
    assert "test split" in src.description
    opts = DataOptions(limit=N, mean=[0.5], std=[0.25])
    x_norm, _ = _all(open_data("fashion-mnist", split="test", options=opts))
    torch.testing.assert_close(x_norm, (x_ref - 0.5) / 0.25)
    train, _ = _all(open_data("fashion-mnist", split="train", options=DataOptions(limit=N)))
    assert not torch.equal(train, x_ref)


def test_dataset_with_folder_and_idx_folder(reference) -> None:
    folder = find_data_root("fashion-mnist", split="test")
    for spec in (f"fashion-mnist:{folder}", str(folder)):
        x, y = _all(open_data(spec, split="test", options=DataOptions(limit=N)))
        assert torch.equal(x, reference[0]) and torch.equal(y, reference[1])


def test_npz_and_pt_files(tmp_path, reference) -> None:
    x_ref, y_ref = reference
    pixels = (x_ref[:, 0] * 255).round().to(torch.uint8)
    np.savez(tmp_path / "nhw.npz", images=pixels.numpy(), labels=y_ref.numpy())
    nhwc = pixels.unsqueeze(-1).numpy()
    np.savez(tmp_path / "nhwc.npz", x=nhwc, y=y_ref.numpy())
    torch.save((x_ref, y_ref), tmp_path / "pair.pt")
    torch.save({"inputs": x_ref}, tmp_path / "unlabelled.pt")
    for name in ("nhw.npz", "nhwc.npz", "pair.pt"):
        src = open_data(str(tmp_path / name), split="test", options=DataOptions(batch_size=5))
        x, y = _all(src)
        assert x.shape == (N, 1, 28, 28)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        assert torch.equal(y, y_ref) and src.has_labels
    src = open_data(str(tmp_path / "unlabelled.pt"), split="train", options=DataOptions(limit=5))
    assert not src.has_labels and src.size == 5
    with pytest.raises(ValueError, match="no labels"):
        open_data(
            str(tmp_path / "unlabelled.pt"), split="test", options=DataOptions(), need_labels=True
        )


def test_image_folder(tmp_path, reference) -> None:
    from PIL import Image

    x_ref, y_ref = reference
    for i, (img, label) in enumerate(zip(x_ref, y_ref)):
        folder = tmp_path / f"class_{int(label)}"
        folder.mkdir(exist_ok=True)
        Image.fromarray((img[0] * 255).round().to(torch.uint8).numpy()).save(folder / f"{i}.png")
    gray = open_data(str(tmp_path), split="train", options=DataOptions(channels=1))
    x, y = _all(gray)
    assert x.shape == (N, 1, 28, 28) and gray.size == N
    # ImageFolder orders by class folder, then file name: compare as sorted sets of images.
    assert sorted(x.flatten(1).sum(1).tolist()) == pytest.approx(
        sorted(x_ref.flatten(1).sum(1).tolist())
    )
    rgb = open_data(
        str(tmp_path),
        split="train",
        options=DataOptions(channels=3, image_size=14, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    )
    x_rgb, _ = _all(rgb)
    assert x_rgb.shape == (N, 3, 14, 14)
    assert x_rgb.min() >= -1.0 and x_rgb.max() <= 1.0


def test_parse_floats() -> None:
    assert parse_floats("0.5", "--mean") == [0.5]
    assert parse_floats("0.485,0.456,0.406", "--mean") == [0.485, 0.456, 0.406]
    assert parse_floats(None, "--mean") is None
    with pytest.raises(ValueError, match="--std"):
        parse_floats("a,b", "--std")


def test_bad_normalization(reference) -> None:
    with pytest.raises(ValueError, match="positive"):
        open_data("mnist", split="test", options=DataOptions(limit=2, std=[0.0]))
    with pytest.raises(ValueError, match="3 values but the data has 1 channels"):
        open_data("mnist", split="test", options=DataOptions(limit=2, mean=[0.1, 0.2, 0.3]))


def test_image_folder_imagenet_style_resize_then_center_crop(tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "cls"
    folder.mkdir()
    # 40 x 20 (W x H): a red left half and a blue right half.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20, 0], pixels[:, 20:, 2] = 255, 255
    Image.fromarray(pixels).save(folder / "wide.png")
    src = open_data(str(tmp_path), split="test", options=DataOptions(resize=10, image_size=8))
    x, _ = _all(src)
    assert x.shape == (1, 3, 8, 8)  # shorter side 20 -> 10 (20 x 10), then the central 8 x 8
    assert float(x[0, 0, :, 0].min()) == 1.0 and float(x[0, 2, :, -1].min()) == 1.0
    with pytest.raises(ValueError, match="larger than --resize"):
        open_data(str(tmp_path), split="test", options=DataOptions(resize=8, image_size=10))
