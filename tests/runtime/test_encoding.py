"""Input encodings and inputs that change over time (issue 15, point 5)."""

from __future__ import annotations

import pytest
import torch

import ann2snn
from ann2snn.runtime.encoding import encoded_steps
from tests.conftest import pretrained


@pytest.fixture(scope="module")
def mnist():
    from ann2snn.data import load_dataset

    x, y = load_dataset("mnist", "test", limit=264).tensors
    return x, y


@pytest.fixture(scope="module")
def snn(mnist):
    # Max pooling stays after the neurons: exact on average for time-varying input.
    return ann2snn.convert(
        pretrained("mnist_cnn"), calib_data=[mnist[0][:200]], maxpool="cumulative"
    )


@pytest.mark.parametrize("encoding", ["poisson", "bernoulli"])
def test_random_encodings_are_reproducible_and_unbiased(mnist, snn, encoding) -> None:
    x = mnist[0][200:208]
    a = snn(x, 16, encoding=encoding, seed=7)
    assert torch.equal(a, snn(x, 16, encoding=encoding, seed=7))
    assert not torch.equal(a, snn(x, 16, encoding=encoding, seed=8))
    # The mean input per step is the image (pixels are in [0, 1], so Bernoulli is unbiased).
    steps = torch.stack(list(encoded_steps(x, encoding, 4000, seed=0)))
    assert set(steps.unique().tolist()) <= (
        {0.0, 1.0} if encoding == "bernoulli" else set(range(20))
    )
    assert (steps.mean(0) - x).abs().max() < 0.06
    signed = torch.stack(list(encoded_steps(-x[:1], encoding, 4, seed=0)))
    assert signed.max() <= 0 and signed.min() < 0  # signed inputs give signed spikes


def test_a_sequence_of_one_frame_is_the_constant_current(mnist, snn) -> None:
    x = mnist[0][200:216]
    static = torch.cat(list(snn.simulate(x, 12)))
    frames = x.unsqueeze(0).expand((12,) + tuple(x.shape)).contiguous()
    assert torch.equal(torch.cat(list(snn.simulate(frames, 12))), static)
    torch.testing.assert_close(snn.run(frames), snn(x, 12), rtol=0, atol=1e-6)


def test_sequence_and_encoding_mistakes_are_refused(mnist, snn) -> None:
    x = mnist[0][:4]
    with pytest.raises(ValueError, match="time-major sequence"):
        snn.run(x)
    with pytest.raises(ValueError, match="already one input per step"):
        snn(x.unsqueeze(0).repeat(4, 1, 1, 1, 1), 4, encoding="poisson")
    with pytest.raises(ValueError, match="fewer than timesteps=8"):
        snn(x.unsqueeze(0).repeat(4, 1, 1, 1, 1), 8)
    with pytest.raises(ValueError, match="unknown input encoding 'rate'"):
        snn(x, 4, encoding="rate")


def test_evaluate_takes_encodings_and_sequences(mnist, snn) -> None:
    x, y = mnist
    loader = [(x[200:264], y[200:264])]
    poisson = ann2snn.evaluate(snn, loader, timesteps=[8, 64], encoding="poisson", seed=0)
    again = ann2snn.evaluate(snn, loader, timesteps=[8, 64], encoding="poisson", seed=0)
    assert poisson.accuracy == again.accuracy and poisson.meta["input_encoding"] == "poisson"
    assert poisson.accuracy[64] >= 90.0  # rate coding converges, slower than a current
    assert poisson.output_error[64] < poisson.output_error[8]
    # A batch of sequences [B, T, ...] (as a DataLoader stacks them), one frame per step.
    frames = x[200:264].unsqueeze(1).expand(64, 16, 1, 28, 28)
    seq = ann2snn.evaluate(snn, [(frames, y[200:264])], timesteps=[4, 16])
    static = ann2snn.evaluate(snn, loader, timesteps=[4, 16])
    assert seq.accuracy == static.accuracy


def test_cli_eval_with_an_encoding_and_with_sequence_data(tmp_path, mnist, snn) -> None:
    from tests.cli.conftest import run_cli

    x, y = mnist
    path = tmp_path / "snn.pt"
    ann2snn.save_snn(snn, path)
    base = ["eval", str(path), "--data", "mnist", "--limit", "64", "--timesteps", "8,32"]
    first = run_cli(base + ["--encoding", "poisson", "--seed", "3", "--no-progress"])
    assert first.returncode == 0, first.stderr
    assert "input encoding: poisson (seed 3)" in first.stdout
    second = run_cli(base + ["--encoding", "poisson", "--seed", "3", "--no-progress"])
    assert second.stdout == first.stdout
    frames = x[200:232].unsqueeze(1).repeat(1, 8, 1, 1, 1)  # [N, T, C, H, W]
    torch.save({"x": frames, "y": y[200:232]}, tmp_path / "frames.pt")
    seq = run_cli(["eval", str(path), "--data", str(tmp_path / "frames.pt"), "--timesteps", "4,8",
                   "--no-progress"])  # fmt: skip
    assert seq.returncode == 0, seq.stderr
    assert "32 examples" in seq.stdout
