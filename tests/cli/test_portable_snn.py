"""SNN files are data, not code: a user architecture that is not importable at eval time
converts, evaluates and reports without --trust-checkpoint (issue 15, point 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

MYNETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make_net(width=4):
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(width * 14 * 14, 10),
        )
    """
)


def test_user_architecture_converts_then_evaluates_without_its_code(tmp_path, cli) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "mypkg").mkdir()
    (work / "mypkg" / "__init__.py").write_text("")
    (work / "mypkg" / "nets.py").write_text(MYNETS)
    sys.path.insert(0, str(work))
    try:
        from mypkg.nets import make_net
    finally:
        sys.path.remove(str(work))
    torch.manual_seed(0)
    net = make_net(width=4).eval()
    torch.save(net.state_dict(), work / "net.pt")

    result = cli(
        [
            "convert", "net.pt", "--arch", "mypkg.nets:make_net", "--arch-kwargs",
            '{"width": 4}', "--calib", "fashion-mnist", "--calib-batches", "1",
            "--batch-size", "64", "--target-timesteps", "4", "-o", "snn.pt", "--no-progress",
        ],
        cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hint = [line for line in result.stdout.splitlines() if line.startswith("next: ")]
    assert hint, result.stdout
    snn_path = work / "snn.pt"
    torch.load(snn_path, weights_only=True)  # no pickled classes

    # Elsewhere, where mypkg cannot be imported: the printed next steps work as printed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "snn.pt").write_bytes(snn_path.read_bytes())
    for command in hint[0][len("next: ") :].split("|"):
        words = command.split()
        assert words[0] == "ann2snn", hint
        extra = ["--limit", "64", "--timesteps", "4,8"] if words[1] == "eval" else []
        done = cli(words[1:] + extra, cwd=elsewhere)
        assert done.returncode == 0, (command, done.stderr)
        assert "trust" not in done.stderr.lower()

    # Loading imports neither the architecture's module nor the conversion pipeline
    # (benchmarks/bench_snn_file.py times it).
    probe = textwrap.dedent(
        f"""
        import sys, ann2snn
        snn = ann2snn.load_snn({str(snn_path)!r})
        print(any(m.startswith("mypkg") for m in sys.modules),
              "ann2snn.converter_passes.pipeline" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], out.stdout
