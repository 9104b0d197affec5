"""Reading the data named by ``--calib`` / ``--data``: datasets, image folders, tensor files.

A DATA argument is one of:

* a dataset name, ``mnist`` or ``fashion-mnist`` (also ``fmnist``), optionally with the
  folder holding its IDX files: ``mnist:/data/mnist`` (otherwise the usual places are
  searched, see :func:`ann2snn.data.datasets.find_data_root`); calibration reads the training
  split, evaluation the test split;
* a folder of IDX files (``train-images-idx3-ubyte.gz`` ...);
* an image folder with one sub-folder per class (``torchvision.datasets.ImageFolder``),
  resized with ``--image-size`` and converted to ``--channels`` channels;
* an ``.npz`` file or a ``.pt`` file (read with ``weights_only=True``) holding the inputs
  under ``x`` / ``images`` / ``inputs`` / ``data`` and optionally the labels under ``y`` /
  ``labels`` / ``targets``; a ``.pt`` file may also hold a tensor or an ``(x, y)`` pair.

Pixels are scaled to [0, 1] (uint8 data is divided by 255), then normalized with
``--mean`` / ``--std`` when given.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ann2snn.data.datasets import dataset_name as canonical_dataset

__all__ = ["DataOptions", "DataSource", "open_data", "parse_floats"]

_X_KEYS = ("x", "images", "inputs", "input", "data", "X")
_Y_KEYS = ("y", "labels", "targets", "label", "target", "Y")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class DataOptions:
    """How to read and normalize a DATA argument.

    Attributes:
        batch_size: examples per batch.
        limit: keep only the first ``limit`` examples.
        image_size: resize image-folder images to this square size (with ``resize``: the
            size of the center crop).
        resize: resize the shorter side to this size, then center-crop (ImageNet style).
        channels: 1 (grayscale) or 3 (RGB) for image folders; None: 3.
        mean / std: per-channel (or single) normalization after scaling to [0, 1].
        root: default folder for dataset names.
    """

    batch_size: int = 256
    limit: Optional[int] = None
    image_size: Optional[int] = None
    resize: Optional[int] = None
    channels: Optional[int] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None


@dataclass
class DataSource:
    """An opened DATA argument.

    Attributes:
        loader: batches of ``(inputs, labels)`` (labels are -1 when the data has none).
        description: what was read, for messages and file provenance.
        has_labels: whether real labels are present.
        size: number of examples.
        dataset_name: the canonical dataset name for dataset names, else None.
    """

    loader: DataLoader
    description: str
    has_labels: bool
    size: int
    dataset_name: Optional[str] = None


def parse_floats(text: Optional[str], what: str) -> Optional[List[float]]:
    """Parse ``"0.5"`` or ``"0.485,0.456,0.406"``; None stays None.

    Raises:
        ValueError: not a comma-separated list of numbers.
    """
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{what} must be a number or comma-separated numbers, got {text!r}")
    return values


class _Normalized(Dataset):
    """Scales and normalizes the inputs of another dataset on the fly."""

    def __init__(self, base: Dataset, mean: Optional[torch.Tensor], std: Optional[torch.Tensor]):
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return _normalize(x.unsqueeze(0), self.mean, self.std)[0], y


def _stats(values: Optional[Sequence[float]], what: str) -> Optional[torch.Tensor]:
    if values is None:
        return None
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if what == "--std" and torch.any(t <= 0):
        raise ValueError(f"--std values must be positive, got {list(values)}")
    return t


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    if mean is None and std is None:
        return x
    channels = x.shape[1] if x.dim() > 1 else 1
    shape = (1, -1) + (1,) * max(x.dim() - 2, 0)
    for t, name in ((mean, "--mean"), (std, "--std")):
        if t is not None and t.numel() not in (1, channels):
            raise ValueError(
                f"{name} has {t.numel()} values but the data has {channels} channels; give "
                "one value or one per channel"
            )
    if mean is not None:
        x = x - (mean.reshape(shape) if mean.numel() > 1 else mean)
    if std is not None:
        x = x / (std.reshape(shape) if std.numel() > 1 else std)
    return x


def _as_images(x: torch.Tensor, where: str) -> torch.Tensor:
    """Float images in [0, 1] shaped [N, C, ...] from uint8/float arrays in common layouts."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not torch.is_floating_point(x):
        x = x.float()
    else:
        x = x.float()
    if x.dim() == 3:  # [N, H, W]: one channel
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    if x.dim() < 2:
        raise ValueError(f"{where}: inputs must have a batch dimension, got shape {list(x.shape)}")
    return x


def _pick(container: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if key in container:
            return container[key]
    return None


def _tensor_file(path: pathlib.Path) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path} is not a readable .npz file ({exc})") from exc
        x, y = _pick(arrays, _X_KEYS), _pick(arrays, _Y_KEYS)
        if x is None:
            raise ValueError(
                f"{path} holds arrays {sorted(arrays)}; put the inputs under one of "
                f"{', '.join(_X_KEYS[:4])} (and labels under y or labels)"
            )
        return torch.from_numpy(np.asarray(x)), None if y is None else torch.from_numpy(y)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a tensor file readable with torch.load(weights_only=True) "
            f"({type(exc).__name__}); save a dict {{'x': inputs, 'y': labels}} with torch.save"
        ) from exc
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0], obj[1] if len(obj) > 1 and isinstance(obj[1], torch.Tensor) else None
    if isinstance(obj, dict):
        x, y = _pick(obj, _X_KEYS), _pick(obj, _Y_KEYS)
        if isinstance(x, torch.Tensor):
            return x, y if isinstance(y, torch.Tensor) else None
        raise ValueError(
            f"{path} holds a dict with keys {sorted(map(str, obj))}; put the inputs under one "
            f"of {', '.join(_X_KEYS[:4])} (and labels under y or labels)"
        )
    raise ValueError(f"{path} holds a {type(obj).__name__}; expected a tensor, (x, y) or a dict")


def _has_idx(folder: pathlib.Path) -> bool:
    return any(
        p.name.startswith(("train-images-idx3", "t10k-images-idx3")) for p in folder.iterdir()
    )


def _image_folder(folder: pathlib.Path, options: DataOptions) -> Dataset:
    classes = [p for p in folder.iterdir() if p.is_dir()]
    if not classes:
        raise ValueError(
            f"{folder} is a folder without sub-folders. An image folder needs one sub-folder "
            "per class (cat/001.png, dog/002.png ...); a dataset folder needs MNIST IDX files"
        )
    from ann2snn.data.imagefolder import image_folder_dataset

    channels = options.channels or 3
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels}")
    crop = options.image_size or options.resize
    if options.resize and crop > options.resize:
        raise ValueError(
            f"--image-size {crop} is larger than --resize {options.resize}: the center "
            "crop must fit (ImageNet: --resize 256 --image-size 224)"
        )
    try:
        # ImageNet style with --resize (the shorter side, then a center crop); a plain
        # --image-size resizes to a square. No normalization: the model's own layers do it.
        return image_folder_dataset(
            folder,
            image_size=crop or None,
            resize=options.resize or None,
            mean=None,
            std=None,
            grayscale=channels == 1,
            square_resize=True,
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise ValueError(f"{folder}: {exc}") from exc


def _check_dataset_folder(name: str, root: str, split: str) -> None:
    """An explicit folder must hold the files itself: never fall back to other places."""
    from ann2snn.data.datasets import find_data_root

    folder = pathlib.Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"the {name} folder {root} does not exist")
    try:
        found = find_data_root(name, folder, split=split, download=False)
    except FileNotFoundError:
        found = None
    if found is None or folder.resolve() not in (found.resolve(), *found.resolve().parents):
        stem = "train" if split == "train" else "t10k"
        raise FileNotFoundError(
            f"{root} does not hold the {name} {split} files ({stem}-images-idx3-ubyte[.gz] "
            f"and {stem}-labels-idx1-ubyte[.gz]). Put them there, or give just {name!r} to "
            "search the usual places."
        )


def open_data(
    spec: str,
    *,
    split: str,
    options: DataOptions,
    need_labels: bool = False,
) -> DataSource:
    """Open a DATA argument as a DataLoader of ``(inputs, labels)``.

    Args:
        spec: the DATA argument (see the module docstring).
        split: ``"train"`` or ``"test"``: the split used for dataset names.
        options: batch size, limit, image size, channels, normalization.
        need_labels: raise when the data has no labels (evaluation needs them).

    Returns:
        A :class:`DataSource`.

    Raises:
        FileNotFoundError: the file, folder or dataset does not exist.
        ValueError: unreadable or unsuitable data, or bad options.
    """
    from ann2snn.data.datasets import load_dataset

    mean, std = _stats(options.mean, "--mean"), _stats(options.std, "--std")
    if options.limit is not None and options.limit <= 0:
        raise ValueError(f"--limit must be positive, got {options.limit}")
    path = pathlib.Path(os.path.expanduser(spec))
    name, root, dataset_name = None, None, None
    if not path.exists():
        head, sep, tail = spec.partition(":")
        name = canonical_dataset(head)
        if name is None:
            raise FileNotFoundError(
                f"DATA {spec!r} is neither an existing file or folder nor a dataset name. "
                "Give mnist or fashion-mnist (optionally NAME:FOLDER), an image folder with "
                "one sub-folder per class, or an .npz/.pt file with inputs x and labels y."
            )
        root = tail if sep else None
    elif path.is_dir() and _has_idx(path):
        name, root = "mnist", str(path)
    if name is not None:
        if root is not None:
            _check_dataset_folder(name, root, split)
        ds = load_dataset(name, split=split, root=root, limit=options.limit)
        dataset_name = name
        x, y = ds.tensors
        x = _normalize(x, mean, std)
        dataset: Dataset = TensorDataset(x, y)
        where = f"{name} ({split} split{', ' + root if root else ''})"
        has_labels = True
    elif path.is_dir():
        dataset = _image_folder(path, options)
        if options.limit is not None:
            dataset = Subset(dataset, range(min(options.limit, len(dataset))))
        if mean is not None or std is not None:
            dataset = _Normalized(dataset, mean, std)
        where = f"image folder {path}"
        has_labels = True
    elif path.suffix.lower() in (".npz", ".pt", ".pth"):
        x, y = _tensor_file(path)
        x = _as_images(x, str(path))
        if y is not None:
            y = y.reshape(-1).long()
            if y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{path}: {x.shape[0]} inputs but {y.shape[0]} labels; they must match"
                )
        if options.limit is not None:
            x = x[: options.limit]
            y = None if y is None else y[: options.limit]
        x = _normalize(x, mean, std)
        has_labels = y is not None
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.long)
        dataset = TensorDataset(x, y)
        where = f"{path}"
    else:
        raise ValueError(
            f"DATA {spec!r}: unknown data format {path.suffix or '(no extension)'!r}. Give a "
            "dataset name, an image folder, or an .npz/.pt file with inputs x and labels y."
        )
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError(f"DATA {spec!r} holds no examples")
    if need_labels and not has_labels:
        raise ValueError(
            f"DATA {spec!r} has no labels, but accuracy needs them: store them under y or "
            "labels next to the inputs"
        )
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=0)
    return DataSource(loader, f"{size:,} examples of {where}", has_labels, size, dataset_name)
