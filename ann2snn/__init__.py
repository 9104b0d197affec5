"""ann2snn: convert trained ReLU networks into spiking neural networks.

Example:
    >>> import ann2snn  # doctest: +SKIP
    >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
    >>> curve = ann2snn.evaluate(snn, test_loader, timesteps=[8, 32, 128])  # doctest: +SKIP
"""

from ann2snn.analysis.evaluate import AccuracyCurve, evaluate
from ann2snn.api import convert
from ann2snn.errors import ConversionError, DataNotFoundError
from ann2snn.modes import parse_mode
from ann2snn.runtime.neuron import Activation, IFNeuron
from ann2snn.runtime.spiking_model import SpikingModel
from ann2snn.training.bootstrap import bootstrap

__version__ = "0.1.0"

__all__ = [
    "AccuracyCurve",
    "Activation",
    "ConversionError",
    "DataNotFoundError",
    "IFNeuron",
    "SpikingModel",
    "bootstrap",
    "convert",
    "evaluate",
    "parse_mode",
]
