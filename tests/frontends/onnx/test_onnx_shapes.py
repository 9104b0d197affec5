"""ONNX converters, constants and shapes: Squeeze/Unsqueeze/Transpose/Flatten, Split, shape
subgraphs with a dynamic batch, Gather/Slice (hand-built graphs)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from tests.frontends.onnx.helpers import (
    _check_vs_ort,
    _graph_model,
    _rand,
    _targets,
    _vi,
)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_transpose_flatten(opset: int) -> None:
    inits: Dict[str, np.ndarray] = {}
    if opset >= 13:
        inits = {"ax0": np.array([1, -1], np.int64), "ax1": np.array([1], np.int64)}
        sq = [
            helper.make_node("Unsqueeze", ["x", "ax0"], ["u"]),
            helper.make_node("Squeeze", ["u", "ax1"], ["s"]),
        ]
    else:
        sq = [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1, -1]),
            helper.make_node("Squeeze", ["u"], ["s"], axes=[1]),
        ]
    nodes = sq + [
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Flatten", ["t"], ["f2"], axis=2),
        helper.make_node("Flatten", ["t"], ["f0"], axis=0),
        helper.make_node("Squeeze", ["one"], ["one_sq"]),
        helper.make_node("Transpose", ["x"], ["rev"]),
    ]
    model = _graph_model(
        nodes,
        [_vi("x", [2, 3, 4]), _vi("one", [2, 1, 3])],
        [_vi("f2", [8, 3]), _vi("f0", [1, 24]), _vi("one_sq", [2, 3]), _vi("rev", [4, 3, 2])],
        inits,
        opset=opset,
    )
    _check_vs_ort(model, {"x": _rand(2, 3, 4), "one": _rand(2, 1, 3)})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split(opset: int) -> None:
    inits: Dict[str, np.ndarray] = {}
    if opset == 11:
        nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, split=[1, 2, 3])]
    elif opset == 13:
        nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=-1)]
        inits["sizes"] = np.array([1, 2, 3], np.int64)
    else:
        nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)]
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 6, 6])],
        [_vi("a", ["N", None, None]), _vi("b", ["N", None, None]), _vi("c", ["N", None, None])],
        inits,
        opset=opset,
    )
    gm = _check_vs_ort(model, {"x": _rand(2, 6, 6)})
    assert torch.split in _targets(gm)


def test_shape_subgraph_keeps_batch_dynamic() -> None:
    """[N, 2, C/2, H*W] computed with Shape/Gather/Div/Mul/Unsqueeze/Concat, then Reshape."""
    c = helper.make_node
    nodes = [
        c("Shape", ["x"], ["s"]),
        c("Gather", ["s", "i0"], ["n"], axis=0),
        c("Gather", ["s", "i1"], ["ch"], axis=0),
        c("Div", ["ch", "two"], ["half"]),
        c("Slice", ["s", "st", "en"], ["hw"]),
        c("ReduceProd", ["hw"], ["area"], keepdims=1),
        c("Unsqueeze", ["n", "zero"], ["n1"]),
        c("Unsqueeze", ["half", "zero"], ["half1"]),
        c("Concat", ["n1", "two1", "half1", "area"], ["target"], axis=0),
        c("Reshape", ["x", "target"], ["r"]),
        c("Reshape", ["r", "keep_batch"], ["y"]),
        c("Cast", ["s"], ["s32"], to=TensorProto.INT64),
        c("Shape", ["x"], ["tail"], start=1),
        c("ConstantOfShape", ["tail"], ["ones"], value=helper.make_tensor("v", 1, [1], [1.0])),
        c("Add", ["y", "bias"], ["y2"]),
        c("Mul", ["ones", "x"], ["xs"]),
    ]
    inits = {
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "two": np.array(2, np.int64),
        "two1": np.array([2], np.int64),
        "zero": np.array([0], np.int64),
        "st": np.array([2], np.int64),
        "en": np.array([2**63 - 1], np.int64),
        "keep_batch": np.array([0, -1], np.int64),
        "bias": _rand(2 * 2 * 9),
    }
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 4, 3, 3])],
        [_vi("r", ["N", 2, 2, 9]), _vi("y2", ["N", 36]), _vi("xs", ["N", 4, 3, 3])],
        inits,
        opset=15,
    )
    # ReduceProd has no converter: it only sees constants here and is folded.
    gm = _check_vs_ort(model, {"x": _rand(3, 4, 3, 3)})
    _check_vs_ort(model, {"x": _rand(1, 4, 3, 3)})
    assert gm.meta["onnx_output_names"] == ["r", "y2", "xs"]


def test_gather_slice_on_runtime_tensors() -> None:
    c = helper.make_node
    nodes = [
        c("Gather", ["x", "i"], ["g0"], axis=1),
        c("Gather", ["x", "idx"], ["g1"], axis=-1),
        c("Slice", ["x", "st", "en", "ax", "step"], ["sl"]),
    ]
    inits = {
        "i": np.array(2, np.int64),
        "idx": np.array([[0, -1], [1, 1]], np.int64),
        "st": np.array([1, 0], np.int64),
        "en": np.array([-1, 100], np.int64),
        "ax": np.array([1, 2], np.int64),
        "step": np.array([1, 2], np.int64),
    }
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 4, 5])],
        [_vi("g0", ["N", 5]), _vi("g1", ["N", 4, 2, 2]), _vi("sl", ["N", 2, 3])],
        inits,
    )
    _check_vs_ort(model, {"x": _rand(2, 4, 5)})
