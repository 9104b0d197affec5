"""Converted bundled models and 64 real test images, shared by the interop tests."""

from __future__ import annotations

import pytest
import torch

import ann2snn

T = 32


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    from ann2snn.data import load_dataset

    return load_dataset("fashion-mnist", "test", limit=64).tensors[0]


@pytest.fixture(scope="session")
def converted(images):
    """name -> SpikingModel, converted once per session (calibrated on the 64 images)."""
    from ann2snn.models import load_pretrained

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = ann2snn.convert(
                load_pretrained(name), calib_data=[images], sweep_samples=16
            )
        return cache[name]

    return get


@pytest.fixture(scope="session")
def exported(converted, tmp_path_factory):
    """name -> path of the model's NIR file (written once per session)."""
    from ann2snn.interop import write_nir

    cache = {}

    def get(name: str):
        if name not in cache:
            path = tmp_path_factory.mktemp("nir") / f"{name}.nir"
            write_nir(converted(name), path, timesteps=T)
            cache[name] = path
        return cache[name]

    return get
