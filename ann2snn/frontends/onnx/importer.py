"""Import ONNX models as ``torch.fx.GraphModule``\\ s made of ordinary torch modules and functions.

The result looks like a model written in PyTorch and traced with ``torch.fx``: ``Conv`` becomes
``nn.Conv2d``, ``Gemm`` becomes ``nn.Linear``, ``Relu`` becomes ``nn.ReLU``, ``Add`` becomes
``operator.add`` and so on, so the conversion passes treat an imported model like any other.

How it works:

* Every ONNX op is handled by one converter function, registered with :func:`_converter` for
  an op type and an opset range. Registering the same op twice for overlapping opsets raises.
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

import ast
import keyword
import math
import operator
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import fx, nn

from ann2snn.errors import ConversionError

__all__ = ["import_onnx", "supported_onnx_ops"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_ISSUES_HINT = (
    "What to do: re-export the model with these ops replaced by supported ones (for example "
    "a ReLU-family activation instead of Sigmoid/LeakyReLU, static input shapes instead of "
    "data-dependent ones), or open an issue for ann2snn with the op names and a small .onnx "
    "file that reproduces it."
)

_ONNX_TO_TORCH_DTYPE: Dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


# --------------------------------------------------------------------------------------------
# Values flowing through the importer
# --------------------------------------------------------------------------------------------


class _SymShape:
    """An int64 shape tensor (0-d or 1-d) whose elements are ints or fx nodes giving ints.

    Produced by ``Shape`` on a run-time tensor: dim 0 (the batch) stays symbolic as
    ``x.size(0)``; other dims are static ints when shape inference knows them.
    """

    __slots__ = ("elems", "scalar")

    def __init__(self, elems: List[Union[int, fx.Node]], scalar: bool = False) -> None:
        self.elems = elems
        self.scalar = scalar


class _Unconverted:
    """Marks the output of a node that could not be imported (reported once, then skipped)."""

    __slots__ = ("reason",)

    def __init__(self, reason: Optional[str] = None) -> None:
        self.reason = reason


_Value = Union[torch.Tensor, fx.Node, _SymShape, _Unconverted, None]


class _NodeProblem(Exception):
    """Raised by a converter when this particular node cannot be imported (collected, not fatal)."""


def _shape_value(elems: Sequence[Union[int, fx.Node]], scalar: bool = False) -> _Value:
    """A constant int64 tensor when every element is known, else a :class:`_SymShape`."""
    elems = list(elems)
    if all(isinstance(e, int) for e in elems):
        t = torch.tensor(elems, dtype=torch.int64)
        return t.reshape(()) if scalar else t
    return _SymShape(elems, scalar)


def _shape_elems(value: _Value) -> Optional[Tuple[List[Union[int, fx.Node]], bool]]:
    """Elements of a shape-like value (int tensor of rank <= 1 or _SymShape), else None."""
    if isinstance(value, _SymShape):
        return list(value.elems), value.scalar
    if isinstance(value, torch.Tensor) and value.dim() <= 1 and value.dtype in _INT_DTYPES:
        return [int(v) for v in value.reshape(-1).tolist()], value.dim() == 0
    return None


def _has_node(obj: Any) -> bool:
    if isinstance(obj, fx.Node):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_node(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_node(o) for o in obj.values())
    return False


# --------------------------------------------------------------------------------------------
# Converter registry
# --------------------------------------------------------------------------------------------

_ConverterFn = Callable[["_Builder", "_Node"], Any]


@dataclass(frozen=True)
class _Entry:
    first: int
    last: Optional[int]
    fn: _ConverterFn

    def covers(self, opset: int) -> bool:
        return self.first <= opset and (self.last is None or opset <= self.last)


_REGISTRY: Dict[Tuple[str, str], List[_Entry]] = {}


def _converter(
    *op_types: str, opsets: Tuple[int, Optional[int]] = (1, None), domain: str = ""
) -> Callable[[_ConverterFn], _ConverterFn]:
    """Register the decorated function as the converter of ``op_types`` for ``opsets``.

    Args:
        op_types: ONNX op types (``"Conv"``, ...).
        opsets: inclusive range of opset versions of ``domain`` (``None`` = no upper bound).
        domain: the op's domain; ``""`` is the default ONNX domain.

    Raises:
        ValueError: when an op is already registered for an overlapping opset range.
    """
    first, last = opsets
    domain = "" if domain in _DEFAULT_DOMAINS else domain

    def decorate(fn: _ConverterFn) -> _ConverterFn:
        for op_type in op_types:
            entries = _REGISTRY.setdefault((domain, op_type), [])
            for e in entries:
                if first <= (e.last if e.last is not None else math.inf) and e.first <= (
                    last if last is not None else math.inf
                ):
                    raise ValueError(
                        f"ONNX op {op_type!r} (domain {domain or 'ai.onnx'!r}) is already "
                        f"registered for opsets {e.first}..{e.last or 'latest'} by "
                        f"{e.fn.__name__}; {fn.__name__} overlaps with {first}..{last or 'latest'}"
                    )
            entries.append(_Entry(first, last, fn))
        return fn

    return decorate


def _lookup(domain: str, op_type: str, opset: int) -> Optional[_ConverterFn]:
    domain = "" if domain in _DEFAULT_DOMAINS else domain
    for e in _REGISTRY.get((domain, op_type), ()):
        if e.covers(opset):
            return e.fn
    return None


def supported_onnx_ops() -> Dict[str, List[Tuple[int, Optional[int]]]]:
    """The ONNX ops (default domain) the importer converts, with their opset ranges.

    Returns:
        ``{op_type: [(first_opset, last_opset_or_None), ...]}``, sorted by op type.
    """
    out: Dict[str, List[Tuple[int, Optional[int]]]] = {}
    for (domain, op_type), entries in sorted(_REGISTRY.items()):
        if domain == "":
            out[op_type] = sorted((e.first, e.last) for e in entries)
    return out


# --------------------------------------------------------------------------------------------
# Per-node view handed to converters
# --------------------------------------------------------------------------------------------

_StaticShape = Optional[List[Optional[int]]]


@dataclass
class _Node:
    proto: onnx.NodeProto
    name: str
    opset: int
    inputs: List[_Value]
    input_shapes: List[_StaticShape]
    output_shapes: List[_StaticShape]
    attrs: Dict[str, Any] = field(default_factory=dict)
    example_shape: Optional[Callable[[_Value], _StaticShape]] = None

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> _Value:
        return self.inputs[i] if i < len(self.inputs) else None

    def in_shape(self, i: int = 0) -> _StaticShape:
        """Static shape of input ``i`` (None: unknown; None entries: unknown or dynamic dims).

        ONNX shape inference first; where it leaves gaps (e.g. after a Slice whose bounds it
        could not fold), the shape of the imported graph run on an example input fills them.
        """
        shape = self.input_shapes[i] if i < len(self.input_shapes) else None
        if shape is not None and all(d is not None for d in shape):
            return shape
        if isinstance(self.input(i), torch.Tensor):
            return list(self.input(i).shape)
        example = self.example_shape(self.input(i)) if self.example_shape else None
        if example is None or (shape is not None and len(shape) != len(example)):
            return shape
        if shape is None:
            return example
        return [d if d is not None else e for d, e in zip(shape, example)]

    def in_rank(self, i: int = 0) -> Optional[int]:
        shape = self.in_shape(i)
        if shape is not None:
            return len(shape)
        value = self.input(i)
        if isinstance(value, torch.Tensor):
            return value.dim()
        return None

    def rank_or_fail(self, i: int = 0, why: str = "") -> int:
        rank = self.in_rank(i)
        if rank is None:
            raise _NodeProblem(
                f"the rank of input {self.proto.input[i]!r} is unknown{why}; shape inference "
                "could not resolve it (export with static input shapes)"
            )
        return rank


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return _tensor_from_proto(value, "")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _tensor_from_proto(proto: onnx.TensorProto, base_dir: str) -> torch.Tensor:
    if proto.data_type not in _ONNX_TO_TORCH_DTYPE:
        raise _NodeProblem(
            f"tensor {proto.name!r} has ONNX data type "
            f"{onnx.TensorProto.DataType.Name(proto.data_type)}, which torch cannot hold here"
        )
    arr = numpy_helper.to_array(proto, base_dir) if base_dir else numpy_helper.to_array(proto)
    dtype = _ONNX_TO_TORCH_DTYPE[proto.data_type]
    if dtype == torch.bfloat16:
        return torch.tensor(np.asarray(arr, dtype=np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


# --------------------------------------------------------------------------------------------
# Naming
# --------------------------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name:
        return ""
    if name[0].isdigit():
        name = "n" + name
    if keyword.iskeyword(name):
        name += "_"
    return name


def _scopes_and_label(proto: onnx.NodeProto) -> Tuple[List[str], str]:
    """Module path and op label from exporter naming conventions.

    TorchScript exporter: ``/layer1/layer1.0/conv1/Conv``; torch.export-based exporter:
    metadata ``pkg.torch.onnx.name_scopes = ['', 'layer1', 'layer1.0', 'conv1', 'conv2d']``.
    """
    meta = {p.key: p.value for p in getattr(proto, "metadata_props", ())}
    scopes: List[str] = []
    label = ""
    raw = meta.get("pkg.torch.onnx.name_scopes")
    if raw and "pkg.onnxscript.rewriter.rule_name" not in meta:
        try:
            parts = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parts = None
        if isinstance(parts, list) and parts and all(isinstance(p, str) for p in parts):
            scopes, label = parts[:-1], parts[-1]
    if not label:
        if "/" in proto.name:
            parts = proto.name.split("/")
            scopes, label = parts[:-1], parts[-1]
        else:
            label = proto.name[len("node_") :] if proto.name.startswith("node_") else proto.name
    if raw:  # torch.export node names carry a counter ("relu_3"); fx numbers nodes itself
        label = re.sub(r"_\d+$", "", label)
    scopes = [s for s in scopes if s]
    # "layer1/layer1.0/conv1" -> "layer1.0/conv1": a scope repeated as the prefix of the next
    kept = [
        s
        for i, s in enumerate(scopes)
        if not (i + 1 < len(scopes) and scopes[i + 1].startswith(s + "."))
    ]
    return kept, label or proto.op_type


def _stack_trace(proto: onnx.NodeProto, source: str) -> str:
    meta = {p.key: p.value for p in getattr(proto, "metadata_props", ())}
    trace = meta.get("pkg.torch.onnx.stack_trace")
    if trace:
        return trace
    return f'File "{source}", line 0, in onnx node {proto.name!r}\n    {proto.op_type}'


# --------------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------------


class _Builder:
    """Builds the fx graph; evaluates calls on constants right away instead (constant folding)."""

    def __init__(self, source: str) -> None:
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.source = source
        self._used_attr_names: set = set()
        self._const_nodes: Dict[int, Tuple[torch.Tensor, fx.Node]] = {}
        self._const_hints: Dict[int, Tuple[torch.Tensor, str]] = {}
        self._size_nodes: Dict[Tuple[fx.Node, int], fx.Node] = {}
        self.consumers: Dict[str, int] = {}
        self.graph_outputs: set = set()
        self.bias_free_linears: Dict[fx.Node, nn.Linear] = {}
        self.node: Optional[_Node] = None
        self._examples: Dict[fx.Node, Any] = {}
        self._input_specs: Dict[fx.Node, Tuple[_StaticShape, torch.dtype]] = {}
        self.dynamic_batch = False
        self._module_name = "module"
        self._fn_name = "op"

    # -- naming -------------------------------------------------------------------------------

    def begin_node(self, node: _Node, index: int) -> None:
        self.node = node
        scopes, label = _scopes_and_label(node.proto)
        fallback = f"{node.op_type.lower()}_{index}"
        label = label.lower()
        self._fn_name = _sanitize("_".join(scopes + [label])) or fallback
        self._module_name = _sanitize("_".join(scopes) if scopes else label) or fallback
        # Weighted layers keep their PyTorch name when the weight does ("layer1.0.conv1.weight").
        weight = node.proto.input[1] if len(node.proto.input) > 1 else ""
        match = re.fullmatch(r"([A-Za-z_][\w.]*)\.weight", weight)
        if match and isinstance(node.input(1), torch.Tensor):
            self._module_name = _sanitize(match.group(1)) or self._module_name
        self._trace = _stack_trace(node.proto, self.source)

    def _fresh_attr_name(self, base: str) -> str:
        base = _sanitize(base) or "attr"
        name, i = base, 1
        while name in self._used_attr_names or hasattr(self.root, name):
            name = f"{base}_{i}"
            i += 1
        self._used_attr_names.add(name)
        return name

    def _annotate(self, fx_node: fx.Node) -> fx.Node:
        if self.node is not None:
            fx_node.meta["onnx_node"] = self.node.name
            fx_node.meta["onnx_op_type"] = self.node.op_type
            fx_node.stack_trace = self._trace
        return fx_node

    # -- constants ----------------------------------------------------------------------------

    def hint_const(self, tensor: torch.Tensor, onnx_name: str) -> None:
        # The tensor is kept with its name so that its id cannot be reused by another tensor.
        self._const_hints.setdefault(id(tensor), (tensor, onnx_name))

    def const_node(self, tensor: torch.Tensor) -> fx.Node:
        """A ``get_attr`` node reading ``tensor`` as a buffer of the GraphModule."""
        key = id(tensor)
        if key in self._const_nodes:
            return self._const_nodes[key][1]
        name = self._fresh_attr_name(self._const_hints.get(key, (None, "const"))[1])
        self.root.register_buffer(name, tensor)
        node = self.graph.get_attr(name)
        self._const_nodes[key] = (tensor, node)
        return node

    def _lift(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.const_node(obj)
        if isinstance(obj, _SymShape):
            raise _NodeProblem("a run-time shape is used where a tensor is needed")
        if isinstance(obj, list):
            return [self._lift(o) for o in obj]
        if isinstance(obj, tuple):
            return tuple(self._lift(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self._lift(v) for k, v in obj.items()}
        return obj

    # -- emitting -----------------------------------------------------------------------------

    def call(
        self,
        target: Union[Callable[..., Any], str],
        args: Sequence[Any],
        kwargs: Optional[Dict[str, Any]] = None,
        suffix: str = "",
    ) -> Any:
        """Call a function (or a Tensor method when ``target`` is a str).

        Evaluated now when no argument is a run-time value, else recorded in the graph.
        """
        kwargs = kwargs or {}
        if not _has_node(args) and not _has_node(kwargs):
            with torch.no_grad():
                if isinstance(target, str):
                    return getattr(args[0], target)(*args[1:], **kwargs)
                return target(*args, **kwargs)
        op = "call_method" if isinstance(target, str) else "call_function"
        name = self._fn_name + (f"_{suffix}" if suffix else "")
        node = self.graph.create_node(
            op, target, tuple(self._lift(list(args))), self._lift(kwargs), name=name
        )
        return self._annotate(node)

    def module(self, mod: nn.Module, *args: Any, suffix: str = "") -> Any:
        """Call ``mod`` on ``args``: evaluated now on constants, else added as a submodule."""
        mod.eval()
        if not _has_node(args):
            with torch.no_grad():
                return mod(*args)
        name = self._fresh_attr_name(self._module_name + (f"_{suffix}" if suffix else ""))
        self.root.add_module(name, mod)
        node = self.graph.create_node("call_module", name, tuple(self._lift(list(args))), {})
        return self._annotate(node)

    def size(self, x: fx.Node, dim: int) -> fx.Node:
        """``x.size(dim)`` (one node per tensor and dim)."""
        key = (x, dim)
        if key not in self._size_nodes:
            node = self.graph.create_node(
                "call_method", "size", (x, dim), {}, name=f"{x.name}_size"
            )
            self._size_nodes[key] = self._annotate(node)
        return self._size_nodes[key]

    # -- example run (shapes where ONNX shape inference has gaps) --------------------------------

    def placeholder(self, name: str, shape: _StaticShape, dtype: torch.dtype) -> fx.Node:
        node = self.graph.create_node("placeholder", name, name=name)
        self._input_specs[node] = (shape, dtype)
        if shape and shape[0] is None:
            self.dynamic_batch = True
        return node

    def example_shape(self, value: _Value) -> _StaticShape:
        """Shape of ``value`` when the graph built so far runs on an example input, or None.

        The example batch is the exported one; for a dynamic batch, dim 0 is reported unknown.
        """
        if not isinstance(value, fx.Node):
            return None
        if value not in self._examples:
            with torch.no_grad():
                for node in self.graph.nodes:
                    if node not in self._examples:
                        self._examples[node] = self._run_example(node)
                    if node is value:
                        break
        example = self._examples.get(value)
        if not isinstance(example, torch.Tensor):
            return None
        shape: List[Optional[int]] = list(example.shape)
        if self.dynamic_batch and shape:
            shape[0] = None
        return shape

    def _run_example(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape, dtype = self._input_specs.get(node, (None, torch.float32))
            if shape is None or any(d is None for d in shape[1:]):
                return None
            dims = [1 if shape[0] is None else shape[0]] + list(shape[1:])
            if dtype.is_floating_point:
                return torch.randn(dims, generator=torch.Generator().manual_seed(0)).to(dtype)
            return torch.zeros(dims, dtype=dtype)
        if node.op == "get_attr":
            return getattr(self.root, str(node.target))
        missing = []

        def value_of(arg: fx.Node) -> Any:
            if self._examples.get(arg) is None:
                missing.append(arg)
            return self._examples.get(arg)

        args = fx.node.map_arg(node.args, value_of)
        kwargs = fx.node.map_arg(node.kwargs, value_of)
        if missing:
            return None
        try:
            if node.op == "call_module":
                return self.root.get_submodule(str(node.target))(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
        except Exception:  # the example cannot run this far: shapes stay unknown
            return None
        return None

    def dim_of(self, x: Any, shape: _StaticShape, i: int) -> Union[int, fx.Node]:
        """Dim ``i`` of ``x``: static when known (except the batch dim 0), else ``x.size(i)``."""
        if isinstance(x, torch.Tensor):
            return int(x.shape[i])
        if i != 0 and shape is not None and i < len(shape) and shape[i] is not None:
            return int(shape[i])
        return self.size(x, i)


# --------------------------------------------------------------------------------------------
# Helpers shared by converters
# --------------------------------------------------------------------------------------------


def _const(node: _Node, i: int, what: str) -> torch.Tensor:
    value = node.input(i)
    if not isinstance(value, torch.Tensor):
        raise _NodeProblem(
            f"{what} (input {node.proto.input[i]!r}) must be a constant (an initializer), "
            "but it is computed at run time"
        )
    return value


def _opt_const(node: _Node, i: int, what: str) -> Optional[torch.Tensor]:
    if node.input(i) is None:
        return None
    return _const(node, i, what)


def _ints(node: _Node, i: int, what: str) -> List[int]:
    """A constant int list from input ``i`` (shape values included when fully known)."""
    value = node.input(i)
    elems = _shape_elems(value)
    if elems is not None and all(isinstance(e, int) for e in elems[0]):
        return [int(e) for e in elems[0]]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    raise _NodeProblem(
        f"{what} (input {node.proto.input[i]!r}) is computed at run time and cannot be "
        "resolved at import time; export the model with static shapes"
    )


def _norm_axis(axis: int, rank: Optional[int]) -> int:
    if axis >= 0:
        return axis
    if rank is None:
        raise _NodeProblem(f"negative axis {axis} needs the input rank, which is unknown")
    return axis + rank


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> Tuple[int, ...]:
    """ONNX per-dim (begins, ends), first dim first -> F.pad order, last dim first."""
    out: List[int] = []
    for b, e in zip(reversed(list(begins)), reversed(list(ends))):
        out += [int(b), int(e)]
    while len(out) > 2 and out[-1] == 0 and out[-2] == 0:
        out = out[:-2]
    return tuple(out)


def _resolve_pads(
    node: _Node, nd: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> Tuple[List[int], List[int]]:
    """(begins, ends) of the spatial padding from ``pads`` or ``auto_pad``."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
        return pads[:nd], pads[nd:]
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise _NodeProblem(f"unknown auto_pad {auto_pad!r}")
    shape = node.in_shape(0)
    begins, ends = [], []
    for i in range(nd):
        eff_k = (kernel[i] - 1) * dilations[i] + 1
        if strides[i] == 1:
            total = eff_k - 1
        else:
            size = shape[2 + i] if shape is not None and len(shape) == nd + 2 else None
            if size is None:
                raise _NodeProblem(
                    f"auto_pad={auto_pad} with stride {strides[i]} needs the input's spatial "
                    "size, which shape inference could not resolve"
                )
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + eff_k - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins, ends


def _with_tensors(mod: nn.Module, **tensors: Optional[torch.Tensor]) -> nn.Module:
    """Fill a module built on the meta device with real parameters and buffers."""
    for key, t in tensors.items():
        if key in mod._parameters:
            if t is None:
                mod._parameters[key] = None
            else:
                mod._parameters[key] = nn.Parameter(t.detach().clone().contiguous())
        else:
            mod._buffers[key] = None if t is None else t.detach().clone().contiguous()
    return mod


# --------------------------------------------------------------------------------------------
# Converters: constants and shapes
# --------------------------------------------------------------------------------------------


@_converter("Constant")
def _constant(b: _Builder, n: _Node) -> _Value:
    for key in ("value", "value_float", "value_int"):
        if key in n.attrs:
            v = n.attrs[key]
            return v if isinstance(v, torch.Tensor) else torch.tensor(v)
    if "value_floats" in n.attrs:
        return torch.tensor(n.attrs["value_floats"], dtype=torch.float32)
    if "value_ints" in n.attrs:
        return torch.tensor(n.attrs["value_ints"], dtype=torch.int64)
    raise _NodeProblem(f"Constant with attributes {sorted(n.attrs)} is not supported")


@_converter("ConstantOfShape")
def _constant_of_shape(b: _Builder, n: _Node) -> _Value:
    value = n.attr("value")
    fill = value if isinstance(value, torch.Tensor) else torch.zeros(1, dtype=torch.float32)
    elems = _shape_elems(n.input(0))
    if elems is None:
        raise _NodeProblem("the shape input must be a constant or a shape computation")
    return b.call(torch.full, (elems[0], fill.reshape(()).item()), {"dtype": fill.dtype})


@_converter("Shape")
def _shape(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    start, end = n.attr("start", 0), n.attr("end", None)
    if isinstance(x, _SymShape):
        return torch.tensor([] if x.scalar else [len(x.elems)], dtype=torch.int64)[start:end]
    if isinstance(x, torch.Tensor):
        dims: List[Union[int, fx.Node]] = list(x.shape)
    else:
        rank = n.rank_or_fail(0, " (Shape of a run-time tensor)")
        shape = n.in_shape(0)
        dims = [b.dim_of(x, shape, i) for i in range(rank)]
    return _shape_value(dims[start:end])


@_converter("Identity")
def _identity(b: _Builder, n: _Node) -> _Value:
    return n.input(0)


@_converter("Dropout")
def _dropout(b: _Builder, n: _Node) -> List[_Value]:
    # Inference import: dropout is the identity. The mask output has no meaning here.
    return [n.input(0), _Unconverted("the mask output of Dropout is not supported")]


@_converter("Cast")
def _cast(b: _Builder, n: _Node) -> _Value:
    to = n.attr("to")
    x = n.input(0)
    if isinstance(to, str):
        to = onnx.TensorProto.DataType.Value(to)
    if to not in _ONNX_TO_TORCH_DTYPE:
        raise _NodeProblem(f"Cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    dtype = _ONNX_TO_TORCH_DTYPE[to]
    if isinstance(x, _SymShape):
        if dtype in (torch.int64, torch.int32):
            return x
        raise _NodeProblem(f"a run-time shape is cast to {dtype} and cannot be resolved")
    return b.call("to", (x, dtype))


def _gather_index(axis: int, idx: Any) -> Tuple[Any, ...]:
    return (slice(None),) * axis + (idx,)


@_converter("Gather")
def _gather(b: _Builder, n: _Node) -> _Value:
    data, indices = n.input(0), n.input(1)
    axis = n.attr("axis", 0)
    if isinstance(data, _SymShape):
        if axis != 0 or not isinstance(indices, torch.Tensor):
            raise _NodeProblem("Gather on a run-time shape needs constant indices on axis 0")
        picked = [data.elems[int(i)] for i in indices.reshape(-1).tolist()]
        return _shape_value(picked, scalar=indices.dim() == 0)
    if isinstance(indices, _SymShape):
        raise _NodeProblem("Gather with run-time shape values as indices cannot be resolved")
    axis = _norm_axis(axis, n.in_rank(0))
    if isinstance(indices, torch.Tensor):
        if indices.dim() == 0:
            return b.call(torch.select, (data, axis, int(indices)))
        indices = indices.to(torch.int64)
    return b.call(operator.getitem, (data, _gather_index(axis, indices)))


@_converter("Slice", opsets=(1, 9))
def _slice_v1(b: _Builder, n: _Node) -> _Value:
    starts, ends = n.attr("starts"), n.attr("ends")
    axes = n.attr("axes", list(range(len(starts))))
    return _slice(b, n, list(starts), list(ends), list(axes), [1] * len(starts))


@_converter("Slice", opsets=(10, None))
def _slice_v10(b: _Builder, n: _Node) -> _Value:
    starts = _ints(n, 1, "Slice starts")
    ends = _ints(n, 2, "Slice ends")
    axes = _ints(n, 3, "Slice axes") if n.input(3) is not None else list(range(len(starts)))
    steps = _ints(n, 4, "Slice steps") if n.input(4) is not None else [1] * len(starts)
    return _slice(b, n, starts, ends, axes, steps)


def _slice(
    b: _Builder, n: _Node, starts: List[int], ends: List[int], axes: List[int], steps: List[int]
) -> _Value:
    x = n.input(0)
    big = 2**62  # ONNX writes INT64_MAX/MIN for "to the end"; Python slices clamp anyway
    clip = [max(min(v, big), -big) for v in starts], [max(min(v, big), -big) for v in ends]
    if isinstance(x, _SymShape):
        if axes != [0] and axes != [-1]:
            raise _NodeProblem("Slice of a run-time shape must be along axis 0")
        return _shape_value(x.elems[slice(clip[0][0], clip[1][0], steps[0])])
    rank = n.in_rank(0)
    axes = [_norm_axis(a, rank) for a in axes]
    if isinstance(x, torch.Tensor):
        arr = x.numpy()
        index = [slice(None)] * arr.ndim
        for a, s, e, st in zip(axes, clip[0], clip[1], steps):
            index[a] = slice(s, e, st)
        return torch.from_numpy(np.array(arr[tuple(index)], copy=True))
    if any(st <= 0 for st in steps):
        raise _NodeProblem("Slice with negative steps on a run-time tensor is not supported")
    index = [slice(None)] * (max(axes) + 1)
    for a, s, e, st in zip(axes, clip[0], clip[1], steps):
        index[a] = slice(s, e, None if st == 1 else st)
    return b.call(operator.getitem, (x, tuple(index)))


@_converter("Concat")
def _concat(b: _Builder, n: _Node) -> _Value:
    axis = n.attr("axis", 0)
    parts = [v for v in n.inputs if v is not None]
    if any(isinstance(v, _SymShape) for v in parts):
        elems: List[Union[int, fx.Node]] = []
        for v in parts:
            e = _shape_elems(v)
            if e is None or e[1]:
                raise _NodeProblem("Concat mixes a run-time shape with non-shape tensors")
            elems += e[0]
        return _shape_value(elems)
    return b.call(torch.cat, (parts,), {"dim": axis})


@_converter("Split", opsets=(1, 12))
def _split_v1(b: _Builder, n: _Node) -> List[_Value]:
    sizes = n.attr("split")
    if sizes is None and n.input(1) is not None:  # Split-1 could take the sizes as an input
        sizes = _ints(n, 1, "Split sizes")
    return _split(b, n, sizes)


@_converter("Split", opsets=(13, None))
def _split_v13(b: _Builder, n: _Node) -> List[_Value]:
    return _split(b, n, _ints(n, 1, "Split sizes") if n.input(1) is not None else None)


def _split(b: _Builder, n: _Node, sizes: Optional[List[int]]) -> List[_Value]:
    x = n.input(0)
    axis = int(n.attr("axis", 0))
    count = len(n.proto.output)
    if sizes is None:
        # Equal parts (opset 18: the last one may be smaller), as torch.chunk computes them.
        shape = n.in_shape(0)
        dim = None if shape is None else shape[_norm_axis(axis, len(shape))]
        if dim is None:
            raise _NodeProblem("Split into equal parts needs the size of the split axis")
        size = -(-dim // count)
        sizes = [min(size, dim - i * size) for i in range(count)]
    parts = b.call(torch.split, (x, [int(v) for v in sizes]), {"dim": axis})
    return [b.call(operator.getitem, (parts, i), suffix=str(i)) for i in range(count)]


@_converter("Unsqueeze", opsets=(1, 12))
def _unsqueeze_v1(b: _Builder, n: _Node) -> _Value:
    return _unsqueeze(b, n, list(n.attr("axes")))


@_converter("Unsqueeze", opsets=(13, None))
def _unsqueeze_v13(b: _Builder, n: _Node) -> _Value:
    return _unsqueeze(b, n, _ints(n, 1, "Unsqueeze axes"))


def _unsqueeze(b: _Builder, n: _Node, axes: List[int]) -> _Value:
    x = n.input(0)
    if isinstance(x, _SymShape):
        if not x.scalar or axes not in ([0], [-1]):
            raise _NodeProblem("Unsqueeze of a run-time shape is only supported for a scalar")
        return _SymShape(list(x.elems))
    rank = n.in_rank(0)
    out_rank = None if rank is None else rank + len(axes)
    axes = sorted(_norm_axis(a, out_rank) for a in axes)
    for a in axes:
        x = b.call(torch.unsqueeze, (x, a))
    return x


@_converter("Squeeze", opsets=(1, 12))
def _squeeze_v1(b: _Builder, n: _Node) -> _Value:
    return _squeeze(b, n, n.attr("axes"))


@_converter("Squeeze", opsets=(13, None))
def _squeeze_v13(b: _Builder, n: _Node) -> _Value:
    return _squeeze(b, n, _ints(n, 1, "Squeeze axes") if n.input(1) is not None else None)


def _squeeze(b: _Builder, n: _Node, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    if isinstance(x, _SymShape):
        if x.scalar or len(x.elems) != 1:
            raise _NodeProblem("Squeeze of a run-time shape is only supported for one element")
        return _SymShape(list(x.elems), scalar=True)
    if axes is None:
        shape = n.in_shape(0)
        if isinstance(x, torch.Tensor) or shape is None or any(d is None for d in shape):
            return b.call(torch.squeeze, (x,))
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = [_norm_axis(a, n.in_rank(0)) for a in axes]
    if not axes:
        return x
    return b.call(torch.squeeze, (x, tuple(axes) if len(axes) > 1 else axes[0]))


@_converter("Reshape", opsets=(1, 4))
def _reshape_v1(b: _Builder, n: _Node) -> _Value:
    return _reshape(b, n, [int(v) for v in n.attr("shape")], allowzero=False)


@_converter("Reshape", opsets=(5, None))
def _reshape_v5(b: _Builder, n: _Node) -> _Value:
    elems = _shape_elems(n.input(1))
    if elems is None:
        raise _NodeProblem(
            f"the target shape {n.proto.input[1]!r} is computed from tensor values at run time "
            "and cannot be resolved; export with static shapes"
        )
    return _reshape(b, n, elems[0], allowzero=bool(n.attr("allowzero", 0)))


def _reshape(b: _Builder, n: _Node, target: List[Any], allowzero: bool) -> _Value:
    x = n.input(0)
    shape = n.in_shape(0)
    target = list(target)
    if not allowzero:
        for i, d in enumerate(target):
            if isinstance(d, int) and d == 0:
                target[i] = b.dim_of(x, shape, i)
    if isinstance(x, torch.Tensor):
        return b.call(torch.reshape, (x, tuple(target)))
    # Keep the batch dimension dynamic: a constant first entry equal to the exported batch size
    # ([1, -1] from a model exported with batch 1) means "the batch size".
    first = target[0] if target else None
    batch = shape[0] if shape else None
    if isinstance(first, int) and first > 0 and batch is not None and first == batch:
        infers_other = any(isinstance(d, int) and d == -1 for d in target[1:])
        target[0] = b.size(x, 0) if infers_other else -1
    return b.call("reshape", (x, *target))


@_converter("Flatten")
def _flatten(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    axis = _norm_axis(n.attr("axis", 1), n.in_rank(0))
    if axis == 0:
        return b.call("reshape", (x, 1, -1))
    if axis == 1:
        return b.call(torch.flatten, (x, 1))
    inner = b.call(torch.flatten, (x, axis))
    return b.call(torch.flatten, (inner, 0, axis - 1), suffix="outer")


@_converter("Transpose")
def _transpose(b: _Builder, n: _Node) -> _Value:
    perm = n.attr("perm")
    if perm is None:
        perm = list(reversed(range(n.rank_or_fail(0, " (Transpose without perm)"))))
    return b.call("permute", (n.input(0), *[int(p) for p in perm]))


# --------------------------------------------------------------------------------------------
# Converters: arithmetic
# --------------------------------------------------------------------------------------------

_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
}


def _trunc_div(a: int, c: int) -> int:
    q = abs(a) // abs(c)
    return q if (a >= 0) == (c > 0) else -q


def _sym_binary(b: _Builder, n: _Node, a: _Value, c: _Value) -> _Value:
    ea, ec = _shape_elems(a), _shape_elems(c)
    if ea is None or ec is None:
        raise _NodeProblem(f"{n.op_type} mixes a run-time shape with a non-integer tensor")
    (la, sa), (lc, sc) = ea, ec
    if len(la) != len(lc) and 1 not in (len(la), len(lc)):
        raise _NodeProblem(f"{n.op_type} on shapes of lengths {len(la)} and {len(lc)}")
    length = max(len(la), len(lc))
    la = la * length if len(la) == 1 else la
    lc = lc * length if len(lc) == 1 else lc
    py_op = {
        "Add": operator.add,
        "Sub": operator.sub,
        "Mul": operator.mul,
        "Div": operator.floordiv,  # sizes are >= 0, so floor == ONNX's truncation
    }[n.op_type]
    out: List[Union[int, fx.Node]] = []
    for x, y in zip(la, lc):
        if isinstance(x, int) and isinstance(y, int):
            out.append(_trunc_div(x, y) if n.op_type == "Div" else py_op(x, y))
        else:
            out.append(b.call(py_op, (x, y)))
    return _shape_value(out, scalar=sa and sc)


def _scalar_or_tensor(const: torch.Tensor, other_rank: Optional[int]) -> Any:
    """A one-element constant as a Python number when broadcasting allows it."""
    if const.numel() != 1:
        return const
    if const.dim() <= 1 or (other_rank is not None and other_rank >= const.dim()):
        return const.item()
    return const


def _try_merge_bias(b: _Builder, n: _Node, a: _Value, c: _Value) -> Optional[fx.Node]:
    """MatMul(x, W) + bias -> one nn.Linear with that bias, when the result is used only here."""
    for lin_node, bias in ((a, c), (c, a)):
        if not isinstance(lin_node, fx.Node) or lin_node not in b.bias_free_linears:
            continue
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            continue
        onnx_name = lin_node.meta.get("onnx_output")
        if b.consumers.get(onnx_name, 0) != 1 or onnx_name in b.graph_outputs:
            continue
        linear = b.bias_free_linears[lin_node]
        out_shape = n.output_shapes[0]
        leading_ones = all(d == 1 for d in bias.shape[:-1])
        fits = bias.dim() >= 1 and bias.shape[-1] == linear.out_features and leading_ones
        if not fits or (bias.dim() > 1 and (out_shape is None or bias.dim() > len(out_shape))):
            continue
        linear.bias = nn.Parameter(bias.detach().reshape(-1).clone().to(linear.weight.dtype))
        del b.bias_free_linears[lin_node]
        return lin_node
    return None


@_converter("Add", "Sub", "Mul", "Div")
def _binary(b: _Builder, n: _Node) -> _Value:
    a, c = n.input(0), n.input(1)
    if isinstance(a, _SymShape) or isinstance(c, _SymShape):
        return _sym_binary(b, n, a, c)
    int_div = (
        n.op_type == "Div"
        and isinstance(a, torch.Tensor)
        and isinstance(c, torch.Tensor)
        and a.dtype in _INT_DTYPES
        and c.dtype in _INT_DTYPES
    )
    if int_div:
        return torch.div(a, c, rounding_mode="trunc")
    if n.op_type == "Add":
        merged = _try_merge_bias(b, n, a, c)
        if merged is not None:
            return merged
    if isinstance(a, torch.Tensor) and not isinstance(c, torch.Tensor):
        a = _scalar_or_tensor(a, n.in_rank(1))
    elif isinstance(c, torch.Tensor) and not isinstance(a, torch.Tensor):
        c = _scalar_or_tensor(c, n.in_rank(0))
    return b.call(_BINARY[n.op_type], (a, c))


@_converter("Sum")
def _sum(b: _Builder, n: _Node) -> _Value:
    parts = [v for v in n.inputs if v is not None]
    out = parts[0]
    for i, v in enumerate(parts[1:]):
        out = b.call(operator.add, (out, v), suffix=str(i) if i else "")
    return out


@_converter("MatMul")
def _matmul(b: _Builder, n: _Node) -> _Value:
    a, w = n.input(0), n.input(1)
    if isinstance(a, fx.Node) and isinstance(w, torch.Tensor) and w.dim() == 2:
        k, out_features = w.shape
        lin = nn.Linear(k, out_features, bias=False, device="meta")
        _with_tensors(lin, weight=w.t())
        node = b.module(lin, a)
        node.meta["onnx_output"] = n.proto.output[0]
        b.bias_free_linears[node] = lin
        return node
    return b.call(torch.matmul, (a, w))


@_converter("Gemm")
def _gemm(b: _Builder, n: _Node) -> _Value:
    a, w, c = n.input(0), n.input(1), n.input(2)
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    if trans_a:
        a = b.call("t", (a,), suffix="transpose_a")
    if isinstance(w, torch.Tensor) and not isinstance(a, torch.Tensor):
        weight = (w if trans_b else w.t()) * alpha
        out_features, in_features = weight.shape
        bias = None
        if isinstance(c, torch.Tensor) and (
            c.numel() == 1 or (c.numel() == out_features and c.shape[-1] == out_features)
        ):
            bias = (c.reshape(-1) * beta).expand(out_features)
            c = None
        lin = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
        _with_tensors(lin, weight=weight, bias=bias)
        y = b.module(lin, a)
    else:
        if trans_b:
            w = b.call("t", (w,), suffix="transpose_b")
        y = b.call(torch.matmul, (a, w))
        if alpha != 1.0:
            y = b.call(operator.mul, (y, alpha), suffix="alpha")
    if c is None:
        return y
    if isinstance(c, torch.Tensor):
        return b.call(operator.add, (y, _scalar_or_tensor(c * beta, 2)), suffix="bias")
    if beta != 1.0:
        c = b.call(operator.mul, (c, beta), suffix="beta")
    return b.call(operator.add, (y, c), suffix="bias")


# --------------------------------------------------------------------------------------------
# Converters: layers
# --------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_BATCHNORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_ADAPTIVE_AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ADAPTIVE_MAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}


@_converter("Conv")
def _conv(b: _Builder, n: _Node) -> _Value:
    x = n.input(0)
    weight = _const(n, 1, "the Conv weight")
    bias = _opt_const(n, 2, "the Conv bias")
    nd = weight.dim() - 2
    if nd not in _CONV:
        raise _NodeProblem(f"Conv with {nd} spatial dims is not supported (1, 2 or 3)")
    kernel = list(n.attr("kernel_shape", weight.shape[2:]))
    strides = list(n.attr("strides", [1] * nd))
    dilations = list(n.attr("dilations", [1] * nd))
    groups = int(n.attr("group", 1))
    begins, ends = _resolve_pads(n, nd, kernel, strides, dilations)
    padding: Union[int, Tuple[int, ...]] = tuple(begins)
    if begins != ends:
        x = b.call(F.pad, (x, _torch_pads(begins, ends)), {"mode": "constant", "value": 0.0}, "pad")
        padding = 0
    conv = _CONV[nd](
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(kernel),
        stride=tuple(strides),
        padding=padding,
        dilation=tuple(dilations),
        groups=groups,
        bias=bias is not None,
        device="meta",
    )
    _with_tensors(conv, weight=weight, bias=bias)
    return b.module(conv, x)


@_converter("BatchNormalization")
def _batchnorm(b: _Builder, n: _Node) -> List[_Value]:
    scale = _const(n, 1, "the BatchNormalization scale")
    shift = _const(n, 2, "the BatchNormalization bias")
    mean = _const(n, 3, "the running mean")
    var = _const(n, 4, "the running variance")
    if n.attr("training_mode", 0) or (n.opset < 9 and n.attr("spatial", 1) == 0):
        raise _NodeProblem("only inference-mode, spatial BatchNormalization is supported")
    if n.opset < 6 and n.attr("is_test", 0) == 0 and len(n.proto.output) > 1:
        raise _NodeProblem("training-mode BatchNormalization (is_test=0) is not supported")
    rank = n.rank_or_fail(0, " (needed to choose BatchNorm1d/2d/3d)")
    if rank not in _BATCHNORM:
        raise _NodeProblem(f"BatchNormalization on a rank-{rank} input is not supported")
    momentum = 1.0 - float(n.attr("momentum", 0.9))
    bn = _BATCHNORM[rank](
        scale.numel(), eps=float(n.attr("epsilon", 1e-5)), momentum=momentum, device="meta"
    )
    _with_tensors(
        bn,
        weight=scale,
        bias=shift,
        running_mean=mean,
        running_var=var,
        num_batches_tracked=torch.tensor(0, dtype=torch.long),
    )
    extra = [_Unconverted("training outputs of BatchNormalization are not supported")]
    return [b.module(bn, n.input(0))] + extra * (len(n.proto.output) - 1)


@_converter("Relu")
def _relu(b: _Builder, n: _Node) -> _Value:
    return b.module(nn.ReLU(), n.input(0))


_FLOAT_LIMIT = 3.0e38  # opset < 11 writes +-FLT_MAX for "no bound"


@_converter("Clip", opsets=(1, 10))
def _clip_v1(b: _Builder, n: _Node) -> _Value:
    lo, hi = n.attr("min"), n.attr("max")
    lo = None if lo is None or lo <= -_FLOAT_LIMIT else float(lo)
    hi = None if hi is None or hi >= _FLOAT_LIMIT else float(hi)
    return _clip(b, n, lo, hi)


@_converter("Clip", opsets=(11, None))
def _clip_v11(b: _Builder, n: _Node) -> _Value:
    bounds = []
    for i in (1, 2):
        v = n.input(i)
        bounds.append(float(v.reshape(-1)[0]) if isinstance(v, torch.Tensor) else v)
    return _clip(b, n, bounds[0], bounds[1])


def _clip(b: _Builder, n: _Node, lo: Any, hi: Any) -> _Value:
    x = n.input(0)
    if isinstance(lo, (_SymShape, _Unconverted)) or isinstance(hi, (_SymShape, _Unconverted)):
        raise _NodeProblem("Clip bounds must be constants or tensors")
    if lo is None and hi is None:
        return x
    if not isinstance(x, torch.Tensor) and lo == 0.0 and not isinstance(hi, fx.Node):
        if hi is None:
            return b.module(nn.ReLU(), x)
        if hi == 6.0:
            return b.module(nn.ReLU6(), x)
        if hi > 0.0:
            return b.module(nn.Hardtanh(0.0, hi), x)
    return b.call(torch.clamp, (x,), {"min": lo, "max": hi})


def _unsupported_extra_outputs(n: _Node, what: str) -> List[_Value]:
    return [_Unconverted(f"the {what} output of {n.op_type} is not supported")] * (
        len(n.proto.output) - 1
    )


@_converter("MaxPool", "AveragePool")
def _pool(b: _Builder, n: _Node) -> List[_Value]:
    x = n.input(0)
    kernel = list(n.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in _MAXPOOL:
        raise _NodeProblem(f"pooling over {nd} spatial dims is not supported (1, 2 or 3)")
    strides = list(n.attr("strides", [1] * nd))
    dilations = list(n.attr("dilations", [1] * nd))
    ceil_mode = bool(n.attr("ceil_mode", 0))
    begins, ends = _resolve_pads(n, nd, kernel, strides, dilations)
    max_pad = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dilations)]
    fits = begins == ends and all(p <= m for p, m in zip(begins, max_pad))
    extra = _unsupported_extra_outputs(n, "Indices")
    if n.op_type == "MaxPool":
        padding: Any = tuple(begins)
        if not fits:
            pads = _torch_pads(begins, ends)
            x = b.call(F.pad, (x, pads), {"mode": "constant", "value": -math.inf}, "pad")
            padding = 0
        pool = _MAXPOOL[nd](
            tuple(kernel),
            stride=tuple(strides),
            padding=padding,
            dilation=tuple(dilations),
            ceil_mode=ceil_mode,
        )
        return [b.module(pool, x)] + extra
    if any(d != 1 for d in dilations):
        raise _NodeProblem("AveragePool with dilations is not supported")
    include_pad = bool(n.attr("count_include_pad", 0))
    if fits:
        pool = _AVGPOOL[nd](tuple(kernel), tuple(strides), tuple(begins), ceil_mode, include_pad)
        return [b.module(pool, x)] + extra
    pads = _torch_pads(begins, ends)
    padded = b.call(F.pad, (x, pads), {"mode": "constant", "value": 0.0}, "pad")
    pool = _AVGPOOL[nd](tuple(kernel), tuple(strides), 0, ceil_mode, True)
    y = b.module(pool, padded)
    if include_pad or not any(begins + ends):
        return [y] + extra
    # Padding must not count: rescale by window size / number of real elements per window.
    shape = n.in_shape(0)
    if shape is None or any(d is None for d in shape[2:]):
        raise _NodeProblem(
            "AveragePool with asymmetric padding and count_include_pad=0 needs the static "
            "spatial input size, which shape inference could not resolve"
        )
    ones = torch.ones([1, 1] + [int(d) for d in shape[2:]])
    counts = _AVGPOOL[nd](tuple(kernel), tuple(strides), 0, ceil_mode, True)(
        F.pad(ones, pads, mode="constant", value=0.0)
    )
    return [b.call(operator.truediv, (y, counts), suffix="exclude_pad")] + extra


@_converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: _Builder, n: _Node) -> _Value:
    nd = n.rank_or_fail(0, f" (needed to choose the {n.op_type} dims)") - 2
    table = _ADAPTIVE_AVG if n.op_type == "GlobalAveragePool" else _ADAPTIVE_MAX
    if nd not in table:
        raise _NodeProblem(f"{n.op_type} over {nd} spatial dims is not supported")
    return b.module(table[nd](1), n.input(0))


_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax}


@_converter("ReduceMean", "ReduceMax", opsets=(1, 17))
def _reduce_attr(b: _Builder, n: _Node) -> _Value:
    return _reduce(b, n, n.attr("axes"))


@_converter("ReduceSum", opsets=(1, 12))
def _reduce_sum_attr(b: _Builder, n: _Node) -> _Value:
    return _reduce(b, n, n.attr("axes"))


@_converter("ReduceMean", "ReduceMax", opsets=(18, None))
def _reduce_input(b: _Builder, n: _Node) -> _Value:
    axes = _ints(n, 1, f"{n.op_type} axes") if n.input(1) is not None else None
    return _reduce(b, n, axes)


@_converter("ReduceSum", opsets=(13, None))
def _reduce_sum_input(b: _Builder, n: _Node) -> _Value:
    return _reduce_input(b, n)


def _reduce(b: _Builder, n: _Node, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    keepdims = bool(n.attr("keepdims", 1))
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(n.rank_or_fail(0, f" ({n.op_type} over all axes)")))
    rank = n.in_rank(0)
    dims = tuple(_norm_axis(a, rank) for a in axes)
    return b.call(_REDUCE[n.op_type], (x,), {"dim": dims, "keepdim": keepdims})


@_converter("Softmax", "LogSoftmax")
def _softmax(b: _Builder, n: _Node) -> _Value:
    fn = torch.softmax if n.op_type == "Softmax" else torch.log_softmax
    x = n.input(0)
    if n.opset >= 13:
        return b.call(fn, (x,), {"dim": int(n.attr("axis", -1))})
    # Before opset 13 the input is viewed as 2-D around `axis` (default 1).
    rank = n.rank_or_fail(0, f" ({n.op_type} before opset 13)")
    axis = _norm_axis(int(n.attr("axis", 1)), rank)
    if axis == rank - 1:
        return b.call(fn, (x,), {"dim": axis})
    flat = b.call(torch.flatten, (x, axis), suffix="flatten")
    y = b.call(fn, (flat,), {"dim": -1})
    return b.call("reshape_as", (y, x), suffix="unflatten")


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@_converter("Pad", opsets=(1, 10))
def _pad_v1(b: _Builder, n: _Node) -> _Value:
    pads = n.attr("pads", n.attr("paddings"))
    return _pad(b, n, list(pads), float(n.attr("value", 0.0)), None)


@_converter("Pad", opsets=(11, None))
def _pad_v11(b: _Builder, n: _Node) -> _Value:
    pads = _ints(n, 1, "Pad pads")
    value = 0.0
    if n.input(2) is not None:
        value = float(_const(n, 2, "the Pad constant value").reshape(-1)[0])
    axes = _ints(n, 3, "Pad axes") if n.input(3) is not None else None
    return _pad(b, n, pads, value, axes)


def _pad(b: _Builder, n: _Node, pads: List[int], value: float, axes: Optional[List[int]]) -> _Value:
    x = n.input(0)
    mode = _PAD_MODES.get(n.attr("mode", "constant"))
    if mode is None:
        raise _NodeProblem(f"Pad mode {n.attr('mode')!r} is not supported")
    half = len(pads) // 2
    rank = n.in_rank(0)
    if axes is None:
        axes = list(range(half))
    else:
        rank = n.rank_or_fail(0, " (Pad with axes)")
    axes = [_norm_axis(a, rank) for a in axes]
    full = max(axes) + 1 if rank is None else rank
    begins, ends = [0] * full, [0] * full
    for a, p_begin, p_end in zip(axes, pads[:half], pads[half:]):
        begins[a], ends[a] = p_begin, p_end
    torch_pads = _torch_pads(begins, ends)
    if not any(torch_pads):
        return x
    kwargs: Dict[str, Any] = {"mode": mode}
    if mode == "constant":
        kwargs["value"] = value
    return b.call(F.pad, (x, torch_pads), kwargs)


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
