"""SpikingModel: a converted spiking fx graph and its simulation over time."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

from ann2snn._checks import optional_positive_int, positive_int
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.runtime.temporal import reset_state, set_steps

# Activation memory one chunk of time may take (elements of the largest activation tensor).
CHUNK_ELEMENT_BUDGET = 64 * 2**20
MAX_CHUNK_STEPS = 32


class SpikingModel(nn.Module):
    """A converted SNN. Call it like the ANN, with a number of time steps.

    ``snn(x, timesteps=T)`` presents the static input ``x`` as a constant current for ``T``
    steps and returns the output layer's time-averaged value (the readout integrates the
    output layer's input current; it does not spike). State is reset on every call.

    Attributes:
        graph_module: the spiking ``fx.GraphModule`` (``static_prefix`` + ``time_loop``).
        ann: the original ANN (a deep copy, eval mode), for reference, or None.
        meta: conversion settings and statistics.
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        ann: Optional[nn.Module] = None,
        meta: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.ann = ann
        self.meta: Dict[str, Any] = dict(meta or {})

    # -- structure -------------------------------------------------------------------
    def neurons(self) -> List[Tuple[str, IFNeuron]]:
        """(name, module) of every IF layer, in graph order."""
        return [(n, m) for n, m in self.graph_module.named_modules() if isinstance(m, IFNeuron)]

    def reset(self) -> None:
        """Reset all state carried over time (done automatically by each simulation)."""
        reset_state(self.graph_module)

    def chunk_steps(self, batch: int, timesteps: int) -> int:
        """Time steps per chunk for a batch size: bounded memory, independent of T."""
        largest = int(self.graph_module.meta.get("largest_activation", 1))
        by_memory = max(1, CHUNK_ELEMENT_BUDGET // max(1, batch * largest))
        return max(1, min(timesteps, MAX_CHUNK_STEPS, by_memory))

    # -- simulation ------------------------------------------------------------------
    @torch.no_grad()
    def simulate(
        self, x: torch.Tensor, timesteps: int, chunk_steps: Optional[int] = None
    ) -> Iterator[torch.Tensor]:
        """Yield the output of every time step, one chunk ``[steps, B, ...]`` at a time.

        Args:
            x: a static input batch ``[B, ...]``.
            timesteps: number of time steps T.
            chunk_steps: time steps per chunk (default: :meth:`chunk_steps`).
        """
        timesteps = positive_int("timesteps", timesteps)
        chunk_steps = optional_positive_int("chunk_steps", chunk_steps)
        self.reset()
        gm = self.graph_module
        static_values = gm.static_prefix(x)
        batch = x.shape[0]
        chunk = chunk_steps or self.chunk_steps(batch, timesteps)
        done = 0
        while done < timesteps:
            steps = min(chunk, timesteps - done)
            set_steps(gm.time_loop, steps)
            out = gm.time_loop(*static_values)
            yield out.reshape((steps, batch) + tuple(out.shape[1:]))
            done += steps
        set_steps(gm.time_loop, 1)

    @torch.no_grad()
    def cumulative_outputs(
        self, x: torch.Tensor, timesteps: Sequence[int], chunk_steps: Optional[int] = None
    ) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(T, summed output of the first T steps)`` for every T of ``timesteps`` (ascending),
        from ONE simulation to the largest T: the running sum every accuracy or fidelity
        curve reads (divide by T for the time-averaged output).

        The yielded tensor is the running sum itself and changes as the simulation goes
        on: read (or clone) it before asking for the next T.
        """
        wanted = sorted({positive_int("timesteps", t) for t in timesteps})
        total, done = None, 0
        for chunk in self.simulate(x, wanted[-1], chunk_steps):
            for out in chunk:
                total = out.clone() if total is None else total.add_(out)
                done += 1
                if done in wanted:
                    yield done, total

    def forward(
        self, x: torch.Tensor, timesteps: int = 32, chunk_steps: Optional[int] = None
    ) -> torch.Tensor:
        """The time-averaged output over ``timesteps`` steps for the static input ``x``."""
        total = None
        for out in self.simulate(x, timesteps, chunk_steps):
            s = out.sum(0)
            total = s if total is None else total + s
        return total / timesteps

    def extra_repr(self) -> str:
        return f"neuron_layers={len(self.neurons())}, mode={self.meta.get('mode')!r}"
