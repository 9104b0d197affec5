"""The integrate-and-fire custom op ``torch.ops.ann2snn.if_multistep``.

``if_multistep(x, v, threshold) -> (spikes, v_out)`` runs T steps of an integrate-and-fire
neuron with soft reset over time-major input currents ``x`` of shape ``[T, *S]``. Per
element, in float32 and in exactly this order::

    for t in range(T):
        v = v + x[t]
        s[t] = 1.0 if v >= threshold else 0.0
        v = v - s[t] * threshold

``spikes`` has the shape and dtype of ``x``; ``v_out`` (shape ``S``, float32) is the
membrane potential after the last step, so a long simulation can be run in chunks of
time by feeding ``v_out`` back as the next chunk's ``v``.

The op is declared here with ``torch.library``: its schema, a fake (meta) kernel for
tracing and ``torch.compile``, and the pure-torch reference below, registered under
``CompositeExplicitAutograd`` as the fallback for every device. On import, the C++ CPU
kernel (and the CUDA kernel, where a GPU and nvcc exist) in ``ann2snn/csrc`` is built
just in time (cached after the first build; see :mod:`ann2snn.ops._build`) and registered
per device; those kernels are bit-identical to the reference.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ann2snn.ops import _build

__all__ = [
    "backend_info",
    "compiled_cpu_available",
    "cumulative_max_pool2d",
    "cumulative_max_pool2d_reference",
    "if_multistep",
    "if_multistep_reference",
    "if_sweep_errors",
    "if_sweep_errors_reference",
]

_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP = "ann2snn::if_multistep"

# Kept at module level: the registrations live as long as this object does.
_lib = torch.library.Library("ann2snn", "DEF")
_lib.define("if_multistep(Tensor x, Tensor v, Tensor threshold) -> (Tensor, Tensor)")
_lib.define(
    "if_sweep_errors(Tensor z, Tensor target, Tensor threshold, Tensor v0, Tensor gain, "
    "int[] horizons) -> Tensor"
)
_lib.define(
    "cumulative_max_pool2d(Tensor x, Tensor total, Tensor last, int[2] kernel_size, "
    "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor, Tensor)"
)


def _check_inputs(x: Tensor, v: Tensor, threshold: Tensor) -> None:
    # Same checks and wording as check_if_inputs in csrc/if_neuron.h.
    if x.dim() < 1:
        raise ValueError(
            f"{_OP}: x must have at least 1 dimension (time-major [T, *S]), got a 0-dim tensor"
        )
    if not (x.device == v.device == threshold.device):
        raise ValueError(
            f"{_OP}: x, v and threshold must be on the same device, got x on {x.device}, "
            f"v on {v.device}, threshold on {threshold.device}"
        )
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"{_OP}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if v.dtype != torch.float32:
        raise TypeError(f"{_OP}: v (membrane potential) must be float32, got {v.dtype}")
    if threshold.dtype != torch.float32:
        raise TypeError(f"{_OP}: threshold must be float32, got {threshold.dtype}")
    step_shape = x.shape[1:]
    if v.shape != step_shape:
        raise ValueError(
            f"{_OP}: v must have shape x.shape[1:] = {list(step_shape)}, got {list(v.shape)}"
        )
    n = threshold.numel()
    if n == 1:
        return
    if len(step_shape) < 2:
        raise ValueError(
            f"{_OP}: threshold must have 1 element (scalar threshold) because x.shape[1:] = "
            f"{list(step_shape)} has no channel dimension, got {n} elements"
        )
    if threshold.dim() != 1 or n != step_shape[1]:
        raise ValueError(
            f"{_OP}: threshold must have 1 element (scalar threshold) or be 1-D with "
            f"S[1] = {step_shape[1]} elements (one per channel, dim 2 of x), got shape "
            f"{list(threshold.shape)}"
        )


def if_multistep_reference(x: Tensor, v: Tensor, threshold: Tensor) -> Tuple[Tensor, Tensor]:
    """Pure-torch reference of ``if_multistep``: a Python loop over time steps.

    This is the definition the compiled kernels are tested against, and the fallback
    when they are not available.

    Args:
        x: Input currents, time-major ``[T, *S]``; float32, float16 or bfloat16.
        v: Initial membrane potential, shape ``S``, float32.
        threshold: float32; 1 element, or 1-D with ``S[1]`` elements (per channel).

    Returns:
        ``(spikes, v_out)``: contiguous spikes (0/1, shape and dtype of ``x``) and the
        final membrane potential (shape ``S``, float32, a new tensor).

    Raises:
        ValueError: On a shape or device mismatch.
        TypeError: On a wrong dtype.
    """
    _check_inputs(x, v, threshold)
    step_shape = x.shape[1:]
    if threshold.numel() == 1:
        theta = threshold.reshape(())
    else:
        theta = threshold.reshape([-1] + [1] * (len(step_shape) - 2))
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    v = v.clone(memory_format=torch.contiguous_format)
    s = torch.empty(step_shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[0]):
        v.add_(x[t])
        torch.ge(v, theta, out=s)  # writes 1.0 / 0.0 into the float32 buffer
        v.sub_(s * theta)
        spikes[t].copy_(s)
    return spikes, v


def _if_multistep_fake(x: Tensor, v: Tensor, threshold: Tensor) -> Tuple[Tensor, Tensor]:
    _check_inputs(x, v, threshold)
    return x.new_empty(x.shape), v.new_empty(v.shape)


_lib.impl("if_multistep", if_multistep_reference, "CompositeExplicitAutograd")
torch.library.register_fake(_OP, _if_multistep_fake, lib=_lib)


_SWEEP_OP = "ann2snn::if_sweep_errors"


def _check_sweep_inputs(
    z: Tensor, target: Tensor, threshold: Tensor, v0: Tensor, gain: Tensor, horizons
) -> None:
    # Same checks and wording as check_inputs in csrc/if_sweep.cpp.
    if z.dim() < 2:
        raise ValueError(f"{_SWEEP_OP}: z must be [T, B, ...], got shape {list(z.shape)}")
    if any(t.dtype != torch.float32 for t in (z, target, threshold, v0, gain)):
        raise TypeError(f"{_SWEEP_OP}: every tensor must be float32")
    if target.shape != z.shape[1:]:
        raise ValueError(
            f"{_SWEEP_OP}: target must have shape z.shape[1:] = {list(z.shape[1:])}, "
            f"got {list(target.shape)}"
        )
    channels = z.shape[2] if z.dim() > 2 else 1
    if threshold.dim() != 2 or threshold.shape[1] != channels:
        raise ValueError(
            f"{_SWEEP_OP}: threshold must be [K, C] with C = {channels}, got "
            f"{list(threshold.shape)}"
        )
    if v0.shape != threshold.shape or gain.shape != threshold.shape:
        raise ValueError(
            f"{_SWEEP_OP}: v0 and gain must have the shape of threshold "
            f"{list(threshold.shape)}, got {list(v0.shape)} and {list(gain.shape)}"
        )
    if not horizons:
        raise ValueError(f"{_SWEEP_OP}: horizons must not be empty")
    previous = 0
    for h in horizons:
        if not previous < h <= z.shape[0]:
            raise ValueError(
                f"{_SWEEP_OP}: horizons must increase strictly within 1..T = {z.shape[0]}, "
                f"got {list(horizons)}"
            )
        previous = h


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``[C]`` shaped to broadcast over ``like`` ``[B, C, *S]`` (or ``[B]``)."""
    if like.dim() < 2:
        return values.reshape(())
    return values.reshape([1, -1] + [1] * (like.dim() - 2))


def if_sweep_errors_reference(
    z: Tensor, target: Tensor, threshold: Tensor, v0: Tensor, gain: Tensor, horizons: Sequence[int]
) -> Tensor:
    """Pure-torch reference of ``if_sweep_errors``: one :func:`if_multistep_reference` run
    per candidate, its spike counts compared with ``target`` after every horizon.

    For each candidate ``k`` and channel ``c``, the IF layer (threshold ``threshold[k, c]``,
    initial potential ``v0[k, c]``) runs on the currents ``z``; after ``h`` steps its rate
    times ``gain[k, c]`` is compared with ``target``. In float32: ``e = n_h * (gain / h) -
    target`` (``n_h`` the spike count); the squares ``e * e`` are summed over the batch and
    the positions in float64, and the result is ``sum_h (h / horizons[0]) * sum(e * e)``.

    Args:
        z: input currents ``[T, B, C, *S]`` (or ``[T, B]``, one channel), float32.
        target: the ANN's activations ``[B, C, *S]`` in units of ``gain``, float32.
        threshold, v0, gain: ``[K, C]`` float32: per candidate and channel, the threshold,
            the initial membrane potential (absolute) and what one spike is worth.
        horizons: strictly increasing step counts within ``1..T``.

    Returns:
        ``[K, C]`` float64 summed squared errors.
    """
    _check_sweep_inputs(z, target, threshold, v0, gain, horizons)
    dims = (0,) + tuple(range(2, target.dim()))
    first = horizons[0]
    out = torch.zeros(threshold.shape, dtype=torch.float64, device=z.device)
    for k in range(threshold.shape[0]):
        v = _per_channel(v0[k], target).expand(target.shape).contiguous()
        spikes, _ = if_multistep_reference(z[: horizons[-1]], v, threshold[k])
        count, done = torch.zeros_like(target), 0
        for h in horizons:
            count += spikes[done:h].sum(0)
            done = h
            e = count * (_per_channel(gain[k], target) / h) - target
            out[k] += (h / first) * e.pow(2).double().sum(dims)
    return out


def _if_sweep_errors_fake(z, target, threshold, v0, gain, horizons) -> Tensor:
    _check_sweep_inputs(z, target, threshold, v0, gain, horizons)
    return threshold.new_empty(threshold.shape, dtype=torch.float64)


_lib.impl("if_sweep_errors", if_sweep_errors_reference, "CompositeExplicitAutograd")
torch.library.register_fake(_SWEEP_OP, _if_sweep_errors_fake, lib=_lib)


_POOL_OP = "ann2snn::cumulative_max_pool2d"


def _check_pool_inputs(x: Tensor, total: Tensor, last: Tensor, pooled_hw: Tuple[int, int]) -> None:
    # Same checks as check_inputs in csrc/spiking_pool.cpp.
    if x.dim() != 5:
        raise ValueError(f"{_POOL_OP}: x must be [T, N, C, H, W], got shape {list(x.shape)}")
    if not (x.dtype == total.dtype == last.dtype == torch.float32):
        raise TypeError(
            f"{_POOL_OP}: x, total and last must be float32, got {x.dtype}, {total.dtype}, "
            f"{last.dtype}"
        )
    if not (x.device == total.device == last.device):
        raise ValueError(f"{_POOL_OP}: x, total and last must be on the same device")
    if total.shape != x.shape[1:]:
        raise ValueError(
            f"{_POOL_OP}: total must have shape x.shape[1:] = {list(x.shape[1:])}, "
            f"got {list(total.shape)}"
        )
    want = [x.shape[1], x.shape[2], *pooled_hw]
    if list(last.shape) != want:
        raise ValueError(
            f"{_POOL_OP}: last must have shape {want} (the pooled shape), got {list(last.shape)}"
        )


def _pooled_hw(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> Tuple[int, int]:
    if x.dim() != 5:
        raise ValueError(f"{_POOL_OP}: x must be [T, N, C, H, W], got shape {list(x.shape)}")
    meta = torch.empty((1, 1) + tuple(x.shape[3:]), device="meta")
    out = torch.nn.functional.max_pool2d(meta, kernel_size, stride, padding, dilation, ceil_mode)
    return int(out.shape[2]), int(out.shape[3])


def cumulative_max_pool2d_reference(
    x: Tensor,
    total: Tensor,
    last: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pure-torch reference of ``cumulative_max_pool2d``: a Python loop over time steps.

    Per step ``t``, in float32: ``S = S + x[t]``; ``M = max_pool2d(S)``;
    ``out[t] = M - P``; ``P = M``, starting from ``S = total`` and ``P = last``.

    Args:
        x: spike trains (or any inputs), ``[T, N, C, H, W]`` float32.
        total: running input sums before the first step, ``[N, C, H, W]`` float32.
        last: pooled running sums before the first step, ``[N, C, Ho, Wo]`` float32.
        kernel_size, stride, padding, dilation, ceil_mode: as in ``F.max_pool2d``.

    Returns:
        ``(out, total_out, last_out)``: ``out`` ``[T, N, C, Ho, Wo]`` and the state after
        the last step (new tensors), to feed into the next chunk of time.
    """
    _check_pool_inputs(
        x, total, last, _pooled_hw(x, kernel_size, stride, padding, dilation, ceil_mode)
    )
    out = x.new_empty((x.shape[0],) + tuple(last.shape))
    running = total.clone(memory_format=torch.contiguous_format)
    previous = last.clone(memory_format=torch.contiguous_format)
    for t in range(x.shape[0]):
        running.add_(x[t])
        pooled = torch.nn.functional.max_pool2d(
            running, kernel_size, stride, padding, dilation, ceil_mode
        )
        torch.sub(pooled, previous, out=out[t])
        previous = pooled
    return out, running, previous.contiguous()


def _cumulative_max_pool2d_fake(x, total, last, kernel_size, stride, padding, dilation, ceil_mode):
    hw = _pooled_hw(x, kernel_size, stride, padding, dilation, ceil_mode)
    _check_pool_inputs(x, total, last, hw)
    return (
        x.new_empty((x.shape[0],) + tuple(last.shape)),
        total.new_empty(total.shape),
        last.new_empty(last.shape),
    )


_lib.impl("cumulative_max_pool2d", cumulative_max_pool2d_reference, "CompositeExplicitAutograd")
torch.library.register_fake(_POOL_OP, _cumulative_max_pool2d_fake, lib=_lib)

_BUILD: Optional[_build.BuildResult] = None


def ensure_built() -> _build.BuildResult:
    """Build (or load from the cache) the compiled kernels, once, on first use.

    ``import ann2snn`` stays cheap: the first simulation, or :func:`backend_info`, pays
    the build. Until then ``torch.ops.ann2snn.*`` dispatch to the pure-torch reference.
    """
    global _BUILD
    if _BUILD is None:
        _BUILD = _build.build_and_load()
    return _BUILD


def cumulative_max_pool2d(
    x: Tensor,
    total: Tensor,
    last: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Max pooling of running input sums, differenced over time
    (``torch.ops.ann2snn.cumulative_max_pool2d``; see
    :class:`ann2snn.runtime.pooling.SpikingMaxPool`).

    The compiled CPU kernel reads ``x`` once and writes the output once; elsewhere the
    reference runs. Results are bit-identical either way.

    Example:
        >>> x = torch.tensor([[1., 0.], [0., 1.]]).reshape(2, 1, 1, 1, 2)
        >>> out, total, last = cumulative_max_pool2d(
        ...     x, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 1), (1, 2), (1, 2))
        >>> out.flatten().tolist(), total.flatten().tolist()
        ([1.0, 0.0], [1.0, 1.0])
    """
    pair = lambda v: [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]  # noqa: E731
    ensure_built()
    return torch.ops.ann2snn.cumulative_max_pool2d(
        x,
        total,
        last,
        pair(kernel_size),
        pair(stride),
        pair(padding),
        pair(dilation),
        bool(ceil_mode),
    )


def if_multistep(x: Tensor, v: Tensor, threshold: Union[Tensor, float]) -> Tuple[Tensor, Tensor]:
    """Runs T integrate-and-fire steps with soft reset (``torch.ops.ann2snn.if_multistep``).

    Dispatches to the compiled kernel for ``x``'s device when there is one, else to
    :func:`if_multistep_reference`; results are bit-identical either way.

    Args:
        x: Input currents, time-major ``[T, *S]``; float32 (or float16/bfloat16). May be
            non-contiguous; ``x0.unsqueeze(0).expand(T, *S)`` (constant input) is read
            without being materialized.
        v: Initial membrane potential, shape ``S``, float32.
        threshold: A float, a 1-element float32 tensor, or a 1-D float32 tensor with
            ``S[1]`` elements (per-channel threshold; channel = dim 2 of ``x``).

    Returns:
        ``(spikes, v_out)``: spikes (0/1, shape and dtype of ``x``) and the membrane
        potential after the last step (shape ``S``, float32).

    Raises:
        ValueError / TypeError (reference) or RuntimeError (compiled kernels): On wrong
        dtypes, shapes or devices; the message says which.

    Example:
        >>> x = torch.full((4, 1), 0.6)
        >>> spikes, v = if_multistep(x, torch.zeros(1), 1.0)
        >>> spikes.flatten().tolist(), v.tolist()
        ([0.0, 1.0, 0.0, 1.0], [0.3999999761581421])
    """
    if not isinstance(threshold, Tensor):
        threshold = torch.tensor([float(threshold)], dtype=torch.float32, device=x.device)
    ensure_built()
    return torch.ops.ann2snn.if_multistep(x, v, threshold)


def if_sweep_errors(
    z: Tensor, target: Tensor, threshold: Tensor, v0: Tensor, gain: Tensor, horizons: Sequence[int]
) -> Tensor:
    """The squared rate errors of an IF layer under K candidate parameter sets
    (``torch.ops.ann2snn.if_sweep_errors``; see :func:`if_sweep_errors_reference` for the
    definition). Layer calibration scores its candidates with it.

    The compiled CPU kernel reads ``z`` once for all candidates and writes no spike train;
    elsewhere the reference runs. Both sum in float64 and agree to rounding.

    Example:
        >>> z = torch.full((4, 1), 0.6)  # 4 steps, one neuron, input 0.6
        >>> one = torch.ones(2, 1)
        >>> if_sweep_errors(z, torch.full((1,), 0.6), one, torch.tensor([[0.0], [0.5]]), one, [4])
        tensor([[0.0100],
                [0.0100]], dtype=torch.float64)
    """
    ensure_built()
    return torch.ops.ann2snn.if_sweep_errors(
        z, target, threshold, v0, gain, [int(h) for h in horizons]
    )


def backend_info() -> Dict[str, Any]:
    """Which implementation ``if_multistep`` uses on each device (for ``ann2snn info``).

    Returns:
        ``{"cpu": "compiled" | "reference", "cuda": "compiled" | "reference" |
        "unavailable", "reason": str | None, "library": str | None,
        "build_seconds": float}``.
    """
    build = ensure_built()
    return {
        "cpu": build.cpu,
        "cuda": build.cuda,
        "reason": build.reason,
        "library": build.library,
        "build_seconds": round(build.seconds, 3),
    }


def compiled_cpu_available() -> bool:
    """True when the compiled C++ kernel serves ``if_multistep`` on the CPU."""
    return ensure_built().cpu == "compiled"
