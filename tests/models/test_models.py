"""Tests for ann2snn.models: the registry, the networks, the bundled checkpoints."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
import torch
from torch import nn

import ann2snn.models as models
from ann2snn.data.datasets import find_data_root
from ann2snn.errors import DataNotFoundError
from ann2snn.models import (
    MODEL_DATASETS,
    MODELS,
    UNBUNDLED,
    checkpoint_path,
    get_model,
    load_pretrained,
    pretrained_info,
)
from ann2snn.models.train import (
    MAX_CHECKPOINT_BYTES,
    AugmentedBatches,
    _augment,
    evaluate,
    main,
    train_model,
    validation_split,
)

# Accuracy floors (percent, full 10k test set) the bundled checkpoints must meet.
TARGETS = {
    "mnist_cnn": 98.8,
    "fmnist_maxpool_cnn": 91.5,
    "fmnist_avgpool_cnn": 91.0,
    "fmnist_resnet": 91.0,
    "fmnist_resnet20": 92.5,
    "fmnist_vgg16": 92.5,
    "fmnist_mobilenetv2": 92.5,
    "fmnist_densenet": 92.5,
    "mnist_mlp": 99.2,
}

BUNDLED = sorted(set(MODELS) - UNBUNDLED)


def _require_data(dataset: str) -> None:
    try:
        find_data_root(dataset, split="test", download=False)
    except DataNotFoundError as exc:
        pytest.skip(f"real data not available: {exc}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_maps_to_ten_logits(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name)
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert model.eval()(x).shape == (2, 10)


def test_registry_is_consistent() -> None:
    assert set(MODELS) == set(MODEL_DATASETS) == set(TARGETS) | UNBUNDLED
    assert set(MODEL_DATASETS.values()) <= {"mnist", "fashion-mnist"}


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="known models: .*mnist_cnn"):
        get_model("vgg16")
    with pytest.raises(ValueError, match="known models"):
        checkpoint_path("vgg16")


def test_model_kwargs_and_validation() -> None:
    assert get_model("mnist_cnn", padding=1, width=8)(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    assert get_model("fmnist_resnet", width=4)(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="width"):
        get_model("fmnist_maxpool_cnn", width=0)
    with pytest.raises(ValueError, match="padding"):
        get_model("mnist_cnn", padding=2)


def test_architectures_have_the_features_conversion_must_handle() -> None:
    mnist = get_model("mnist_cnn")
    assert [type(m) for m in mnist][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d]
    assert mnist[-1].in_features == 32  # tutorial shapes: 28-26-13-11-5-3-1
    maxpool = get_model("fmnist_maxpool_cnn")
    assert any(isinstance(m, nn.Dropout) for m in maxpool)
    assert any(isinstance(m, nn.MaxPool2d) for m in maxpool)
    avgpool = get_model("fmnist_avgpool_cnn")
    assert any(isinstance(m, nn.AvgPool2d) for m in avgpool)
    assert not any(isinstance(m, nn.MaxPool2d) for m in avgpool)
    resnet = get_model("fmnist_resnet")
    # Functional F.relu only, and downsampling shortcuts where the shape changes.
    assert not any(isinstance(m, nn.ReLU) for m in resnet.modules())
    assert resnet.layer1.downsample is None
    assert resnet.layer2.downsample is not None and resnet.layer3.downsample is not None


def _if_layers(model: nn.Module) -> int:
    import ann2snn
    from ann2snn.runtime.neuron import IFNeuron

    snn = ann2snn.convert(model.eval(), calib_data=[torch.rand(8, 1, 28, 28)])
    return sum(isinstance(m, IFNeuron) for m in snn.graph_module.modules())


def test_deep_reference_networks() -> None:
    # ResNet-20: 3 stages of 3 blocks, projection shortcuts at the two strided stages only.
    resnet20 = get_model("fmnist_resnet20")
    assert [len(stage) for stage in (resnet20.layer1, resnet20.layer2, resnet20.layer3)] == [3] * 3
    shortcuts = [b.downsample is not None for s in (resnet20.layer1, resnet20.layer2,
                 resnet20.layer3) for b in s]  # fmt: skip
    assert shortcuts == [False] * 3 + [True, False, False] * 2
    assert _if_layers(resnet20) == 19
    vgg = get_model("fmnist_vgg16")
    assert sum(isinstance(m, nn.Conv2d) for m in vgg) == 13
    assert sum(isinstance(m, nn.Linear) for m in vgg) == 3
    assert sum(isinstance(m, nn.AvgPool2d) for m in vgg) == 5
    assert _if_layers(vgg) == 15
    vgg_max = get_model("fmnist_vgg16", pool="max", width=4)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg_max) == 5
    assert vgg_max(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="pool"):
        get_model("fmnist_vgg16", pool="min")
    with pytest.raises(ValueError, match="width"):
        get_model("fmnist_resnet20", width=0)
    with pytest.raises(ValueError, match="blocks"):
        models.FashionResNet(blocks=0)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_format(name: str) -> None:
    path = checkpoint_path(name)
    assert path.is_file(), f"missing {path}: run python -m ann2snn.models.train --model {name}"
    assert path.stat().st_size < MAX_CHECKPOINT_BYTES
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == name
    assert ckpt["dataset"] == MODEL_DATASETS[name]
    assert isinstance(ckpt["kwargs"], dict)
    assert {"epochs", "lr", "seed"} <= set(ckpt["train"])
    assert ckpt["test_accuracy"] >= TARGETS[name]
    assert ckpt["test_images"] == 10_000
    info = pretrained_info(name)
    assert info["test_accuracy"] == ckpt["test_accuracy"]
    assert info["dataset"] == MODEL_DATASETS[name]
    assert info["kwargs"] == ckpt["kwargs"]
    assert "state_dict" not in info


@pytest.mark.parametrize("name", BUNDLED)
def test_pretrained_reaches_recorded_accuracy(name: str) -> None:
    dataset = MODEL_DATASETS[name]
    _require_data(dataset)
    model = load_pretrained(name)
    assert not model.training
    assert all(
        p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point()
    )
    assert all(not m.training for m in model.modules())
    info = pretrained_info(name)
    with torch.no_grad():
        measured = evaluate(model, dataset, limit=2000)
    # Same weights, same images: only float summation order could flip a borderline image.
    assert abs(measured - info["test_accuracy_first2000"]) <= 0.05
    # The first 2,000 test images are a little harder than the rest, but not by much.
    assert abs(measured - info["test_accuracy"]) <= 3.0


def test_missing_checkpoint_says_how_to_train(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m ann2snn.models.train --model mnist_cnn"):
        load_pretrained("mnist_cnn")
    with pytest.raises(FileNotFoundError, match="python -m ann2snn.models.train"):
        pretrained_info("fmnist_resnet")


def test_train_cli_writes_a_loadable_checkpoint(tmp_path: pathlib.Path) -> None:
    _require_data("mnist")
    out = tmp_path / "sub" / "tiny.pt"
    argv = ["--model", "mnist_cnn", "--epochs", "1", "--train-limit", "512", "--eval-limit", "500"]
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "mnist_cnn" and ckpt["train"]["train_images"] == 512
    assert ckpt["test_images"] == 500
    assert 0.0 <= ckpt["test_accuracy"] <= 100.0
    assert [p.name for p in out.parent.iterdir()] == ["tiny.pt"]  # no temporary left behind
    model = models.model_from_checkpoint(ckpt)
    assert evaluate(model, "mnist", limit=500) == pytest.approx(ckpt["test_accuracy"], abs=0.2)


def test_training_is_deterministic() -> None:
    _require_data("mnist")
    from ann2snn.models.train import train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [
            train_model(
                "mnist_cnn", epochs=1, train_limit=256, eval_limit=200, seed=3, progress=False
            )
            for _ in range(2)
        ]
    finally:
        torch.set_num_threads(threads)
    first, second = (r["state_dict"] for r in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]


def test_unbundled_model_is_not_shipped_and_says_how_to_train() -> None:
    for name in UNBUNDLED:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(checkpoint_path(name))],
            capture_output=True,
            cwd=pathlib.Path(__file__).parent,
        )
        assert tracked.returncode != 0, f"{name}'s checkpoint must not be committed"
        if not checkpoint_path(name).is_file():
            with pytest.raises(FileNotFoundError, match=f"--model {name}"):
                load_pretrained(name)


def test_seed_tutorial_networks_have_the_tutorials_shapes() -> None:
    cnn = get_model("fmnist_cnn128")
    linears = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6272, 2048), (2048, 10)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 128), (128, 128)]
    assert all(m.bias is None for m in [*linears, *convs])
    assert sum(isinstance(m, nn.MaxPool2d) for m in cnn.modules()) == 2
    mlp = get_model("mnist_mlp")
    sizes = [(m.in_features, m.out_features) for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 512), (512, 512), (512, 10)]
    assert sum(p.numel() for p in mlp.parameters()) == 669_706
    with pytest.raises(ValueError, match="hidden"):
        get_model("mnist_mlp", hidden=0)


def test_validation_split_is_a_fixed_partition() -> None:
    keep, val = validation_split(60_000, 5000)
    assert len(val) == 5000 and len(keep) == 55_000
    assert torch.equal(torch.cat([keep, val]).sort().values, torch.arange(60_000))
    again = validation_split(60_000, 5000)
    assert torch.equal(again[1], val) and torch.equal(again[0], keep)
    assert val.min() < 1000 and val.max() > 59_000  # drawn from all of it, not a tail
    with pytest.raises(ValueError, match="hold out"):
        validation_split(100, 100)


def test_augmentations_on_real_images() -> None:
    _require_data("mnist")
    from ann2snn.data.datasets import load_dataset

    x = load_dataset("mnist", "train", limit=64).tensors[0]
    gen = torch.Generator().manual_seed(0)
    shifted = _augment(x, "shift", gen)
    # whole-pixel shifts, zero fill: every image is one of the 25 translations (up to the
    # rounding of the sampling grid, 2e-6)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = [
        padded[..., 2 + dy : 30 + dy, 2 + dx : 30 + dx]
        for dy in range(-2, 3)
        for dx in range(-2, 3)
    ]
    matches = torch.stack([(shifted - o).abs().amax((1, 2, 3)) < 1e-5 for o in offsets], 1)
    assert matches.any(1).all()
    assert (shifted != x).flatten(1).any(1).float().mean() > 0.7  # 24 of 25 offsets move
    labels = load_dataset("mnist", "train", limit=64).tensors[1]
    digits = load_pretrained("mnist_cnn")  # trained without augmentation
    for kind in ("affine", "elastic", "affine+elastic", "hflip+shift"):
        out = _augment(x, kind, torch.Generator().manual_seed(1))
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 + 1e-6
        assert (out - x).abs().mean() > 0.02  # it moves the images
        if "hflip" not in kind:  # a mild distortion: the digits stay readable
            with torch.no_grad():
                assert (digits(out).argmax(1) == labels).float().mean() > 0.8, kind
    # random erasing: half the images lose one rectangle (2-40 % of the area) to 0,
    # the rest are untouched
    erased = _augment(torch.ones(400, 1, 28, 28), "erase", torch.Generator().manual_seed(2))
    share = (erased == 0).float().mean((1, 2, 3))
    assert 0.35 < (share > 0).float().mean() < 0.65
    assert share[share > 0].min() >= 0.01 and share.max() <= 0.45
    for img in erased[share > 0, 0] == 0:  # the erased pixels form one rectangle
        rows, cols = img.any(1).nonzero(), img.any(0).nonzero()
        assert int(img.sum()) == len(rows) * len(cols)
        assert len(rows) == int(rows[-1] - rows[0]) + 1 and len(cols) == int(cols[-1] - cols[0]) + 1
    same = _augment(x, "elastic", torch.Generator().manual_seed(1))
    assert torch.equal(same, _augment(x, "elastic", torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        _augment(x, "shift+rotate", gen)


def test_augmented_batches_cover_every_image_once_per_pass() -> None:
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 4, 4)
    labels = torch.arange(10)
    batches = AugmentedBatches(images, labels, 4, "none", torch.Generator().manual_seed(0))
    assert len(batches) == 3
    first = [y for _, y in batches]
    assert [len(y) for y in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    for x, y in batches:
        assert torch.equal(x[:, 0, 0, 0], y.float())  # images stay with their labels
    assert torch.cat([y for _, y in batches]).tolist() != torch.cat(first).tolist()
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentedBatches(images, labels, 4, "blur", torch.Generator())


def test_recipe_holds_out_validation_images_and_records_them() -> None:
    _require_data("mnist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = train_model("mnist_mlp", epochs=2, train_limit=1000, eval_limit=200, progress=False)
    finally:
        torch.set_num_threads(threads)
    train = ckpt["train"]
    assert train["val_images"] == 100 and train["train_images"] == 900
    assert len(train["val_history"]) == 2 and all(0 <= v <= 100 for v in train["val_history"])
    assert train["label_smoothing"] == 0.1 and train["augment"] == "affine"
    assert train["val_history"][-1] > 30  # it learns (chance: 10), on held-out images


def _depthwise(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules())


def test_mobilenetv2_and_densenet_styles_convert_layer_for_layer() -> None:
    from ann2snn.models.nets import InvertedResidual, fmnist_densenet, fmnist_mobilenetv2

    mobile = fmnist_mobilenetv2(width=4)
    blocks = [m for m in mobile.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 11 and sum(b.residual for b in blocks) == 7
    assert _depthwise(mobile) == 11
    assert sum(isinstance(m, nn.ReLU6) for m in mobile.modules()) == 23
    assert not any(isinstance(m, nn.ReLU) for m in mobile.modules())
    assert _if_layers(mobile) == 23
    dense = fmnist_densenet(growth=4, layers=2)
    # Concatenation grows the channels: 8 + 2 * 4 = 16 -> transition 8 -> 16 -> 8 -> 16.
    assert dense.fc.in_features == 16
    assert _if_layers(dense) == 3 * 2 * 2 + 2 + 1
    assert fmnist_densenet()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert fmnist_mobilenetv2()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="growth"):
        fmnist_densenet(growth=0)
    with pytest.raises(ValueError, match="dropout"):
        fmnist_mobilenetv2(dropout=1.0)
