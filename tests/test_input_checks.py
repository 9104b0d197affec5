"""What ``convert`` and ``SpikingModel`` do with the data and models users really pass:
one-shot iterators, outputs that are not one tensor, non-finite values, other dtypes,
shapes that do not fit the model, and models with two inputs.

Each test is a regression test of a reported failure (real checkpoints, real data).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from tests.conftest import loader, pretrained

MODEL = "fmnist_avgpool_cnn"
FAST = {"potential_calibration": False}  # the statistics alone: no layer sweep
SWEEP = {"sweep_samples": 48, "calibration_horizons": (1,), "target_timesteps": 4}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return pretrained(MODEL)


@pytest.fixture(scope="module")
def batches(fmnist_train):
    """Three real Fashion-MNIST batches of 40 images (float32 in [0, 1])."""
    return [x for x, _ in loader(fmnist_train, 120, batch_size=40)]


@pytest.fixture(scope="module")
def images(fmnist_test):
    return fmnist_test.tensors[0][:16]


def _same_snn(a, b, x, timesteps=8) -> bool:
    return torch.equal(a(x, timesteps=timesteps), b(x, timesteps=timesteps))


# -- one-shot iterators (issue point 2) --------------------------------------------------


@pytest.mark.parametrize("mode", ["99.9%", "max"])
def test_a_generator_calibrates_exactly_like_the_list(model, batches, images, mode):
    from_list = ann2snn.convert(model, mode, batches, **FAST)
    from_generator = ann2snn.convert(model, mode, (x for x in batches), **FAST)
    assert _same_snn(from_list, from_generator, images)


def test_a_generator_with_calib_batches_reads_the_first_batches(model, batches, images):
    from_list = ann2snn.convert(model, "99.9%", batches[:2], **FAST)
    from_generator = ann2snn.convert(model, "99.9%", iter(batches), calib_batches=2, **FAST)
    assert _same_snn(from_list, from_generator, images)


def test_a_generator_feeds_the_layer_sweep_its_first_images(model, batches, images):
    from_list = ann2snn.convert(model, "99.9%", batches, **SWEEP)
    from_generator = ann2snn.convert(model, "99.9%", (x for x in batches), **SWEEP)
    assert _same_snn(from_list, from_generator, images, timesteps=4)


def test_a_one_batch_generator_converts(model, batches, images):
    from_list = ann2snn.convert(model, "99.9%", batches[:1], **SWEEP)
    from_generator = ann2snn.convert(model, "99.9%", (x for x in batches[:1]), **SWEEP)
    assert _same_snn(from_list, from_generator, images, timesteps=4)


# -- models that return a tuple or a dict (issue point 3) ----------------------------------


class _Net(nn.Module):
    """A small real CNN; ``kind`` chooses what forward returns."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.fc1 = nn.Linear(8 * 13 * 13, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.fc1(torch.flatten(F.relu(self.conv(x)), 1)))
        logits = self.fc2(h)
        if self.kind == "tuple":
            return (logits,)
        if self.kind == "pair":
            return logits, h
        if self.kind == "dict":
            return {"logits": logits, "features": h}
        return logits


def test_a_model_returning_a_tuple_or_dict_runs_as_an_snn(batches, images):
    plain = ann2snn.convert(_Net("tensor").eval(), "max", batches, **FAST)
    expected = plain(images, timesteps=8)

    single = ann2snn.convert(_Net("tuple").eval(), "max", batches, **FAST)
    out = single(images, timesteps=8)
    assert isinstance(out, tuple) and len(out) == 1
    assert torch.equal(out[0], expected)

    # With the hidden layer an output too, its scale stays a node of its own (not folded
    # into fc2): the same spikes, rounded differently.
    pair = ann2snn.convert(_Net("pair").eval(), "max", batches, **FAST)
    logits, features = pair(images, timesteps=8)
    assert torch.allclose(logits, expected, atol=1e-5) and features.shape == (16, 32)

    named = ann2snn.convert(_Net("dict").eval(), "max", batches, **FAST)
    out = named(images, timesteps=8)
    assert isinstance(out, dict) and set(out) == {"logits", "features"}
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert torch.equal(out["features"], features)
    chunks = list(named.simulate(images, 8, chunk_steps=3))
    assert [c["logits"].shape for c in chunks] == [(3, 16, 10), (3, 16, 10), (2, 16, 10)]
    summed = dict(named.cumulative_outputs(images, [8]))[8]
    assert torch.allclose(summed["logits"] / 8, expected, atol=1e-5)


def test_evaluate_reads_the_logits_of_a_one_tensor_tuple(batches, fmnist_test):
    snn = ann2snn.convert(_Net("tuple").eval(), "max", batches, **FAST)
    data = loader(fmnist_test, 64, batch_size=32)
    curve = ann2snn.evaluate(snn, data, timesteps=[4, 8])
    assert curve.samples == 64 and set(curve.accuracy) == {4, 8}
    pair = ann2snn.convert(_Net("pair").eval(), "max", batches, **FAST)
    with pytest.raises(ValueError, match="one logits tensor"):
        ann2snn.evaluate(pair, data, timesteps=[4])


# -- non-finite weights, data and inputs (issue point 4) -----------------------------------


def test_non_finite_weights_are_refused_naming_them(model, batches):
    broken = pretrained(MODEL)
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = math.nan
        broken[5].running_var[3] = math.inf
    with pytest.raises(ValueError, match=r"non-finite.*'0\.weight'.*'5\.running_var'"):
        ann2snn.convert(broken, "99.9%", batches, **FAST)


@pytest.mark.parametrize("where", [0, 2])
def test_non_finite_calibration_data_is_refused(model, batches, where):
    data = [x.clone() for x in batches]
    data[where][1, 0, 3, 4] = math.nan
    with pytest.raises(ValueError, match=f"calibration batch {where + 1}.*NaN"):
        ann2snn.convert(model, "99.9%", data, **FAST)


def test_a_nan_input_gives_a_nan_output_not_a_plausible_number(model, batches, images):
    snn = ann2snn.convert(model, "99.9%", batches, **FAST)
    x = images.clone()
    x[3, 0, 10, 10] = math.nan
    x[5, 0, 0, 0] = math.inf
    out = snn(x, timesteps=8)
    assert torch.isnan(out[3]).all() and torch.isnan(out[5]).all()
    clean = [i for i in range(16) if i not in (3, 5)]
    assert torch.equal(out[clean], snn(images, timesteps=8)[clean])
    assert torch.isnan(torch.cat(list(snn.simulate(x, 4)))[:, 3]).all()


# -- dtypes and shapes the model cannot take (issue point 6) -------------------------------


def _no_dump(capfd) -> None:
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ShapeProp" not in err, err


def test_integer_images_are_refused_with_what_to_do(model, batches, capfd):
    images8 = [(x * 255).round().to(torch.uint8) for x in batches]
    with pytest.raises(ValueError, match=r"uint8.*float.*\[0, 1\]"):
        ann2snn.convert(model, "99.9%", images8, **FAST)
    _no_dump(capfd)


def test_float64_data_is_cast_to_the_models_float32(model, batches, images):
    as32 = ann2snn.convert(model, "99.9%", batches, **FAST)
    as64 = ann2snn.convert(model, "99.9%", [x.double() for x in batches], **SWEEP)
    assert as64(images.double(), timesteps=4).dtype == torch.float32
    ref = ann2snn.convert(model, "99.9%", batches, **SWEEP)
    assert _same_snn(ref, as64, images, timesteps=4)
    assert torch.equal(as32(images.double(), timesteps=8), as32(images, timesteps=8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_non_float32_model_converts_as_a_float32_copy(batches, images, dtype):
    reference = pretrained(MODEL)
    model = pretrained(MODEL).to(dtype)
    snn = ann2snn.convert(model, "99.9%", batches, **FAST)
    assert next(model.parameters()).dtype == dtype  # the user's model is untouched
    assert snn.meta["model_dtype"] == str(dtype).replace("torch.", "")
    assert next(snn.ann.parameters()).dtype == torch.float32
    out = snn(images, timesteps=32)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    agree = (out.argmax(1) == reference(images).argmax(1)).float().mean()
    assert agree >= 0.8
    if dtype == torch.float64:  # float32 weights round-trip exactly through float64
        plain = ann2snn.convert(reference, "99.9%", batches, **FAST)
        assert torch.equal(out, plain(images, timesteps=32))


def test_a_wrong_image_size_says_what_the_model_expects(model, batches, capfd):
    padded = [F.pad(x, (2, 2, 2, 2)) for x in batches]
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\].*\[B, 1, H, W\]") as info:
        ann2snn.convert(model, "99.9%", padded, **FAST)
    assert "1176" in str(info.value)  # the failing layer's complaint
    _no_dump(capfd)


def test_a_wrong_channel_count_says_what_the_model_expects(model, batches, capfd):
    rgb = [x.expand(-1, 3, -1, -1) for x in batches]
    with pytest.raises(ValueError, match=r"\[B, 3, 28, 28\].*first layer '0' \(Conv2d\)"):
        ann2snn.convert(model, "99.9%", rgb, **FAST)
    _no_dump(capfd)


def test_unbatched_images_are_refused(model, batches, capfd):
    single = [x[0] for x in batches]  # [1, 28, 28]: a dataset's items, not batches
    with pytest.raises(ValueError, match=r"unbatched.*\[1, 28, 28\].*DataLoader"):
        ann2snn.convert(model, "99.9%", single, **FAST)
    _no_dump(capfd)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, scale):
        return self.fc(F.relu(x * scale))


def test_a_two_input_model_points_to_concrete_args(capfd):
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    data = [torch.rand(8, 4)]
    with pytest.raises(ValueError, match=r"2 inputs \(x, scale\).*concrete_args=\{'scale'"):
        ann2snn.convert(model, "max", data, **FAST)
    _no_dump(capfd)
    snn = ann2snn.convert(model, "max", data, concrete_args={"scale": 2.0}, **FAST)
    x = data[0][:5]  # inside the calibrated range
    assert torch.allclose(snn(x, timesteps=512), model(x, 2.0), atol=0.02)


def test_the_snn_checks_its_inputs(model, batches, images):
    snn = ann2snn.convert(model, "99.9%", batches, **FAST)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\].*\[16, 3, 28, 28\]"):
        snn(images.expand(-1, 3, -1, -1), timesteps=4)
    with pytest.raises(ValueError, match=r"unbatched.*unsqueeze"):
        snn(images[0], timesteps=4)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\].*\[16, 1, 32, 32\]"):
        snn(F.pad(images, (2, 2, 2, 2)), timesteps=4)
    with pytest.raises(ValueError, match=r"uint8.*float"):
        next(snn.simulate((images * 255).to(torch.uint8), 4))
