"""Shared setup of the ONNX frontend tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread):
    """Every ONNX test module runs with one torch thread (tests/conftest.py)."""
    yield
