"""Tests for ann2snn.data.datasets: IDX reading, dataset discovery and loading on real files."""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest
import torch

import ann2snn.data.datasets as data
from ann2snn.data.datasets import find_data_root, load_dataset, make_loader, read_idx
from ann2snn.errors import DataNotFoundError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="module", params=["mnist", "fashion-mnist"])
def real_root(request: pytest.FixtureRequest) -> tuple[str, pathlib.Path]:
    try:
        return request.param, find_data_root(request.param, download=False)
    except DataNotFoundError as exc:
        pytest.skip(f"real data not available: {exc}")


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """Hide every default location so only what the test sets up can be found."""
    monkeypatch.setattr(data, "_REPO_DATASETS", tmp_path / "repo-shared-datasets")
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "usr-share",)})
    monkeypatch.setattr(data, "_DOWNLOAD_DIR", tmp_path / "cache")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return tmp_path


def _link_dataset(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """Symlink the real IDX files into ``dst`` (never copies data)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        (dst / name).symlink_to(src / name)
    return dst


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# --- real data -------------------------------------------------------------------------


def test_real_splits_shapes_and_ranges(real_root: tuple[str, pathlib.Path]) -> None:
    name, _ = real_root
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_dataset(name, split).tensors
        assert images.shape == (n, 1, 28, 28)
        assert images.dtype == torch.float32
        assert labels.shape == (n,)
        assert labels.dtype == torch.int64
        assert float(images.min()) == 0.0
        assert 0.99 <= float(images.max()) <= 1.0
        assert set(labels.unique().tolist()) == set(range(10))


def test_limit_normalize_and_loader(real_root: tuple[str, pathlib.Path]) -> None:
    name, _ = real_root
    full = load_dataset(name, "test").tensors[0]
    images, labels = load_dataset(name, "test", limit=100).tensors
    assert images.shape == (100, 1, 28, 28) and labels.shape == (100,)
    assert torch.equal(images, full[:100])
    normed = load_dataset(name, "test", limit=100, normalize=(0.5, 0.25)).tensors[0]
    torch.testing.assert_close(normed, (images - 0.5) / 0.25)
    batches = list(make_loader(name, "test", batch_size=32, limit=100))
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    assert torch.equal(batches[0][0], images[:32])


def test_cached_loads_are_independent(real_root: tuple[str, pathlib.Path]) -> None:
    name, _ = real_root
    first = load_dataset(name, "test", limit=10).tensors[0]
    first.fill_(7.0)  # a caller mutating its copy must not corrupt the cache
    again = load_dataset(name, "test", limit=10).tensors[0]
    assert float(again.max()) <= 1.0


def test_aliases_find_the_same_folder() -> None:
    try:
        expected = find_data_root("fashion-mnist", download=False)
    except DataNotFoundError as exc:
        pytest.skip(f"real data not available: {exc}")
    for alias in ("fashion_mnist", "fmnist", "Fashion-MNIST"):
        assert find_data_root(alias, download=False) == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        find_data_root("cifar10")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="limit"):
        load_dataset("mnist", limit=0)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader("mnist", batch_size=0)


# --- discovery -------------------------------------------------------------------------


def test_env_var_is_honoured(
    real_root: tuple[str, pathlib.Path], isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, src = real_root
    env_root = isolated / "env"
    folder = _link_dataset(src, env_root / name)
    monkeypatch.setenv(data.ENV_VAR, str(env_root))
    assert find_data_root(name, download=False) == folder
    assert load_dataset(name, "test", limit=5).tensors[0].shape == (5, 1, 28, 28)


def test_explicit_root_forms(real_root: tuple[str, pathlib.Path], isolated: pathlib.Path) -> None:
    name, src = real_root
    folder = _link_dataset(src, isolated / "parent" / name)
    assert find_data_root(name, root=folder, download=False) == folder
    assert find_data_root(name, root=isolated / "parent", download=False) == folder
    tv_name = "MNIST" if name == "mnist" else "FashionMNIST"
    raw = _link_dataset(src, isolated / "tv" / tv_name / "raw")
    assert find_data_root(name, root=isolated / "tv", download=False) == raw


def test_missing_data_lists_every_place(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    wrong = isolated / "wrong"
    with pytest.raises(DataNotFoundError) as info:
        find_data_root("fashion-mnist", root=wrong, download=False)
    message = str(info.value)
    for place in (
        wrong,
        wrong / "fashion-mnist",
        wrong / "FashionMNIST" / "raw",
        isolated / "env" / "fashion-mnist",
        isolated / "repo-shared-datasets" / "fashion-mnist",
        isolated / "usr-share",
        isolated / "cache" / "fashion-mnist",
    ):
        assert str(place) in message
    assert data.ENV_VAR in message
    assert "root=" in message
    assert "apt install dataset-fashion-mnist" in message


def test_load_dataset_raises_when_nothing_found(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("offline")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)  # keep the test off the network
    with pytest.raises(DataNotFoundError, match="Looked in"):
        load_dataset("mnist", root=isolated / "wrong")
    with pytest.raises(DataNotFoundError):
        make_loader("mnist", root=isolated / "wrong")


def test_failed_download_is_reported(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: offline")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    target = isolated / "dl"
    with pytest.raises(DataNotFoundError, match="download into .*failed.*offline"):
        find_data_root("mnist", root=target)
    assert not target.exists()  # no empty folders left behind


def test_partial_folder_is_skipped_for_missing_split(
    real_root: tuple[str, pathlib.Path], isolated: pathlib.Path
) -> None:
    name, src = real_root
    only_test = isolated / "only-test"
    only_test.mkdir()
    for f in IDX_FILES[2:]:
        (only_test / f).symlink_to(src / f)
    assert find_data_root(name, root=only_test, split="test", download=False) == only_test
    with pytest.raises(DataNotFoundError):
        find_data_root(name, root=only_test, split="train", download=False)


# --- IDX format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path: pathlib.Path, dtype: type, code: int, compress: bool) -> None:
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    raw = _idx_bytes(array, code)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out.numpy(), array)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "type code"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:3], "too short"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: pathlib.Path, mutate, match: str) -> None:
    good = _idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08)
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path: pathlib.Path) -> None:
    packed = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_corrupt_dataset_file_surfaces_as_value_error(
    real_root: tuple[str, pathlib.Path], isolated: pathlib.Path
) -> None:
    name, src = real_root
    folder = isolated / "corrupt" / name
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").symlink_to(src / "t10k-labels-idx1-ubyte.gz")
    packed = (src / "t10k-images-idx3-ubyte.gz").read_bytes()
    raw = gzip.decompress(packed)
    # The header promises 10,000 images; keep 100 of them.
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw[: 16 + 100 * 784])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(name, "test", root=folder)
