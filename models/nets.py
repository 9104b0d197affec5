"""Reference ANNs for MNIST / Fashion-MNIST, written the way users write them.

Every network takes ``[N, 1, 28, 28]`` images in [0, 1] and returns ``[N, 10]`` logits.
They use ReLU-family activations only, so they convert to spiking networks; the mix of
styles (``nn.Sequential`` with ``nn.ReLU``, functional ``F.relu``, residual ``+=``,
``Dropout``, bias-free convolutions) is deliberate: it is what the converter must accept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "DenseLayer",
    "FashionDenseNet",
    "FashionMobileNetV2",
    "FashionResNet",
    "InvertedResidual",
    "fmnist_avgpool_cnn",
    "fmnist_cnn128",
    "fmnist_densenet",
    "fmnist_maxpool_cnn",
    "fmnist_mobilenetv2",
    "fmnist_resnet",
    "fmnist_resnet20",
    "fmnist_vgg16",
    "mnist_cnn",
    "mnist_mlp",
]


def _check_width(width: int, name: str = "width") -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"{name} must be a positive int, got {width!r}")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def mnist_cnn(width: int = 32, padding: int = 0) -> nn.Sequential:
    """The MNIST CNN of SpikingJelly's ann2snn tutorial.

    Three blocks of ``Conv2d(3x3) - BatchNorm2d(eps=1e-3) - ReLU - AvgPool2d(2)`` then
    ``Flatten - Linear(., 10)``. With the tutorial's ``padding=0`` the feature maps go
    28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1, so the classifier is ``Linear(width, 10)``;
    ``padding=1`` gives 28 -> 14 -> 7 -> 3 and ``Linear(width * 3 * 3, 10)``.

    Args:
        width: Channels of every convolution (the tutorial uses 32).
        padding: Convolution padding, 0 (tutorial) or 1.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width or a padding other than 0 or 1.
    """
    _check_width(width)
    if padding not in (0, 1):
        raise ValueError(f"padding must be 0 or 1, got {padding!r}")
    layers: list[nn.Module] = []
    size, in_ch = 28, 1
    for _ in range(3):
        layers += [
            nn.Conv2d(in_ch, width, kernel_size=3, padding=padding),
            nn.BatchNorm2d(width, eps=1e-3),
            nn.ReLU(),
            nn.AvgPool2d(2),
        ]
        size, in_ch = (size + 2 * padding - 2) // 2, width
    layers += [nn.Flatten(), nn.Linear(width * size * size, 10)]
    return nn.Sequential(*layers)


def _fmnist_cnn(width: int, pool: type[nn.Module], dropout: float) -> nn.Sequential:
    _check_width(width)
    _check_dropout(dropout)
    return nn.Sequential(
        nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        pool(2),
        nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(width * 7 * 7, width * 4 * 4, bias=False),
        nn.ReLU(),
        nn.Linear(width * 4 * 4, 10, bias=False),
    )


def fmnist_maxpool_cnn(width: int = 24, dropout: float = 0.25) -> nn.Sequential:
    """SpikingJelly's Fashion-MNIST convolutional SNN tutorial network, as an ANN.

    ``Conv(1,w,3,pad 1,no bias)-BN-ReLU-MaxPool(2) -> Conv(w,w,3,pad 1,no bias)-BN-ReLU-
    MaxPool(2) -> Flatten -> Dropout -> Linear(w*7*7, w*4*4, no bias)-ReLU ->
    Linear(w*4*4, 10, no bias)``. The tutorial uses ``width=128``; the bundled checkpoint
    uses 24 to stay small. The Dropout is there on purpose: conversion must remove it.

    Args:
        width: Channels of both convolutions.
        dropout: Dropout probability before the first Linear (training only).

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width or a dropout outside [0, 1).
    """
    return _fmnist_cnn(width, nn.MaxPool2d, dropout)


def fmnist_avgpool_cnn(width: int = 24, dropout: float = 0.25) -> nn.Sequential:
    """:func:`fmnist_maxpool_cnn` with ``AvgPool2d`` instead of ``MaxPool2d``.

    Args:
        width: Channels of both convolutions.
        dropout: Dropout probability before the first Linear (training only).

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width or a dropout outside [0, 1).
    """
    return _fmnist_cnn(width, nn.AvgPool2d, dropout)


def fmnist_cnn128(width: int = 128, dropout: float = 0.5) -> nn.Sequential:
    """SpikingJelly's Fashion-MNIST convolutional SNN tutorial network at its full size,
    as an ANN: :func:`fmnist_maxpool_cnn` with ``width=128``.

    ``Conv(1,128,3,pad 1,no bias)-BN-ReLU-MaxPool(2) -> Conv(128,128,...)-BN-ReLU-
    MaxPool(2) -> Flatten -> Dropout -> Linear(6272, 2048, no bias)-ReLU ->
    Linear(2048, 10, no bias)``: ReLU where the tutorial has IF, and the tutorial's last IF
    layer becomes the output layer. 13.0 M parameters, too many to bundle: ``python -m
    ann2snn.models.train --model fmnist_cnn128`` trains it (``benchmarks/bench_seeds.py``
    does so with a fixed seed). Arguments, result and errors as
    :func:`fmnist_maxpool_cnn`'s.
    """
    return _fmnist_cnn(width, nn.MaxPool2d, dropout)


def mnist_mlp(hidden: int = 512, depth: int = 2, dropout: float = 0.2) -> nn.Sequential:
    """The dense network of lava-dl's MNIST bootstrap tutorial, as an ANN.

    ``Flatten -> [Linear(., hidden)-ReLU-Dropout] x depth -> Linear(hidden, 10)``; the
    defaults give 784-512-512-10 (669,706 parameters).

    Args:
        hidden: Units of every hidden layer.
        depth: Number of hidden layers.
        dropout: Dropout probability after every hidden ReLU (training only).

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive size or a dropout outside [0, 1).
    """
    _check_width(hidden, "hidden")
    _check_width(depth, "depth")
    _check_dropout(dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    size = 28 * 28
    for _ in range(depth):
        layers += [nn.Linear(size, hidden), nn.ReLU(), nn.Dropout(dropout)]
        size = hidden
    layers.append(nn.Linear(size, 10))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, functional ReLU, residual ``+=``.

    The shortcut is a 1x1 conv + BN when stride or channel count changes, else identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


def _stage(in_channels: int, out_channels: int, stride: int, blocks: int) -> nn.Module:
    """``blocks`` basic blocks, the first one strided (one block: the block itself)."""
    first = BasicBlock(in_channels, out_channels, stride=stride)
    if blocks == 1:
        return first
    rest = [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)


class FashionResNet(nn.Module):
    """A ResNet for 28x28 grey images in He et al.'s CIFAR layout.

    Stem ``conv3x3(1, w)-BN-relu``, three stages of ``blocks`` :class:`BasicBlock` each
    with widths ``w, 2w, 4w`` (the first block of a stage has stride ``1, 2, 2``: 28 -> 28
    -> 14 -> 7, and a projection shortcut where the shape changes), global average
    pooling, ``Linear(4w, num_classes)``. ``blocks=3`` is ResNet-20 (19 ReLUs).
    """

    def __init__(self, width: int = 16, num_classes: int = 10, blocks: int = 1) -> None:
        super().__init__()
        _check_width(width)
        _check_width(blocks, "blocks")
        self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = _stage(width, width, 1, blocks)
        self.layer2 = _stage(width, 2 * width, 2, blocks)
        self.layer3 = _stage(2 * width, 4 * width, 2, blocks)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def fmnist_resnet(width: int = 16) -> FashionResNet:
    """A small three-stage ResNet for Fashion-MNIST (see :class:`FashionResNet`).

    Args:
        width: Channels of the first stage; later stages use 2x and 4x.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width.
    """
    return FashionResNet(width=width)


def fmnist_resnet20(width: int = 16) -> FashionResNet:
    """ResNet-20 (He et al.'s CIFAR layout: three stages of three basic blocks, 19 ReLUs,
    projection shortcuts) for Fashion-MNIST; see :class:`FashionResNet`.

    Args:
        width: Channels of the first stage; later stages use 2x and 4x.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width.
    """
    return FashionResNet(width=width, blocks=3)


#: VGG-16's convolution stages: (convolutions, channels as a multiple of the width).
_VGG16_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def fmnist_vgg16(width: int = 12, pool: str = "avg", dropout: float = 0.2) -> nn.Sequential:
    """VGG-16 with BatchNorm for Fashion-MNIST: 13 convolutions and 3 linear layers, 15
    ReLUs.

    ``ZeroPad2d(2)`` (28 -> 32), five stages of ``Conv(3x3, pad 1, no bias)-BN-ReLU``
    (2, 2, 3, 3, 3 convolutions with ``w, 2w, 4w, 8w, 8w`` channels) each followed by a
    2x2 pooling (32 -> 1), then ``Flatten - Linear(8w, 8w)-ReLU - Dropout -
    Linear(8w, 8w)-ReLU - Linear(8w, 10)``. The original VGG-16 has ``w = 64``; the
    default 12 keeps the float16 checkpoint under 1.5 MB and the training short on a
    CPU.

    Args:
        width: Channels of the first stage.
        pool: ``'avg'`` (average pooling) or ``'max'`` (max pooling).
        dropout: Dropout probability between the hidden linear layers (training only).

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width, an unknown pooling or a dropout outside [0, 1).
    """
    _check_width(width)
    pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
    if pool not in pools:
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    _check_dropout(dropout)
    layers: list[nn.Module] = [nn.ZeroPad2d(2)]
    in_ch = 1
    for convs, mult in _VGG16_STAGES:
        for _ in range(convs):
            out = width * mult
            layers += [
                nn.Conv2d(in_ch, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            in_ch = out
        layers.append(pools[pool](2))
    hidden = 8 * width
    layers += [
        nn.Flatten(),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, 10),
    ]
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual block with ReLU6.

    ``Conv1x1(expand)-BN-ReLU6 -> depthwise Conv3x3(stride)-BN-ReLU6 -> Conv1x1-BN`` (a
    linear bottleneck: no activation after the projection), plus the input when the
    stride is 1 and the channel count is unchanged. With ``expand=1`` the first
    convolution is left out, as in the original.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(
                hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden, bias=False
            ),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


#: MobileNetV2's block settings for 28x28 images: (expansion t, channels as a multiple of
#: the width, blocks n, stride of the first block s). The original's stride-2 stem and two
#: of its five downsamplings are left out (28 -> 28 -> 14 -> 7 -> 4).
_MOBILENETV2_STAGES = ((1, 1, 1, 1), (6, 1.5, 2, 1), (6, 2, 3, 2), (6, 4, 3, 2), (6, 6, 2, 2))


class FashionMobileNetV2(nn.Module):
    """A MobileNetV2-style network for 28x28 grey images.

    Stem ``Conv3x3(1, w)-BN-ReLU6``, the :class:`InvertedResidual` stages of
    ``_MOBILENETV2_STAGES`` (11 blocks, 7 of them with a residual add), a last
    ``Conv1x1-BN-ReLU6`` to ``16w`` channels, global average pooling, ``Dropout`` and
    ``Linear(16w, 10)``: 23 ReLU6 layers, every convolution but the stem and the 1x1 ones
    depthwise.
    """

    def __init__(self, width: int = 8, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        _check_width(width)
        _check_dropout(dropout)
        layers: list[nn.Module] = [
            nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU6(inplace=True),
        ]
        in_ch = width
        for expand, mult, blocks, stride in _MOBILENETV2_STAGES:
            out = int(round(width * mult))
            for i in range(blocks):
                layers.append(InvertedResidual(in_ch, out, stride if i == 0 else 1, expand))
                in_ch = out
        last = 16 * width
        layers += [
            nn.Conv2d(in_ch, last, kernel_size=1, bias=False),
            nn.BatchNorm2d(last),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(self.dropout(x))


def fmnist_mobilenetv2(width: int = 8, dropout: float = 0.2) -> FashionMobileNetV2:
    """A MobileNetV2-style network (ReLU6, depthwise convolutions, inverted residuals with
    linear bottlenecks) for Fashion-MNIST; see :class:`FashionMobileNetV2`.

    Args:
        width: Channels of the stem; the stages use 1x to 6x, the last convolution 16x.
        dropout: Dropout probability before the classifier (training only).

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive width or a dropout outside [0, 1).
    """
    return FashionMobileNetV2(width=width, dropout=dropout)


class DenseLayer(nn.Module):
    """DenseNet-BC's layer: ``BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k)``, its ``k`` new
    channels concatenated to its input (``torch.cat``)."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        inner = 4 * growth
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class FashionDenseNet(nn.Module):
    """A DenseNet-BC-style network for 28x28 grey images (pre-activation, concatenation).

    Stem ``Conv3x3(1, 2k)``; three dense blocks of ``layers`` :class:`DenseLayer` each,
    with a transition ``BN-ReLU-Conv1x1(halve the channels)-AvgPool(2)`` between them
    (28 -> 14 -> 7); a final ``BN-ReLU``, global average pooling and ``Linear(., 10)``.
    BatchNorm sits after concatenations and pooling, not only after convolutions.
    ``layers=4`` gives 27 ReLUs.
    """

    def __init__(self, growth: int = 12, layers: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        _check_width(growth, "growth")
        _check_width(layers, "layers")
        channels = 2 * growth
        self.stem = nn.Conv2d(1, channels, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for block in range(3):
            for _ in range(layers):
                stages.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                out = channels // 2
                stages.append(
                    nn.Sequential(
                        nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True),
                        nn.Conv2d(channels, out, kernel_size=1, bias=False),
                        nn.AvgPool2d(2),
                    )
                )
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.features(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def fmnist_densenet(growth: int = 12, layers: int = 4) -> FashionDenseNet:
    """A DenseNet-BC-style network for Fashion-MNIST; see :class:`FashionDenseNet`.

    Args:
        growth: Channels each dense layer adds (k).
        layers: Dense layers per block.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: On a non-positive growth or layer count.
    """
    return FashionDenseNet(growth=growth, layers=layers)
