"""Checks of the data and models users pass, with messages that say what to do.

One home for the rules :func:`ann2snn.convert` (the model, its calibration data) and
:class:`~ann2snn.runtime.spiking_model.SpikingModel` (its inputs) share: integer images,
NaN or infinite values, batches that do not fit the model's first layer, models with more
than one input. Each check runs before any fx machinery, so a mistake is one
``ValueError`` naming the shapes involved, never an fx ``ShapeProp`` dump.
"""

from __future__ import annotations

import itertools
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

from ann2snn.tracing import user_source_line

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def float_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter or buffer (float32 if none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def check_float_input(x: Any, what: str) -> torch.Tensor:
    """``x`` if it is a floating-point tensor.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: integer, bool or complex values, naming the dtype and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{what} holds {dtype_name(x.dtype)} values; the network takes floating-point "
            "inputs. Convert the images to float in [0, 1] (e.g. x.float() / 255, as "
            "torchvision's ToTensor does), normalized as the model was trained."
        )
    return x


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ValueError if ``x`` holds a NaN or an infinite value."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{what} holds {bad} NaN or infinite value(s); activation ranges can only be "
            "measured on finite data. Remove or repair those samples."
        )


def check_calibration_batch(x: Any, index: int) -> torch.Tensor:
    """``x`` (the input of calibration batch ``index``, from 1) if it is finite floating point.

    Raises:
        ValueError / TypeError: as :func:`check_float_input` and :func:`check_finite`.
    """
    what = f"calibration batch {index}"
    check_float_input(x, what)
    check_finite(x, what)
    return x


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a model with NaN or infinite parameters or buffers.

    Raises:
        ValueError: naming every non-finite parameter and buffer.
    """
    named = list(model.named_parameters()) + list(model.named_buffers())
    bad = [
        name
        for name, t in named
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:8]) + (f" (+{len(bad) - 8} more)" * (len(bad) > 8))
        raise ValueError(
            f"the model has non-finite (NaN or infinite) weights in {shown}: the ANN computes "
            "NaN, so no spiking network can match it. Repair the checkpoint (a diverged "
            "training run, or a failed load) before converting."
        )


# -- the model's inputs ---------------------------------------------------------------------


def required_inputs(gm: fx.GraphModule) -> List[fx.Node]:
    """The placeholders of ``gm`` that have no default value."""
    return [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]


def check_single_input(gm: fx.GraphModule, model_name: str) -> None:
    """Refuse a traced model whose forward needs more than one tensor.

    Raises:
        ValueError: naming the inputs and the ``concrete_args`` that fix the others.
    """
    needed = required_inputs(gm)
    if len(needed) <= 1:
        return
    names = [str(n.target) for n in needed]
    fix = ", ".join(f"{name!r}: value" for name in names[1:])
    raise ValueError(
        f"{model_name}.forward takes {len(names)} inputs ({', '.join(names)}); ann2snn "
        "converts networks of one input tensor (what calib_data yields). Fix the other "
        f"inputs with concrete_args={{{fix}}} (they become constants of the spiking "
        "network), or wrap the model in a module whose forward takes one tensor."
    )


def first_layer(gm: fx.GraphModule) -> Optional[Tuple[fx.Node, nn.Module]]:
    """The first Conv / Linear / BatchNorm node of ``gm`` and its module, or None."""
    from torch.nn.modules.batchnorm import _BatchNorm

    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, (*_CONVS, nn.Linear, _BatchNorm)):
                return node, module
    return None


def expected_input(module: nn.Module) -> str:
    """What ``module`` takes, as ``[B, C, H, W]`` with the sizes it fixes."""
    if isinstance(module, _CONVS):
        dims = len(module.kernel_size)
        return f"[B, {module.in_channels}, {_SPATIAL[dims]}]"
    if isinstance(module, nn.Linear):
        return f"[B, {module.in_features}]"
    return f"[B, {getattr(module, 'num_features', 'C')}, ...]"


def _layer_text(node: fx.Node, module: nn.Module) -> str:
    return f"'{node.target}' ({type(module).__name__})"


def _shape_text(shape: Sequence[int]) -> str:
    return "[B, " + ", ".join(str(int(s)) for s in shape) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unbatched(gm: fx.GraphModule, x: torch.Tensor) -> Optional[str]:
    """A message when ``x`` lacks the batch dimension the model's first layer needs."""
    found = first_layer(gm)
    if found is None:
        return None
    node, module = found
    fed = bool(node.args) and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder"
    if not fed:
        return None
    wanted = len(module.kernel_size) + 2 if isinstance(module, _CONVS) else None
    if isinstance(module, nn.Linear):
        wanted = 2
    if wanted is None or x.dim() != wanted - 1:
        return None
    return (
        f"the calibration inputs look unbatched: shape {list(x.shape)} has {x.dim()} "
        f"dimensions, and the model's first layer {_layer_text(node, module)} takes batches "
        f"{expected_input(module)}. Pass batches: a DataLoader over the dataset, or "
        "x.unsqueeze(0) for a single example."
    )


class _Probe(fx.Interpreter):
    """An fx interpreter that remembers the node it is running (and prints nothing)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.node: Optional[fx.Node] = None

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        return super().run_node(n)


def check_runs(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Run the traced model once on ``example``; a failure means the data does not fit it.

    Raises:
        ValueError: with the input's shape, the layer that failed and what the model's
            first layer takes.
    """
    unbatched = _unbatched(gm, example)
    if unbatched:
        raise ValueError(unbatched)
    probe = _Probe(gm)
    try:
        with torch.no_grad():
            probe.run(example)
    except Exception as exc:  # any failure of the model on this input
        node = probe.node
        where = ""
        if node is not None and node.op == "call_module":
            where = f" at layer {_layer_text(node, gm.get_submodule(str(node.target)))}"
        elif node is not None and node.op in ("call_function", "call_method"):
            src = user_source_line(node)
            where = f" at '{node.name}'" + (f" ({src})" if src else "")
        found = first_layer(gm)
        takes = (
            f" The model's first layer {_layer_text(*found)} takes {expected_input(found[1])}."
            if found
            else ""
        )
        raise ValueError(
            f"the model cannot run on calibration inputs of shape "
            f"{_shape_text(example.shape[1:])} ({dtype_name(example.dtype)}): it fails{where} "
            f"with '{_first_line(exc)}'.{takes} Give calib_data batches shaped like the "
            "model's training inputs (same channels and image size: resize or convert the "
            "images)."
        ) from exc


# -- SpikingModel inputs ----------------------------------------------------------------


def check_snn_input(
    x: Any, input_shape: Optional[Sequence[int]], dtype: torch.dtype
) -> torch.Tensor:
    """``x`` in ``dtype``, if it is a floating-point batch of ``[B, *input_shape]``.

    The batch size is free; the rank and the channels (dim 1) must match. Other sizes may
    differ (a fully convolutional network can take them); see :func:`shape_error`.

    Raises:
        TypeError / ValueError: naming the expected and the given shape.
    """
    check_float_input(x, "the SNN's input")
    if input_shape is not None:
        shape = [int(s) for s in input_shape]
        expected = _shape_text(shape)
        if list(x.shape) == shape:
            raise ValueError(
                f"the SNN's input looks unbatched: shape {list(x.shape)}; it takes batches "
                f"{expected}. Use x.unsqueeze(0) for a single example."
            )
        if x.dim() != len(shape) + 1 or (shape and x.shape[1] != shape[0]):
            raise ValueError(
                f"the SNN takes inputs {expected} (the shape it was converted with), got "
                f"shape {list(x.shape)}"
            )
    return x if x.dtype == dtype else x.to(dtype)


def shape_error(
    x: torch.Tensor, input_shape: Optional[Sequence[int]], exc: BaseException
) -> Optional[ValueError]:
    """The error to raise when the SNN failed on an input of another size than it was
    converted for (None when the sizes agree: then the failure is not the input's)."""
    if input_shape is None or list(x.shape[1:]) == [int(s) for s in input_shape]:
        return None
    return ValueError(
        f"the SNN takes inputs {_shape_text(input_shape)} (the shape it was converted with) "
        f"and cannot run on shape {list(x.shape)}: {_first_line(exc)}"
    )


def non_finite_samples(x: torch.Tensor) -> Optional[torch.Tensor]:
    """A ``[B]`` mask of the samples of ``x`` holding NaN or inf, or None if there are none."""
    if x.dim() == 0 or x.shape[0] == 0:
        return None
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    return bad if bool(bad.any()) else None


def logits_of(output: Any) -> torch.Tensor:
    """The one tensor of a model's output: the output itself, or the only tensor of a
    tuple, list or dict (what accuracy and fidelity are measured on).

    Raises:
        ValueError: an output with several tensors (or none), naming them.
    """
    if isinstance(output, torch.Tensor):
        return output
    from torch.utils._pytree import tree_leaves

    tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0]
    raise ValueError(
        f"accuracy needs one logits tensor, but the model returns a {type(output).__name__} "
        f"of {len(tensors)} tensors; wrap the ANN so that forward returns the logits only, "
        "then convert it"
    )
