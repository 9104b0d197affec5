"""Helpers of the ONNX frontend tests: export with torch, build graphs by hand, compare to
onnxruntime."""

from __future__ import annotations

import inspect
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from ann2snn.frontends.onnx.importer import import_onnx

ort = pytest.importorskip("onnxruntime")

EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _export(model: nn.Module, example: torch.Tensor, path, dynamo: bool, **kwargs) -> None:
    if dynamo and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        pytest.skip("torch.onnx.export(dynamo=True) needs torch >= 2.5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=dynamo, verbose=False, **kwargs)


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
