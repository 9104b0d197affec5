"""``ann2snn finetune`` end to end: fine-tune an ANN checkpoint, convert, write the SNN."""

from __future__ import annotations

import json

import ann2snn
from ann2snn import snn_file as snn_io
from ann2snn.data.datasets import make_loader
from tests.cli.conftest import MODEL

LIMIT = 300


def test_finetune_writes_an_snn_file_that_evaluates_as_printed(tmp_path, state_dict_file, cli):
    out, history = tmp_path / "snn_l4.pt", tmp_path / "history.json"
    result = cli(
        [
            "finetune",
            str(state_dict_file),
            "--arch",
            MODEL,
            "--levels",
            "4",
            "--train",
            "fashion-mnist",
            "--train-limit",
            "1280",
            "--calib-limit",
            "500",
            "--data",
            "fashion-mnist",
            "--limit",
            str(LIMIT),
            "--report",
            "4,16",
            "-o",
            str(out),
            "--json",
            str(history),
            "--no-progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(history.read_text())
    assert data["finetune"]["levels"] == 4 and data["finetune"]["steps"] == 5  # 1280 / 256
    assert len(data["finetune"]["clips"]) == 3
    before, after = data["history"][0]["eval_accuracy"], data["history"][-1]["eval_accuracy"]
    assert f"{before:.2f}% before fine-tuning, {after:.2f}% after" in result.stdout

    # the file holds the fine-tuned, converted network: it evaluates to the printed table
    snn = snn_io.load_snn(out)
    header = snn_io.read_snn_header(out)
    assert "fine-tuned for L=4" in header["ann_description"]
    loader = make_loader("fashion-mnist", "test", batch_size=128, limit=LIMIT)
    curve = ann2snn.evaluate(snn, loader, [4, 16])
    rows = {ln.split()[0]: ln.split() for ln in result.stdout.splitlines() if ln.split()[:1]}
    assert float(rows["4"][1]) == round(curve.accuracy[4], 2)
    assert float(rows["16"][1]) == round(curve.accuracy[16], 2)
    assert data["results"]["snn_accuracy"]["4"] == curve.accuracy[4]


def test_finetune_refuses_snn_files_and_bad_options(tmp_path, snn_file, capsys) -> None:
    from ann2snn.cli.main import main

    assert main(["finetune", MODEL, "--no-progress"]) == 2
    assert "--levels" in capsys.readouterr().err
    assert main(["finetune", str(snn_file), "-L", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is an SNN file" in err and "ann2snn bootstrap" in err and "Traceback" not in err
    assert main(["finetune", MODEL, "-L", "4", "--init-percentile", "150"]) == 2
    assert "at most 100" in capsys.readouterr().err
    out = tmp_path / "never.pt"
    assert main(["finetune", MODEL, "-L", "0", "-o", str(out)]) == 2
    assert not out.exists()
