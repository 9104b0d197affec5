"""MNIST and Fashion-MNIST from standard IDX files, found without being told where.

The datasets are read from the IDX files the original distributions ship
(``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``). :func:`find_data_root` looks in
the usual places (an explicit ``root``, ``$ANN2SNN_DATA``, ``../shared/datasets`` next to
a checkout, Debian's ``dataset-fashion-mnist`` package, torchvision's cache layout) and,
when nothing is found, raises :class:`~ann2snn.errors.DataNotFoundError` listing every
place it looked.

Example:
    >>> from ann2snn.data.datasets import make_loader
    >>> loader = make_loader("fashion-mnist", split="test", limit=512)  # doctest: +SKIP
    >>> images, labels = next(iter(loader))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ann2snn._checks import optional_positive_int, positive_int
from ann2snn.errors import DataNotFoundError

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "dataset_name",
    "find_data_root",
    "load_dataset",
    "make_loader",
    "read_idx",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a folder that holds ``mnist/`` and ``fashion-mnist/``.
ENV_VAR = "ANN2SNN_DATA"

#: Canonical dataset names, in the spelling used for folder names.
DATASETS: Tuple[str, ...] = ("mnist", "fashion-mnist")

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}

# Folder names torchvision uses under its root: <root>/<name>/raw/<idx files>.
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# Debian's dataset packages install the IDX files here (only Fashion-MNIST is packaged).
_SYSTEM_DIRS = {"fashion-mnist": (pathlib.Path("/usr/share/datasets/fashion-mnist"),)}

# Where torchvision's downloader writes when the caller gives no root.
_DOWNLOAD_DIR = pathlib.Path("~/.cache/ann2snn/data")

# A checkout keeps shared datasets beside the repository: <repo>/../shared/datasets.
_REPO_DATASETS = pathlib.Path(__file__).resolve().parents[3] / "shared" / "datasets"

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def dataset_name(name: str) -> Optional[str]:
    """The canonical name (``"mnist"`` / ``"fashion-mnist"``) of a dataset alias, or None."""
    return _ALIASES.get(str(name).strip().lower())


def _canonical_name(name: str) -> str:
    canonical = dataset_name(name)
    if canonical is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(_ALIASES))}")
    return canonical


def _canonical_split(split: str) -> str:
    key = str(split).strip().lower()
    if key == "t10k":
        key = "test"
    if key not in _SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return key


def _file_stems(split: str) -> Tuple[str, str]:
    prefix = _SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(folder: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
    # Both spellings are common: torchvision keeps the unpacked file next to the .gz.
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_files(folder: pathlib.Path, splits: Sequence[str]) -> bool:
    return all(_find_file(folder, stem) is not None for s in splits for stem in _file_stems(s))


def _candidate_dirs(name: str, root: Optional[PathLike]) -> list[pathlib.Path]:
    """Folders that may hold ``name``'s IDX files, in search order."""
    tv = _TORCHVISION_FOLDER[name]
    candidates: list[pathlib.Path] = []
    if root is not None:
        base = pathlib.Path(root).expanduser()
        candidates += [base, base / name, base / tv / "raw"]
    env = os.environ.get(ENV_VAR)
    if env:
        base = pathlib.Path(env).expanduser()
        candidates += [base / name, base / tv / "raw"]
    candidates.append(_REPO_DATASETS / name)
    candidates += list(_SYSTEM_DIRS.get(name, ()))
    cache = _DOWNLOAD_DIR.expanduser()
    candidates += [cache / name, cache / tv / "raw"]
    unique: list[pathlib.Path] = []
    for folder in candidates:
        if folder not in unique:
            unique.append(folder)
    return unique


def _try_download(name: str, target: pathlib.Path) -> Optional[str]:
    """Run torchvision's downloader into ``target``; returns why it failed, or None."""
    try:
        import torchvision.datasets as tvd

        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        created = [p for p in (target, target / _TORCHVISION_FOLDER[name]) if not p.exists()]
        try:
            cls(str(target), train=True, download=True)
            cls(str(target), train=False, download=True)
        finally:
            # Do not leave empty folders behind when the download failed.
            raw = target / _TORCHVISION_FOLDER[name] / "raw"
            for folder in (raw, *reversed(created)):
                try:
                    folder.rmdir()  # only succeeds when empty
                except OSError:
                    pass
    except Exception as exc:  # any failure (no network, bad mirror) means "not downloaded"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
    return None


def find_data_root(
    name: str,
    root: Optional[PathLike] = None,
    *,
    split: Optional[str] = None,
    download: bool = True,
) -> pathlib.Path:
    """Find the folder holding a dataset's IDX files.

    Search order (the first folder holding the needed files wins):

    1. ``root`` itself, ``root/<name>``, ``root/<MNIST|FashionMNIST>/raw``;
    2. ``$ANN2SNN_DATA/<name>`` and ``$ANN2SNN_DATA/<MNIST|FashionMNIST>/raw``;
    3. ``<repo>/../shared/datasets/<name>`` next to a source checkout;
    4. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``);
    5. ``~/.cache/ann2snn/data/<name>`` and torchvision's layout below it.

    If none holds the files and ``download`` is true, torchvision's downloader is tried
    into ``root`` (or ``~/.cache/ann2snn/data``).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (also ``"fashion_mnist"``, ``"fmnist"``).
        root: A dataset folder, or a folder holding ``mnist/`` and ``fashion-mnist/``.
        split: ``"train"`` or ``"test"`` to require only that split's files; by
            default both splits must be present.
        download: Whether to try torchvision's downloader when nothing is found.

    Returns:
        The folder containing the IDX files (gzip'd or not).

    Raises:
        ValueError: If ``name`` or ``split`` is not recognised.
        DataNotFoundError: If no folder holds the files; the message lists every
            place looked at and how to get the data.
    """
    canonical = _canonical_name(name)
    splits = ("train", "test") if split is None else (_canonical_split(split),)
    looked = _candidate_dirs(canonical, root)
    for folder in looked:
        if _has_files(folder, splits):
            return folder

    download_note = "download not attempted (download=False)"
    if download:
        target = pathlib.Path(root).expanduser() if root is not None else _DOWNLOAD_DIR.expanduser()
        failure = _try_download(canonical, target)
        raw = target / _TORCHVISION_FOLDER[canonical] / "raw"
        if failure is None and _has_files(raw, splits):
            return raw
        download_note = f"torchvision download into {target} failed: {failure or 'no files'}"

    needed = ", ".join(f"{stem}[.gz]" for s in splits for stem in _file_stems(s))
    places = "\n".join(f"  - {folder}" for folder in looked)
    raise DataNotFoundError(
        f"could not find the {canonical} dataset ({needed}).\n"
        f"Looked in:\n{places}\n  ({download_note})\n"
        "To fix it, do one of:\n"
        f"  - set {ENV_VAR} to a folder holding mnist/ and fashion-mnist/ "
        f"(e.g. {ENV_VAR}=../shared/datasets);\n"
        "  - pass root= (the dataset folder itself, or a folder holding mnist/ and "
        "fashion-mnist/);\n"
        "  - on Debian/Ubuntu: apt install dataset-fashion-mnist (Fashion-MNIST only);\n"
        "  - download the four IDX files (train/t10k images and labels, .gz is fine) into "
        f"a folder named {canonical}/ and point {ENV_VAR} or root= at its parent."
    )


def read_idx(path: PathLike) -> torch.Tensor:
    """Read an IDX file (gzip'd or not) into a tensor.

    Args:
        path: The file. Gzip compression is detected from its content, not its name.

    Returns:
        A tensor with the file's shape and dtype (``uint8`` for MNIST images/labels).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid IDX: bad magic number, unknown type code,
            or a payload that is shorter or longer than the header says.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number starts with "
            f"{raw[0]:#04x} {raw[1]:#04x}, expected 0x00 0x00)"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code {type_code:#04x} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dims need {header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX payload {what}: header says shape {list(dims)} of {dtype.name} "
            f"({expected} bytes) but the file holds {actual} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


@functools.lru_cache(maxsize=8)
def _decoded_split(folder: str, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 images [N, 28, 28] and int64 labels [N]; cached per process."""
    image_stem, label_stem = _file_stems(split)
    image_path = _find_file(pathlib.Path(folder), image_stem)
    label_path = _find_file(pathlib.Path(folder), label_stem)
    if image_path is None or label_path is None:
        raise DataNotFoundError(f"{folder} does not hold {image_stem} and {label_stem}")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"{image_path}: expected uint8 images of shape [N, H, W], got "
            f"{images.dtype} {list(images.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path}: expected {images.shape[0]} labels to match {image_path}, got "
            f"shape {list(labels.shape)}"
        )
    images.requires_grad_(False)
    return images, labels.to(torch.int64)


def load_dataset(
    name: str,
    split: str = "test",
    root: Optional[PathLike] = None,
    limit: Optional[int] = None,
    normalize: Optional[Tuple[float, float]] = None,
) -> TensorDataset:
    """Load MNIST or Fashion-MNIST as a ``TensorDataset``.

    Decoded files are cached in-process, so repeated calls are cheap.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (aliases ``"fashion_mnist"``, ``"fmnist"``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: Where to look first; see :func:`find_data_root`.
        limit: Keep only the first ``limit`` examples.
        normalize: Optional ``(mean, std)`` applied after scaling pixels to [0, 1].

    Returns:
        A ``TensorDataset`` of images ``float32 [N, 1, 28, 28]`` (in [0, 1] unless
        normalized) and labels ``int64 [N]``.

    Raises:
        ValueError: On an unknown name/split, a bad ``limit`` or ``normalize``, or
            corrupt files.
        DataNotFoundError: If the files cannot be found (see :func:`find_data_root`).
    """
    canonical_split = _canonical_split(split)
    limit = optional_positive_int("limit", limit)
    folder = find_data_root(name, root, split=canonical_split)
    images_u8, labels = _decoded_split(str(folder.resolve()), canonical_split)
    if limit is not None:
        images_u8, labels = images_u8[:limit], labels[:limit]
    images = images_u8.unsqueeze(1).to(torch.float32).div_(255.0)
    if normalize is not None:
        try:
            mean, std = (float(v) for v in normalize)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"normalize must be (mean, std), got {normalize!r}") from exc
        if not std > 0:
            raise ValueError(f"normalize std must be > 0, got {std}")
        images.sub_(mean).div_(std)
    return TensorDataset(images, labels.clone())


def make_loader(
    name: str,
    split: str = "test",
    batch_size: int = 256,
    root: Optional[PathLike] = None,
    limit: Optional[int] = None,
    shuffle: bool = False,
    normalize: Optional[Tuple[float, float]] = None,
) -> DataLoader:
    """A single-process ``DataLoader`` over :func:`load_dataset`.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` or ``"test"``.
        batch_size: Examples per batch.
        root: Where to look first; see :func:`find_data_root`.
        limit: Keep only the first ``limit`` examples.
        shuffle: Shuffle every epoch (seed it with ``torch.manual_seed``).
        normalize: Optional ``(mean, std)``.

    Returns:
        A ``DataLoader`` yielding ``(images [B, 1, 28, 28] float32, labels [B] int64)``.

    Raises:
        ValueError: On bad arguments or corrupt files.
        DataNotFoundError: If the files cannot be found.
    """
    batch_size = positive_int("batch_size", batch_size)
    dataset = load_dataset(name, split, root=root, limit=limit, normalize=normalize)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0)
