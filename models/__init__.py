"""Reference ANNs and their small trained checkpoints.

Example:
    >>> from ann2snn.models import MODELS, load_pretrained, pretrained_info
    >>> sorted(MODELS)
    ['fmnist_avgpool_cnn', 'fmnist_cnn128', 'fmnist_densenet', 'fmnist_maxpool_cnn',
     'fmnist_mobilenetv2', 'fmnist_resnet', 'fmnist_resnet20', 'fmnist_vgg16', 'mnist_cnn',
     'mnist_mlp']
    >>> net = load_pretrained("mnist_cnn")  # float32, eval mode
    >>> pretrained_info("mnist_cnn")["dataset"]
    'mnist'

Checkpoints live in ``checkpoints/<name>.pt`` and load with
``torch.load(path, weights_only=True)``. Each is a dict::

    {"arch": name, "kwargs": {...}, "state_dict": {...},
     "state_dict_dtype": "float32" | "float16",
     "dataset": "mnist" | "fashion-mnist",
     "test_accuracy": float,   # percent, full 10k test set, the model as loaded (float32)
     "train": {"epochs", "lr", "seed", ...}}

To keep every file under 1.5 MB, larger models store their floating-point tensors as
float16 (``state_dict_dtype``); :func:`load_pretrained` upcasts them to float32, and the
recorded accuracy is measured on that upcast model.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Dict, Mapping

import torch
from torch import nn

from ann2snn.models.nets import (
    BasicBlock,
    FashionResNet,
    fmnist_avgpool_cnn,
    fmnist_cnn128,
    fmnist_densenet,
    fmnist_maxpool_cnn,
    fmnist_mobilenetv2,
    fmnist_resnet,
    fmnist_resnet20,
    fmnist_vgg16,
    mnist_cnn,
    mnist_mlp,
)

__all__ = [
    "CHECKPOINT_DIR",
    "MODELS",
    "MODEL_DATASETS",
    "UNBUNDLED",
    "BasicBlock",
    "FashionResNet",
    "checkpoint_path",
    "fmnist_avgpool_cnn",
    "fmnist_cnn128",
    "fmnist_densenet",
    "fmnist_maxpool_cnn",
    "fmnist_mobilenetv2",
    "fmnist_resnet",
    "fmnist_resnet20",
    "fmnist_vgg16",
    "get_model",
    "load_checkpoint",
    "load_pretrained",
    "mnist_cnn",
    "mnist_mlp",
    "model_from_checkpoint",
    "pretrained_info",
]

#: Model name -> factory returning a fresh, untrained ``nn.Module``.
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": mnist_cnn,
    "fmnist_maxpool_cnn": fmnist_maxpool_cnn,
    "fmnist_avgpool_cnn": fmnist_avgpool_cnn,
    "fmnist_resnet": fmnist_resnet,
    "fmnist_resnet20": fmnist_resnet20,
    "fmnist_vgg16": fmnist_vgg16,
    "fmnist_mobilenetv2": fmnist_mobilenetv2,
    "fmnist_densenet": fmnist_densenet,
    "fmnist_cnn128": fmnist_cnn128,
    "mnist_mlp": mnist_mlp,
}

#: Model name -> the dataset its bundled checkpoint was trained on.
MODEL_DATASETS: Dict[str, str] = {
    "mnist_cnn": "mnist",
    "fmnist_maxpool_cnn": "fashion-mnist",
    "fmnist_avgpool_cnn": "fashion-mnist",
    "fmnist_resnet": "fashion-mnist",
    "fmnist_resnet20": "fashion-mnist",
    "fmnist_vgg16": "fashion-mnist",
    "fmnist_mobilenetv2": "fashion-mnist",
    "fmnist_densenet": "fashion-mnist",
    "fmnist_cnn128": "fashion-mnist",
    "mnist_mlp": "mnist",
}

#: Models whose checkpoints are too large to ship (13.0 M parameters): ``python -m
#: ann2snn.models.train --model NAME`` writes them to the same path, float32, any size.
UNBUNDLED = frozenset({"fmnist_cnn128"})

#: Folder holding the bundled checkpoints.
CHECKPOINT_DIR = pathlib.Path(__file__).resolve().parent / "checkpoints"


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh (untrained) registered model.

    Args:
        name: A key of :data:`MODELS`.
        **kwargs: Passed to the model's factory (e.g. ``width=16``).

    Returns:
        The new model, in training mode.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the known names).
    """
    _check_name(name)
    return MODELS[name](**kwargs)


def checkpoint_path(name: str) -> pathlib.Path:
    """Path of a model's bundled checkpoint (which may not exist yet).

    Args:
        name: A key of :data:`MODELS`.

    Returns:
        ``<package>/checkpoints/<name>.pt``.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    _check_name(name)
    return CHECKPOINT_DIR / f"{name}.pt"


def is_training_checkpoint(obj: Any) -> bool:
    """True for a dict in the checkpoint format of ``ann2snn.models.train`` (it names its
    architecture, so the weights need no ``--arch``)."""
    return isinstance(obj, Mapping) and {"arch", "kwargs", "state_dict"} <= set(obj)


def float32_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state_dict with its floating-point tensors in float32 (checkpoints may be float16)."""
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}


def load_checkpoint(path: str | pathlib.Path) -> Dict[str, Any]:
    """Read a checkpoint dict with ``torch.load(weights_only=True)``.

    Args:
        path: The ``.pt`` file.

    Returns:
        The checkpoint dict (state_dict tensors in their stored dtype).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a checkpoint written by ``ann2snn.models.train``.
    """
    path = pathlib.Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    required = {"arch", "kwargs", "state_dict", "dataset", "test_accuracy"}
    if not is_training_checkpoint(ckpt) or not required <= set(ckpt):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not an ann2snn model checkpoint: expected keys {sorted(required)}, "
            f"got {have}"
        )
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any]) -> nn.Module:
    """Build the model a checkpoint dict describes, with float32 weights, in eval mode.

    Args:
        ckpt: A dict as returned by :func:`load_checkpoint`.

    Returns:
        The model, float32, ``.eval()``.

    Raises:
        ValueError: If the architecture is unknown or the weights do not fit it.
    """
    model = get_model(ckpt["arch"], **ckpt["kwargs"])
    try:
        model.load_state_dict(float32_state(ckpt["state_dict"]))
    except RuntimeError as exc:
        raise ValueError(f"checkpoint weights do not fit {ckpt['arch']}: {exc}") from exc
    return model.eval()


def load_pretrained(name: str) -> nn.Module:
    """Load a registered model with its bundled trained weights.

    Args:
        name: A key of :data:`MODELS`.

    Returns:
        The trained model, float32, in eval mode (BatchNorm uses running statistics).

    Raises:
        ValueError: If ``name`` is not registered.
        FileNotFoundError: If the checkpoint is missing (the message says how to train it).
    """
    path = checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no bundled checkpoint for {name!r} at {path}; train it with "
            f"`python -m ann2snn.models.train --model {name}` (writes that file)"
        )
    return model_from_checkpoint(load_checkpoint(path))


def pretrained_info(name: str) -> Dict[str, Any]:
    """Metadata of a bundled checkpoint, without building the model.

    Args:
        name: A key of :data:`MODELS`.

    Returns:
        ``{"arch", "kwargs", "dataset", "test_accuracy", "train", "state_dict_dtype",
        "path", "size_bytes"}``; ``test_accuracy`` is in percent over the full 10k test set.

    Raises:
        ValueError: If ``name`` is not registered.
        FileNotFoundError: If the checkpoint is missing.
    """
    path = checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no bundled checkpoint for {name!r} at {path}; train it with "
            f"`python -m ann2snn.models.train --model {name}`"
        )
    ckpt = load_checkpoint(path)
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info.setdefault("state_dict_dtype", "float32")
    info["path"] = path
    info["size_bytes"] = path.stat().st_size
    return info
