"""SpikingModel: a converted spiking fx graph and its simulation over time."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ann2snn._checks import optional_positive_int, positive_int
from ann2snn.input_checks import check_snn_input, float_dtype, non_finite_samples, shape_error
from ann2snn.runtime.encoding import check_encoding, encoded_steps
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
    ``snn(x, T, encoding="poisson", seed=0)`` feeds rate-coded spikes instead
    (:mod:`ann2snn.runtime.encoding`), and ``snn.run(x_seq)`` a time-major sequence
    ``[T, B, ...]`` of frames or event counts, one per step.

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
    def check_input(self, x: Any) -> torch.Tensor:
        """``x`` as the network takes it: a floating-point batch ``[B, *meta['input_shape']]``,
        cast to the network's dtype (float64 images are fine; integer images are not).

        Raises:
            TypeError / ValueError: naming the expected and the given shape or dtype.
        """
        return check_snn_input(x, self.meta.get("input_shape"), float_dtype(self.graph_module))

    def is_sequence(self, x: Any) -> bool:
        """True when ``x`` is a time-major sequence ``[T, B, *input_shape]`` (one more
        dimension than a batch)."""
        shape = self.meta.get("input_shape")
        return isinstance(x, torch.Tensor) and shape is not None and x.dim() == len(shape) + 2

    @torch.no_grad()
    def simulate(
        self,
        x: torch.Tensor,
        timesteps: int,
        chunk_steps: Optional[int] = None,
        *,
        encoding: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Iterator[Any]:
        """Yield the output of every time step, one chunk ``[steps, B, ...]`` at a time.

        For a model that returns a tuple, list or dict of tensors, each chunk has that
        structure, with every tensor shaped ``[steps, B, ...]``. The output of a sample
        whose input holds NaN or inf is NaN (the ANN's would be too).

        Args:
            x: a static input batch ``[B, ...]`` (see :meth:`check_input`), or a time-major
                sequence ``[T', B, ...]`` with ``T' >= timesteps``, one input per step.
            timesteps: number of time steps T.
            chunk_steps: time steps per chunk (default: :meth:`chunk_steps`).
            encoding: how a static input enters: ``"current"`` (default), ``"poisson"``
                or ``"bernoulli"`` (see :mod:`ann2snn.runtime.encoding`).
            seed: seed of a random encoding (the same seed gives the same spikes).

        Raises:
            ValueError: for a bad ``timesteps``, encoding or input (see :meth:`check_input`).
        """
        timesteps = positive_int("timesteps", timesteps)
        chunk_steps = optional_positive_int("chunk_steps", chunk_steps)
        encoding = check_encoding(encoding)
        if self.is_sequence(x):
            if encoding != "current":
                raise ValueError(
                    f"encoding={encoding!r} encodes a static input; a sequence [T, B, ...] "
                    "is already one input per step"
                )
            if x.shape[0] < timesteps:
                raise ValueError(
                    f"the input sequence has {x.shape[0]} steps, fewer than timesteps={timesteps}"
                )
            steps_in = self.check_input(x.flatten(0, 1)).reshape(x.shape)[:timesteps]
            bad = non_finite_samples(steps_in.transpose(0, 1))
            yield from self._step_by_step(iter(steps_in), steps_in[0], bad)
            return
        x = self.check_input(x)
        if encoding != "current":
            bad = non_finite_samples(x)
            yield from self._step_by_step(encoded_steps(x, encoding, timesteps, seed), x, bad)
            return
        bad = non_finite_samples(x)
        self.reset()
        gm = self.graph_module
        static_values = self._run(gm.static_prefix, x, x)
        batch = x.shape[0]
        chunk = chunk_steps or self.chunk_steps(batch, timesteps)
        done = 0
        while done < timesteps:
            steps = min(chunk, timesteps - done)
            set_steps(gm.time_loop, steps)
            out = self._run(gm.time_loop, x, *static_values)
            yield tree_map(functools.partial(_per_step, steps=steps, batch=batch, bad=bad), out)
            done += steps
        set_steps(gm.time_loop, 1)

    def _step_by_step(
        self, inputs: Iterator[torch.Tensor], example: torch.Tensor, bad: Optional[torch.Tensor]
    ) -> Iterator[Any]:
        """Simulate an input that changes every step: the static prefix runs on each step's
        input, then one step of the time loop (its state carries over)."""
        self._warn_if_static_only()
        self.reset()
        gm = self.graph_module
        set_steps(gm.time_loop, 1)
        batch = example.shape[0]
        for x_t in inputs:
            out = self._run(gm.time_loop, example, *self._run(gm.static_prefix, example, x_t))
            yield tree_map(functools.partial(_per_step, steps=1, batch=batch, bad=bad), out)

    def _warn_if_static_only(self) -> None:
        """Max pooling before the first neurons is exact for a static input only (the max of
        the mean current is not the mean of the max): say so once per model."""
        if getattr(self, "_static_only_warned", False):
            return
        from ann2snn.converter_passes.op_support import kind_of

        prefix = self.graph_module.static_prefix
        pools = [n for n in prefix.graph.nodes if kind_of(prefix, n) == "maxpool"]
        if pools:
            warnings.warn(
                "this SNN takes max pooling before its first neurons (maxpool='auto' or "
                "'current'), which is exact for a static input only; for time-varying or "
                "rate-coded input convert with maxpool='cumulative'",
                stacklevel=3,
            )
            self._static_only_warned = True

    @torch.no_grad()
    def run(self, x_seq: torch.Tensor, chunk_steps: Optional[int] = None) -> Any:
        """The time-averaged output for a time-major input sequence ``[T, B, ...]`` (frames
        or event counts, one per step), over its ``T`` steps."""
        if not self.is_sequence(x_seq):
            shape = self.meta.get("input_shape")
            raise ValueError(
                f"run takes a time-major sequence [T, B, *{list(shape or [])}], got shape "
                f"{list(getattr(x_seq, 'shape', []))}; for a static input call snn(x, timesteps)"
            )
        return self(x_seq, int(x_seq.shape[0]), chunk_steps)

    def _run(self, fn: Any, x: torch.Tensor, *args: Any) -> Any:
        """``fn(*args)``; a failure on an input of another size than the converted one is
        reported as the input's (ValueError)."""
        try:
            return fn(*args)
        except Exception as exc:
            error = shape_error(x, self.meta.get("input_shape"), exc)
            if error is None:
                raise
            raise error from exc

    @torch.no_grad()
    def cumulative_outputs(
        self,
        x: torch.Tensor,
        timesteps: Sequence[int],
        chunk_steps: Optional[int] = None,
        *,
        encoding: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Iterator[Tuple[int, Any]]:
        """``(T, summed output of the first T steps)`` for every T of ``timesteps`` (ascending),
        from ONE simulation to the largest T: the running sum every accuracy or fidelity
        curve reads (divide by T for the time-averaged output). For a model with several
        outputs, the sum has the output's structure (a tuple, list or dict of tensors).

        The yielded tensor is the running sum itself and changes as the simulation goes
        on: read (or clone) it before asking for the next T.
        """
        wanted = sorted({positive_int("timesteps", t) for t in timesteps})
        totals: Optional[List[Any]] = None
        done = 0
        for chunk in self.simulate(x, wanted[-1], chunk_steps, encoding=encoding, seed=seed):
            leaves, spec = tree_flatten(chunk)
            steps = next((t.shape[0] for t in leaves if isinstance(t, torch.Tensor)), 1)
            for i in range(steps):
                step = [t[i] if isinstance(t, torch.Tensor) else t for t in leaves]
                if totals is None:
                    totals = [t.clone() if isinstance(t, torch.Tensor) else t for t in step]
                else:
                    for total, t in zip(totals, step):
                        if isinstance(total, torch.Tensor):
                            total.add_(t)
                done += 1
                if done in wanted:
                    yield done, tree_unflatten(totals, spec)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: int = 32,
        chunk_steps: Optional[int] = None,
        *,
        encoding: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> Any:
        """The time-averaged output over ``timesteps`` steps for the input ``x`` (see
        :meth:`simulate`; a tuple, list or dict of time-averaged tensors for a model that
        returns one)."""
        totals: Optional[List[Any]] = None
        spec = None
        for out in self.simulate(x, timesteps, chunk_steps, encoding=encoding, seed=seed):
            leaves, spec = tree_flatten(out)
            sums = [t.sum(0) if isinstance(t, torch.Tensor) else t for t in leaves]
            if totals is None:
                totals = sums
            else:
                totals = [a + b if isinstance(a, torch.Tensor) else a for a, b in zip(totals, sums)]
        assert totals is not None and spec is not None  # timesteps >= 1
        averaged = [t / timesteps if isinstance(t, torch.Tensor) else t for t in totals]
        return tree_unflatten(averaged, spec)

    def to_nir(self, timesteps: int = 32) -> Any:
        """This SNN as a ``nir.NIRGraph`` (:func:`ann2snn.interop.to_nir`; docs/interop.md)."""
        from ann2snn.interop.nir_export import to_nir

        return to_nir(self, timesteps=timesteps)

    def extra_repr(self) -> str:
        return f"neuron_layers={len(self.neurons())}, mode={self.meta.get('mode')!r}"


def _per_step(out: Any, steps: int, batch: int, bad: Optional[torch.Tensor]) -> Any:
    """One output tensor of the time loop, ``[steps * B, ...]``, as ``[steps, B, ...]``;
    NaN for the samples in ``bad`` (their input was not finite)."""
    if not isinstance(out, torch.Tensor):
        return out
    out = out.reshape((steps, batch) + tuple(out.shape[1:]))
    if bad is not None and out.is_floating_point():
        mask = bad.reshape((1, batch) + (1,) * (out.dim() - 2))
        out = torch.where(mask, torch.full_like(out, float("nan")), out)
    return out
