"""Architectures for bare weights: a bundled model name or ``"package.module:factory"``.

The builders here turn a name plus keyword arguments and a ``state_dict`` into a float32
module in eval mode, together with the ``weights_only``-safe source dict that rebuilds it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Union

import torch
from torch import nn

# Prefixes that wrappers add to every parameter name.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def registry() -> Dict[str, Callable[..., nn.Module]]:
    from ann2snn.models import MODELS

    return MODELS


def parse_kwargs(arch_kwargs: Union[None, str, Mapping[str, Any]]) -> Dict[str, Any]:
    if arch_kwargs is None or arch_kwargs == "":
        return {}
    if isinstance(arch_kwargs, Mapping):
        return dict(arch_kwargs)
    try:
        value = json.loads(arch_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"the architecture keyword arguments {arch_kwargs!r} are not valid JSON ({exc}); "
            "write them as a JSON object, e.g. '{\"width\": 16}'"
        ) from exc
    if not isinstance(value, dict):
        raise ValueError(
            f"the architecture keyword arguments must be a JSON object such as "
            f"'{{\"width\": 16}}', got {arch_kwargs!r}"
        )
    return value


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--arch {spec!r} is neither a bundled model name nor 'module:function'")
    # Like `python -m`, let the user's working directory provide the package.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import {module_name!r} for --arch {spec!r}: {exc}. Run from the folder "
            "that contains the package, or add it to PYTHONPATH."
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (from --arch {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--arch {spec!r} names {type(target).__name__}, not a callable")
    return target


def build_arch(arch: str, arch_kwargs: Union[None, str, Mapping[str, Any]] = None) -> nn.Module:
    """Build an untrained architecture from a bundled name or ``"package.module:factory"``.

    Args:
        arch: a key of :data:`ann2snn.models.MODELS`, or ``"package.module:function"``
            (a function or class returning an ``nn.Module``).
        arch_kwargs: keyword arguments, as a dict or a JSON object string.

    Returns:
        The new module.

    Raises:
        ValueError: unknown name, failed import, bad keyword arguments.
    """
    kwargs = parse_kwargs(arch_kwargs)
    known = registry()
    if arch in known:
        factory = known[arch]
    elif ":" in arch:
        factory = _import_factory(arch)
    else:
        raise ValueError(
            f"unknown architecture {arch!r}. Use a bundled model name ("
            f"{', '.join(sorted(known))}) or 'package.module:function' naming your own "
            "model factory."
        )
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {arch!r} with keyword arguments {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def strip_wrapper_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _load_weights(model: nn.Module, state: Mapping[str, Any], arch: str, where: str) -> None:
    """``load_state_dict`` with a message that lists what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != own[k].shape
    ]
    if missing or unexpected or wrong:

        def some(items: List[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing in the file: {some(missing)}")
        if unexpected:
            parts.append(f"not in the architecture: {some(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch: {some(wrong)}")
        raise ValueError(
            f"the weights in {where} do not fit the architecture {arch!r}: "
            + "; ".join(parts)
            + ". Check --arch and --arch-kwargs (e.g. the width the model was trained with)."
        )
    cast = {
        k: (v.to(own[k].dtype) if torch.is_floating_point(v) else v)
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    model.load_state_dict(cast)


def _built(arch: str, kwargs: Dict[str, Any], state: Mapping[str, Any], where: str, source: Dict):
    """The architecture with ``state`` loaded (float32, eval) and its source dict:
    ``source`` plus the kwargs and the loaded weights."""
    model = build_arch(arch, kwargs)
    _load_weights(model, state, arch, where)
    model = model.float().eval()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, {**source, "kwargs": kwargs, "state_dict": weights}


def from_registry(name: str, kwargs: Dict[str, Any], state: Mapping[str, Any], where: str):
    """A bundled architecture with ``state`` loaded, and its ``registry`` source."""
    return _built(name, kwargs, state, where, {"kind": "registry", "arch": name})


def from_arch(arch: str, kwargs_in: Any, state: Mapping[str, Any], where: str):
    """A bundled name or a ``package.module:factory`` with ``state`` loaded, and its
    source (``registry`` or ``factory``)."""
    kwargs = parse_kwargs(kwargs_in)
    if arch in registry():
        return from_registry(arch, kwargs, state, where)
    return _built(arch, kwargs, state, where, {"kind": "factory", "factory": arch})
