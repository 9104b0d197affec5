"""The contract of modules that live in time: they process chunks of steps and keep state."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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
