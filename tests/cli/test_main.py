"""``ann2snn --help`` and each subcommand's help; the subcommand registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ann2snn.cli.main import SUBCOMMANDS, build_parser, main


def test_top_level_help_from_the_installed_command(cli) -> None:
    result = cli(["--help"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("convert", "eval", "info", "demo"):
        assert name in out
    assert "ann2snn demo" in out  # where a newcomer should start
    assert "--debug" in out


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ann2snn.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ann2snn ")


@pytest.mark.parametrize(
    "command, phrases",
    [
        ("convert", ["INPUT is one of", "--trust-checkpoint", "--calib", "--arch", "examples:"]),
        ("eval", ["--timesteps", "1,2,4,...,256", "--csv", "--json", "--plot", "examples:"]),
        ("info", ["firing", "4.6 pJ", "0.9 pJ", "--data", "examples:"]),
        ("demo", ["fmnist_avgpool_cnn", "--limit", "99.9%", "examples:"]),
    ],
)
def test_subcommand_help(command, phrases, capsys) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ann2snn {command}")
    for phrase in phrases:
        assert phrase in out, phrase
    # Every option is explained.
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings} has no help text"


def test_registry_drives_the_parser() -> None:
    assert list(SUBCOMMANDS)[:4] == ["convert", "eval", "info", "demo"]
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert set(choices) == set(SUBCOMMANDS)
    for sub in SUBCOMMANDS.values():
        assert callable(sub.run) and callable(sub.add_arguments) and sub.summary
