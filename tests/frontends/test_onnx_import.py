"""ONNX importer: one equivalence test per op family, for both torch exporters and by hand."""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from ann2snn.errors import ConversionError
from ann2snn.frontends.onnx.importer import _REGISTRY, _converter, import_onnx, supported_onnx_ops

ort = pytest.importorskip("onnxruntime")

EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]
TOL = {"atol": 1e-5, "rtol": 1e-5}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _export(model: nn.Module, example: torch.Tensor, path, dynamo: bool, **kwargs) -> None:
    if dynamo and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        pytest.skip("torch.onnx.export(dynamo=True) needs torch >= 2.5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=dynamo, verbose=False, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Small models: one thread is faster than two on a shared 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _ort(path_or_model, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # quiet about the symbolic dims of hand-built graphs
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _modules(gm: fx.GraphModule) -> List[type]:
    return [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


def _targets(gm: fx.GraphModule) -> List[object]:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def _check_exported(
    model: nn.Module,
    example: torch.Tensor,
    tmp_path,
    dynamo: bool,
    other_batch: int = 5,
    **export_kwargs,
) -> fx.GraphModule:
    """Export, import, compare to onnxruntime (export batch) and torch (also another batch)."""
    model.eval()
    path = str(tmp_path / "model.onnx")
    _export(model, example, path, dynamo, **export_kwargs)
    gm = import_onnx(path)
    assert isinstance(gm, fx.GraphModule)
    x = torch.randn_like(example)
    (ref,) = _ort(path, {gm.meta["onnx_input_names"][0]: x.numpy()})
    with torch.no_grad():
        out = gm(x)
        torch.testing.assert_close(out, torch.from_numpy(ref), **TOL)
        torch.testing.assert_close(out, model(x), **TOL)
        x2 = torch.randn(other_batch, *example.shape[1:])
        torch.testing.assert_close(gm(x2), model(x2), **TOL)
    return gm


def _vi(name: str, shape: Sequence, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _graph_model(
    nodes: List[onnx.NodeProto],
    inputs: List[onnx.ValueInfoProto],
    outputs: List[onnx.ValueInfoProto],
    inits: Optional[Dict[str, np.ndarray]] = None,
    opset: int = 17,
) -> onnx.ModelProto:
    inits = inits or {}
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _check_vs_ort(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> fx.GraphModule:
    gm = import_onnx(model)
    refs = _ort(model, feeds)
    with torch.no_grad():
        outs = gm(*[torch.from_numpy(feeds[n]) for n in gm.meta["onnx_input_names"]])
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, torch.from_numpy(ref), **TOL)
    return gm


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape).astype(np.float32)


def _randomize_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


# --------------------------------------------------------------------------------------------
# models exported by torch
# --------------------------------------------------------------------------------------------


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(16)  # after pooling: no exporter folds it into the conv
        self.drop = nn.Dropout(0.3)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.bn2(self.pool2(F.relu(self.conv2(x))))
        x = self.flatten(self.drop(x))
        return self.fc2(self.drop(F.relu(self.fc1(x))))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_cnn_conv_bn_relu_pool_dropout_flatten(tmp_path, dynamo: bool) -> None:
    model = _randomize_bn(MnistCNN())
    gm = _check_exported(model, torch.randn(1, 1, 28, 28), tmp_path, dynamo)
    mods = _modules(gm)
    for t in (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.BatchNorm2d, nn.Linear, nn.ReLU):
        assert t in mods, t
    assert not any(isinstance(m, nn.Dropout) for m in gm.modules())
    bn = next(m for m in gm.modules() if isinstance(m, nn.BatchNorm2d))
    assert not bn.training and bn.running_var.min() > 0.4


class FlattenByView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_view_batch_dim_static_export(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(FlattenByView(), torch.randn(1, 3, 8, 8), tmp_path, dynamo, 7)
    assert "reshape" in _targets(gm) or torch.flatten in _targets(gm)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_view_batch_dim_dynamic_export(tmp_path, dynamo: bool) -> None:
    """Dynamic batch: the TorchScript exporter writes Shape->Gather->Unsqueeze->Concat."""
    model = FlattenByView().eval()
    path = str(tmp_path / "dyn.onnx")
    if dynamo:
        dims = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
        _export(model, torch.randn(2, 3, 8, 8), path, True, dynamic_shapes=dims)
    else:
        axes = {"x": {0: "batch"}}
        _export(model, torch.randn(2, 3, 8, 8), path, False, input_names=["x"], dynamic_axes=axes)
    gm = import_onnx(path)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        (ref,) = _ort(path, {"x": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(gm(x), torch.from_numpy(ref), **TOL)
            torch.testing.assert_close(gm(x), model(x), **TOL)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_residual_add(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(_randomize_bn(Residual()), torch.randn(1, 4, 6, 6), tmp_path, dynamo)
    assert operator.add in _targets(gm)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.a(x)), F.relu(self.b(x)), x], dim=1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_concat(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(Concat(), torch.randn(1, 3, 5, 5), tmp_path, dynamo)
    assert torch.cat in _targets(gm)


class Clips(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu6 = nn.ReLU6()
        self.hardtanh = nn.Hardtanh(0.0, 2.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu6(3 * x) + self.hardtanh(x) + torch.clamp(x, -1.0, 1.0)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_clip_relu6_hardtanh(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(Clips(), torch.randn(1, 3, 5, 5), tmp_path, dynamo)
    mods = _modules(gm)
    assert nn.ReLU6 in mods and nn.Hardtanh in mods
    ht = next(m for m in gm.modules() if isinstance(m, nn.Hardtanh) and m.max_val == 2.5)
    assert ht.min_val == 0.0
    assert torch.clamp in _targets(gm)  # (-1, 1) is not a ReLU-family clip


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 5, bias=False)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc2(F.relu(self.fc1(x))))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_linear_with_and_without_bias(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(_randomize_bn(MLP()), torch.randn(2, 8), tmp_path, dynamo)
    linears = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2


class MatMulAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.w + self.b)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_matmul_add_becomes_linear(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(MatMulAdd(), torch.randn(2, 3, 8), tmp_path, dynamo)
    (linear,) = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    assert linear.bias is not None  # the Add of the constant vector was merged
    assert operator.add not in _targets(gm)


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 2, 0, 1)))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_pad(tmp_path, dynamo: bool) -> None:
    # TorchScript writes Pad (+ a constant subgraph for the pads); the dynamo exporter folds
    # the pad into asymmetric Conv pads. Both must come back as F.pad + Conv2d.
    gm = _check_exported(Padded(), torch.randn(1, 2, 6, 6), tmp_path, dynamo)
    assert F.pad in _targets(gm)


class ShuffleUnit(nn.Module):
    """ShuffleNet-v2 unit: chunk (a Slice whose bounds shape inference cannot fold, or a
    Split), concat, then channel shuffle by view/transpose/view."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        x = torch.cat((left, F.relu(self.branch(right))), dim=1)
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous()
        return x.view(b, -1, h, w)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_channel_shuffle_view_transpose(tmp_path, dynamo: bool) -> None:
    gm = _check_exported(ShuffleUnit(), torch.randn(2, 8, 4, 4), tmp_path, dynamo, 3)
    assert "permute" in _targets(gm)


class SpatialMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        pooled = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return y.mean(dim=(2, 3)) + pooled + y.mean(dim=(-1, -2), keepdim=True)[:, :, 0, 0]


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_mean_over_spatial_dims(tmp_path, dynamo: bool) -> None:
    _check_exported(SpatialMean(), torch.randn(1, 3, 6, 6), tmp_path, dynamo)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_resnet18(tmp_path, dynamo: bool) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(weights=None))
    gm = _check_exported(model, torch.randn(1, 3, 64, 64), tmp_path, dynamo, other_batch=2)
    names = dict(gm.named_modules())
    assert "layer1_0_conv1" in names and "fc" in names
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == 20


# --------------------------------------------------------------------------------------------
# hand-built graphs: ops and attributes the torch exporters do not write
# --------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("rank", [3, 5])
def test_batchnorm_1d_3d(rank: int) -> None:
    shape = ["N", 3] + [4] * (rank - 2)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    inits = {"s": _rand(3), "b": _rand(3), "m": _rand(3), "v": np.abs(_rand(3)) + 0.5}
    model = _graph_model([node], [_vi("x", shape)], [_vi("y", shape)], inits)
    gm = _check_vs_ort(model, {"x": _rand(2, *shape[1:])})
    assert (nn.BatchNorm1d if rank == 3 else nn.BatchNorm3d) in _modules(gm)


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


def test_external_data_file(tmp_path) -> None:
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    model = _graph_model(
        [node], [_vi("x", ["N", 16])], [_vi("y", ["N", 8])], {"w": _rand(8, 16), "b": _rand(8)}
    )
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    assert (tmp_path / "ext.bin").exists()
    gm = import_onnx(path)
    x = _rand(2, 16)
    (ref,) = _ort(str(path), {"x": x})
    torch.testing.assert_close(gm(torch.from_numpy(x)), torch.from_numpy(ref), **TOL)
    not_loaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ConversionError, match="external"):
        import_onnx(not_loaded)


def test_names_and_metadata(tmp_path) -> None:
    gm = _check_exported(MnistCNN(), torch.randn(1, 1, 28, 28), tmp_path, False)
    names = dict(gm.named_modules())
    assert {"conv1", "conv2", "fc1", "fc2", "pool1", "pool2"} <= set(names)
    assert gm.meta["onnx_input_names"] == ["input.1"] or len(gm.meta["onnx_input_names"]) == 1
    assert len(gm.meta["onnx_output_names"]) == 1 and gm.meta["onnx_opset"] >= 7
    conv = next(n for n in gm.graph.nodes if n.target == "conv1")
    assert conv.meta["onnx_op_type"] == "Conv" and conv.stack_trace
    x = torch.randn(3, 1, 28, 28)
    copied, retraced = copy.deepcopy(gm), fx.symbolic_trace(gm)
    assert copied.meta == gm.meta
    torch.testing.assert_close(retraced(x), gm(x))


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unsupported_ops_are_listed_in_one_error() -> None:
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="gate"),
        helper.make_node("Relu", ["a"], ["b"], name="fine"),
        helper.make_node("LeakyRelu", ["b"], ["c"], name="leaky", alpha=0.1),
        helper.make_node("MyOp", ["c"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", ["N", 4])], [_vi("y", ["N", 4])])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    with pytest.raises(ConversionError) as info:
        import_onnx(model)
    msg = str(info.value)
    for text in ("'gate'", "Sigmoid", "'leaky'", "LeakyRelu", "'custom'", "com.example"):
        assert text in msg
    assert "'fine'" not in msg and "ai.onnx" in msg and "Supported ops" in msg
    assert "re-export" in msg


class WithSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x)) * F.leaky_relu(x)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_unsupported_ops_from_exporters(tmp_path, dynamo: bool) -> None:
    path = tmp_path / "sig.onnx"
    _export(WithSigmoid().eval(), torch.randn(1, 4), path, dynamo)
    with pytest.raises(ConversionError) as info:
        import_onnx(path)
    msg = str(info.value)
    assert "Sigmoid" in msg and "LeakyRelu" in msg and "2 node(s)" in msg
    if dynamo:  # the exporter records the user's source line
        assert "test_onnx_import.py" in msg


def test_non_constant_weight_and_unresolvable_shape_are_reported() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="dyn_conv"),
        helper.make_node("Cast", ["sh"], ["sh64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "sh64"], ["r"], name="dyn_reshape"),
    ]
    model = _graph_model(
        nodes,
        [_vi("x", ["N", 2, 4, 4]), _vi("w", [3, 2, 3, 3]), _vi("sh", [2])],
        [_vi("c", ["N", 3, 2, 2]), _vi("r", ["N", 32])],
    )
    with pytest.raises(ConversionError) as info:
        import_onnx(model)
    msg = str(info.value)
    assert "'dyn_conv'" in msg and "constant" in msg
    assert "'dyn_reshape'" in msg and "cannot be resolved" in msg


def test_missing_file_raises_file_not_found(tmp_path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        import_onnx(missing)


@pytest.mark.parametrize("content", [b"\xff\xfe not a protobuf \x00\x01", b"hello world\n"])
def test_non_onnx_file_raises_conversion_error(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match="bad.onnx"):
        import_onnx(path)


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        import_onnx(42)  # type: ignore[arg-type]


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
