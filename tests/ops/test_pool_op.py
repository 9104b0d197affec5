"""The cumulative max-pooling op ``torch.ops.ann2snn.cumulative_max_pool2d``: compiled CPU
kernel against the pure-torch reference, chunking in time, and the SpikingMaxPool module
that uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.ops import cumulative_max_pool2d, cumulative_max_pool2d_reference
from ann2snn.runtime.pooling import SpikingMaxPool
from tests.ops.test_ops import assert_bit_identical, needs_compiled_cpu

OP = torch.ops.ann2snn.cumulative_max_pool2d.default

# (kernel, stride, padding, dilation, ceil_mode): the 2x2 fast path and general windows.
GEOMETRIES = [
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 2), (1, 2), (1, 0), (2, 1), True),
    ((2, 2), (2, 2), (0, 0), (1, 1), True),
    ((3, 3), (3, 3), (0, 0), (1, 1), False),
]


def _inputs(shape, geometry, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Spikes of per-channel height (as after a channel-wise IF layer), and a random state.
    x = (torch.rand(shape, generator=gen) < 0.4).float()
    x = x * (torch.rand(shape[2], generator=gen) + 0.5).view(1, 1, -1, 1, 1)
    total = torch.randn(shape[1:], generator=gen)
    last = torch.randn(F.max_pool2d(total, *geometry).shape, generator=gen)
    return x, total, last


@needs_compiled_cpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", [(6, 2, 3, 9, 7), (1, 1, 1, 4, 4), (17, 3, 5, 28, 28)])
def test_kernel_bit_identical_to_reference(geometry, shape):
    x, total, last = _inputs(shape, geometry)
    before = (total.clone(), last.clone())
    got = OP(x, total, last, *(list(g) for g in geometry[:4]), geometry[4])
    expected = cumulative_max_pool2d_reference(x, total, last, *geometry)
    assert_bit_identical(got, expected)
    assert torch.equal(total, before[0]) and torch.equal(last, before[1]), "inputs modified"


@needs_compiled_cpu
def test_kernel_non_contiguous_and_empty():
    x, total, last = _inputs((5, 4, 3, 8, 8), GEOMETRIES[0])
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not strided.is_contiguous()
    assert_bit_identical(
        cumulative_max_pool2d(strided, total, last, 2, 2),
        cumulative_max_pool2d(x, total, last, 2, 2),
    )
    out, t2, l2 = cumulative_max_pool2d(x[:0], total, last, 2, 2)
    assert out.shape == (0, 4, 3, 4, 4) and torch.equal(t2, total) and torch.equal(l2, last)


def test_opcheck():
    x, total, last = _inputs((4, 2, 3, 6, 6), GEOMETRIES[1])
    torch.library.opcheck(OP, (x, total, last, [3, 3], [2, 2], [1, 1], [1, 1], False))


@pytest.mark.parametrize("fn", [cumulative_max_pool2d, cumulative_max_pool2d_reference])
def test_chunks_in_time_equal_one_call(fn):
    geometry = GEOMETRIES[0]
    x, _, _ = _inputs((12, 2, 3, 8, 8), geometry)
    total, last = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)
    whole = fn(x, total, last, *geometry)
    state = (total, last)
    outs = []
    for chunk in (x[:5], x[5:6], x[6:]):
        out, *state = fn(chunk, *state, *geometry)
        outs.append(out)
    assert_bit_identical((torch.cat(outs), *state), whole)


def test_time_average_is_max_pool_of_average_input():
    """The property the conversion relies on: the output telescopes to pool(mean input)."""
    x, _, _ = _inputs((40, 3, 4, 10, 10), GEOMETRIES[0], seed=3)
    out, total, _ = cumulative_max_pool2d(
        x, torch.zeros(3, 4, 10, 10), torch.zeros(3, 4, 5, 5), 2, 2
    )
    torch.testing.assert_close(out.mean(0), F.max_pool2d(x.mean(0), 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(total, x.sum(0), rtol=0, atol=1e-4)


def test_spiking_max_pool_fused_equals_generic_path():
    """SpikingMaxPool uses the op for nn.MaxPool2d; AMax-style generic pooling agrees."""
    x, _, _ = _inputs((16, 2, 3, 8, 8), GEOMETRIES[0], seed=5)
    fused = SpikingMaxPool(nn.MaxPool2d(2))
    generic = SpikingMaxPool(nn.Sequential(nn.MaxPool2d(2)))  # not a bare MaxPool2d: cumsum path
    for pool in (fused, generic):
        pool.steps = 8
    a = torch.cat([fused(x[:8].flatten(0, 1)), fused(x[8:].flatten(0, 1))])
    b = torch.cat([generic(x[:8].flatten(0, 1)), generic(x[8:].flatten(0, 1))])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    fused.reset()
    assert fused.total is None and fused.last is None


@pytest.mark.parametrize(
    "args, message",
    [
        (
            (
                torch.zeros(2, 1, 1, 4, 4, dtype=torch.float64),
                torch.zeros(1, 1, 4, 4),
                torch.zeros(1, 1, 2, 2),
            ),
            "float32",
        ),
        (
            (torch.zeros(2, 1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 2, 2)),
            r"\[T, N, C, H, W\]",
        ),
        (
            (torch.zeros(2, 1, 1, 4, 4), torch.zeros(1, 1, 4, 3), torch.zeros(1, 1, 2, 2)),
            "total must have shape",
        ),
        (
            (torch.zeros(2, 1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 2)),
            "last must have shape",
        ),
    ],
)
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_clear_errors(args, message, impl):
    fn = cumulative_max_pool2d if impl == "op" else cumulative_max_pool2d_reference
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        fn(*args, (2, 2), (2, 2), (0, 0), (1, 1), False)


def test_spiking_max_pool_is_differentiable_where_a_gradient_is_wanted():
    x, _, _ = _inputs((4, 2, 3, 8, 8), GEOMETRIES[0], seed=7)
    x = x.flatten(0, 1).requires_grad_()
    pool = SpikingMaxPool(nn.MaxPool2d(2))
    pool.steps = 4
    out = pool(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    pool.reset()
    with torch.no_grad():
        torch.testing.assert_close(pool(x), out.detach(), rtol=0, atol=1e-5)
