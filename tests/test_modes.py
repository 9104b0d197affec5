import pytest

from ann2snn.modes import parse_mode


@pytest.mark.parametrize(
    "mode, quantile, fraction",
    [
        ("max", None, None),
        ("MAX", None, None),
        ("99.9%", 0.999, None),
        ("99.99%", 0.9999, None),
        ("100%", 1.0, None),
        (0.5, None, 0.5),
        (1, None, 1.0),
        ("0.25", None, 0.25),
    ],
)
def test_accepted_modes(mode, quantile, fraction):
    parsed = parse_mode(mode)
    assert parsed.quantile == pytest.approx(quantile) if quantile else parsed.quantile is None
    assert parsed.fraction == fraction


@pytest.mark.parametrize("mode", ["99.9", "101%", "0%", "-5%", "abc%", 0, 1.5, -0.1, "", True])
def test_rejected_modes_name_the_accepted_forms(mode):
    with pytest.raises(ValueError) as err:
        parse_mode(mode)
    msg = str(err.value)
    assert "'max'" in msg and "'99.9%'" in msg and "0 < s <= 1" in msg
