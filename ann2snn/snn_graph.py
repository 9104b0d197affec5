"""A converted spiking graph as data: a description over a closed set of ops, plus tensors.

:func:`describe_graph` turns the ``fx.GraphModule`` that :func:`ann2snn.convert` emits into

* a description made only of strings, numbers, booleans, lists and dicts: every graph
  (the root, ``static_prefix``, ``time_loop``) as its list of nodes, and every module as
  its type, taken from a closed set, and its settings;
* a flat dict of tensors (the ``state_dict`` entries, plus tensor constants that nodes
  read with ``get_attr``).

:func:`build_graph` rebuilds the identical graph from the two without importing or
running any code named in them: module types and functions are looked up in the tables
below, so ``torch.load(weights_only=True)`` of a file holding them is all it takes.
Anything outside the tables raises :class:`UnsupportedGraphError` when describing.

:func:`ann_view` is the ANN the spiking graph stands for: every IF neuron put back as the
activation it replaced (``min(relu(x), clip) / threshold``) and every spike-train max
pooling as the plain pooling. Normalization keeps every tensor in ANN units, so this
computes the ANN's own function (up to the float rounding of the folded weights).
"""

from __future__ import annotations

import builtins
import copy
import inspect
import math
import operator
from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.runtime.affine import ChannelAffine
from ann2snn.runtime.neuron import Activation, IFNeuron, RepeatInTime, Scale
from ann2snn.runtime.pooling import AMax, GatedMaxPool, SpikingMaxPool
from ann2snn.runtime.temporal import reset_state, set_steps
from ann2snn.tracing import replace_submodule

__all__ = ["UnsupportedGraphError", "ann_view", "build_graph", "describe_graph"]

#: Version of the description layout.
DESCRIPTION_VERSION = 1


class UnsupportedGraphError(ValueError):
    """The graph holds a module or function outside the closed set a description can name."""


# ---------------------------------------------------------------------------------------
# The closed sets

#: ann2snn's own runtime modules, rebuilt from their attributes and tensors.
_OWN_MODULES: Dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Activation,
        AMax,
        ChannelAffine,
        GatedMaxPool,
        IFNeuron,
        RepeatInTime,
        Scale,
        SpikingMaxPool,
    )
}
# Attributes of ann2snn's modules that hold simulation state, never saved.
_STATE_ATTRS = ("v", "total", "last")


def _torch_module_class(name: str) -> type:
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name.startswith("_"):
        raise UnsupportedGraphError(f"the description names an unknown module type {name!r}")
    return cls


def _function_table() -> Dict[str, Callable[..., Any]]:
    """Every function a converted graph may call, by a stable name."""
    from ann2snn.converter_passes.hoist_static_prefix import _getitem
    from ann2snn.converter_passes.op_support import registered_targets

    table: Dict[str, Callable[..., Any]] = {}
    extras = (
        _getitem,
        builtins.getattr,
        operator.getitem,
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        operator.floordiv,
        operator.neg,
        torch.add,
        torch.sub,
        torch.mul,
        torch.cat,
        torch.flatten,
        torch.reshape,
        torch.relu,
        F.relu,
    )
    for fn in tuple(registered_targets("call_function")) + extras:
        table[_function_name(fn)] = fn
    return table


def _function_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


def _method_names() -> set:
    from ann2snn.converter_passes.op_support import registered_targets

    return set(registered_targets("call_method")) | {"view", "reshape", "flatten", "size"}


# ---------------------------------------------------------------------------------------
# Values (node arguments and module settings)


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Size):
        return {"size": [int(v) for v in value]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UnsupportedGraphError(f"a dict with non-string keys {list(value)!r}")
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}  # rebuilt graphs start on the CPU; .to() moves them
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).replace("torch.", "")}
    raise UnsupportedGraphError(f"a value of type {type(value).__name__} ({value!r})")


def _decode(value: Any, env: Mapping[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, body), *rest = value.items()
    if rest:
        raise ValueError(f"malformed value {value!r} in the graph description")
    if tag == "node":
        return env[body]
    if tag == "float":
        return float(body)
    if tag == "size":
        return torch.Size(body)
    if tag == "tuple":
        return tuple(_decode(v, env) for v in body)
    if tag == "dict":
        return {k: _decode(v, env) for k, v in body.items()}
    if tag == "slice":
        return slice(*(_decode(v, env) for v in body))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        return _torch_attr(body, torch.dtype)
    if tag == "device":
        return torch.device("cpu")
    if tag == "memory_format":
        return _torch_attr(body, torch.memory_format)
    raise ValueError(f"unknown value tag {tag!r} in the graph description")


def _torch_attr(name: str, kind: type) -> Any:
    value = getattr(torch, str(name), None)
    if not isinstance(value, kind):
        raise ValueError(f"unknown {kind.__name__} {name!r} in the graph description")
    return value


# ---------------------------------------------------------------------------------------
# Describing


def describe_graph(gm: fx.GraphModule) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The description and tensors of a converted spiking graph (see the module docstring).

    Raises:
        UnsupportedGraphError: a module type, function or value outside the closed set.
    """
    tensors: Dict[str, torch.Tensor] = {}
    desc = _describe_module(gm, "", tensors)
    return {"version": DESCRIPTION_VERSION, "root": desc}, tensors


def _own_tensors(m: nn.Module, prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    params, buffers = [], []
    for name, p in m._parameters.items():
        params.append(name)
        if p is not None:
            tensors[prefix + name] = p.detach().cpu().clone()
    for name, b in m._buffers.items():
        buffers.append(name)
        if b is not None:
            tensors[prefix + name] = b.detach().cpu().clone()
    return {"parameters": params, "buffers": buffers}


def _describe_module(m: nn.Module, prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict:
    children = {
        name: _describe_module(child, f"{prefix}{name}.", tensors)
        for name, child in m.named_children()
    }
    if isinstance(m, fx.GraphModule):
        return {
            "kind": "graph",
            "class_name": type(m).__name__,
            "nodes": _describe_nodes(m, prefix, tensors),
            "children": children,
            "meta": _encode(_plain_meta(m.meta)),
            **_own_tensors(m, prefix, tensors),
        }
    cls = type(m)
    if cls is nn.Module:  # a plain container GraphModule makes for dotted targets
        return {"kind": "container", "children": children, **_own_tensors(m, prefix, tensors)}
    if cls in _OWN_MODULES.values():
        attrs = {
            k: _encode(v)
            for k, v in vars(m).items()
            if not k.startswith("_") and k != "training" and k not in _STATE_ATTRS
        }
        return {
            "kind": "own",
            "type": cls.__name__,
            "attrs": attrs,
            "children": children,
            **_own_tensors(m, prefix, tensors),
        }
    if getattr(nn, cls.__name__, None) is cls and not children:
        return {
            "kind": "torch",
            "type": cls.__name__,
            "init": _init_arguments(m),
            **_own_tensors(m, prefix, tensors),
        }
    raise UnsupportedGraphError(
        f"module {prefix.rstrip('.') or '<root>'} of type {cls.__module__}.{cls.__qualname__}"
    )


def _plain_meta(meta: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (bool, int, float, str)) or v is None}


def _init_arguments(m: nn.Module) -> Dict[str, Any]:
    """The constructor arguments of a torch module, read back from its attributes."""
    args = {}
    for name, param in inspect.signature(type(m).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in ("device", "dtype"):
            continue
        if name in ("bias", "affine") and name not in vars(m) and hasattr(m, name):
            args[name] = getattr(m, name) is not None
            continue
        if not hasattr(m, name):
            if param.default is inspect.Parameter.empty:
                raise UnsupportedGraphError(
                    f"{type(m).__name__}: cannot read its constructor argument {name!r}"
                )
            continue
        value = getattr(m, name)
        if isinstance(value, torch.Tensor):
            value = value is not None if name == "bias" else value.tolist()
        args[name] = _encode(value)
    return args


def _describe_nodes(
    gm: fx.GraphModule, prefix: str, tensors: Dict[str, torch.Tensor]
) -> List[Dict[str, Any]]:
    functions = {fn: name for name, fn in _function_table().items()}
    methods = _method_names()
    state = gm.state_dict(keep_vars=True)
    nodes = []
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_function":
            if target not in functions:
                raise UnsupportedGraphError(f"function {_function_name(target)} (node {node.name})")
            target = functions[target]
        elif node.op == "call_method":
            if target not in methods:
                raise UnsupportedGraphError(f"Tensor method {target!r} (node {node.name})")
        elif node.op == "get_attr" and str(target) not in state:
            value = _get_path(gm, str(target))
            if not isinstance(value, torch.Tensor):
                raise UnsupportedGraphError(f"attribute {target!r} of type {type(value).__name__}")
            tensors[f"{prefix}{target}"] = value.detach().cpu().clone()
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "target": str(target),
                "args": _encode(node.args),
                "kwargs": _encode(dict(node.kwargs)),
            }
        )
    return nodes


def _get_path(m: nn.Module, path: str) -> Any:
    for part in path.split("."):
        m = getattr(m, part)
    return m


# ---------------------------------------------------------------------------------------
# Building


def build_graph(description: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """The spiking graph a description and its tensors stand for (on the CPU).

    Raises:
        ValueError: a malformed description, an unknown module type or function, or
            tensors that do not fit it.
    """
    if int(description.get("version", 0)) > DESCRIPTION_VERSION:
        raise ValueError(
            f"graph description version {description.get('version')} is newer than this "
            f"ann2snn reads ({DESCRIPTION_VERSION}); upgrade ann2snn"
        )
    used: set = set()
    module = _build_module(description["root"], "", tensors, used)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"tensors {unused[:6]} fit no part of the graph description")
    return module


def _take(tensors: Mapping[str, torch.Tensor], key: str, used: set) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"the graph description needs tensor {key!r}, which is missing")
    used.add(key)
    return tensors[key].detach().clone()


def _set_tensors(m: nn.Module, spec: Mapping, prefix: str, tensors: Mapping, used: set) -> None:
    for name in spec.get("parameters", []):
        key = prefix + name
        value = _take(tensors, key, used) if key in tensors else None
        if value is None:
            m.register_parameter(name, None)
        else:
            m.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
    for name in spec.get("buffers", []):
        key = prefix + name
        m.register_buffer(name, _take(tensors, key, used) if key in tensors else None)


def _build_module(spec: Mapping, prefix: str, tensors: Mapping, used: set) -> nn.Module:
    kind = spec.get("kind")
    children = {
        name: _build_module(child, f"{prefix}{name}.", tensors, used)
        for name, child in spec.get("children", {}).items()
    }
    if kind == "torch":
        cls = _torch_module_class(str(spec["type"]))
        m = cls(**{k: _decode(v, {}) for k, v in spec.get("init", {}).items()})
        _set_tensors(m, spec, prefix, tensors, used)
        return m
    if kind == "own":
        cls = _OWN_MODULES.get(str(spec.get("type")))
        if cls is None:
            raise ValueError(f"the description names an unknown module type {spec.get('type')!r}")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        for k, v in spec.get("attrs", {}).items():
            setattr(m, k, _decode(v, {}))
        for name, child in children.items():
            m.add_module(name, child)
        _set_tensors(m, spec, prefix, tensors, used)
        if hasattr(m, "reset"):
            m.reset()  # the simulation state (never saved) starts empty
        return m
    if kind == "container":
        m = nn.Module()
        for name, child in children.items():
            m.add_module(name, child)
        _set_tensors(m, spec, prefix, tensors, used)
        return m
    if kind == "graph":
        return _build_graph_module(spec, prefix, children, tensors, used)
    raise ValueError(f"unknown module kind {kind!r} in the graph description")


def _build_graph_module(
    spec: Mapping, prefix: str, children: Dict[str, nn.Module], tensors: Mapping, used: set
) -> fx.GraphModule:
    root = nn.Module()
    for name, child in children.items():
        root.add_module(name, child)
    functions = _function_table()
    methods = _method_names()
    graph = fx.Graph()
    env: Dict[str, fx.Node] = {}
    for n in spec["nodes"]:
        op, target = n["op"], n["target"]
        if op == "call_function":
            if target not in functions:
                raise ValueError(f"the description calls an unknown function {target!r}")
            target = functions[target]
        elif op == "call_method" and target not in methods:
            raise ValueError(f"the description calls an unknown Tensor method {target!r}")
        elif op == "get_attr" and f"{prefix}{target}" in tensors:
            owner_path, _, attr = str(target).rpartition(".")
            owner = _get_path(root, owner_path) if owner_path else root
            setattr(owner, attr, _take(tensors, f"{prefix}{target}", used))
        args = _decode(n["args"], env)
        kwargs = _decode(n["kwargs"], env)
        if op == "output":
            node = graph.output(args[0])
        else:
            node = graph.create_node(op, target, tuple(args), kwargs, name=n["name"])
        env[n["name"]] = node
        if node.name != n["name"]:
            raise ValueError(f"node name {n['name']!r} is used twice in the graph description")
    # get_attr tensors were set on ``root`` above; GraphModule copies them as buffers.
    gm = fx.GraphModule(root, graph, class_name=str(spec.get("class_name", "GraphModule")))
    gm.meta.update(_decode(spec.get("meta", {"dict": {}}), {}))
    return gm


# ---------------------------------------------------------------------------------------
# The ANN a spiking graph stands for


def ann_view(gm: nn.Module) -> nn.Module:
    """A copy of the spiking graph that computes the ANN: IF neurons become the activation
    they replaced, spike-train max poolings the plain pooling, one step, no state."""
    ann = copy.deepcopy(gm)
    reset_state(ann)
    set_steps(ann, 1)
    for name, m in list(ann.named_modules()):
        if isinstance(m, IFNeuron):
            act = Activation(None)
            act.clip = None if m.clip is None else m.clip.detach().clone()
            act.threshold = m.threshold.detach().clone()
            replace_submodule(ann, name, act)
        elif isinstance(m, (SpikingMaxPool, GatedMaxPool)):
            plain = copy.deepcopy(m.pool)
            if hasattr(plain, "return_indices"):
                plain.return_indices = False
            replace_submodule(ann, name, plain)
    return ann.eval()
