"""ONNX converters, pooling and reductions (hand-built graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("include_pad", [0, 1])
def test_pooling_pads_and_modes(include_pad: int) -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["x"], ["m2"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node(
            "AveragePool",
            ["x"],
            ["a1"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=include_pad,
        ),
        helper.make_node(
            "AveragePool",
            ["x"],
            ["a2"],
            kernel_shape=[2, 2],
            pads=[0, 1, 1, 0],
            count_include_pad=include_pad,
        ),
        helper.make_node(
            "AveragePool",
            ["x"],
            ["a3"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
            count_include_pad=include_pad,
        ),
        helper.make_node(
            "MaxPool", ["x"], ["m3"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
        ),
        helper.make_node("GlobalMaxPool", ["x"], ["g"]),
    ]
    outs = ["m1", "m2", "a1", "a2", "a3", "m3", "g"]
    model = _graph_model(nodes, [_vi("x", ["N", 2, 7, 7])], [_vi(o, []) for o in outs])
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    gm = _check_vs_ort(model, {"x": _rand(2, 2, 7, 7)})
    assert nn.MaxPool2d in _modules(gm) and nn.AvgPool2d in _modules(gm)


def test_pool1d_and_global_avg_pool1d() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2], strides=[2]),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2]),
        helper.make_node("GlobalAveragePool", ["a"], ["y"]),
    ]
    model = _graph_model(nodes, [_vi("x", ["N", 3, 10])], [_vi("y", ["N", 3, 1])])
    gm = _check_vs_ort(model, {"x": _rand(2, 3, 10)})
    assert nn.AdaptiveAvgPool1d in _modules(gm)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_axes_attribute_or_input(opset: int) -> None:
    inits = {}
    if opset >= 18:
        inits = {"axes": np.array([2, -1], np.int64)}
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
        nodes.append(helper.make_node("ReduceMean", ["x"], ["all"], keepdims=1))
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, -1], keepdims=0)]
        nodes.append(helper.make_node("ReduceMean", ["x"], ["all"], keepdims=1))
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 3, 4, 5])],
        [_vi("y", ["N", 3]), _vi("all", [1, 1, 1, 1])],
        inits,
        opset=opset,
    )
    gm = _check_vs_ort(model, {"x": _rand(2, 3, 4, 5)})
    assert torch.mean in _targets(gm)
