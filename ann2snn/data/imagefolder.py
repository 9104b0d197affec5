"""Folders of images in torchvision's ``ImageFolder`` layout, with ImageNet preprocessing.

The layout is one sub-folder per class, images inside (any format Pillow reads)::

    root/
      n01440764/  img_0001.JPEG  img_0002.JPEG ...
      n01443537/  ...

Classes are numbered in sorted folder-name order, as in torchvision, so the folders of an
ImageNet validation set give the labels ImageNet-trained models expect. Preprocessing is
the usual evaluation recipe: resize the shorter side to ``resize``, center-crop to
``image_size``, scale to [0, 1] and normalize per channel.

Example:
    >>> from ann2snn.data.imagefolder import image_folder_loader
    >>> loader = image_folder_loader("/data/imagenet/val", batch_size=64)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from torch.utils.data import DataLoader, Dataset, Subset

from ann2snn._checks import optional_positive_int, positive_int
from ann2snn.errors import DataNotFoundError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "image_folder_dataset",
    "image_folder_loader",
]

#: Per-channel mean and standard deviation of ImageNet (RGB, pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = Union[str, "os.PathLike[str]"]


def _check_size(name: str, value: Optional[int]) -> None:
    optional_positive_int(name, value)


def image_folder_dataset(
    root: PathLike,
    image_size: Optional[int] = 224,
    resize: Optional[int] = 256,
    mean: Optional[Sequence[float]] = IMAGENET_MEAN,
    std: Optional[Sequence[float]] = IMAGENET_STD,
    *,
    grayscale: bool = False,
    limit: Optional[int] = None,
    square_resize: bool = False,
) -> Dataset:
    """A dataset of ``(image [C, H, W] float32, class index)`` from an image folder.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: side of the square center crop (None: no crop).
        resize: resize the shorter side to this many pixels first (None: no resize).
        mean: per-channel mean subtracted after scaling to [0, 1] (None: no normalization).
        std: per-channel standard deviation divided by (with ``mean``).
        grayscale: convert images to one channel (then give one-element mean/std).
        limit: keep only the first ``limit`` images (in class, then file-name order).
        square_resize: with ``resize=None``, resize every image to ``image_size`` x
            ``image_size`` (changing its aspect ratio) instead of center-cropping it.

    Returns:
        A map-style dataset; ``dataset.classes`` (the folder names) is kept where present.

    Raises:
        DataNotFoundError: when ``root`` is not a folder or holds no class folder with images.
        ValueError: on bad sizes, a crop larger than the resize, or mean/std that do not
            match the number of channels.
    """
    from torchvision import datasets, transforms

    _check_size("image_size", image_size)
    _check_size("resize", resize)
    _check_size("limit", limit)
    if image_size is not None and resize is not None and image_size > resize:
        raise ValueError(
            f"image_size={image_size} is larger than resize={resize}: the center crop must fit "
            "in the resized image (ImageNet evaluation uses resize=256, image_size=224)"
        )
    channels = 1 if grayscale else 3
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is not None and std is not None:
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need {channels} values for {'grayscale' if grayscale else 'RGB'} "
                f"images, got mean={mean}, std={std}"
            )
        if any(not s > 0 for s in std):
            raise ValueError(f"std values must be positive, got {std}")
    if not os.path.isdir(root):
        raise DataNotFoundError(
            f"image folder {os.fspath(root)!r} does not exist or is not a folder; expected one "
            "sub-folder per class with the images inside (torchvision ImageFolder layout)"
        )
    steps = []
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=1))
    if resize is not None:
        steps.append(transforms.Resize(resize, antialias=True))
    if image_size is not None and resize is None and square_resize:
        steps.append(transforms.Resize((image_size, image_size)))
    elif image_size is not None:
        steps.append(transforms.CenterCrop(image_size))
    steps.append(transforms.ToTensor())
    if mean is not None:
        steps.append(transforms.Normalize(mean, std))
    try:
        dataset = datasets.ImageFolder(os.fspath(root), transform=transforms.Compose(steps))
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"image folder {os.fspath(root)!r}: {exc}. Expected one sub-folder per class with "
            "image files inside (torchvision ImageFolder layout)"
        ) from exc
    if limit is not None and limit < len(dataset):
        subset = Subset(dataset, range(limit))
        subset.classes = dataset.classes  # type: ignore[attr-defined]
        return subset
    return dataset


def image_folder_loader(
    root: PathLike,
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    **dataset_kwargs,
) -> DataLoader:
    """A ``DataLoader`` over :func:`image_folder_dataset`, in file order (no shuffling).

    Under ``torch.distributed``, :func:`ann2snn.convert` and :func:`ann2snn.evaluate`
    give each rank its own batches of this loader, so only they are decoded there.

    Args:
        root: the folder holding one sub-folder per class.
        batch_size: images per batch.
        num_workers: decoding worker processes (JPEG decoding is the bottleneck on
            ImageNet-sized images; use several).
        **dataset_kwargs: ``image_size``, ``resize``, ``mean``, ``std``, ``grayscale``,
            ``limit`` (see :func:`image_folder_dataset`).

    Returns:
        A DataLoader yielding ``(images [B, C, H, W], labels [B])``.

    Raises:
        ValueError: on a bad ``batch_size`` / ``num_workers`` or dataset option.
        DataNotFoundError: when ``root`` holds no images.
    """
    _check_size("batch_size", batch_size)
    if batch_size is None:
        raise ValueError("batch_size must be a positive int, got None")
    num_workers = positive_int("num_workers", num_workers, minimum=0)
    dataset = image_folder_dataset(root, **dataset_kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
