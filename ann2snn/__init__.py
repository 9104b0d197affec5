"""ann2snn: convert trained ReLU networks into spiking neural networks.

Example:
    >>> import ann2snn  # doctest: +SKIP
    >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
    >>> curve = ann2snn.evaluate(snn, test_loader, timesteps=[8, 32, 128])  # doctest: +SKIP

The public names are imported on first use (PEP 562), so ``import ann2snn`` does not
import torch: the ``ann2snn`` command starts its own imports where it can handle Ctrl-C.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

from ann2snn._version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "AccuracyCurve": "ann2snn.analysis.evaluate",
    "Activation": "ann2snn.runtime.neuron",
    "ConversionConfig": "ann2snn.config",
    "ConversionError": "ann2snn.errors",
    "DataNotFoundError": "ann2snn.errors",
    "IFNeuron": "ann2snn.runtime.neuron",
    "LoadedModel": "ann2snn.frontends.checkpoint",
    "RangeWarning": "ann2snn.analysis.saturation",
    "SNNFileError": "ann2snn.errors",
    "SpikingModel": "ann2snn.runtime.spiking_model",
    "UntrustedFileError": "ann2snn.errors",
    "bootstrap": "ann2snn.training.bootstrap",
    "convert": "ann2snn.api",
    "evaluate": "ann2snn.analysis.evaluate",
    "finetune": "ann2snn.training.finetune",
    "from_nir": "ann2snn.interop.nir_import",
    "layer_report": "ann2snn.analysis.diagnostics",
    "load_model": "ann2snn.frontends.checkpoint",
    "load_snn": "ann2snn.snn_file",
    "parse_mode": "ann2snn.modes",
    "save_snn": "ann2snn.snn_file",
}

# The same names as _EXPORTS (tests/test_structure.py checks it), written out for linters.
__all__ = [
    "AccuracyCurve",
    "Activation",
    "ConversionConfig",
    "ConversionError",
    "DataNotFoundError",
    "IFNeuron",
    "LoadedModel",
    "RangeWarning",
    "SNNFileError",
    "SpikingModel",
    "UntrustedFileError",
    "bootstrap",
    "convert",
    "evaluate",
    "finetune",
    "from_nir",
    "layer_report",
    "load_model",
    "load_snn",
    "parse_mode",
    "save_snn",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ann2snn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups do not come here
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from ann2snn.analysis.diagnostics import layer_report
    from ann2snn.analysis.evaluate import AccuracyCurve, evaluate
    from ann2snn.analysis.saturation import RangeWarning
    from ann2snn.api import convert
    from ann2snn.config import ConversionConfig
    from ann2snn.errors import (
        ConversionError,
        DataNotFoundError,
        SNNFileError,
        UntrustedFileError,
    )
    from ann2snn.frontends.checkpoint import LoadedModel, load_model
    from ann2snn.interop.nir_import import from_nir
    from ann2snn.modes import parse_mode
    from ann2snn.runtime.neuron import Activation, IFNeuron
    from ann2snn.runtime.spiking_model import SpikingModel
    from ann2snn.snn_file import load_snn, save_snn
    from ann2snn.training.bootstrap import bootstrap
