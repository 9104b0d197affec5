"""Loading ANNs from files and bundled model names (:func:`load_model`).

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
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ann2snn.errors import UntrustedFileError
from ann2snn.frontends.architectures import (
    from_arch,
    from_registry,
    parse_kwargs,
    registry,
    strip_wrapper_prefix,
)
from ann2snn.frontends.sources import TRUST_EXPLANATION, attach_source, pickled_source
from ann2snn.frontends.torch_export import import_exported_program
from ann2snn.models import float32_state, is_training_checkpoint

__all__ = ["LoadedModel", "UntrustedFileError", "load_model", "sniff"]

PathLike = Union[str, "os.PathLike[str]"]

# Keys of training-checkpoint dicts that commonly hold the model weights, in search order.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


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
    #: the dataset a training checkpoint (``ann2snn.models.train``) records, if any
    dataset: Optional[str] = field(default=None)


def sniff(path: pathlib.Path) -> str:
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
                + TRUST_EXPLANATION
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


def _load_torch_file(
    path: pathlib.Path, arch: Optional[str], arch_kwargs: Any, trust: bool
) -> LoadedModel:
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        module = obj.float().eval()
        return LoadedModel(
            module, pickled_source(module), f"{path} (pickled {type(module).__name__})"
        )
    if is_training_checkpoint(obj):
        # A checkpoint written by ann2snn.models.train: the architecture is in the file.
        name = arch or obj["arch"]
        kwargs = parse_kwargs(arch_kwargs) if arch else dict(obj["kwargs"])
        state = strip_wrapper_prefix(obj["state_dict"])
        model, source = from_arch(name, kwargs, state, str(path))
        loaded = LoadedModel(model, source, f"{path} ({name} checkpoint)")
        loaded.dataset = obj.get("dataset")
        return loaded
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
                    pickled_source(module),
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
    state = strip_wrapper_prefix(state)
    if not arch:
        raise ValueError(
            f"{path} holds only weights (a state_dict with {len(state)} tensors), not the "
            "architecture. Pass --arch NAME (one of "
            f"{', '.join(sorted(registry()))}) or --arch package.module:factory "
            "(and --arch-kwargs '{...}' if the factory takes arguments)."
        )
    model, source = from_arch(arch, arch_kwargs, state, str(path))
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
            "can run code. " + TRUST_EXPLANATION
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
        if text in registry():
            from ann2snn.models import checkpoint_path, load_checkpoint

            ckpt = (
                load_checkpoint(checkpoint_path(text)) if checkpoint_path(text).is_file() else None
            )
            if ckpt is None:
                from ann2snn.models import load_pretrained

                load_pretrained(text)  # raises FileNotFoundError saying how to train it
            state = float32_state(ckpt["state_dict"])
            model, source = from_registry(text, dict(ckpt["kwargs"]), state, text)
            attach_source(model, source)
            return LoadedModel(model, source, f"bundled model {text}", dataset=ckpt.get("dataset"))
        raise FileNotFoundError(
            f"{text}: no such file. Give the path of a .pt/.pth state_dict or checkpoint, a "
            f".pt2 torch.export program, an .onnx file, or a bundled model name ("
            f"{', '.join(sorted(registry()))})."
        )
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a model file")
    suffix = path.suffix.lower()
    kind = {".onnx": "onnx", ".pt2": "pt2"}.get(suffix) or sniff(path)
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
    attach_source(loaded.module, loaded.source)
    return loaded
