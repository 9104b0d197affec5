"""ONNX converters, arithmetic: Gemm, MatMul, Add/Sub/Mul/Div, Sum (hand-built graphs)."""

from __future__ import annotations

import operator

import numpy as np
from onnx import helper
from torch import nn

from tests.frontends.onnx.helpers import (
    _check_vs_ort,
    _graph_model,
    _modules,
    _rand,
    _targets,
    _vi,
)


def test_gemm_attributes() -> None:
    w = _rand(5, 3)  # transB=0: B is [K, N]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Gemm", ["y", "w2", "c2"], ["z"], alpha=1.5, transB=1, name="g2"),
        helper.make_node("Gemm", ["x", "w"], ["nobias"], name="g3"),
    ]
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 5])],
        [_vi("z", ["N", 4]), _vi("nobias", ["N", 3])],
        {"w": w, "c": _rand(3), "w2": _rand(4, 3), "c2": np.array([0.25], np.float32)},
    )
    gm = _check_vs_ort(model, {"x": _rand(6, 5)})
    assert _modules(gm).count(nn.Linear) == 3


def test_gemm_transposed_input_and_runtime_bias() -> None:
    nodes = [helper.make_node("Gemm", ["a", "w", "c"], ["y"], transA=1, beta=0.5)]
    model = _graph_model(
        nodes, [_vi("a", [5, 3]), _vi("c", [3, 4])], [_vi("y", [3, 4])], {"w": _rand(5, 4)}
    )
    _check_vs_ort(model, {"a": _rand(5, 3), "c": _rand(3, 4)})


def test_matmul_runtime_operands() -> None:
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    model = _graph_model(nodes, [_vi("a", [2, 3, 4]), _vi("b", [2, 4, 5])], [_vi("y", [2, 3, 5])])
    _check_vs_ort(model, {"a": _rand(2, 3, 4), "b": _rand(2, 4, 5)})


def test_arithmetic_with_constants_and_sum() -> None:
    c = helper.make_node
    nodes = [
        c("Sub", ["one", "x"], ["a"]),
        c("Div", ["a", "vec"], ["b"]),
        c("Mul", ["b", "x"], ["m"]),
        c("Sum", ["m", "x", "a"], ["s"]),
        c("Relu", ["s"], ["r"]),
        c("Identity", ["r"], ["i"]),
        c("Dropout", ["i"], ["y"]),
    ]
    inits = {"one": np.array(1.0, np.float32), "vec": np.abs(_rand(1, 4)) + 0.5}
    model = _graph_model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], inits)
    gm = _check_vs_ort(model, {"x": _rand(3, 4)})
    assert {operator.sub, operator.truediv, operator.mul, operator.add} <= set(_targets(gm))
    buffers = dict(gm.named_buffers())
    assert list(buffers) == ["vec"]  # the scalar 1.0 is inlined, the vector is a buffer
