"""Import ONNX models as ``torch.fx.GraphModule``\\ s made of ordinary torch modules and functions.

The result looks like a model written in PyTorch and traced with ``torch.fx``: ``Conv`` becomes
``nn.Conv2d``, ``Gemm`` becomes ``nn.Linear``, ``Relu`` becomes ``nn.ReLU``, ``Add`` becomes
``operator.add`` and so on, so the conversion passes treat an imported model like any other.

How it works:

* Every ONNX op is handled by one converter function, registered with :func:`_converter` for
  an op type and an opset range. Registering the same op twice for overlapping opsets raises.
  The registry is in ``registry.py``, the converters in ``converters/`` (one module per op
  family), the values and the per-node view in ``values.py``, the graph builder in
  ``builder.py``; this module loads the model and walks its graph.
* Initializers and ``Constant`` outputs are kept as tensors while importing. A node whose
  inputs are all constant is evaluated right away (constant folding), so the weight-reshaping
  and padding subgraphs that exporters write never reach the fx graph. Constants still needed
  at run time become buffers of the GraphModule (weights become module parameters).
* Shape arithmetic (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``) is folded with the
  static shapes from ONNX shape inference, keeping the batch dimension (dim 0) symbolic as
  ``x.size(0)`` so the imported graph works for any batch size. A constant ``Reshape`` target
  whose first entry equals the batch size of the exported input (``[1, -1]`` from a model
  exported with batch 1) also keeps dim 0 symbolic.
* Ops without a converter are collected; one :class:`~ann2snn.errors.ConversionError` lists
  every one of them (name, op type, domain) at the end.

Example::

    gm = import_onnx("resnet18.onnx")
    logits = gm(torch.randn(8, 3, 224, 224))
    gm.meta["onnx_input_names"], gm.meta["onnx_output_names"]
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
import torch
from onnx import helper
from torch import fx

import ann2snn.frontends.onnx.converters  # noqa: F401  (registers every converter)
from ann2snn.errors import ConversionError
from ann2snn.frontends.onnx.builder import _Builder, _sanitize
from ann2snn.frontends.onnx.registry import (  # noqa: F401  (_REGISTRY, _converter: re-exported)
    _DEFAULT_DOMAINS,
    _REGISTRY,
    _converter,
    _lookup,
    supported_onnx_ops,
)
from ann2snn.frontends.onnx.values import (
    _ONNX_TO_TORCH_DTYPE,
    _attr_value,
    _Node,
    _NodeProblem,
    _StaticShape,
    _SymShape,
    _tensor_from_proto,
    _Unconverted,
    _Value,
)

__all__ = ["import_onnx", "supported_onnx_ops"]

_ISSUES_HINT = (
    "What to do: re-export the model with these ops replaced by supported ones (for example "
    "a ReLU-family activation instead of Sigmoid/LeakyReLU, static input shapes instead of "
    "data-dependent ones), or open an issue for ann2snn with the op names and a small .onnx "
    "file that reproduces it."
)


# --------------------------------------------------------------------------------------------
# Constant folding of ops without a converter (shape/weight subgraphs)
# --------------------------------------------------------------------------------------------


def _fold_with_reference(proto: onnx.NodeProto, inputs: List[_Value], opset: int) -> List[Any]:
    """Evaluate one node whose inputs are all constants with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    feeds = {}
    graph_inputs = []
    for name, value in zip(proto.input, inputs):
        if not name:
            continue
        arr = value.numpy()
        feeds[name] = arr
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
    outputs = [helper.make_empty_tensor_value_info(o) for o in proto.output if o]
    graph = helper.make_graph([proto], "fold", graph_inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = ReferenceEvaluator(model).run(None, feeds)
    return [torch.from_numpy(np.array(r, copy=True)) for r in results]


# --------------------------------------------------------------------------------------------
# Loading and the public entry point
# --------------------------------------------------------------------------------------------


def _load(model: Union[str, os.PathLike, onnx.ModelProto]) -> Tuple[onnx.ModelProto, str, str]:
    """(model, base directory for external data, a description of the source)."""
    if isinstance(model, onnx.ModelProto):
        return model, "", "<onnx.ModelProto>"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"import_onnx expects a path to a .onnx file or an onnx.ModelProto, "
            f"got {type(model).__name__}"
        )
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model file not found: {path!r}")
    try:
        proto = onnx.load(path, load_external_data=True)
    except Exception as exc:  # protobuf DecodeError, OSError for external data, ...
        raise ConversionError(
            f"{path!r} could not be read as an ONNX model ({type(exc).__name__}: {exc}). "
            "Pass a file written by torch.onnx.export / onnx.save (a .onnx protobuf; keep its "
            "external-data files next to it)."
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ConversionError(
            f"{path!r} is not an ONNX model: it parsed as an empty graph (no nodes, no outputs). "
            "Pass a file written by torch.onnx.export / onnx.save."
        )
    return proto, os.path.dirname(os.path.abspath(path)), path


def _static_shape(vi: onnx.ValueInfoProto) -> _StaticShape:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def _value_shapes(model: onnx.ModelProto) -> Dict[str, _StaticShape]:
    """Static shapes of every value ONNX shape inference can resolve (None entries: unknown dims).

    Inference runs on a copy whose large initializers are replaced by typed graph inputs: the
    weights' values are not needed, which keeps it fast and works for models over 2 GB.
    """
    graph = model.graph
    small, typed = [], []
    for init in graph.initializer:
        if math.prod(init.dims) > 64:
            typed.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            small.append(init)
    declared = {vi.name for vi in graph.input}
    light_graph = helper.make_graph(
        list(graph.node),
        graph.name or "graph",
        list(graph.input) + [vi for vi in typed if vi.name not in declared],
        list(graph.output),
        small,
        value_info=list(graph.value_info),
    )
    light = helper.make_model(
        light_graph, opset_imports=list(model.opset_import), functions=list(model.functions)
    )
    light.ir_version = max(model.ir_version, 4)
    try:
        light = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # unknown custom ops, malformed shapes
        warnings.warn(
            f"ONNX shape inference failed ({type(exc).__name__}: {exc}); importing with the "
            "declared shapes only",
            stacklevel=3,
        )
    g = light.graph
    return {vi.name: _static_shape(vi) for vi in [*g.input, *g.value_info, *g.output]}


def _source_line(proto: onnx.NodeProto) -> str:
    """``file:line: code`` of the innermost frame the torch.export-based exporter recorded."""
    meta = {p.key: p.value for p in getattr(proto, "metadata_props", ())}
    lines = [ln.strip() for ln in meta.get("pkg.torch.onnx.stack_trace", "").splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        match = re.match(r'File "(.+)", line (\d+)', lines[i])
        if match:
            code = (
                lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File") else ""
            )
            return f"{match.group(1)}:{match.group(2)}" + (f": {code}" if code else "")
    return ""


def _format_problems(source: str, problems: List[Tuple[onnx.NodeProto, str]]) -> str:
    unsupported = [p for p in problems if p[1].startswith("no converter")]
    lines = [
        f"Cannot import the ONNX model {source} into torch.fx: {len(problems)} node(s) cannot "
        "be converted:"
    ]
    for proto, reason in problems:
        domain = proto.domain or "ai.onnx"
        where = _source_line(proto)
        lines.append(
            f"  - node {proto.name!r} (op {proto.op_type}, domain {domain}): {reason}"
            + (f" [from {where}]" if where else "")
        )
    if unsupported:
        lines.append(f"Supported ops (domain ai.onnx): {', '.join(supported_onnx_ops())}.")
    lines.append(_ISSUES_HINT)
    return "\n".join(lines)


def import_onnx(model: Union[str, os.PathLike, onnx.ModelProto]) -> fx.GraphModule:
    """Import an ONNX model as a ``torch.fx.GraphModule`` of ordinary torch modules/functions.

    Conv/Gemm/MatMul/BatchNormalization/pooling become ``nn`` modules holding the weights,
    Relu/Clip become ``nn.ReLU``/``nn.ReLU6``/``nn.Hardtanh``, arithmetic becomes ``operator``
    calls, and shape subgraphs are folded with the batch dimension kept symbolic, so the
    result runs with any batch size. See :func:`supported_onnx_ops` for the op list.

    Args:
        model: path to a ``.onnx`` file (external weight files next to it are loaded) or an
            ``onnx.ModelProto`` (external data must already be loaded).

    Returns:
        A GraphModule in eval mode. It returns one tensor for a single-output graph and a
        tuple otherwise. ``gm.meta`` holds ``onnx_input_names``, ``onnx_output_names``,
        ``onnx_opset`` and ``onnx_producer``; every fx node's ``meta['onnx_node']`` names the
        ONNX node it came from.

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: ``model`` is neither a path nor an ``onnx.ModelProto``.
        ConversionError: the file is not an ONNX model, or nodes cannot be converted (one
            error listing every such node: unsupported ops, non-constant weights, shapes
            that cannot be resolved).

    Example:
        >>> gm = import_onnx("mnist_cnn.onnx")  # doctest: +SKIP
        >>> gm(torch.randn(16, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([16, 10])
    """
    proto, base_dir, source = _load(model)
    opset = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is None:
        raise ConversionError(f"{source} declares no opset for the default ONNX domain")
    if proto.functions:
        try:
            from onnx import inliner

            proto = inliner.inline_local_functions(proto)
        except (ImportError, AttributeError):  # onnx < 1.16: such nodes are reported below
            pass
    graph = proto.graph
    shapes = _value_shapes(proto)

    b = _Builder(source)
    env: Dict[str, _Value] = {}
    problems: List[Tuple[onnx.NodeProto, str]] = []

    for init in graph.initializer:
        if onnx.external_data_helper.uses_external_data(init) and not base_dir:
            raise ConversionError(
                f"initializer {init.name!r} keeps its data in an external file that was not "
                "loaded; pass the .onnx path to import_onnx (or onnx.load(path, "
                "load_external_data=True))"
            )
        try:
            env[init.name] = _tensor_from_proto(init, base_dir)
        except _NodeProblem as exc:
            raise ConversionError(f"{source}: {exc}") from exc
        b.hint_const(env[init.name], init.name)
    if len(graph.sparse_initializer):
        raise ConversionError(f"{source}: sparse initializers are not supported")

    input_names = [vi.name for vi in graph.input if vi.name not in env]
    for vi in graph.input:
        if vi.name in env:
            continue
        elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        dtype = _ONNX_TO_TORCH_DTYPE.get(elem, torch.float32)
        env[vi.name] = b.placeholder(_sanitize(vi.name) or "input", shapes.get(vi.name), dtype)

    for vi in graph.output:
        b.graph_outputs.add(vi.name)
    for node_proto in graph.node:
        for name in node_proto.input:
            b.consumers[name] = b.consumers.get(name, 0) + 1

    for index, node_proto in enumerate(graph.node):
        _import_node(b, env, shapes, problems, node_proto, index, opset)

    outputs: List[Any] = []
    for vi in graph.output:
        value = env.get(vi.name)
        if isinstance(value, _Unconverted):
            if value.reason:
                problems.append((onnx.NodeProto(name=vi.name, op_type="Output"), value.reason))
            continue
        if isinstance(value, _SymShape):
            problems.append(
                (
                    onnx.NodeProto(name=vi.name, op_type="Output"),
                    "the graph output is a run-time shape, which is not supported",
                )
            )
            continue
        if isinstance(value, torch.Tensor):
            b.hint_const(value, vi.name)
            value = b.const_node(value)
        outputs.append(value)
    if problems:
        raise ConversionError(_format_problems(source, problems))

    b.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    gm = fx.GraphModule(b.root, b.graph, class_name="ImportedOnnxModel")
    gm.graph.eliminate_dead_code()  # e.g. x.size(0) nodes of Shape outputs used only in part
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for key in list(gm._buffers):
        if key not in used:
            del gm._buffers[key]
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    gm.meta["onnx_input_names"] = input_names
    gm.meta["onnx_output_names"] = [vi.name for vi in graph.output]
    gm.meta["onnx_opset"] = opset
    gm.meta["onnx_producer"] = f"{proto.producer_name} {proto.producer_version}".strip()
    return gm.eval()


def _import_node(
    b: _Builder,
    env: Dict[str, _Value],
    shapes: Dict[str, _StaticShape],
    problems: List[Tuple[onnx.NodeProto, str]],
    proto: onnx.NodeProto,
    index: int,
    opset: int,
) -> None:
    """Convert one ONNX node into ``env`` (its outputs), or record why it cannot be."""
    inputs = [env.get(name) if name else None for name in proto.input]
    missing = [name for name, v in zip(proto.input, inputs) if name and name not in env]
    fn = _lookup(proto.domain, proto.op_type, opset) if proto.domain in _DEFAULT_DOMAINS else None

    def fail(reason: Optional[str]) -> None:
        if reason:
            problems.append((proto, reason))
        for out in proto.output:
            env[out] = _Unconverted()

    if missing:
        return fail(f"input(s) {missing} are not produced by any earlier node (graph not sorted?)")
    upstream = [v for v in inputs if isinstance(v, _Unconverted)]
    for v in upstream:
        if v.reason:
            problems.append((proto, f"uses an output that cannot be converted: {v.reason}"))
            v.reason = None
    all_const = all(v is None or isinstance(v, torch.Tensor) for v in inputs)
    if fn is None:
        if all_const and proto.domain in _DEFAULT_DOMAINS and not upstream:
            try:
                results = _fold_with_reference(proto, inputs, opset)
            except Exception:  # anything the reference evaluator cannot run is unsupported
                results = None
            if results is not None:
                for name, value in zip([o for o in proto.output if o], results):
                    env[name] = value
                return None
        if proto.domain not in _DEFAULT_DOMAINS:
            return fail(
                f"no converter for this op (ops of domain {proto.domain!r} are not supported)"
            )
        return fail(f"no converter for this op (opset {opset})")
    if upstream:
        return fail(None)

    attrs = {}
    try:
        attrs = {a.name: _attr_value(a) for a in proto.attribute}
    except _NodeProblem as exc:
        return fail(str(exc))
    node = _Node(
        proto=proto,
        name=proto.name or f"{proto.op_type}_{index}",
        opset=opset,
        inputs=inputs,
        input_shapes=[shapes.get(name) for name in proto.input],
        output_shapes=[shapes.get(name) for name in proto.output],
        attrs=attrs,
        example_shape=b.example_shape,
    )
    b.begin_node(node, index)
    try:
        result = fn(b, node)
    except _NodeProblem as exc:
        return fail(str(exc))
    except Exception as exc:  # a converter bug or an inconsistent model: report, keep going
        return fail(f"import failed ({type(exc).__name__}: {exc})")
    results = list(result) if isinstance(result, list) else [result]
    for i, name in enumerate(proto.output):
        if not name:
            continue
        value = results[i] if i < len(results) else _Unconverted(f"output {i} is not supported")
        if isinstance(value, torch.Tensor):
            b.hint_const(value, name)
        env[name] = value
    return None
