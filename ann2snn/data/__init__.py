"""Data that flows into conversion and evaluation.

``datasets`` reads MNIST / Fashion-MNIST IDX files; ``imagefolder`` builds ImageFolder
loaders (the one builder the CLI uses too).
"""

from ann2snn.data.datasets import (
    DATASETS,
    ENV_VAR,
    find_data_root,
    load_dataset,
    make_loader,
    read_idx,
)
from ann2snn.data.imagefolder import image_folder_dataset, image_folder_loader

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "find_data_root",
    "image_folder_dataset",
    "image_folder_loader",
    "load_dataset",
    "make_loader",
    "read_idx",
]
