"""ONNX converters, layers: Clip, Conv, BatchNormalization, Softmax, Pad (hand-built graphs)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0.0, 6.0, nn.ReLU6), (0.0, 3.0, nn.Hardtanh), (0.0, None, nn.ReLU), (-1.0, 2.0, None)],
)
def test_clip_attribute_form_opset6(lo: float, hi: Optional[float], expected) -> None:
    attrs = {"min": lo} if hi is None else {"min": lo, "max": hi}
    node = helper.make_node("Clip", ["x"], ["y"], **attrs)
    model = _graph_model([node], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opset=6)
    gm = _check_vs_ort(model, {"x": 4 * _rand(3, 4)})
    if expected is None:
        assert torch.clamp in _targets(gm)
    else:
        assert expected in _modules(gm)


def test_clip_input_form_min_only() -> None:
    node = helper.make_node("Clip", ["x", "lo", ""], ["y"])
    model = _graph_model(
        [node], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], {"lo": np.array(0.0, np.float32)}
    )
    gm = _check_vs_ort(model, {"x": _rand(3, 4)})
    assert nn.ReLU in _modules(gm)


def test_conv_asymmetric_pads_auto_pad_groups_dilation() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[0, 1, 1, 2], name="asym"),
        helper.make_node(
            "Conv", ["a", "w2"], ["b"], auto_pad="SAME_UPPER", strides=[2, 2], name="same"
        ),
        helper.make_node("Conv", ["b", "w3"], ["c"], group=2, dilations=[2, 2], pads=[2] * 4),
        helper.make_node("Conv", ["c", "w4"], ["y"], auto_pad="VALID", kernel_shape=[1, 1]),
    ]
    inits = {
        "w1": _rand(4, 2, 3, 3),
        "b1": _rand(4),
        "w2": _rand(4, 4, 3, 3),
        "w3": _rand(6, 2, 3, 3),
        "w4": _rand(2, 6, 1, 1),
    }
    model = _graph_model(nodes, [_vi("x", ["N", 2, 9, 9])], [_vi("y", ["N", 2, 4, 5])], inits)
    gm = _check_vs_ort(model, {"x": _rand(2, 2, 9, 9)})
    assert _modules(gm).count(nn.Conv2d) == 4
    assert _targets(gm).count(F.pad) == 2  # asymmetric explicit pads and SAME_UPPER on 9x9/2
    with torch.no_grad():  # any batch size
        assert gm(torch.randn(5, 2, 9, 9)).shape == (5, 2, 4, 5)


def test_conv1d_and_conv3d() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1], strides=[2]),
        helper.make_node("Conv", ["v", "w3", "b3"], ["z"], pads=[1, 0, 1, 1, 0, 1]),
    ]
    inits = {"w": _rand(3, 2, 3), "w3": _rand(2, 1, 3, 3, 3), "b3": _rand(2)}
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 2, 8]), _vi("v", ["N", 1, 4, 4, 4])],
        [_vi("y", ["N", 3, 4]), _vi("z", ["N", 2, 4, 2, 4])],
        inits,
    )
    gm = _check_vs_ort(model, {"x": _rand(2, 2, 8), "v": _rand(2, 1, 4, 4, 4)})
    assert nn.Conv1d in _modules(gm) and nn.Conv3d in _modules(gm)


@pytest.mark.parametrize("rank", [3, 5])
def test_batchnorm_1d_3d(rank: int) -> None:
    shape = ["N", 3] + [4] * (rank - 2)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    inits = {"s": _rand(3), "b": _rand(3), "m": _rand(3), "v": np.abs(_rand(3)) + 0.5}
    model = _graph_model([node], [_vi("x", shape)], [_vi("y", shape)], inits)
    gm = _check_vs_ort(model, {"x": _rand(2, *shape[1:])})
    assert (nn.BatchNorm1d if rank == 3 else nn.BatchNorm3d) in _modules(gm)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_and_log_softmax(opset: int) -> None:
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=1),
        helper.make_node("LogSoftmax", ["x"], ["l"], axis=-1),
    ]
    model = _graph_model(
        nodes, [_vi("x", ["N", 3, 4])], [_vi("s", ["N", 3, 4]), _vi("l", ["N", 3, 4])], opset=opset
    )
    gm = _check_vs_ort(model, {"x": _rand(2, 3, 4)})
    assert torch.softmax in _targets(gm) and torch.log_softmax in _targets(gm)


@pytest.mark.parametrize("opset", [2, 11, 18])
def test_pad_op_versions_and_modes(opset: int) -> None:
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset == 2:
        nodes = [
            helper.make_node("Pad", ["x"], ["c"], pads=pads, value=1.5),
            helper.make_node("Pad", ["x"], ["r"], pads=pads, mode="reflect"),
        ]
        inits: Dict[str, np.ndarray] = {}
    else:
        nodes = [
            helper.make_node("Pad", ["x", "pads", "v"], ["c"]),
            helper.make_node("Pad", ["x", "pads"], ["r"], mode="edge"),
        ]
        inits = {"pads": np.array(pads, np.int64), "v": np.array(1.5, np.float32)}
        if opset >= 18:
            nodes[1] = helper.make_node("Pad", ["x", "hw_pads", "", "axes"], ["r"], mode="reflect")
            inits["hw_pads"] = np.array([1, 2, 2, 1], np.int64)
            inits["axes"] = np.array([-2, -1], np.int64)
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 2, 4, 4])],
        [_vi("c", ["N", 2, 7, 7]), _vi("r", ["N", 2, 7, 7])],
        inits,
        opset=opset,
    )
    gm = _check_vs_ort(model, {"x": _rand(2, 2, 4, 4)})
    assert _targets(gm).count(F.pad) == 2
