"""Where an ANN came from, kept so that it can be rebuilt: the "source" of a loaded model.

A source is a ``weights_only``-safe dict with a ``kind``. :data:`SOURCE_KINDS` is the one
table of kinds: how each is rebuilt, how it is described to a user, and whether rebuilding
it runs code from the file (then only with ``trust_checkpoint=True``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import fx, nn

from ann2snn.errors import UntrustedFileError
from ann2snn.frontends.architectures import from_arch, from_registry

TRUST_EXPLANATION = (
    "Unpickling a Python object can run arbitrary code, so ann2snn reads such files only "
    "when told that the file is trusted. If you (or someone you trust) wrote this file, "
    "pass --trust-checkpoint (Python: trust_checkpoint=True). Safer: save only the "
    "weights with torch.save(model.state_dict(), path) and pass --arch, or export the "
    "model to ONNX."
)


def pickled_source(module: nn.Module) -> Dict[str, Any]:
    buf = io.BytesIO()
    torch.save(module, buf)
    return {"kind": "pickle", "data": buf.getvalue(), "class": type(module).__qualname__}


def attach_source(module: nn.Module, source: Mapping[str, Any]) -> None:
    # convert() deep-copies the ANN: a plain attribute survives that, but a GraphModule's
    # deepcopy keeps only its graph, submodules and ``meta``.
    module._ann2snn_source = dict(source)
    if isinstance(module, fx.GraphModule):
        module.meta["ann2snn_source"] = dict(source)


def source_of(module: nn.Module) -> Optional[Dict[str, Any]]:
    src = getattr(module, "_ann2snn_source", None)
    if src is None and isinstance(module, fx.GraphModule):
        src = module.meta.get("ann2snn_source")
    return src


def _rebuild_onnx(source: Mapping[str, Any]) -> nn.Module:
    import onnx

    from ann2snn.frontends.onnx.importer import import_onnx

    return import_onnx(onnx.load_from_string(source["data"]))


def _rebuild_export(source: Mapping[str, Any]) -> nn.Module:
    from ann2snn.frontends.torch_export import import_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_exported_program(torch.export.load(io.BytesIO(source["data"])))


def _rebuild_pickle(source: Mapping[str, Any]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(source["data"]), map_location="cpu", weights_only=False)


def _rebuild_registry(source: Mapping[str, Any]) -> nn.Module:
    args = (dict(source["kwargs"]), source["state_dict"], "the SNN file")
    return from_registry(source["arch"], *args)[0]


def _rebuild_factory(source: Mapping[str, Any]) -> nn.Module:
    args = (dict(source["kwargs"]), source["state_dict"], "the SNN file")
    return from_arch(source["factory"], *args)[0]


def _describe_registry(source: Mapping[str, Any]) -> str:
    kw = source.get("kwargs") or {}
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    return f"ANN: bundled architecture {source['arch']}({args})"


@dataclass(frozen=True)
class SourceKind:
    """One kind of ANN source.

    Attributes:
        rebuild: source dict -> the module (not yet in eval mode).
        describe: source dict -> one line for users.
        runs_code: for kinds whose rebuilding runs code from the file, source dict -> what
            it runs (for the refusal message); None for safe kinds.
    """

    rebuild: Callable[[Mapping[str, Any]], nn.Module]
    describe: Callable[[Mapping[str, Any]], str]
    runs_code: Optional[Callable[[Mapping[str, Any]], str]] = None


#: Every kind of ANN source, by its ``kind`` string.
SOURCE_KINDS: Dict[str, SourceKind] = {
    "registry": SourceKind(rebuild=_rebuild_registry, describe=_describe_registry),
    "factory": SourceKind(
        rebuild=_rebuild_factory,
        describe=lambda s: f"ANN: {s['factory']} (your code)",
        runs_code=lambda s: f"imports and calls {s.get('factory')!r} to rebuild its ANN",
    ),
    "onnx": SourceKind(
        rebuild=_rebuild_onnx,
        describe=lambda s: f"ANN: ONNX model ({len(s['data']):,} bytes)",
    ),
    "export": SourceKind(
        rebuild=_rebuild_export,
        describe=lambda s: "ANN: torch.export program",
        runs_code=lambda s: (
            "stores its ANN as a torch.export program, which torch.export.load unpickles"
        ),
    ),
    "pickle": SourceKind(
        rebuild=_rebuild_pickle,
        describe=lambda s: f"ANN: pickled {s.get('class', 'module')}",
        runs_code=lambda s: f"stores its ANN as a pickled {s.get('class', 'module')}",
    ),
}


def describe_source(source: Mapping[str, Any]) -> str:
    """One line saying what ANN a source holds (for ``ann2snn info`` and messages)."""
    kind = SOURCE_KINDS.get(str(source.get("kind")))
    return kind.describe(source) if kind else f"ANN: {source.get('kind')}"


def model_from_source(source: Mapping[str, Any], trust_checkpoint: bool = False) -> nn.Module:
    """Rebuild the ANN an SNN file's ``ann_source`` describes.

    Args:
        source: the dict :func:`ann2snn.frontends.checkpoint.load_model` produced
            (``LoadedModel.source``).
        trust_checkpoint: allow sources that run code (``factory``, ``export``, ``pickle``).

    Returns:
        The ANN in eval mode.

    Raises:
        UntrustedFileError: a code-running source without ``trust_checkpoint``.
        ValueError: an unknown source kind.
    """
    kind = SOURCE_KINDS.get(str(source.get("kind")))
    if kind is None:
        raise ValueError(f"unknown ANN source kind {source.get('kind')!r} in the SNN file")
    if kind.runs_code is not None and not trust_checkpoint:
        raise UntrustedFileError(f"this SNN file {kind.runs_code(source)}. " + TRUST_EXPLANATION)
    model = kind.rebuild(source).eval()
    attach_source(model, source)
    return model
