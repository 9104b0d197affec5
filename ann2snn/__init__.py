"""ann2snn: convert trained ReLU networks into spiking neural networks.

Example:
    >>> import ann2snn  # doctest: +SKIP
    >>> snn = ann2snn.convert(model, mode="99.9%", calib_data=loader)  # doctest: +SKIP
    >>> curve = ann2snn.evaluate(snn, test_loader, timesteps=[8, 32, 128])  # doctest: +SKIP
"""

from .api import convert
from .bootstrap import bootstrap
from .errors import ConversionError, DataNotFoundError
from .evaluate import AccuracyCurve, evaluate
from .modes import parse_mode
from .neuron import Activation, IFNeuron
from .spiking import SpikingModel

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
