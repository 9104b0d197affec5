"""Input encodings: how a static input becomes the input of each time step.

* ``"current"`` (the default): the input is a constant current, the same every step. The
  part of the network before the first neuron then runs once (the static prefix).
* ``"poisson"``: at every step each input element emits ``k ~ Poisson(|x|)`` spikes of sign
  ``sign(x)``, so the mean input per step is ``x`` exactly, whatever its magnitude.
* ``"bernoulli"``: at every step each input element emits one spike of sign ``sign(x)``
  with probability ``min(|x|, 1)`` (rate coding as in most SNN tutorials; inputs beyond
  ±1 saturate).

Random encodings draw from one ``torch.Generator`` seeded with ``seed``, one step after
the other, so the same seed gives the same spikes, whatever the batch is split into in time.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

#: Accepted encodings with a one-line description (for errors and the CLI's help).
ENCODINGS = {
    "current": "the input is a constant current every step (default)",
    "poisson": "Poisson spike counts with mean |x| per step, signed",
    "bernoulli": "one spike with probability min(|x|, 1) per step, signed",
}


def check_encoding(encoding: Optional[str]) -> str:
    """The encoding's name (``None`` means ``"current"``).

    Raises:
        ValueError: listing the accepted encodings.
    """
    name = "current" if encoding is None else encoding
    if not isinstance(name, str) or name not in ENCODINGS:
        choices = ", ".join(f"{k!r} ({v})" for k, v in ENCODINGS.items())
        raise ValueError(f"unknown input encoding {encoding!r}; choose one of {choices}")
    return name


def encoded_steps(
    x: torch.Tensor, encoding: str, timesteps: int, seed: Optional[int] = None
) -> Iterator[torch.Tensor]:
    """The input of each of ``timesteps`` steps for a random ``encoding`` of ``x``.

    Args:
        x: the static input batch.
        encoding: ``"poisson"`` or ``"bernoulli"``.
        timesteps: number of steps to generate.
        seed: seed of the generator (default: a fresh random seed).
    """
    gen = torch.Generator(device=x.device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    sign, magnitude = torch.sign(x), x.abs()
    if encoding == "bernoulli":
        magnitude = magnitude.clamp(max=1.0)
    for _ in range(timesteps):
        if encoding == "poisson":
            counts = torch.poisson(magnitude, generator=gen)
        else:
            counts = (torch.rand(x.shape, generator=gen, device=x.device) < magnitude).to(x.dtype)
        yield sign * counts
