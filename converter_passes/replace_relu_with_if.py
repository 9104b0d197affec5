"""Replace every normalized activation by integrate-and-fire neurons with soft reset."""

from __future__ import annotations

from torch import fx

from ann2snn.runtime.neuron import Activation, IFNeuron
from ann2snn.tracing import finish, is_module, replace_submodule


def replace_relu_with_if(gm: fx.GraphModule, v_init: float = 0.5) -> fx.GraphModule:
    """Swap each :class:`Activation` for an :class:`IFNeuron` with the same threshold.

    Args:
        v_init: initial membrane potential as a fraction of the threshold.
    """
    for node in gm.graph.nodes:
        if not is_module(gm, node, Activation):
            continue
        act = gm.get_submodule(str(node.target))
        threshold = act.threshold if act.threshold is not None else 1.0
        neuron = IFNeuron(threshold, v_init=v_init)
        if act.scale is not None:
            neuron.scale = act.scale.clone().reshape(-1)
        if act.clip is not None:
            neuron.clip = act.clip.clone()
        if act.calib_max is not None:
            neuron.calib_max = act.calib_max.clone().reshape(-1)
        replace_submodule(gm, str(node.target), neuron)
    return finish(gm)
