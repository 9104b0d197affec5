"""Saving and loading converted SNNs.

SNN files (:func:`save_snn` / :func:`load_snn`) are ``torch.save`` dicts that
``torch.load(weights_only=True)`` reads: only tensors, numbers, strings, bytes, lists and
dicts, never pickled classes. They are data, not code. A file (format version 2) holds

* ``graph``: the converted spiking graph as a description over a closed set of module
  types and functions (:mod:`ann2snn.snn_graph`);
* ``snn_state``: its tensors: every folded weight, IF threshold, initial potential and
  normalization scale;
* ``options``: the conversion options (mode, channel-wise, v_init, ..., input shape);
* ``ann_description``: one line saying what the ANN was (a bundled name, a factory, ...);
* ``probe``: a fixed input and the ANN's output on it, to check the rebuilt graph;
* ``provenance``: where the ANN and the calibration data came from.

:func:`load_snn` rebuilds the graph from ``graph`` and ``snn_state`` alone: it imports no
code named in the file and re-runs no conversion. The ANN reference (``snn.ann``) is the
same graph with the activations put back (:func:`ann2snn.snn_graph.ann_view`), which
computes the ANN's function because normalization keeps every tensor in ANN units.

Version 1 files (written before, or when a graph holds a module outside the closed set)
hold ``ann_source`` instead of ``graph``: how to rebuild the ANN (bundled-model name +
kwargs + ``state_dict``, the ONNX bytes, or for the code-bearing kinds ``factory`` /
``export`` / ``pickle`` the factory path or file bytes, used only with
``trust_checkpoint=True``). They load as before: the ANN is rebuilt and the
deterministic conversion passes re-run on the probe batch, then ``snn_state`` is loaded
over the result.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import pathlib
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves, tree_map

from ann2snn.config import ConversionConfig
from ann2snn.errors import UntrustedFileError
from ann2snn.frontends.checkpoint import sniff
from ann2snn.frontends.sources import (
    describe_source,
    model_from_source,
    pickled_source,
    source_of,
)
from ann2snn.input_checks import float_dtype
from ann2snn.snn_graph import UnsupportedGraphError, ann_view, build_graph, describe_graph

__all__ = [
    "SNN_FORMAT",
    "UntrustedFileError",
    "is_snn_file",
    "load_snn",
    "read_snn_header",
    "save_snn",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Value of the ``format`` key of every SNN file.
SNN_FORMAT = "ann2snn.snn"
#: Version of the SNN file layout; bumped when the layout changes incompatibly.
SNN_FORMAT_VERSION = 2
#: The version of files that rebuild their ANN from its source (written before version 2,
#: and still when a graph holds a module outside the closed set of ``ann2snn.snn_graph``).
SOURCE_FORMAT_VERSION = 1


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


def _stored_output(value: Any) -> Any:
    return value.detach().cpu().float() if isinstance(value, torch.Tensor) else value


def _same_outputs(out: Any, recorded: Any) -> bool:
    """Whether the rebuilt ANN's output (a tensor, or a tuple/dict of them) is the one the
    file recorded."""
    got, want = tree_leaves(out), tree_leaves(recorded)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return False
        if not isinstance(a, torch.Tensor):
            continue
        if a.shape != b.shape or not torch.allclose(a.float(), b, rtol=1e-4, atol=1e-4):
            return False
    return True


def save_snn(
    snn: Any,
    path: PathLike,
    *,
    source: Optional[Mapping[str, Any]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
    format_version: int = SNN_FORMAT_VERSION,
) -> None:
    """Write a converted SNN to ``path`` atomically (temporary file + rename).

    Args:
        snn: a :class:`~ann2snn.runtime.spiking_model.SpikingModel` from :func:`ann2snn.convert`.
        path: the output file (conventionally ``.pt``).
        source: what the ANN was (``LoadedModel.source``; by default the source
            :func:`ann2snn.load_model` attached to the ANN). Only its one-line description
            is stored; it is needed whole only when the graph cannot be described (then
            the file rebuilds the ANN from it, as version 1 files do, and a pickled ANN
            needs ``trust_checkpoint=True`` to load).
        provenance: free-form strings recorded in the file (input file, calibration data).
        overwrite: replace an existing file.
        format_version: 2 (default) writes the graph itself; 1 writes the ANN's source
            instead, as ann2snn versions before format 2 did (for readers of that age).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: ``snn`` was not made by :func:`ann2snn.convert`.
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it")
    if format_version not in (SOURCE_FORMAT_VERSION, SNN_FORMAT_VERSION):
        raise ValueError(f"format_version must be 1 or 2, got {format_version!r}")
    options = _options_of(snn)
    graph = None
    try:
        if format_version == SNN_FORMAT_VERSION:
            graph, graph_tensors = describe_graph(snn.graph_module)
    except UnsupportedGraphError as exc:
        warnings.warn(
            f"the converted graph holds {exc}, which SNN files cannot describe; the file "
            "rebuilds its ANN from the source instead (format version 1)",
            stacklevel=2,
        )
    ann_graph = None
    if graph is not None and snn.ann is not None and not _graph_is_the_ann(snn, options):
        # The graph was changed after conversion (bootstrap fine-tunes weights and
        # thresholds): its ANN view is no longer the ANN, which stays the reference. An
        # ANN that is itself a graph over the closed set (one read from a format 2 file)
        # is stored beside it; any other ANN is stored as its source (format 1).
        try:
            if not isinstance(snn.ann, fx.GraphModule):
                raise UnsupportedGraphError("an ANN that is not an fx graph")
            described, tensors = describe_graph(snn.ann)
            ann_graph = {"graph": described, "state": tensors}
        except UnsupportedGraphError:
            graph = None
            if "bootstrap" not in snn.meta:
                warnings.warn(
                    "the converted graph no longer computes its ANN (changed after "
                    "conversion); the file rebuilds its ANN from the source instead "
                    "(format version 1)",
                    stacklevel=2,
                )
    if snn.ann is None and graph is None:
        raise ValueError("the SpikingModel has no ANN (snn.ann); save_snn needs it to rebuild")
    src = dict(source) if source is not None else (source_of(snn.ann) if snn.ann else None)
    if graph is not None:
        _write_payload(
            path,
            {
                "format": SNN_FORMAT,
                "version": SNN_FORMAT_VERSION,
                "graph": graph,
                "snn_state": {f"graph_module.{k}": v for k, v in graph_tensors.items()},
                "ann_description": (
                    describe_source(src)
                    if src
                    else snn.meta.get("ann_description", "ANN: a Python module")
                ),
                **({"ann_graph": ann_graph} if ann_graph is not None else {}),
                **_common_entries(snn, options, provenance),
            },
        )
        return
    if src is None:
        warnings.warn(
            "the ANN was not read with ann2snn.load_model, so it is saved pickled; "
            "loading the file will need trust_checkpoint=True",
            stacklevel=2,
        )
        src = pickled_source(snn.ann)
    state = {
        k: v.detach().cpu().clone() for k, v in snn.state_dict().items() if not k.startswith("ann.")
    }
    payload = {
        "format": SNN_FORMAT,
        "version": SOURCE_FORMAT_VERSION,
        "ann_source": src,
        "snn_state": state,
        **_common_entries(snn, options, provenance),
    }
    _write_payload(path, payload)


def _graph_is_the_ann(snn: Any, options: Dict[str, Any]) -> bool:
    """The spiking graph with its activations put back computes the SNN's ANN (on the
    probe input, up to the rounding of folded weights), as a format 2 file assumes."""
    probe = _probe_input(options["input_shape"])
    device = next((t.device for t in snn.ann.state_dict().values()), torch.device("cpu"))
    with torch.no_grad():
        want = snn.ann(probe.to(device))
        got = ann_view(snn.graph_module)(probe.to(device))
    return _close_outputs(tree_map(_stored_output, got), tree_map(_stored_output, want))


def _common_entries(
    snn: Any, options: Dict[str, Any], provenance: Optional[Mapping[str, Any]]
) -> Dict[str, Any]:
    """The entries every SNN file holds: options, meta, the probe and where it came from."""
    probe = _probe_input(options["input_shape"])
    ann = snn.ann if snn.ann is not None else ann_view(snn.graph_module)
    device = next((t.device for t in ann.state_dict().values()), torch.device("cpu"))
    with torch.no_grad():
        ann_out = ann(probe.to(device))
    return {
        "ann2snn_version": _version(),
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": options,
        "meta": _jsonable(snn.meta),
        "probe": {"input": probe, "ann_output": tree_map(_stored_output, ann_out)},
        "provenance": _jsonable(dict(provenance or {})),
    }


def _write_payload(path: pathlib.Path, payload: Dict[str, Any]) -> None:
    from ann2snn.analysis.evaluate import write_atomic

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
        elif key == "ann_graph" and isinstance(value, Mapping):
            parts["ann_graph.graph"] = digest(value.get("graph"))
            for name, tensor in value.get("state", {}).items():
                parts[f"ann_graph.state[{name!r}]"] = digest(tensor)
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
    from ann2snn._version import __version__

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
    if not path.is_file() or sniff(path) != "torch":
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
    data = read_snn_header(path)
    if "graph" in data:
        return _load_described(path, data)
    from ann2snn.api import convert

    ann = model_from_source(data["ann_source"], trust_checkpoint=trust_checkpoint)
    probe = data["probe"]
    with torch.no_grad():
        out = ann(probe["input"].to(float_dtype(ann)))
    if not _same_outputs(out, probe["ann_output"]):
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


def _load_described(path: PathLike, data: Mapping[str, Any]) -> Any:
    """Rebuild a version 2 file's SNN from its graph description and tensors alone."""
    from ann2snn.runtime.spiking_model import SpikingModel

    prefix = "graph_module."
    state = data["snn_state"]
    stray = sorted(k for k in state if not k.startswith(prefix))
    if stray:
        raise ValueError(f"{path}: snn_state entries {stray[:6]} fit no part of the graph")
    try:
        gm = build_graph(data["graph"], {k[len(prefix) :]: v for k, v in state.items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: its graph description cannot be rebuilt by this ann2snn version "
            f"(written by ann2snn {data.get('ann2snn_version')}): {exc}"
        ) from exc
    if "ann_graph" in data:  # the graph was changed after conversion (bootstrap)
        try:
            ann = build_graph(data["ann_graph"]["graph"], dict(data["ann_graph"]["state"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its ANN graph cannot be rebuilt: {exc}") from exc
    else:
        ann = ann_view(gm)
    probe = data["probe"]
    with torch.no_grad():
        out = ann(probe["input"])
    if not _close_outputs(out, probe["ann_output"]):
        raise ValueError(
            f"{path}: the rebuilt graph does not reproduce the output recorded for its ANN "
            "when the file was written; the file cannot be loaded faithfully"
        )
    snn = SpikingModel(gm, ann=ann, meta=dict(data.get("meta", {})))
    snn.meta["ann_description"] = data.get("ann_description")
    snn.meta["provenance"] = data.get("provenance", {})
    snn.meta["file"] = str(path)
    return snn.eval()


def _close_outputs(out: Any, recorded: Any) -> bool:
    """Outputs equal up to the float rounding of folded weights (1e-3 of the largest)."""
    got, want = tree_leaves(out), tree_leaves(recorded)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            if a != b:
                return False
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        tol = 1e-3 * max(scale, 1.0)
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=0, atol=tol):
            return False
    return True
