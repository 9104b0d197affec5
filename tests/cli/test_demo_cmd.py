"""``ann2snn demo``: the bundled model converted and evaluated with no arguments needed."""

from __future__ import annotations

import re


def test_demo_prints_accuracy_table(checkpoint, cli) -> None:
    result = cli(["demo", "--limit", "300", "--timesteps", "1,2,...,32", "--no-progress"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fmnist_avgpool_cnn" in out
    assert "2,000 training images" in out
    ann = float(re.search(r"ANN accuracy: ([\d.]+)%", out).group(1))
    acc = {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(r"^\s+(\d+)\s+([\d.]+)\s+[+-]", out, flags=re.MULTILINE)
    }
    assert sorted(acc) == [1, 2, 4, 8, 16, 32]
    assert ann > 80.0  # a trained model
    assert acc[32] > acc[1]
    assert acc[32] >= ann - 3.0  # rate coding converges to the ANN
