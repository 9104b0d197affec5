"""Interoperability with other SNN tools through NIR (docs/interop.md).

* :func:`to_nir` / :func:`write_nir`: a converted SNN as a NIR graph (``nir`` package);
* :func:`from_nir`: a NIR graph (a file, or a ``nir.NIRGraph``) run with ann2snn's kernels;
* :func:`ann2snn.interop.spikes.spike_trains`: every IF layer's spikes, step by step.

* :func:`to_norse` / :func:`to_sinabs`: a NIR graph loaded into Norse / sinabs with ann2snn's
  IF semantics made exact, :func:`to_snntorch` as near as snnTorch's ``Leaky`` gets
  (``ann2snn.interop.readers``; the ``interop`` extra).

The names are imported on first use, so ``import ann2snn.interop`` needs none of the
optional packages.
"""

from __future__ import annotations

import importlib
from typing import Any, List

_EXPORTS = {
    "GRAPH_METADATA_KEYS": "ann2snn.interop.nir_export",
    "IF_METADATA": "ann2snn.interop.nir_export",
    "NIRExportError": "ann2snn.interop.nir_export",
    "NIRImportError": "ann2snn.interop.nir_import",
    "NIRReader": "ann2snn.interop.readers",
    "from_nir": "ann2snn.interop.nir_import",
    "to_nir": "ann2snn.interop.nir_export",
    "to_norse": "ann2snn.interop.readers",
    "to_sinabs": "ann2snn.interop.readers",
    "to_snntorch": "ann2snn.interop.readers",
    "write_nir": "ann2snn.interop.nir_export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ann2snn.interop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
