"""The contract of modules that live in time: they process chunks of steps and keep state.

Every simulator (``SpikingModel.simulate``, the layer-calibration sweep, bootstrap's ANN
view) drives such modules through the three helpers below and nothing else, so a new
stateful module (a leaky neuron, a pooling method) implements :class:`TemporalModule` once.
"""

from __future__ import annotations

from typing import List, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class TemporalModule(Protocol):
    """A module of a spiking graph that sees time.

    One call processes a chunk of :attr:`steps` time steps stacked along the batch dimension
    (``[steps * B, ...]``); state carried between calls (a membrane potential, spike
    counts) is forgotten by :meth:`reset`. The simulator sets ``steps`` on every such
    module before each chunk and resets them before each input, so a new kind of stateful
    module only has to provide these two members (``isinstance(m, TemporalModule)``).
    """

    steps: int

    def reset(self) -> None:
        """Forget all state carried between calls."""
        ...


def temporal_modules(module: nn.Module) -> List[nn.Module]:
    """Every submodule of ``module`` (itself included) that lives in time."""
    return [m for m in module.modules() if isinstance(m, TemporalModule)]


def set_steps(module: nn.Module, steps: int) -> None:
    """Make every module in time under ``module`` process chunks of ``steps`` steps."""
    for m in temporal_modules(module):
        m.steps = steps


def reset_state(module: nn.Module) -> None:
    """Forget the state of every module in time under ``module``."""
    for m in temporal_modules(module):
        m.reset()
