"""Rebuild ``torch.export`` programs from ordinary torch modules, for the converter.

``torch.export`` records ATen ops (``aten.conv2d``, ``aten.batch_norm``, ``aten.relu`` ...)
with the weights as graph inputs. The conversion passes work on module-level graphs
(``nn.Conv2d`` holding its weights, ``nn.BatchNorm2d`` to fold, ``nn.ReLU`` to replace),
so :func:`import_exported_program` maps each ATen op back to the module or torch function
it came from, evaluates subgraphs on constants (weight transposes), and keeps the batch
dimension free where export specialized it. An ATen op without a rule stays a
``call_function`` node, which the converter's support check then reports by name.

Example:
    >>> ep = torch.export.export(model.eval(), (example,))  # doctest: +SKIP
    >>> gm = import_exported_program(ep)  # doctest: +SKIP
    >>> snn = ann2snn.convert(gm, calib_data=loader)  # doctest: +SKIP
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import fx, nn

__all__ = ["import_exported_program"]


class _Const:
    """A compile-time constant while rebuilding an exported graph."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Multi:
    """A node that returns a tuple of which only some entries are meaningful."""

    def __init__(self, items: Dict[int, Any]) -> None:
        self.items = items


def _aten(name: str) -> List[Any]:
    """Overloads ``aten.<name>.*`` that exist in this torch version."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return []
    return [getattr(packet, o) for o in packet.overloads()]


class _ExportBuilder:
    def __init__(self) -> None:
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.names: Dict[str, int] = {}
        self.consts = 0

    def unique(self, base: str) -> str:
        base = re.sub(r"\W", "_", base).strip("_") or "layer"
        if base[0].isdigit():
            base = f"layer_{base}"
        n = self.names.get(base, 0)
        self.names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def module(self, node: fx.Node, mod: nn.Module, args: Tuple[Any, ...]) -> fx.Node:
        name = self.unique(_module_path(node) or node.name)
        self.root.add_module(name, mod)
        out = self.graph.call_module(name, args)
        _copy_meta(node, out)
        return out

    def function(self, node: fx.Node, fn: Any, args: Tuple[Any, ...], kwargs=None) -> fx.Node:
        out = self.graph.call_function(fn, tuple(self.arg(a) for a in args), kwargs or {})
        _copy_meta(node, out)
        return out

    def arg(self, value: Any) -> Any:
        if isinstance(value, _Const):
            value = value.value
            if isinstance(value, torch.Tensor):
                name = f"_constant_{self.consts}"
                self.consts += 1
                self.root.register_buffer(name, value.detach().clone())
                return self.graph.get_attr(name)
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self.arg(v) for v in value)
        return value


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    path = re.sub(r"L\['self'\]\.?|L__self__\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path.replace(".", "_")


def _copy_meta(src: fx.Node, dst: fx.Node) -> None:
    for key in ("val", "stack_trace", "nn_module_stack"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def _rank(node: fx.Node) -> Optional[int]:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _get(args: Sequence[Any], kwargs: Mapping[str, Any], i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _value(x: Any) -> Any:
    return x.value if isinstance(x, _Const) else x


def _conv(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    x, w = args[0], _value(args[1])
    bias = _value(_get(args, kwargs, 2, "bias", None))
    if not isinstance(w, torch.Tensor) or (bias is not None and not isinstance(bias, torch.Tensor)):
        return None
    if node.target in _aten("convolution"):
        stride, padding, dilation, transposed, _, groups = (_value(a) for a in args[3:9])
        if transposed:
            return None
    else:
        stride = _get(args, kwargs, 3, "stride", 1)
        padding = _get(args, kwargs, 4, "padding", 0)
        dilation = _get(args, kwargs, 5, "dilation", 1)
        groups = _get(args, kwargs, 6, "groups", 1)
    dims = w.dim() - 2
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(dims)
    if cls is None:
        return None
    conv = cls(
        w.shape[1] * groups,
        w.shape[0],
        tuple(w.shape[2:]),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(bias)
    return b.module(node, conv, (x,))


def _linear_module(w: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias.reshape(-1))
    return lin


def _linear(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    w, bias = _value(args[1]), _value(_get(args, kwargs, 2, "bias", None))
    if not isinstance(w, torch.Tensor) or isinstance(args[0], _Const):
        return None
    return b.module(node, _linear_module(w, bias), (args[0],))


def _addmm(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    bias, x, w = (_value(a) for a in args[:3])
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        return None
    if not isinstance(w, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return None
    if w.dim() != 2 or isinstance(args[1], _Const):
        return None
    return b.module(node, _linear_module(w.t(), bias), (x,))


def _mm(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    w = _value(args[1])
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or isinstance(args[0], _Const):
        return None
    return b.module(node, _linear_module(w.t(), None), (args[0],))


def _batch_norm(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    x = args[0]
    weight, bias, mean, var = (_value(a) for a in args[1:5])
    legit = node.target in _aten("_native_batch_norm_legit_no_training")
    if legit:
        momentum, eps = _value(args[5]), _value(args[6])
    else:
        training, momentum, eps = (_value(a) for a in args[5:8])
        if training:
            return None
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    rank = _rank(node) or 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(mean.numel(), eps=eps, momentum=momentum, affine=weight is not None)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if weight is not None:
            bn.weight.copy_(weight)
            bn.bias.copy_(bias if bias is not None else torch.zeros_like(weight))
    bn.eval()
    out = b.module(node, bn, (x,))
    return _Multi({0: out}) if legit else out


def _pool(kind: str):
    def handler(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
        rank = _rank(node)
        dims = (rank - 2) if rank else 2
        kernel = _get(args, kwargs, 1, "kernel_size", None)
        stride = _get(args, kwargs, 2, "stride", []) or None
        padding = _get(args, kwargs, 3, "padding", 0)
        if kind == "max":
            dilation = _get(args, kwargs, 4, "dilation", 1)
            ceil = _get(args, kwargs, 5, "ceil_mode", False)
            cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
            mod = cls(kernel, stride, padding, dilation, ceil_mode=ceil)
        else:
            ceil = _get(args, kwargs, 4, "ceil_mode", False)
            include = _get(args, kwargs, 5, "count_include_pad", True)
            divisor = _get(args, kwargs, 6, "divisor_override", None)
            cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]
            extra = {} if dims == 1 else {"divisor_override": divisor}
            mod = cls(kernel, stride, padding, ceil_mode=ceil, count_include_pad=include, **extra)
        out = b.module(node, mod, (args[0],))
        return _Multi({0: out}) if "with_indices" in str(node.target) else out

    return handler


def _adaptive_avg(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    size = _value(args[1])
    dims = len(size) if isinstance(size, (list, tuple)) else 1
    cls = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    return b.module(node, cls(tuple(size) if dims > 1 else size), (args[0],))


def _activation(make: Callable[[Sequence[Any]], Optional[nn.Module]]):
    def handler(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
        mod = make([_value(a) for a in args[1:]])
        return None if mod is None else b.module(node, mod, (args[0],))

    return handler


def _clamp(params: Sequence[Any]) -> Optional[nn.Module]:
    lo = params[0] if params else None
    hi = params[1] if len(params) > 1 else None
    if lo != 0 or isinstance(hi, torch.Tensor):
        return None
    return nn.ReLU() if hi is None else nn.Hardtanh(0.0, float(hi))


def _reshape(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    x, shape = args[0], list(_value(args[1]))
    val_in = args[0].meta.get("val") if isinstance(args[0], fx.Node) else None
    # Export specializes the batch size of its example input: keep dim 0 free instead.
    if (
        isinstance(val_in, torch.Tensor)
        and shape
        and isinstance(shape[0], int)
        and shape[0] == val_in.shape[0]
        and -1 not in shape[1:]
        and all(isinstance(s, int) for s in shape)
    ):
        shape[0] = -1
    return b.function(node, torch.reshape, (x, tuple(shape)))


def _passthrough(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
    return args[0]


def _binary(fn: Any):
    def handler(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        other = args[1]
        if alpha != 1:
            other = b.function(node, operator.mul, (other, alpha))
        return b.function(node, fn, (args[0], other))

    return handler


def _simple(fn: Any, arity: Optional[int] = None):
    def handler(b: _ExportBuilder, node: fx.Node, args, kwargs) -> Any:
        used = args if arity is None else args[:arity]
        return b.function(node, fn, tuple(used), {k: _value(v) for k, v in kwargs.items()})

    return handler


def _handlers() -> Dict[Any, Callable[..., Any]]:
    table: Dict[Any, Callable[..., Any]] = {}

    def put(names: Sequence[str], fn: Callable[..., Any]) -> None:
        for name in names:
            for overload in _aten(name):
                table[overload] = fn

    put(["conv1d", "conv2d", "conv3d", "convolution"], _conv)
    put(["linear"], _linear)
    put(["addmm"], _addmm)
    put(["mm"], _mm)
    put(["batch_norm", "_native_batch_norm_legit_no_training"], _batch_norm)
    put(["max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices"], _pool("max"))
    put(["max_pool3d_with_indices"], _pool("max"))
    put(["avg_pool1d", "avg_pool2d", "avg_pool3d"], _pool("avg"))
    put(["adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d"], _adaptive_avg)
    put(["adaptive_avg_pool3d", "_adaptive_avg_pool3d"], _adaptive_avg)
    put(["relu", "relu_"], _activation(lambda p: nn.ReLU()))
    put(["hardtanh", "hardtanh_"], _activation(lambda p: nn.Hardtanh(*(float(v) for v in p))))
    put(["clamp", "clamp_"], _activation(_clamp))
    put(["clamp_min", "clamp_min_"], _activation(lambda p: nn.ReLU() if p[0] == 0 else None))
    put(["view", "reshape", "_unsafe_view"], _reshape)
    put(["flatten"], _simple(torch.flatten))
    put(["dropout", "dropout_", "feature_dropout", "alpha_dropout", "clone", "alias"], _passthrough)
    put(["contiguous", "detach", "lift_fresh_copy"], _passthrough)
    put(["add", "add_"], _binary(operator.add))
    put(["sub", "sub_"], _binary(operator.sub))
    put(["mul", "mul_"], _simple(operator.mul, 2))
    put(["div", "div_"], _simple(operator.truediv, 2))
    put(["cat", "concat"], _simple(torch.cat))
    put(["mean"], _simple(torch.mean))
    put(["sum"], _simple(torch.sum))
    put(["permute"], _simple(torch.permute))
    put(["transpose"], _simple(torch.transpose))
    put(["squeeze", "squeeze_"], _simple(torch.squeeze))
    put(["unsqueeze", "unsqueeze_"], _simple(torch.unsqueeze))
    put(["t"], _simple(torch.t))
    put(["neg"], _simple(operator.neg))
    return table


_SKIPPED = ("_assert_tensor_metadata", "_assert_async", "_assert_scalar", "sym_constrain_range")


def import_exported_program(ep: Any) -> fx.GraphModule:
    """Rebuild a ``torch.export`` program from ordinary torch modules and functions.

    ``aten.conv2d`` becomes ``nn.Conv2d`` holding the weights, ``aten.batch_norm`` a
    ``nn.BatchNorm2d``, ``aten.relu`` ``nn.ReLU`` and so on; subgraphs on constants only are
    evaluated. An ATen op without a rule stays a ``call_function`` node, which the
    converter's support check then reports by name.

    Args:
        ep: a ``torch.export.ExportedProgram`` (inference graph, one tensor input or more).

    Returns:
        A GraphModule in eval mode.

    Raises:
        ValueError: the program has inputs that are neither tensors nor weights.
    """
    sig = ep.graph_signature
    consts: Dict[str, Any] = {}
    user_inputs: List[str] = []
    for spec in sig.input_specs:
        kind = spec.kind.name
        name = spec.arg.name
        if kind == "USER_INPUT":
            user_inputs.append(name)
        elif kind in ("PARAMETER", "BUFFER"):
            table = ep.state_dict if spec.target in ep.state_dict else ep.constants
            consts[name] = table[spec.target].detach()
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            consts[name] = ep.constants[spec.target]
        else:
            raise ValueError(f"torch.export program input {name!r} of kind {kind} is not supported")
    b = _ExportBuilder()
    env: Dict[fx.Node, Any] = {}
    handlers = _handlers()

    def resolve(a: Any) -> Any:
        # fx.node.map_arg only maps Nodes; _Const/_Multi pass through it unchanged.
        if isinstance(a, fx.Node):
            return env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(resolve(v) for v in a)
        return a

    output_names = [s.arg.name for s in sig.output_specs if s.kind.name == "USER_OUTPUT"]
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in consts:
                env[node] = _Const(consts[node.name])
            else:
                env[node] = b.graph.placeholder(node.name)
                _copy_meta(node, env[node])
            continue
        if node.op == "output":
            outs = node.args[0]
            flat = outs if isinstance(outs, (list, tuple)) else (outs,)
            picked = [
                resolve(o) for o in flat if isinstance(o, fx.Node) and o.name in output_names
            ] or [resolve(o) for o in flat]
            picked = [b.arg(o) for o in picked]
            b.graph.output(picked[0] if len(picked) == 1 else tuple(picked))
            continue
        if node.op != "call_function":
            raise ValueError(f"unexpected {node.op} node {node.name!r} in a torch.export graph")
        target = node.target
        if any(s in str(target) for s in _SKIPPED):
            env[node] = None
            continue
        args, kwargs = resolve(tuple(node.args)), {k: resolve(v) for k, v in node.kwargs.items()}
        if target is operator.getitem and isinstance(args[0], _Multi):
            env[node] = args[0].items.get(args[1])
            continue
        leaves: List[Any] = []
        fx.node.map_aggregate((args, kwargs), leaves.append)
        if not any(isinstance(v, fx.Node) for v in leaves) and not any(
            isinstance(v, _Multi) for v in leaves
        ):
            # Only constants: evaluate now (weight transposes, reshapes of parameters).
            values = fx.node.map_aggregate((args, kwargs), _value)
            with torch.no_grad():
                env[node] = _Const(target(*values[0], **values[1]))
            continue
        handler = handlers.get(target)
        result = handler(b, node, args, kwargs) if handler is not None else None
        if result is None:
            result = b.function(node, target, args, {k: b.arg(v) for k, v in kwargs.items()})
        env[node] = result
    gm = fx.GraphModule(b.root, b.graph, "ExportedModel")
    gm.graph.lint()
    return gm.eval()
