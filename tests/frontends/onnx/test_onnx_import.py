"""ONNX importer: models exported by torch (both exporters), metadata, and the errors."""

from __future__ import annotations

import copy
import operator

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import fx, nn

from ann2snn.errors import ConversionError
from ann2snn.frontends.onnx.importer import import_onnx
from tests.frontends.onnx.helpers import (
    EXPORTERS,
    TOL,
    _check_exported,
    _export,
    _graph_model,
    _modules,
    _ort,
    _rand,
    _randomize_bn,
    _targets,
    _vi,
)

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
# files and metadata
# --------------------------------------------------------------------------------------------


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
