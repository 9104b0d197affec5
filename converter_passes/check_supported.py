"""Refuse, in ONE error, every node of the graph that cannot become part of an SNN."""

from __future__ import annotations

from typing import List

from torch import fx

from ann2snn.converter_passes.op_support import rule_for
from ann2snn.errors import ConversionError
from ann2snn.tracing import describe_node

_HINT = (
    "ann2snn converts networks whose nonlinearities are ReLU-family activations (ReLU, "
    "ReLU6, Hardtanh(0, a)) and max pooling, connected by linear layers (Conv, Linear, "
    "BatchNorm, average pooling, additions, concatenation, reshapes). Replace the listed "
    "operations by supported ones and retrain, or remove them (e.g. a final softmax does "
    "not change the predicted class)."
)


def check_supported(gm: fx.GraphModule) -> fx.GraphModule:
    """Raise one :class:`ConversionError` naming every unsupported node, or return ``gm``.

    Raises:
        ConversionError: listing each unsupported node with its op and source line.
    """
    problems: List[str] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        rule = rule_for(gm, node)
        if rule is None:
            problems.append(f"  - {describe_node(gm, node)}: not supported")
            continue
        reason = rule.check(gm, node) if rule.check else None
        if reason:
            problems.append(f"  - {describe_node(gm, node)}: {reason}")
    if problems:
        raise ConversionError(
            f"{len(problems)} operation(s) of {type(gm).__name__} cannot be converted to "
            f"spiking neurons:\n" + "\n".join(problems) + "\n" + _HINT
        )
    gm.graph.lint()
    return gm
