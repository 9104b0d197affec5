"""Saving and loading converted SNNs.

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
import hashlib
import io
import os
import pathlib
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ann2snn.config import ConversionConfig
from ann2snn.errors import UntrustedFileError
from ann2snn.frontends.checkpoint import sniff
from ann2snn.frontends.sources import model_from_source, pickled_source, source_of

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
SNN_FORMAT_VERSION = 1


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
            :func:`ann2snn.load_model` attached to the ANN, else the ANN is stored pickled (and
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
    src = dict(source) if source is not None else source_of(snn.ann)
    if src is None:
        warnings.warn(
            "the ANN was not read with ann2snn.snn_file.load_model, so it is saved pickled; "
            "loading the file will need trust_checkpoint=True",
            stacklevel=2,
        )
        src = pickled_source(snn.ann)
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
