"""Tracing user models into torch.fx graphs, with errors that say how to fix a failed trace."""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

import torch
from torch import fx, nn

from ann2snn.errors import ConversionError

_FRAME = re.compile(r'\s*File "([^"]+)", line (\d+)')
_LIBRARY_PARTS = ("/torch/", "/ann2snn/tracing.py", "/ann2snn/api.py")


_LEAF_TYPES: List[Type[nn.Module]] = []


def register_leaf_module(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: ann2snn's own modules stay single nodes when a graph is traced."""
    _LEAF_TYPES.append(cls)
    return cls


class SNNTracer(fx.Tracer):
    """An ``fx.Tracer`` that keeps the user's source lines and honours extra leaf modules.

    Args:
        leaf_modules: module types that are kept as single ``call_module`` nodes instead of
            being traced through (for blocks with data-dependent control flow).
    """

    def __init__(self, leaf_modules: Iterable[Type[nn.Module]] = ()) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.extra_leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, tuple(_LEAF_TYPES)) or isinstance(m, self.extra_leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[Type[nn.Module]] = (),
    concrete_args: Optional[Dict[str, Any]] = None,
) -> fx.GraphModule:
    """Trace ``model`` into an ``fx.GraphModule``; an existing GraphModule is returned as is.

    Args:
        model: the ANN, in eval mode.
        leaf_modules: module types not to trace through.
        concrete_args: values for arguments that steer Python control flow
            (as in ``torch.fx.symbolic_trace``).

    Returns:
        The traced GraphModule (source lines recorded in ``node.stack_trace``).

    Raises:
        ConversionError: when symbolic tracing fails, naming the cause and the fix.
    """
    if isinstance(model, fx.GraphModule):
        return model
    _import_what_tracing_imports()
    tracer = SNNTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # fx raises many types: TraceError, TypeError, RuntimeError ...
        if _interrupted_or_broken_import(exc):
            raise  # Ctrl-C during one of torch's lazy imports: not the model's fault
        raise ConversionError(_trace_failure_message(model, exc)) from exc
    _default_concrete_args(model, graph, concrete_args)
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _import_what_tracing_imports() -> None:
    """Import, from Python, what fx imports lazily when it records stack traces.

    The first node fx records filters its stack through
    ``torch.fx.experimental.symbolic_shapes.uninteresting_files``, which imports
    ``torch._dynamo``, ``torch._inductor`` and ``torch.export`` (about a second, once per
    process). Part of that runs under a C++ call that swallows a KeyboardInterrupt and
    leaves a half-imported module behind, so Ctrl-C was lost or came back later as an
    ``AttributeError``. Done here first, the imports let Ctrl-C through.
    """
    try:
        from torch.fx.experimental.symbolic_shapes import uninteresting_files
    except ImportError:  # another torch version: nothing to prepare
        return
    uninteresting_files()


def _default_concrete_args(
    model: nn.Module, graph: fx.Graph, concrete_args: Optional[Dict[str, Any]]
) -> None:
    """Give the placeholders fx keeps for ``concrete_args`` their value as default.

    fx specializes the graph on each concrete value but still lists the argument (renamed,
    and without a default when ``forward`` had none); with the default the graph runs on
    the one input tensor.
    """
    if not concrete_args:
        return
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != len(placeholders) or any(p.kind not in plain for p in params):
        return
    for param, node in zip(params, placeholders):
        if param.name in concrete_args and not node.args:
            node.args = (concrete_args[param.name],)


def _interrupted_or_broken_import(exc: BaseException) -> bool:
    """True when ``exc`` comes from a KeyboardInterrupt or a half-done library import.

    Ctrl-C while tracing often lands in one of torch's lazy imports (``torch._dynamo``,
    ``torch._inductor``); the interrupted module stays half-initialized and the next
    import of it fails with an ``AttributeError`` / ``ImportError`` raised by a module body.
    Neither says anything about the user's model.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, (AttributeError, ImportError)):
        return False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "<module>" and _is_library_file(code.co_filename):
            return True
        tb = tb.tb_next
    return False


def failing_submodule(model: nn.Module, exc: BaseException) -> Tuple[str, Optional[nn.Module]]:
    """The innermost module of ``model`` whose code was running when tracing raised ``exc``.

    Returns:
        ``(qualified name, module)``; ``("", model)`` for the model's own ``forward``, and
        ``("", None)`` when no frame of the traceback belongs to a module of ``model``.
    """
    names = {id(m): name for name, m in model.named_modules()}
    found: Tuple[str, Optional[nn.Module]] = ("", None)
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = (names[id(owner)], owner)
        tb = tb.tb_next
    return found


def _failing_user_line(exc: BaseException) -> str:
    """``file:line: code`` of the innermost traceback frame in user code."""
    import linecache

    where = ""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _is_library_file(code.co_filename):
            text = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            where = f"{code.co_filename}:{tb.tb_lineno}" + (f": {text}" if text else "")
        tb = tb.tb_next
    return where


def _trace_failure_message(model: nn.Module, exc: Exception) -> str:
    name, block = failing_submodule(model, exc)
    where = _failing_user_line(exc)
    lines = [f"Cannot trace {type(model).__name__} with torch.fx: {type(exc).__name__}: {exc}"]
    if block is not None and name:
        cls = type(block)
        lines.append(
            f"It failed inside submodule {name!r} ({cls.__module__}.{cls.__qualname__})"
            + (f", at {where}" if where else "")
            + "."
        )
    elif block is not None:
        lines.append(
            f"It failed in {type(model).__name__}.forward"
            + (f", at {where}" if where else "")
            + "."
        )
    elif where:
        lines.append(f"It failed at {where}.")
    lines.append(
        "Symbolic tracing runs forward() with proxies instead of tensors, so Python control "
        "flow that depends on tensor values or shapes (an `if` on x.size(), int(x.shape[1]), a "
        "loop over x.shape[0], asserts on shapes) cannot be recorded."
    )
    if block is not None and name:
        leaf = (
            f"pass `leaf_modules=({type(block).__qualname__},)` to keep {name!r} as one opaque "
            "module (conversion then refuses it unless it is a supported layer, so this helps "
            "only for blocks that ann2snn converts as a whole)"
        )
    else:
        leaf = (
            "pass `leaf_modules=(TheBlockClass,)` to keep the offending block as one opaque "
            "module (it is then refused unless it is a supported layer)"
        )
    fixes = [
        leaf,
        "pass `concrete_args={'arg': value}` to fix arguments of forward() that steer "
        "control flow (as in torch.fx.symbolic_trace)",
        "rewrite that logic with tensor ops that do not branch (e.g. torch.flatten(x, 1) "
        "instead of x.view(x.size(0), -1) under an `if`, or compute the sizes in __init__)",
    ]
    lines.append("Fixes: " + "; ".join(f"({i}) {f}" for i, f in enumerate(fixes, 1)) + ".")
    return "\n".join(lines)


def _frames(stack_trace: str) -> List[Tuple[str, str, str]]:
    """(file, line, code) for each frame of an fx ``stack_trace``, outermost first."""
    frames = []
    lines = stack_trace.splitlines()
    for i, raw in enumerate(lines):
        m = _FRAME.match(raw)
        if m:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if _FRAME.match(code or ""):
                code = ""
            frames.append((m.group(1), m.group(2), code))
    return frames


def _is_library_file(path: str) -> bool:
    norm = path.replace("\\", "/")
    return any(part in norm for part in _LIBRARY_PARTS)


def user_source_line(node: fx.Node) -> str:
    """The innermost frame of ``node.stack_trace`` in user code, as ``file:line: code``."""
    for file_name, line_no, code in reversed(_frames(node.stack_trace or "")):
        if not _is_library_file(file_name):
            return f"{file_name}:{line_no}: {code}" if code else f"{file_name}:{line_no}"
    return ""


def describe_node(gm: fx.GraphModule, node: fx.Node) -> str:
    """A one-line human description of ``node``: op, target and source line."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        what = f"module {node.target!r} ({type(mod).__module__}.{type(mod).__name__})"
    elif node.op == "call_function":
        fn = node.target
        what = f"function {getattr(fn, '__module__', '') or ''}.{getattr(fn, '__name__', fn)}"
    elif node.op == "call_method":
        what = f"method Tensor.{node.target}"
    else:
        what = f"{node.op} {node.target}"
    src = user_source_line(node)
    return f"node '{node.name}': {what}" + (f" at {src}" if src else "")


def is_module(gm: fx.GraphModule, node: fx.Node, types: Any) -> bool:
    """True when ``node`` calls a submodule of exactly one of ``types``."""
    if node.op != "call_module":
        return False
    types = types if isinstance(types, tuple) else (types,)
    return type(gm.get_submodule(str(node.target))) in types


def replace_submodule(gm: fx.GraphModule, qualified_name: str, new: nn.Module) -> None:
    """Swap the submodule at ``qualified_name`` through its parent and ``setattr``."""
    parent_name, _, attr = qualified_name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, new)


def add_submodule(gm: fx.GraphModule, base_name: str, module: nn.Module) -> str:
    """Add ``module`` under a fresh top-level name derived from ``base_name``; return the name."""
    base = base_name.replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name = f"{base}_{i}"
        i += 1
    gm.add_module(name, module)
    return name


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """End a pass: lint, drop unused submodules, recompile."""
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def tensor_of(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
