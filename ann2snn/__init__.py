"""ann2snn: convert trained ReLU networks into spiking neural networks.

Example:
    >>> import ann2snn  # doctest: +SKIP
    >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
    >>> curve = ann2snn.evaluate(snn, test_loader, timesteps=[8, 32, 128])  # doctest: +SKIP
"""

from ann2snn._version import __version__
from ann2snn.analysis.diagnostics import layer_report
from ann2snn.analysis.evaluate import AccuracyCurve, evaluate
from ann2snn.api import convert
from ann2snn.config import ConversionConfig
from ann2snn.errors import ConversionError, DataNotFoundError, SNNFileError, UntrustedFileError
from ann2snn.frontends.checkpoint import LoadedModel, load_model
from ann2snn.modes import parse_mode
from ann2snn.runtime.neuron import Activation, IFNeuron
from ann2snn.runtime.spiking_model import SpikingModel
from ann2snn.snn_file import load_snn, save_snn
from ann2snn.training.bootstrap import bootstrap

__all__ = [
    "AccuracyCurve",
    "Activation",
    "ConversionConfig",
    "ConversionError",
    "DataNotFoundError",
    "IFNeuron",
    "LoadedModel",
    "SNNFileError",
    "SpikingModel",
    "UntrustedFileError",
    "bootstrap",
    "convert",
    "evaluate",
    "layer_report",
    "load_model",
    "load_snn",
    "parse_mode",
    "save_snn",
    "__version__",
]
