"""ConversionConfig: one source of defaults and checks for every conversion option."""

import inspect
import math

import numpy as np
import pytest
import torch

import ann2snn
from ann2snn.config import ConversionConfig, describe_options
from ann2snn.converter_passes.pipeline import ConversionContext
from cli.common import parse_timesteps
from tests.conftest import loader, pretrained


def test_convert_signature_shows_the_config_defaults():
    params = inspect.signature(ann2snn.convert).parameters
    for name in ConversionConfig.option_names():
        assert params[name].default == ConversionConfig.default(name), name
        assert f"{name}:" in ann2snn.convert.__doc__


def test_context_uses_the_same_defaults_as_convert():
    ctx = ConversionContext(config=ConversionConfig(), calib_data=[], example_input=torch.zeros(1))
    assert ctx.config.channelwise is True and ctx.config.potential_calibration is True


@pytest.mark.parametrize(
    "options",
    [
        {"v_init": math.nan},
        {"v_init": 5},
        {"v_init": -1},
        {"v_init": True},
        {"mode": 1e-300},
        {"mode": "1e-300"},
        {"channelwise": "yes"},
        {"target_timesteps": 2.0},
        {"calibration_horizons": "124"},
        {"maxpool": "fast"},
        {"readout": "rates"},
    ],
)
def test_bad_options_are_refused_by_name(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name if name != "mode" else "mode"):
        ConversionConfig(**options)


def test_unknown_option_names_the_option():
    with pytest.raises(TypeError, match="v_inti"):
        ann2snn.convert(pretrained("mnist_cnn"), calib_data=[torch.zeros(2, 1, 28, 28)], v_inti=0.5)


def test_meta_round_trip_and_description():
    cfg = ConversionConfig(mode="max", v_init=0.25, calibration_horizons=[4, 1])
    again = ConversionConfig.from_meta(cfg.to_meta())
    assert again == cfg and again.calibration_horizons == (1, 4)
    assert "potential calibration for T=4/16" in describe_options(cfg.to_meta())


def test_config_and_overrides_convert_like_keywords(fmnist_train):
    model, calib = pretrained("fmnist_avgpool_cnn"), loader(fmnist_train, 64)
    x = next(iter(calib))[0][:8]
    by_config = ann2snn.convert(
        model, calib_data=calib, config=ConversionConfig(channelwise=False, v_init=0.25)
    )
    by_keywords = ann2snn.convert(model, calib_data=calib, channelwise=False, v_init=0.25)
    assert torch.equal(by_config(x, timesteps=4), by_keywords(x, timesteps=4))
    assert by_config.meta["channelwise"] is False and by_config.meta["v_init"] == 0.25


def test_timesteps_accept_integer_likes_and_refuse_bools(fmnist_train):
    snn = ann2snn.convert(
        pretrained("fmnist_avgpool_cnn"),
        calib_data=loader(fmnist_train, 32),
        potential_calibration=False,
    )
    x = next(iter(loader(fmnist_train, 4)))[0]
    ref = snn(x, timesteps=8)
    assert torch.equal(snn(x, timesteps=np.int64(8)), ref)
    assert torch.equal(snn(x, timesteps=torch.tensor(8)), ref)
    with pytest.raises(ValueError, match="timesteps"):
        snn(x, timesteps=True)
    with pytest.raises(ValueError, match="timesteps"):
        snn(x, timesteps=2.5)


@pytest.mark.parametrize("text", ["1,,2", "2,4,...,3", "8,16,", ""])
def test_cli_timesteps_refuse_malformed_lists(text):
    from cli.common import CLIError

    with pytest.raises(CLIError):
        parse_timesteps(text)


def test_cli_timesteps_still_expand_progressions():
    assert parse_timesteps("1,2,4,...,32") == [1, 2, 4, 8, 16, 32]
    assert parse_timesteps("10,20,...,50") == [10, 20, 30, 40, 50]
