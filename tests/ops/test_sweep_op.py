"""The candidate-scoring op ``torch.ops.ann2snn.if_sweep_errors``: compiled CPU kernel
against the pure-torch reference, against a spike train counted by hand, thread-count
independence, and its use by layer calibration."""

from __future__ import annotations

import pytest
import torch

from ann2snn.ops import if_multistep, if_sweep_errors, if_sweep_errors_reference
from tests.ops.test_ops import needs_compiled_cpu

OP = torch.ops.ann2snn.if_sweep_errors.default


def _inputs(shape, k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    channels = shape[2] if len(shape) > 2 else 1
    # Currents of both signs, as a layer after a signed residual sees them; targets in [0, 1].
    z = torch.randn(shape, generator=gen) * 0.6 + 0.25
    target = torch.rand(shape[1:], generator=gen)
    threshold = torch.rand(k, channels, generator=gen) + 0.5
    v0 = torch.rand(k, channels, generator=gen) * threshold
    gain = torch.rand(k, channels, generator=gen) + 0.5
    return z, target, threshold, v0, gain


SHAPES = [(16, 5, 4, 3, 7), (16, 9, 6), (12, 11), (8, 3, 2, 28, 28), (4, 1, 1, 1, 1)]


@needs_compiled_cpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("horizons", [[4, 8, 16], [1], [3, 4]])
def test_kernel_matches_reference(shape, horizons):
    horizons = [h for h in horizons if h <= shape[0]] or [shape[0]]
    args = _inputs(shape)
    got = OP(*args, horizons)
    expected = if_sweep_errors_reference(*args, horizons)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


def test_reference_counts_the_spike_train_of_if_multistep():
    # Candidate by candidate and horizon by horizon, by hand from if_multistep's spikes.
    z, target, threshold, v0, gain = _inputs((8, 3, 2, 5), k=3, seed=1)
    horizons = [2, 8]
    expected = torch.zeros(3, 2, dtype=torch.float64)
    for k in range(3):
        v = (v0[k].view(1, 2, 1) * torch.ones_like(target)).contiguous()
        spikes, _ = if_multistep(z, v, threshold[k].contiguous())
        for h in horizons:
            rate = spikes[:h].sum(0) / h
            err = rate * gain[k].view(1, 2, 1) - target
            expected[k] += (h / horizons[0]) * err.double().pow(2).sum((0, 2))
    got = if_sweep_errors(z, target, threshold, v0, gain, horizons)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@needs_compiled_cpu
def test_result_does_not_depend_on_the_thread_count():
    args = _inputs((16, 32, 8, 6, 6), k=21, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP(*args, [4, 8, 16])
        torch.set_num_threads(2)
        two = OP(*args, [4, 8, 16])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_compiled_cpu
def test_non_contiguous_inputs():
    z, target, threshold, v0, gain = _inputs((6, 4, 3, 5))
    strided = z.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        OP(strided, target, threshold, v0, gain, [6]), OP(z, target, threshold, v0, gain, [6])
    )


def test_opcheck():
    torch.library.opcheck(OP, (*_inputs((6, 3, 2, 4), k=2), [3, 6]))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a[0][:, 0, 0, 0],) + a[1:], r"z must be \[T, B, ...\]"),
        (lambda a: (a[0].double(),) + a[1:], "float32"),
        (lambda a: (a[0], a[1][:1]) + a[2:], "target must have shape"),
        (lambda a: a[:2] + (a[2][:, :1],) + a[3:], r"threshold must be \[K, C\]"),
        (lambda a: a[:3] + (a[3][:1],) + a[4:], "v0 and gain must have the shape"),
    ],
)
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_clear_errors(change, message, impl):
    fn = if_sweep_errors if impl == "op" else if_sweep_errors_reference
    args = change(_inputs((6, 3, 2, 4), k=2))
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        fn(*args, [6])


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("horizons", [[], [0], [4, 4], [7]])
def test_bad_horizons(impl, horizons):
    fn = if_sweep_errors if impl == "op" else if_sweep_errors_reference
    with pytest.raises((ValueError, RuntimeError), match="horizons must"):
        fn(*_inputs((6, 3, 2, 4), k=2), horizons)
