"""Spike-count readout: make the output layer spike (for comparison with the default).

By default the SNN's output layer does not spike: the readout integrates its input current
(an accumulated membrane potential), so the output is exact up to the hidden layers'
errors and can be negative. A spike-count readout instead puts IF neurons after the output
layer and counts their spikes: this pass adds a ReLU-family :class:`Activation` after each
output tensor, which the following passes calibrate, normalize and turn into IF neurons
like any other. Negative logits are lost and the output is quantized to ``1/T`` of its
scale; ``docs/accuracy.md`` measures the cost.
"""

from __future__ import annotations

from torch import fx

from ann2snn.errors import ConversionError
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import add_submodule, finish


def add_output_neurons(gm: fx.GraphModule) -> fx.GraphModule:
    """Insert an :class:`Activation` before the graph output (one per output tensor).

    Run after ``canonicalize_activations`` and before ``insert_observers``.

    Raises:
        ConversionError: when an output is not a single tensor node or a tuple/list of them.
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    value = out.args[0]
    nodes = list(value) if isinstance(value, (tuple, list)) else [value]
    if not nodes or not all(isinstance(n, fx.Node) for n in nodes):
        raise ConversionError(
            "a spike-count readout needs the model to return a tensor (or a tuple of "
            f"tensors), got {value!r}; use readout='membrane'"
        )
    replaced = {}
    for node in dict.fromkeys(nodes):
        name = add_submodule(gm, f"{node.name}_readout", Activation())
        with gm.graph.inserting_before(out):
            act = gm.graph.call_module(name, (node,))
        act.meta = dict(node.meta)
        replaced[node] = act
    new = [replaced[n] for n in nodes]
    out.args = (type(value)(new) if isinstance(value, (tuple, list)) else new[0],)
    return finish(gm)
