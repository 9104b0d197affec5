"""How each op of a traced graph converts, registered once per module type or callable.

Kinds:
    ``weighted``   Conv/Linear: linear in time; normalization scales fold into its weights.
    ``activation`` the canonical :class:`ann2snn.runtime.neuron.Activation`; becomes an IF neuron.
    ``linear``     ops that commute with averaging over time (pooling by average, add,
                   cat, reshapes, affine BatchNorm, scaling by constants ...).
    ``maxpool``    max pooling (nonlinear; converted with a dedicated method).
    ``shape``      ops on shapes/sizes or tuples (no tensor arithmetic).
    ``spiking``    modules that already belong to a converted graph.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.runtime.affine import ChannelAffine
from ann2snn.runtime.neuron import Activation, IFNeuron, RepeatInTime, Scale
from ann2snn.runtime.pooling import INDEXED_POOLS, AMax, GatedMaxPool, SpikingMaxPool

Check = Callable[[fx.GraphModule, fx.Node], Optional[str]]

_COMPARISONS = (
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.not_,
    operator.and_,
    operator.or_,
)
_SHAPE_ARITHMETIC = (
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.mod,
    operator.neg,
) + _COMPARISONS


@dataclass(frozen=True)
class OpRule:
    """How one module type, function or Tensor method converts."""

    kind: str
    check: Optional[Check] = None  # returns why this particular node cannot convert, or None


_RULES: Dict[Tuple[str, Any], OpRule] = {}


def register_op(op: str, *targets: Any, kind: str, check: Optional[Check] = None) -> None:
    """Register how ``targets`` convert. ``op`` is 'call_module' (targets are module types),
    'call_function' (callables) or 'call_method' (method names).

    Raises:
        ValueError: when a target is registered twice.
    """
    for target in targets:
        key = (op, target)
        if key in _RULES:
            raise ValueError(f"{op} {target!r} is already registered as {_RULES[key].kind}")
        _RULES[key] = OpRule(kind, check)


def rule_for(gm: fx.GraphModule, node: fx.Node) -> Optional[OpRule]:
    """The registered rule for ``node``, or None if the op is not supported."""
    if node.op == "call_module":
        key: Tuple[str, Any] = ("call_module", type(gm.get_submodule(str(node.target))))
    elif node.op in ("call_function", "call_method"):
        key = (node.op, node.target)
    else:
        return None
    if key not in _RULES:
        _register_optional_torchvision()
    return _RULES.get(key)


def registered_targets(op: str) -> List[Any]:
    """Every target registered for ``op`` ('call_module', 'call_function', 'call_method')."""
    _register_optional_torchvision()
    return [target for (kind, target) in _RULES if kind == op]


def kind_of(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    rule = rule_for(gm, node)
    return rule.kind if rule else None


def depends_on_input(node: Any) -> bool:
    """True when ``node`` is an fx node whose value is computed from a graph input."""
    if not isinstance(node, fx.Node):
        return False
    cache = node.meta.setdefault("_ann2snn_dep", {})
    if "input" not in cache:
        if node.op == "placeholder":
            cache["input"] = True
        else:
            cache["input"] = any(depends_on_input(a) for a in node.all_input_nodes)
    return cache["input"]


_SHAPE_SOURCES = ("size", "dim", "numel")


def is_shape_value(node: Any) -> bool:
    """True when ``node`` computes a shape, size or other Python number, not a tensor.

    Uses the type recorded by shape propagation when present, else follows the node back
    to ``x.size()`` / ``x.shape`` / ``x.dim()`` through arithmetic and indexing.
    """
    if not isinstance(node, fx.Node):
        return False
    recorded = node.meta.get("type")
    if recorded is not None:
        return not issubclass(recorded, torch.Tensor) and recorded is not tuple
    cache = node.meta.setdefault("_ann2snn_dep", {})
    if "shape" not in cache:
        if node.op == "call_method" and node.target in _SHAPE_SOURCES:
            cache["shape"] = True
        elif node.op == "call_function" and node.target is getattr:
            cache["shape"] = len(node.args) > 1 and node.args[1] in ("shape", "ndim")
        elif node.op == "call_function" and node.target in _SHAPE_ARITHMETIC:
            inputs = node.all_input_nodes
            cache["shape"] = bool(inputs) and all(is_shape_value(a) for a in inputs)
        else:
            cache["shape"] = False
    return cache["shape"]


def _is_tensor_node(arg: Any) -> bool:
    if not isinstance(arg, fx.Node) or is_shape_value(arg):
        return False
    meta = arg.meta.get("tensor_meta")
    if meta is None:
        return depends_on_input(arg) and arg.op != "call_method" or arg.op == "get_attr"
    return hasattr(meta, "shape")


def _at_most_one_signal(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    divisions = (operator.truediv, operator.itruediv, torch.div, "div", "div_")
    if node.target in divisions and len(node.args) > 1:
        if _is_tensor_node(node.args[1]) and depends_on_input(node.args[1]):
            return "divides by a signal computed from the input, which is not linear"
    signals = [a for a in node.args if _is_tensor_node(a) and depends_on_input(a)]
    if len(signals) > 1:
        return (
            "multiplies two signals computed from the input (a product of activations, as in "
            "gating or attention), which spiking neurons cannot represent"
        )
    return None


def _hardtanh_from_zero(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    mod = gm.get_submodule(str(node.target))
    if mod.min_val != 0.0:
        return f"Hardtanh(min_val={mod.min_val}) is not a ReLU-family activation (needs 0)"
    return None


def _constant_pad(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
    if mode != "constant" or (value or 0.0) != 0.0:
        return f"padding mode={mode!r} value={value} is not zero padding"
    return None


def _shape_getattr(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    if len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim", "T"):
        return None
    return f"reads attribute {node.args[1:]!r} of a tensor"


def _shape_only(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    tensors = [a for a in node.all_input_nodes if _is_tensor_node(a) and depends_on_input(a)]
    if tensors:
        return "compares or asserts on tensor values (only shapes and sizes can be checked)"
    return None


def _running_statistics(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    bn = gm.get_submodule(str(node.target))
    if bn.running_mean is None or bn.running_var is None:
        return (
            "BatchNorm without running statistics (track_running_stats=False) normalizes "
            "with the statistics of each batch, which is not a fixed linear map"
        )
    return None


def _identity_in_eval(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
    if training is not False:
        return "stochastic depth in training mode (call model.eval() before converting)"
    return None


def _values_only(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    if getattr(gm.get_submodule(str(node.target)), "return_indices", False):
        return "max pooling that also returns the indices of the maxima (return_indices=True)"
    return None


def _keeps_batch_dim(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """A reduction must not reduce dim 0: in the time loop it stacks ``steps * B`` rows."""
    what = node.target if isinstance(node.target, str) else node.target.__name__
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dim is None:
        return f"{what} over all dimensions reduces the batch dimension 0"
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (tuple, list)) else ()
    meta = getattr(node.args[0], "meta", {}).get("tensor_meta") if node.args else None
    ndim = len(meta.shape) if meta is not None and hasattr(meta, "shape") else None
    for d in dims:
        if not isinstance(d, int):
            continue
        if d == 0 or (ndim is not None and d == -ndim):
            return f"{what} over dim={dim} reduces the batch dimension 0"
    return None


def _average_only(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    dtype = node.kwargs.get("dtype")
    if dtype is not None:
        return "mean with a dtype argument"
    return _keeps_batch_dim(gm, node)


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
register_op("call_module", *_CONV, nn.Linear, kind="weighted")
register_op("call_module", Activation, kind="activation")
register_op("call_module", nn.ReLU, nn.ReLU6, kind="activation")
register_op("call_module", nn.Hardtanh, kind="activation", check=_hardtanh_from_zero)
register_op("call_function", F.relu, torch.relu, torch.relu_, F.relu6, kind="activation")
register_op("call_method", "relu", "relu_", kind="activation")
register_op(
    "call_module",
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    kind="linear",
    check=_running_statistics,
)
register_op(
    "call_module",
    ChannelAffine,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.ZeroPad2d,
    nn.ChannelShuffle,
    Scale,
    kind="linear",
)
register_op("call_module", *INDEXED_POOLS, kind="maxpool", check=_values_only)
register_op("call_module", AMax, kind="maxpool")
register_op(
    "call_function",
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    torch.max_pool1d,
    torch.max_pool2d,
    torch.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    torch.amax,
    kind="maxpool",
)
register_op("call_method", "amax", kind="maxpool")
register_op("call_module", IFNeuron, RepeatInTime, SpikingMaxPool, GatedMaxPool, kind="spiking")
register_op(
    "call_function",
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.neg,
    torch.add,
    torch.sub,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.dropout,
    F.dropout2d,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.batch_norm,
    kind="linear",
)
register_op("call_function", torch.mean, kind="linear", check=_average_only)
register_op("call_method", "mean", kind="linear", check=_average_only)
register_op("call_function", torch.sum, kind="linear", check=_keeps_batch_dim)
register_op("call_method", "sum", kind="linear", check=_keeps_batch_dim)
register_op("call_function", F.pad, kind="linear", check=_constant_pad)
register_op(
    "call_function",
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.mul,
    torch.div,
    kind="linear",
    check=_at_most_one_signal,
)
register_op("call_method", "mul", "div", "mul_", "div_", kind="linear", check=_at_most_one_signal)
register_op(
    "call_method",
    "add",
    "add_",
    "sub",
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "chunk",
    "split",
    "expand",
    "expand_as",
    "view_as",
    "reshape_as",
    "float",
    "clone",
    "detach",
    kind="linear",
)
register_op("call_method", "size", "dim", "numel", kind="shape")
register_op("call_function", operator.getitem, kind="shape")
register_op("call_function", getattr, kind="shape", check=_shape_getattr)
register_op("call_function", operator.floordiv, kind="shape")
# Shape checks (``torch._assert(x.shape[2] == 224, ...)``) run on sizes, not on signals.
register_op("call_function", torch._assert, *_COMPARISONS, kind="shape", check=_shape_only)


_TORCHVISION_REGISTERED = []


def _register_optional_torchvision() -> bool:
    """Register torchvision's ops once torchvision is imported (importing it here would
    slow down every ``import ann2snn``); return True when this call registered them.

    Stochastic depth (ConvNeXt, EfficientNetV2, Swin) is the identity in eval mode;
    canonicalize_activations removes it like Dropout.
    """
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    if module is None or _TORCHVISION_REGISTERED:
        return False
    _TORCHVISION_REGISTERED.append(True)
    register_op("call_module", module.StochasticDepth, kind="linear")
    register_op("call_function", module.stochastic_depth, kind="linear", check=_identity_in_eval)
    return True
