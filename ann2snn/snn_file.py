"""Loading ANNs from files, and saving / loading converted SNNs.

ANN inputs (:func:`load_model`):

* a bundled model name (``"fmnist_avgpool_cnn"``): the registered architecture with its
  bundled trained weights;
* a ``.pt`` / ``.pth`` file holding a ``state_dict`` (a ``module.`` prefix from
  ``DataParallel`` is removed), a training checkpoint dict that contains one, or a
  checkpoint written by :mod:`ann2snn.models.train`; the architecture comes from ``arch``:
  a name from :mod:`ann2snn.models` or ``"package.module:factory"`` with keyword arguments;
* a whole pickled ``nn.Module`` or a checkpoint holding Python objects: such files run code
  when unpickled, so they are read only with ``trust_checkpoint=True``;
* a ``torch.export`` program (``.pt2``): ``torch.export.load`` unpickles too, so it also
  needs ``trust_checkpoint=True``; its ATen graph is rebuilt from ordinary torch modules
  (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU`` ...) so the converter treats it like
  a hand-written model;
* an ONNX file (``.onnx``, external weight data next to it is read), imported with
  :func:`ann2snn.frontends.onnx.importer.import_onnx`.

SNN files (:func:`save_snn` / :func:`load_snn`) are ``torch.save`` dicts that
``torch.load(weights_only=True)`` reads: only tensors, numbers, strings, bytes, lists and
dicts, never pickled classes. A file holds

* ``ann_source``: how to rebuild the ANN (bundled-model name + kwargs + ``state_dict``, or
  the ONNX bytes, or for the code-bearing kinds ``factory`` / ``export`` / ``pickle``
  the factory path or file bytes, which are used only with ``trust_checkpoint=True``);
* ``options``: the conversion options (mode, channel-wise, v_init, fold_scales, input shape);
* ``snn_state``: the converted network's ``state_dict``: every folded weight, IF threshold
  and normalization scale;
* ``probe``: a fixed input and the ANN's output on it, to check the rebuilt ANN;
* ``provenance``: where the ANN and the calibration data came from.

:func:`load_snn` rebuilds the ANN, re-runs the deterministic conversion passes on a dummy
calibration batch (the graph structure does not depend on the calibration values), then
loads ``snn_state`` strictly over it, so every calibrated value comes from the file.
"""

from __future__ import annotations

import datetime
import importlib
import io
import json
import os
import pathlib
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import fx, nn

from ann2snn.config import ConversionConfig
from ann2snn.frontends.torch_export import import_exported_program

__all__ = [
    "SNN_FORMAT",
    "LoadedModel",
    "UntrustedFileError",
    "is_snn_file",
    "load_model",
    "load_snn",
    "model_from_source",
    "read_snn_header",
    "save_snn",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Value of the ``format`` key of every SNN file.
SNN_FORMAT = "ann2snn.snn"
#: Version of the SNN file layout; bumped when the layout changes incompatibly.
SNN_FORMAT_VERSION = 1

# Keys of training-checkpoint dicts that commonly hold the model weights, in search order.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
# Prefixes that wrappers add to every parameter name.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Sources whose rebuilding runs code named or pickled in the file.
_CODE_SOURCES = ("factory", "export", "pickle")

_TRUST_EXPLANATION = (
    "Unpickling a Python object can run arbitrary code, so ann2snn reads such files only "
    "when told that the file is trusted. If you (or someone you trust) wrote this file, "
    "pass --trust-checkpoint (Python: trust_checkpoint=True). Safer: save only the "
    "weights with torch.save(model.state_dict(), path) and pass --arch, or export the "
    "model to ONNX."
)


class UntrustedFileError(ValueError):
    """A file can only be read by running code from it, and it was not marked as trusted."""


@dataclass
class LoadedModel:
    """An ANN read by :func:`load_model`, with what it takes to rebuild it later.

    Attributes:
        module: the ANN, float32, in eval mode.
        source: a ``weights_only``-safe dict from which :func:`model_from_source` rebuilds
            ``module`` (stored in SNN files as ``ann_source``).
        description: one line saying what was loaded, for messages.
    """

    module: nn.Module
    source: Dict[str, Any]
    description: str
    input_shape: Optional[Tuple[int, ...]] = field(default=None)


# ---------------------------------------------------------------------------------------
# Architectures


def _registry() -> Dict[str, Callable[..., nn.Module]]:
    from ann2snn.models import MODELS

    return MODELS


def _parse_kwargs(arch_kwargs: Union[None, str, Mapping[str, Any]]) -> Dict[str, Any]:
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
    kwargs = _parse_kwargs(arch_kwargs)
    registry = _registry()
    if arch in registry:
        factory = registry[arch]
    elif ":" in arch:
        factory = _import_factory(arch)
    else:
        raise ValueError(
            f"unknown architecture {arch!r}. Use a bundled model name ("
            f"{', '.join(sorted(registry))}) or 'package.module:function' naming your own "
            "model factory."
        )
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {arch!r} with keyword arguments {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _strip_wrapper_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
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


# ---------------------------------------------------------------------------------------
# Reading files


def _sniff(path: pathlib.Path) -> str:
    """'pt2', 'torchscript', 'torch', 'onnx' or 'unknown' from the file's content."""
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "pt2"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80":  # a legacy (non-zip) pickle, as torch.save wrote before 1.6
        return "torch"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), as every ONNX model starts
        return "onnx"
    return "unknown"


def _disallowed_global(exc: Exception) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else "a Python object"


def _torch_load(path: pathlib.Path, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` unless the file is trusted."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc) or "GLOBAL" not in str(exc):
            raise ValueError(
                f"{path} is not a readable PyTorch file ({str(exc).splitlines()[0][:200]}). "
                "Give a .pt/.pth state_dict or checkpoint, a .pt2 torch.export program or an "
                ".onnx file."
            ) from exc
        if not trust:
            raise UntrustedFileError(
                f"{path} contains pickled Python objects ({_disallowed_global(exc)}), not just "
                f"weights: it is a whole model or a checkpoint holding objects. "
                + _TRUST_EXPLANATION
            ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable PyTorch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Give a .pt/.pth state_dict or "
            "checkpoint, a .pt2 torch.export program or an .onnx file."
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _from_registry(name: str, kwargs: Dict[str, Any], state: Mapping[str, Any], where: str):
    model = build_arch(name, kwargs)
    _load_weights(model, state, name, where)
    model = model.float().eval()
    source = {
        "kind": "registry",
        "arch": name,
        "kwargs": kwargs,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    return model, source


def _from_arch(arch: str, kwargs_in: Any, state: Mapping[str, Any], where: str):
    kwargs = _parse_kwargs(kwargs_in)
    if arch in _registry():
        return _from_registry(arch, kwargs, state, where)
    model = build_arch(arch, kwargs)
    _load_weights(model, state, arch, where)
    model = model.float().eval()
    source = {
        "kind": "factory",
        "factory": arch,
        "kwargs": kwargs,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    return model, source


def _pickled_source(module: nn.Module) -> Dict[str, Any]:
    buf = io.BytesIO()
    torch.save(module, buf)
    return {"kind": "pickle", "data": buf.getvalue(), "class": type(module).__qualname__}


def _load_torch_file(
    path: pathlib.Path, arch: Optional[str], arch_kwargs: Any, trust: bool
) -> LoadedModel:
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        module = obj.float().eval()
        return LoadedModel(
            module, _pickled_source(module), f"{path} (pickled {type(module).__name__})"
        )
    if isinstance(obj, Mapping) and {"arch", "kwargs", "state_dict"} <= set(obj):
        # A checkpoint written by ann2snn.models.train: the architecture is in the file.
        name = arch or obj["arch"]
        kwargs = _parse_kwargs(arch_kwargs) if arch else dict(obj["kwargs"])
        state = _strip_wrapper_prefix(obj["state_dict"])
        model, source = _from_arch(name, kwargs, state, str(path))
        return LoadedModel(model, source, f"{path} ({name} checkpoint)")
    state: Optional[Mapping[str, Any]] = None
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            value = obj.get(key)
            if isinstance(value, nn.Module):
                module = value.float().eval()
                return LoadedModel(
                    module,
                    _pickled_source(module),
                    f"{path} (pickled {type(module).__name__} under {key!r})",
                )
            if _is_state_dict(value):
                state = value
                break
        if state is None:
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            raise ValueError(
                f"{path} holds a dict with keys {keys}, but none of them is a state_dict "
                f"(looked for {', '.join(_STATE_DICT_KEYS)}). Save the weights with "
                "torch.save(model.state_dict(), path)."
            )
    else:
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a model, state_dict or checkpoint dict"
        )
    state = _strip_wrapper_prefix(state)
    if not arch:
        raise ValueError(
            f"{path} holds only weights (a state_dict with {len(state)} tensors), not the "
            "architecture. Pass --arch NAME (one of "
            f"{', '.join(sorted(_registry()))}) or --arch package.module:factory "
            "(and --arch-kwargs '{...}' if the factory takes arguments)."
        )
    model, source = _from_arch(arch, arch_kwargs, state, str(path))
    return LoadedModel(model, source, f"{path} (state_dict for {arch})")


def _onnx_bytes(path: pathlib.Path) -> bytes:
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    return proto.SerializeToString()


def _onnx_input_shape(proto: Any) -> Optional[Tuple[int, ...]]:
    inits = {i.name for i in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        if shape and all(s > 0 for s in shape):
            return shape
        return None
    return None


def _load_onnx(path: pathlib.Path) -> LoadedModel:
    import onnx

    from ann2snn.frontends.onnx.importer import import_onnx

    module = import_onnx(str(path))
    data = _onnx_bytes(path)
    shape = _onnx_input_shape(onnx.load_from_string(data))
    return LoadedModel(
        module.eval(),
        {"kind": "onnx", "data": data},
        f"{path} (ONNX)",
        input_shape=shape,
    )


def _load_pt2(path: pathlib.Path, trust: bool) -> LoadedModel:
    if not trust:
        raise UntrustedFileError(
            f"{path} is a torch.export program; torch.export.load unpickles parts of it, which "
            "can run code. " + _TRUST_EXPLANATION
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.load(str(path))
    module = import_exported_program(ep)
    user_inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    shape = None
    if len(user_inputs) == 1:
        val = user_inputs[0].meta.get("val")
        if val is not None and hasattr(val, "shape"):
            shape = tuple(int(s) for s in val.shape[1:])
    return LoadedModel(
        module, {"kind": "export", "data": path.read_bytes()}, f"{path} (torch.export)", shape
    )


def load_model(
    spec: PathLike,
    *,
    arch: Optional[str] = None,
    arch_kwargs: Union[None, str, Mapping[str, Any]] = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Read an ANN from a file or a bundled model name.

    Args:
        spec: a path (``.pt``/``.pth``, ``.pt2``, ``.onnx``) or a bundled model name.
        arch: the architecture for a bare ``state_dict``: a bundled model name or
            ``"package.module:factory"``.
        arch_kwargs: keyword arguments of ``arch`` (a dict or a JSON object string).
        trust_checkpoint: allow reading files that run code when loaded (pickled modules,
            checkpoints holding objects, ``.pt2`` programs).

    Returns:
        A :class:`LoadedModel` (module in eval mode, float32).

    Raises:
        FileNotFoundError: no such file and no such bundled model.
        UntrustedFileError: the file needs ``trust_checkpoint=True``.
        ValueError: unknown format, missing ``arch``, weights that do not fit ``arch``.
        ConversionError: an ONNX model with unsupported operators.
    """
    text = os.fspath(spec)
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        if text in _registry():
            from ann2snn.models import checkpoint_path, load_checkpoint

            ckpt = (
                load_checkpoint(checkpoint_path(text)) if checkpoint_path(text).is_file() else None
            )
            if ckpt is None:
                from ann2snn.models import load_pretrained

                load_pretrained(text)  # raises FileNotFoundError saying how to train it
            state = {
                k: v.float() if torch.is_floating_point(v) else v
                for k, v in ckpt["state_dict"].items()
            }
            model, source = _from_registry(text, dict(ckpt["kwargs"]), state, text)
            _attach_source(model, source)
            return LoadedModel(model, source, f"bundled model {text}")
        raise FileNotFoundError(
            f"{text}: no such file. Give the path of a .pt/.pth state_dict or checkpoint, a "
            f".pt2 torch.export program, an .onnx file, or a bundled model name ("
            f"{', '.join(sorted(_registry()))})."
        )
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a model file")
    suffix = path.suffix.lower()
    kind = {".onnx": "onnx", ".pt2": "pt2"}.get(suffix) or _sniff(path)
    if kind == "onnx":
        loaded = _load_onnx(path)
    elif kind == "pt2":
        loaded = _load_pt2(path, trust_checkpoint)
    elif kind == "torchscript":
        raise ValueError(
            f"{path} is a TorchScript archive (torch.jit.save), which ann2snn does not read: "
            "its graph cannot be traced with torch.fx. Save the weights with "
            "torch.save(model.state_dict(), path) and pass --arch, or export the model with "
            "torch.export / torch.onnx.export."
        )
    elif kind == "torch" or suffix in (".pt", ".pth", ".ckpt", ".bin"):
        loaded = _load_torch_file(path, arch, arch_kwargs, trust_checkpoint)
    else:
        raise ValueError(
            f"{path}: unknown model format (extension {suffix or 'none'!r}, content not "
            "recognised). ann2snn reads .pt/.pth state_dicts and checkpoints (torch.save), "
            ".pt2 torch.export programs and .onnx files."
        )
    _attach_source(loaded.module, loaded.source)
    return loaded


def _attach_source(module: nn.Module, source: Mapping[str, Any]) -> None:
    # convert() deep-copies the ANN: a plain attribute survives that, but a GraphModule's
    # deepcopy keeps only its graph, submodules and ``meta``.
    module._ann2snn_source = dict(source)
    if isinstance(module, fx.GraphModule):
        module.meta["ann2snn_source"] = dict(source)


def _source_of(module: nn.Module) -> Optional[Dict[str, Any]]:
    src = getattr(module, "_ann2snn_source", None)
    if src is None and isinstance(module, fx.GraphModule):
        src = module.meta.get("ann2snn_source")
    return src


def model_from_source(source: Mapping[str, Any], trust_checkpoint: bool = False) -> nn.Module:
    """Rebuild the ANN an SNN file's ``ann_source`` describes.

    Args:
        source: the dict :func:`load_model` produced (``LoadedModel.source``).
        trust_checkpoint: allow sources that run code (``factory``, ``export``, ``pickle``).

    Returns:
        The ANN in eval mode.

    Raises:
        UntrustedFileError: a code-running source without ``trust_checkpoint``.
        ValueError: an unknown source kind.
    """
    kind = source.get("kind")
    if kind in _CODE_SOURCES and not trust_checkpoint:
        what = {
            "factory": f"imports and calls {source.get('factory')!r} to rebuild its ANN",
            "export": "stores its ANN as a torch.export program, which torch.export.load unpickles",
            "pickle": f"stores its ANN as a pickled {source.get('class', 'module')}",
        }[kind]
        raise UntrustedFileError(f"this SNN file {what}. " + _TRUST_EXPLANATION)
    if kind == "registry":
        model, _ = _from_registry(
            source["arch"], dict(source["kwargs"]), source["state_dict"], "the SNN file"
        )
    elif kind == "factory":
        model, _ = _from_arch(
            source["factory"], dict(source["kwargs"]), source["state_dict"], "the SNN file"
        )
    elif kind == "onnx":
        import onnx

        from ann2snn.frontends.onnx.importer import import_onnx

        model = import_onnx(onnx.load_from_string(source["data"]))
    elif kind == "export":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = import_exported_program(torch.export.load(io.BytesIO(source["data"])))
    elif kind == "pickle":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.load(io.BytesIO(source["data"]), map_location="cpu", weights_only=False)
    else:
        raise ValueError(f"unknown ANN source kind {kind!r} in the SNN file")
    model = model.eval()
    _attach_source(model, source)
    return model


# ---------------------------------------------------------------------------------------
# SNN files


def _probe_input(shape: Sequence[int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand((2,) + tuple(shape), generator=gen)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _options_of(snn: Any) -> Dict[str, Any]:
    meta = snn.meta
    missing = [k for k in ("mode", "input_shape") if k not in meta]
    if missing:
        raise ValueError(
            f"the SpikingModel's meta lacks {missing}; convert it with ann2snn.convert"
        )
    # Every conversion option convert() records in meta, so that load_snn rebuilds the
    # same graph (options added later, such as a max-pooling method, are kept too).
    options = {k: _jsonable(meta[k]) for k in ConversionConfig.option_names() if k in meta}
    options["mode"] = str(meta["mode"])
    options["input_shape"] = [int(s) for s in meta["input_shape"]]
    return options


def save_snn(
    snn: Any,
    path: PathLike,
    *,
    source: Optional[Mapping[str, Any]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
) -> None:
    """Write a converted SNN to ``path`` atomically (temporary file + rename).

    Args:
        snn: a :class:`~ann2snn.runtime.spiking_model.SpikingModel` from :func:`ann2snn.convert`.
        path: the output file (conventionally ``.pt``).
        source: how to rebuild the ANN (``LoadedModel.source``); by default the source
            :func:`load_model` attached to the ANN, else the ANN is stored pickled (and
            loading the file then needs ``trust_checkpoint=True``).
        provenance: free-form strings recorded in the file (input file, calibration data).
        overwrite: replace an existing file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: ``snn`` was not made by :func:`ann2snn.convert`.
    """
    from ann2snn.analysis.evaluate import write_atomic

    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it")
    if snn.ann is None:
        raise ValueError("the SpikingModel has no ANN (snn.ann); save_snn needs it to rebuild")
    options = _options_of(snn)
    src = dict(source) if source is not None else _source_of(snn.ann)
    if src is None:
        warnings.warn(
            "the ANN was not read with ann2snn.snn_file.load_model, so it is saved pickled; "
            "loading the file will need trust_checkpoint=True",
            stacklevel=2,
        )
        src = _pickled_source(snn.ann)
    state = {
        k: v.detach().cpu().clone() for k, v in snn.state_dict().items() if not k.startswith("ann.")
    }
    probe = _probe_input(options["input_shape"])
    device = next((t.device for t in snn.ann.state_dict().values()), torch.device("cpu"))
    with torch.no_grad():
        ann_out = snn.ann(probe.to(device))
    payload = {
        "format": SNN_FORMAT,
        "version": SNN_FORMAT_VERSION,
        "ann2snn_version": _version(),
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ann_source": src,
        "options": options,
        "meta": _jsonable(snn.meta),
        "snn_state": state,
        "probe": {"input": probe, "ann_output": ann_out.detach().cpu().float()},
        "provenance": _jsonable(dict(provenance or {})),
    }
    payload["checksum"] = _checksum(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(str(path), buf.getvalue())


# The parts of an SNN file that the checksum covers one by one, so that a mismatch can be
# named; the tensors of ``snn_state`` and of an ANN ``state_dict`` are each their own part.
_CHECKSUM_ALGORITHM = "sha256"
# Entries of ``snn_state`` that are never legitimately NaN or infinite.
_FINITE_ENTRIES = ("threshold", "v_init_channels", "scale", "clip", "weight", "bias", "shift")


def _digest_into(h: Any, value: Any) -> None:
    """Feed a canonical byte form of ``value`` (tensors: dtype, shape, raw bytes) to ``h``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{list(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(repr(str(k)).encode())
            _digest_into(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _digest_into(h, v)
        h.update(b"]")
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"B%d:" % len(value) + bytes(value))
    else:
        h.update(f"{type(value).__name__}:{value!r}".encode())


def _checksum_parts(payload: Mapping[str, Any]) -> Dict[str, str]:
    import hashlib

    def digest(value: Any) -> str:
        h = hashlib.sha256()
        _digest_into(h, value)
        return h.hexdigest()

    parts: Dict[str, str] = {}
    for key in sorted(payload):
        if key == "checksum":
            continue
        value = payload[key]
        if key == "snn_state" and isinstance(value, Mapping):
            for name, tensor in value.items():
                parts[f"snn_state[{name!r}]"] = digest(tensor)
        elif key == "ann_source" and isinstance(value, Mapping):
            for name, item in value.items():
                if name == "state_dict" and isinstance(item, Mapping):
                    for wname, tensor in item.items():
                        parts[f"ann_source.state_dict[{wname!r}]"] = digest(tensor)
                else:
                    parts[f"ann_source.{name}"] = digest(item)
        else:
            parts[key] = digest(value)
    return parts


def _checksum(payload: Mapping[str, Any]) -> Dict[str, Any]:
    """A SHA-256 per part of ``payload`` (every tensor record and every metadata entry)."""
    return {"algorithm": _CHECKSUM_ALGORITHM, "parts": _checksum_parts(payload)}


def _verify_payload(data: Mapping[str, Any], path: Any) -> None:
    """Check the file's checksum (when it has one) and that calibrated values are finite.

    Files written before checksums were added have none; they are still read, with the
    finiteness check only.

    Raises:
        SNNFileError: naming the damaged part.
    """
    from ann2snn.errors import SNNFileError

    damaged = (
        f"{path} is damaged: {{}}. The file was changed after ann2snn wrote it (a disk or "
        "transfer error, or an edit); convert the model again or use an intact copy."
    )
    recorded = data.get("checksum")
    if recorded is not None:
        parts = recorded.get("parts") if isinstance(recorded, Mapping) else None
        if not isinstance(parts, Mapping) or recorded.get("algorithm") != _CHECKSUM_ALGORITHM:
            raise SNNFileError(damaged.format("its checksum record is unreadable"))
        actual = _checksum_parts(data)
        bad = [k for k in sorted(set(parts) | set(actual)) if parts.get(k) != actual.get(k)]
        if bad:
            shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
            raise SNNFileError(damaged.format(f"the SHA-256 checksum of {shown} does not match"))
    state = data.get("snn_state")
    if not isinstance(state, Mapping):
        raise SNNFileError(damaged.format("it has no converted state (snn_state)"))
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise SNNFileError(damaged.format(f"snn_state[{name!r}] is not a tensor"))
        if (
            name.rpartition(".")[2] in _FINITE_ENTRIES
            and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())
        ):
            raise SNNFileError(damaged.format(f"snn_state[{name!r}] holds NaN or infinite values"))


def _version() -> str:
    from ann2snn import __version__

    return str(__version__)


def read_snn_header(path: PathLike) -> Dict[str, Any]:
    """Read an SNN file (``weights_only=True``) without rebuilding the network.

    Raises:
        FileNotFoundError: no such file.
        SNNFileError: the file is damaged (checksum mismatch, non-finite calibrated values).
        ValueError: the file is not an ann2snn SNN file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not an ann2snn SNN file ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != SNN_FORMAT:
        raise ValueError(f"{path} is not an ann2snn SNN file (no format={SNN_FORMAT!r} entry)")
    if int(data.get("version", 0)) > SNN_FORMAT_VERSION:
        raise ValueError(
            f"{path} uses SNN file format version {data['version']}, newer than this ann2snn "
            f"reads ({SNN_FORMAT_VERSION}); upgrade ann2snn"
        )
    _verify_payload(data, path)
    return data


def is_snn_file(path: PathLike) -> bool:
    """True when ``path`` is an SNN file written by :func:`save_snn`."""
    path = pathlib.Path(path)
    if not path.is_file() or _sniff(path) != "torch":
        return False
    from ann2snn.errors import SNNFileError

    try:
        read_snn_header(path)
    except SNNFileError:
        return True  # an SNN file, damaged: loading it reports what is damaged
    except ValueError:
        return False
    return True


def _assign_state(snn: nn.Module, state: Mapping[str, torch.Tensor], path, version) -> None:
    """Set every parameter and buffer of the converted graph from ``state``.

    Buffers that calibration may leave unset (``None``, so absent from a ``state_dict``,
    such as per-channel initial potentials) are set or cleared to match the file.

    Raises:
        ValueError: the file's entries do not fit the rebuilt graph.
    """
    own = {k: v for k, v in snn.state_dict().items() if not k.startswith("ann.")}
    mismatch: List[str] = []
    for key in sorted(set(own) | set(state)):
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = snn.get_submodule(owner_name)
        except AttributeError:
            mismatch.append(key)
            continue
        value = state.get(key)
        if attr in owner._buffers:
            owner._buffers[attr] = None if value is None else value.detach().clone()
        elif attr in owner._parameters and value is not None:
            param = owner._parameters[attr]
            if param is None or param.shape != value.shape:
                mismatch.append(key)
            else:
                with torch.no_grad():
                    param.copy_(value)
        else:
            mismatch.append(key)
    if mismatch:
        raise ValueError(
            f"{path} was written by ann2snn {version}, whose converted graph differs from this "
            f"version's (entries {mismatch[:6]}); convert the model again"
        )


def load_snn(path: PathLike, *, trust_checkpoint: bool = False) -> Any:
    """Load an SNN written by :func:`save_snn`.

    Args:
        path: the SNN file.
        trust_checkpoint: allow ANN sources that run code (see :func:`model_from_source`).

    Returns:
        The :class:`~ann2snn.runtime.spiking_model.SpikingModel`, identical to the one saved.

    Raises:
        FileNotFoundError: no such file.
        UntrustedFileError: the ANN source runs code and the file is not trusted.
        ValueError: not an SNN file, or its contents do not fit this ann2snn version.
    """
    from ann2snn.api import convert

    data = read_snn_header(path)
    ann = model_from_source(data["ann_source"], trust_checkpoint=trust_checkpoint)
    probe = data["probe"]
    with torch.no_grad():
        out = ann(probe["input"])
    if out.shape != probe["ann_output"].shape or not torch.allclose(
        out.float(), probe["ann_output"], rtol=1e-4, atol=1e-4
    ):
        raise ValueError(
            f"{path}: the rebuilt ANN does not reproduce the output recorded when the file was "
            "written (different model code or weights); the file cannot be loaded faithfully"
        )
    opts = dict(data["options"])
    shape = opts.pop("input_shape")
    unknown = sorted(set(opts) - set(ConversionConfig.option_names()))
    if unknown:
        raise ValueError(
            f"{path} was converted with options {unknown} that this ann2snn version does not "
            f"know (written by ann2snn {data.get('ann2snn_version')}); upgrade ann2snn"
        )
    # Calibration values do not shape the graph: the probe batch rebuilds the same
    # structure, and every calibrated number is then taken from the file.
    snn = convert(ann, calib_data=[probe["input"].reshape((-1,) + tuple(shape))], **opts)
    _assign_state(snn, data["snn_state"], path, data.get("ann2snn_version"))
    snn.meta.update({k: v for k, v in data.get("meta", {}).items() if k not in snn.meta})
    snn.meta["provenance"] = data.get("provenance", {})
    snn.meta["file"] = str(path)
    return snn
