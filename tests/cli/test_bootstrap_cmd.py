"""``ann2snn bootstrap`` end to end: fine-tune an SNN file, write it and its history."""

from __future__ import annotations

import json

import ann2snn
from ann2snn import snn_file as snn_io
from ann2snn.data.datasets import make_loader

LIMIT = 200


def test_bootstrap_snn_file_writes_a_loadable_snn_and_history(tmp_path, snn_file, cli) -> None:
    out, history = tmp_path / "snn_t4.pt", tmp_path / "history.json"
    result = cli(
        [
            "bootstrap",
            str(snn_file),
            "--timesteps",
            "4",
            "--train-limit",
            "640",
            "--epochs",
            "1",
            "--resample-every",
            "0.5",
            "--sample-batches",
            "2",
            "--batch-size",
            "128",
            "--limit",
            str(LIMIT),
            "--report",
            "4,8",
            "-o",
            str(out),
            "--json",
            str(history),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "bootstrapped for T=4" in result.stdout

    data = json.loads(history.read_text())
    # 5 batches; re-fit (and measure) every round(2.5) = 2 batches and at the end
    assert [r["step"] for r in data["history"]] == [0, 2, 4, 5]
    assert data["bootstrap"]["timesteps"] == 4
    first, last = data["history"][0]["snn_accuracy"], data["history"][-1]["snn_accuracy"]
    assert sorted(first) == ["4", "8"]

    # the written file is an ordinary SNN file holding the fine-tuned weights
    tuned = snn_io.load_snn(out)
    assert tuned.meta["bootstrap"]["timesteps"] == 4
    loader = make_loader("fashion-mnist", "test", batch_size=128, limit=LIMIT)
    curve = ann2snn.evaluate(tuned, loader, [4, 8])
    assert curve.accuracy[4] == last["4"]
    rows = {ln.split()[0]: ln.split() for ln in result.stdout.splitlines() if ln.split()[:1]}
    assert float(rows["4"][1]) == round(first["4"], 2)
    assert float(rows["4"][2]) == round(last["4"], 2)


def test_bootstrap_needs_timesteps_and_refuses_bad_options(tmp_path, snn_file, capsys) -> None:
    from ann2snn.cli.main import main

    assert main(["bootstrap", str(snn_file), "--no-progress"]) == 2
    assert "--timesteps" in capsys.readouterr().err
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"x")
    assert main(["bootstrap", str(snn_file), "-T", "4", "-o", str(existing)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["bootstrap", str(snn_file), "-T", "4", "--range", "1,2"]) == 2
    assert "contain" in capsys.readouterr().err
    assert main(["bootstrap", str(snn_file), "-T", "4", "--epochs", "0"]) == 2
    assert "positive" in capsys.readouterr().err
