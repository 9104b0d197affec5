"""The fx graph builder of the ONNX importer, and the names it gives modules and nodes.

:class:`_Builder` records calls on run-time values in the fx graph and evaluates calls on
constants right away (constant folding); the naming helpers turn exporter scopes
(``/layer1/layer1.0/conv1/Conv``) into module and node names.
"""

from __future__ import annotations

import ast
import keyword
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import onnx
import torch
from torch import fx, nn

from ann2snn.frontends.onnx.values import (
    _has_node,
    _Node,
    _NodeProblem,
    _StaticShape,
    _SymShape,
    _Value,
)

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
