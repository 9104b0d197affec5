"""Rewrite every ReLU-family call as one ``Activation`` module; remove Dropout, Identity and
eval-mode stochastic depth."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.runtime.neuron import Activation
from ann2snn.tracing import add_submodule, finish, replace_submodule

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)


def _clip_of(gm: fx.GraphModule, node: fx.Node):
    """Return (is_activation, clip, inplace) for ``node``."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if type(mod) is nn.ReLU:
            return True, None, mod.inplace
        if type(mod) is nn.ReLU6:
            return True, 6.0, mod.inplace
        if type(mod) is nn.Hardtanh and mod.min_val == 0.0 and mod.max_val > 0:
            return True, float(mod.max_val), mod.inplace
        return False, None, False
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            inplace = node.target is torch.relu_ or bool(node.kwargs.get("inplace", False))
            if node.target is F.relu and len(node.args) > 1:
                inplace = bool(node.args[1])
            return True, None, inplace
        if node.target is F.relu6:
            return True, 6.0, bool(node.kwargs.get("inplace", False))
        if node.target is F.hardtanh:
            lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
            hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
            if lo == 0.0 and isinstance(hi, (int, float)) and hi > 0:
                return True, float(hi), bool(node.kwargs.get("inplace", False))
        return False, None, False
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return True, None, node.target == "relu_"
    return False, None, False


def _stochastic_depth():
    """torchvision's stochastic depth (module, function), or Nones when it is not imported
    (then no model can contain it)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    if module is None:
        return None, None
    return module.StochasticDepth, module.stochastic_depth


def _is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that are the identity in eval mode: Dropout, Identity, stochastic depth."""
    depth_module, depth_function = _stochastic_depth()
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if depth_module is not None and type(mod) is depth_module:
            return not mod.training
        return type(mod) in _DROPOUT_MODULES + (nn.Identity,)
    if node.op != "call_function":
        return False
    if depth_function is not None and node.target is depth_function:
        training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
        return training is False
    return node.target in _DROPOUT_FUNCTIONS


def _used_once(gm: fx.GraphModule, target: str) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target) == 1


def _redirect_later_uses(gm: fx.GraphModule, src: fx.Node, new: fx.Node) -> None:
    """An in-place op changed ``src``: later readers of ``src`` must read ``new``."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for user in list(src.users):
        if user is not new and order[user] > order[new]:
            user.replace_input_with(src, new)


def canonicalize_activations(gm: fx.GraphModule) -> fx.GraphModule:
    """Make every ReLU-family activation an :class:`Activation` module; drop Dropout/Identity.

    Dropout, Identity and torchvision's stochastic depth (in eval mode) are removed.

    ``F.relu``, ``torch.relu``, ``relu_``, ``x.relu()``, in-place and out-of-place
    ``nn.ReLU``, ``ReLU6`` and ``Hardtanh(0, a)`` all become ``Activation(clip)`` call_module
    nodes. In-place forms are made functional: later readers of the input read the output.

    Returns:
        ``gm``, rewritten.
    """
    for node in list(gm.graph.nodes):
        if _is_passthrough(gm, node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            continue
        is_act, clip, inplace = _clip_of(gm, node)
        if not is_act:
            continue
        if node.op == "call_module" and type(gm.get_submodule(str(node.target))) is Activation:
            continue
        src = node.args[0]
        if node.op == "call_module" and _used_once(gm, str(node.target)):
            # Keep the user's module name: "features.2" stays "features.2".
            replace_submodule(gm, str(node.target), Activation(clip))
            if inplace and isinstance(src, fx.Node):
                _redirect_later_uses(gm, src, node)
            continue
        # Functional calls and shared modules (one nn.ReLU called in several places) get
        # one Activation per call site: each becomes its own layer of neurons.
        name = add_submodule(gm, node.name, Activation(clip))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        if inplace and isinstance(src, fx.Node):
            _redirect_later_uses(gm, src, new)
    return finish(gm)
