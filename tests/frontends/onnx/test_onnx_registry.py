"""ONNX converter registry: duplicates raise, the supported-op list."""

from __future__ import annotations

import pytest

from ann2snn.frontends.onnx.importer import _REGISTRY, _converter, supported_onnx_ops


def test_duplicate_registration_raises() -> None:
    def conv_a(b, n):
        return None

    def conv_b(b, n):
        return None

    try:
        _converter("FakeOpForTest", opsets=(1, 10))(conv_a)
        _converter("FakeOpForTest", opsets=(11, None))(conv_b)  # disjoint ranges are fine
        with pytest.raises(ValueError, match="already registered"):
            _converter("FakeOpForTest", opsets=(5, 12))(conv_b)
        with pytest.raises(ValueError, match="already registered"):
            _converter("Conv")(conv_a)
    finally:
        _REGISTRY.pop(("", "FakeOpForTest"), None)


def test_supported_ops_list() -> None:
    ops = supported_onnx_ops()
    for op in ("Conv", "Gemm", "MatMul", "Relu", "Clip", "BatchNormalization", "Reshape"):
        assert op in ops
    assert ops["Clip"] == [(1, 10), (11, None)]
