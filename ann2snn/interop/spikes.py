"""Spike trains of every IF layer of a SpikingModel, step by step (for comparisons)."""

from __future__ import annotations

from typing import Dict

import torch

from ann2snn.runtime.neuron import IFNeuron

__all__ = ["spike_trains"]


@torch.no_grad()
def spike_trains(snn: torch.nn.Module, x: torch.Tensor, timesteps: int) -> Dict[str, torch.Tensor]:
    """IF layer name -> its spikes ``[T, B, ...]`` (bool) for the static input ``x``, in graph
    order, and ``"output"`` -> the output layer's value at every step ``[T, B, ...]``."""
    batch = x.shape[0]
    record: Dict[str, list] = {}
    handles = []
    for name, m in snn.graph_module.named_modules():
        if isinstance(m, IFNeuron):
            record[name] = []

            def hook(mod, inputs, out, name=name):
                record[name].append(out.reshape((-1, batch) + tuple(out.shape[1:])) != 0)

            handles.append(m.register_forward_hook(hook))
    try:
        outputs = [chunk for chunk in snn.simulate(x, timesteps)]
    finally:
        for h in handles:
            h.remove()
    trains = {name: torch.cat(chunks) for name, chunks in record.items()}
    trains["output"] = torch.cat(outputs)
    return trains
