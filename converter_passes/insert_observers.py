"""Insert an :class:`ActivationObserver` after every activation, for calibration."""

from __future__ import annotations

from typing import Optional

from torch import fx

from ann2snn.calibration import ActivationObserver
from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import add_submodule, finish, is_module


def insert_observers(
    gm: fx.GraphModule, quantile: Optional[float] = None, channel_axis: Optional[int] = None
) -> fx.GraphModule:
    """Follow every ``Activation`` node with an observer recording exact statistics.

    Args:
        quantile: quantile to track exactly (None: the maximum only).
        channel_axis: None for layer-wise statistics, 1 for channel-wise.
    """
    for node in list(gm.graph.nodes):
        if not is_module(gm, node, Activation):
            continue
        obs = ActivationObserver(quantile=quantile, channel_axis=channel_axis)
        name = add_submodule(gm, f"{node.target}_observer", obs)
        with gm.graph.inserting_after(node):
            obs_node = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(obs_node, delete_user_cb=lambda user, o=obs_node: user is not o)
    return finish(gm)
