"""Shared command-line helpers: time-step lists, output checks."""

from __future__ import annotations

import pytest

from ann2snn.cli.common import CLIError, check_outputs, parse_timesteps


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2,4,...,256", [1, 2, 4, 8, 16, 32, 64, 128, 256]),
        ("1,2,...,16", [1, 2, 4, 8, 16]),
        ("16,32,...,100", [16, 32, 64, 100]),
        ("10,20,...,50", [10, 20, 30, 40, 50]),
        ("1,3,9,...,81", [1, 3, 9, 27, 81]),
        ("32, 8, 8", [8, 32]),
        ("64", [64]),
    ],
)
def test_parse_timesteps(text, expected) -> None:
    assert parse_timesteps(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-4", "a", "1,2,x", "...,8", "1,...,8", "8,4,...,2"])
def test_parse_timesteps_rejects(text) -> None:
    with pytest.raises(CLIError, match="positive integers"):
        parse_timesteps(text)


def test_check_outputs(tmp_path) -> None:
    existing = tmp_path / "a.csv"
    existing.write_text("x")
    check_outputs([str(tmp_path / "new.csv"), None], force=False, inputs=[])
    check_outputs([str(existing)], force=True, inputs=[])
    with pytest.raises(CLIError, match="already exists"):
        check_outputs([str(existing)], force=False, inputs=[])
    with pytest.raises(CLIError, match="also an input"):
        check_outputs([str(existing)], force=True, inputs=[str(existing)])
    with pytest.raises(CLIError, match="is a folder"):
        check_outputs([str(tmp_path)], force=True, inputs=[])
