"""Saturation, calibration coverage and clip error (ann2snn.analysis.saturation), as
``evaluate`` and ``layer_report`` report them, on a trained network and real data."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.analysis.diagnostics import layer_report
from ann2snn.analysis.saturation import RangeWarning, range_line
from tests.conftest import loader, pretrained

pytestmark = pytest.mark.usefixtures("single_thread")

T = 64


def _evaluate(snn, data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curve = ann2snn.evaluate(snn, data, timesteps=[T], **kwargs)
    return curve, [w for w in caught if issubclass(w.category, RangeWarning)]


def test_calibrated_on_the_evaluated_data_is_covered(fmnist_test) -> None:
    # mode='max' on the very images evaluated: no value can be beyond the calibrated
    # range and clipping at the scales changes nothing.
    data = loader(fmnist_test, 128, batch_size=64)
    snn = ann2snn.convert(pretrained("fmnist_avgpool_cnn"), mode="max", calib_data=data)
    curve, warned = _evaluate(snn, data)
    s = curve.saturation
    assert s["timesteps"] == T and s["inputs"] == 128
    assert s["out_of_range"] == 0.0
    assert s["clip_error"] < 1e-4
    assert s["saturated"] < 0.002
    assert not warned
    assert set(s["layers"]) == {name for name, _ in snn.neurons()}


def test_a_healthy_wide_network_raises_no_coverage_alarm() -> None:
    # mnist_mlp (two 512-unit layers), calibrated on 2,000 training images, converts to
    # 99.3%: its test images are drawn like the calibration images. Each of its 1,024
    # neurons meets a test value above its calibration maximum now and then; that is
    # sampling noise, not data the calibration missed, and must not warn.
    from ann2snn.data.datasets import load_dataset

    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    snn = ann2snn.convert(pretrained("mnist_mlp"), calib_data=loader(train, 2000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curve = ann2snn.evaluate(snn, loader(test, 10_000, batch_size=1000), timesteps=[2])
    assert 0.0 < curve.saturation["out_of_range"] < 0.05
    assert not [w for w in caught if issubclass(w.category, RangeWarning)]


def test_small_calibration_set_is_flagged(fmnist_train, fmnist_test) -> None:
    # Four calibration images do not cover the test set: inputs go beyond the calibrated
    # range, the SNN clips them, evaluate warns and names the layer.
    model = pretrained("fmnist_avgpool_cnn")
    few = ann2snn.convert(model, calib_data=loader(fmnist_train, 4, batch_size=4))
    many = ann2snn.convert(model, calib_data=loader(fmnist_train, 1000, batch_size=250))
    data = loader(fmnist_test, 256, batch_size=128)
    curve_few, warned = _evaluate(few, data)
    curve_many, _ = _evaluate(many, data)
    assert curve_few.saturation["out_of_range"] > 0.5
    assert curve_few.saturation["out_of_range"] > 5 * curve_many.saturation["out_of_range"]
    assert curve_few.saturation["clip_error"] > curve_many.saturation["clip_error"]
    assert any("calibration data" in str(w.message) for w in warned)
    assert "beyond the calibrated range" in curve_few.table()
    assert "warning:" in curve_few.table()


def test_brighter_inputs_saturate(fmnist_test) -> None:
    # The same images three times brighter: neurons spike at every step with inputs
    # above their thresholds; the share is counted per layer and warned about.
    data = loader(fmnist_test, 128, batch_size=64)
    snn = ann2snn.convert(pretrained("fmnist_avgpool_cnn"), mode="max", calib_data=data)
    bright = [(x * 3, y) for x, y in data]
    curve, warned = _evaluate(snn, bright)
    plain, _ = _evaluate(snn, data)
    assert curve.saturation["saturated"] > 0.01 > plain.saturation["saturated"]
    assert curve.saturation["out_of_range"] > 0.9
    assert any("saturated" in str(w.message) for w in warned)
    assert any(v["saturated"] > 0.01 for v in curve.saturation["layers"].values())


def test_encoding_does_not_change_coverage(fmnist_test) -> None:
    # Coverage and the clip error are properties of the data (measured on the ANN), not
    # of how the SNN receives it: Poisson input gives the same shares.
    data = loader(fmnist_test, 64, batch_size=64)
    snn = ann2snn.convert(pretrained("fmnist_avgpool_cnn"), mode="max", calib_data=data)
    current, _ = _evaluate(snn, data)
    poisson, _ = _evaluate(snn, data, encoding="poisson", seed=0)
    assert poisson.saturation["out_of_range"] == current.saturation["out_of_range"] == 0.0
    assert poisson.saturation["clip_error"] == current.saturation["clip_error"]


def _clipped_net(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), activation, nn.Linear(8, 3)).eval()


def test_rate_one_at_the_anns_own_clip_is_not_saturation() -> None:
    # ReLU6 with inputs far above 6: the scale is the clip, rate 1 is the ANN's value
    # (exact), so only a unit that stayed below 6 on the calibration data can saturate;
    # the same net with ReLU calibrated on small inputs saturates on the large ones.
    # 1,024 calibration inputs, so that every unit that can pass 6 does on them (with 64,
    # a unit that stays below 6 on them but not on the test inputs saturates: 6 of 12
    # seeds gave a clip error above 0.01). Own generator: no dependence on test order.
    gen = torch.Generator().manual_seed(0)
    calib = [torch.rand(1024, 4, generator=gen) * 100]
    test = [(torch.rand(64, 4, generator=gen) * 100, torch.zeros(64, dtype=torch.long))]
    relu6 = ann2snn.convert(_clipped_net(nn.ReLU6()), mode="max", calib_data=calib)
    curve, _ = _evaluate(relu6, test)
    assert curve.saturation["saturated"] < 0.01
    assert curve.saturation["clip_error"] < 0.01
    relu = ann2snn.convert(_clipped_net(nn.ReLU()), mode="max", calib_data=[calib[0] / 100])
    curve, _ = _evaluate(relu, test)
    assert curve.saturation["saturated"] > 0.1


def test_layer_report_and_saved_file_keep_the_shares(tmp_path, fmnist_train, fmnist_test) -> None:
    model = pretrained("fmnist_avgpool_cnn")
    snn = ann2snn.convert(model, calib_data=loader(fmnist_train, 4, batch_size=4))
    data = loader(fmnist_test, 64, batch_size=64)
    with pytest.warns(RangeWarning):
        report = layer_report(snn, data, timesteps=16)
    assert report.saturation["out_of_range"] > 0
    by_name = {r.name: r for r in report.rows}
    for name, layer in report.saturation["layers"].items():
        assert by_name[name].saturated == layer["saturated"]
        assert by_name[name].out_of_range == layer["out_of_range"]
    assert range_line(report.saturation) in report.table()
    # The calibrated ranges travel with the SNN file.
    path = tmp_path / "snn.pt"
    ann2snn.save_snn(snn, path)
    loaded = ann2snn.load_snn(path)
    for (_, a), (_, b) in zip(snn.neurons(), loaded.neurons()):
        assert torch.equal(a.calib_max, b.calib_max)
    with pytest.warns(RangeWarning):
        again = layer_report(loaded, data, timesteps=16)
    assert again.saturation == report.saturation
