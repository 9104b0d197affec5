"""Run conversion and evaluation as one job over several processes with ``torch.distributed``.

Under ``torchrun`` (gloo on CPU, NCCL on GPUs) :func:`ann2snn.convert` and
:func:`ann2snn.evaluate` need no change: when a process group of more than one rank is
initialized, every rank reads only its shard of the calibration and test data
(:func:`shard`), calibration statistics are merged across ranks
(:func:`ann2snn.calibration.merge_observers`)
and accuracy counts are summed, so every rank ends with the single-process result.

Exactness:
    * Shards are whole batches of the original loader (rank ``r`` takes batches ``r``,
      ``r + W``, ``r + 2W`` ...), never padded, so every sample is seen exactly once and
      every batch is computed exactly as in a single process.
    * The maximum is an all-reduce (max); element counts an all-reduce (sum).
    * Percentiles: each rank's :class:`~ann2snn.calibration.ActivationObserver` keeps its
      largest values. The ``K = needed_top_count(N, q)`` largest of all ``N`` values lie
      in the union of every rank's ``min(K, n_r)`` largest, so gathering those and keeping
      the ``K`` largest gives exactly the values a single process keeps, and the
      percentile is bit-identical (no histogram, no error bound to accept). When a rank
      kept fewer values than that (its first batch was small, or the data has no
      length), calibration runs a second, exact pass with ``K`` from the global count.

Failures: every data pass runs inside :func:`failure_check`, so an exception on one rank
ends the job on every rank with a :class:`DistributedError` naming the failing rank and
its message; a rank that dies or hangs makes the others' collectives fail after the
process-group timeout (:func:`init_from_env`) instead of hanging forever.

Example:
    >>> # torchrun --nproc-per-node 2 my_script.py
    >>> from ann2snn import distributed  # doctest: +SKIP
    >>> distributed.init_from_env()  # doctest: +SKIP
    >>> curve = ann2snn.evaluate(snn, test_loader, timesteps=[16, 64])  # doctest: +SKIP
    >>> distributed.print0(curve.table())  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import os
import traceback
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, TypeVar

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistributedError",
    "all_reduce_max",
    "all_reduce_sum",
    "failure_check",
    "init_from_env",
    "is_distributed",
    "is_main",
    "local_device",
    "main_only",
    "print0",
    "rank",
    "shard",
    "shutdown",
    "world_size",
]

#: Environment variable overriding the collective timeout, in seconds.
TIMEOUT_ENV = "ANN2SNN_DIST_TIMEOUT"

#: Default collective timeout: long enough for uneven shards, short enough to end a dead job.
DEFAULT_TIMEOUT_S = 1800.0

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_MAX_MESSAGE = 2000

T = TypeVar("T")

# The timeout the process group was created with, for error messages (None: not ours).
_timeout_s: Optional[float] = None


class DistributedError(RuntimeError):
    """A multi-process job failed on some rank; the message names the rank and the cause."""


# -- process group ---------------------------------------------------------------------------


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group of more than one rank is running."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the rank that prints and writes files (always true in one process)."""
    return rank() == 0


def local_device() -> torch.device:
    """The device this rank should compute on: ``cuda:LOCAL_RANK`` with NCCL, else the CPU."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _timeout_from_env() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return value


def init_from_env(
    timeout_s: Optional[float] = None,
    backend: Optional[str] = None,
    *,
    required: bool = False,
) -> bool:
    """Join the ``torchrun`` job described by the environment, if there is one.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun``) and initializes the default process group with a collective timeout, so
    that a rank that dies or hangs ends the job instead of blocking it. Does nothing when
    ``WORLD_SIZE`` is absent or 1, or when a group is already initialized.

    Args:
        timeout_s: collective timeout in seconds (default: ``$ANN2SNN_DIST_TIMEOUT`` or
            :data:`DEFAULT_TIMEOUT_S`). It must exceed the longest time one rank may wait
            for another to finish its shard of a data pass.
        backend: ``"gloo"`` or ``"nccl"`` (default: NCCL when CUDA is available, else gloo).
        required: raise instead of returning False when the environment describes no job
            (for ``--distributed``).

    Returns:
        True when this process is one of several ranks.

    Raises:
        ValueError: ``required`` and the torchrun variables are missing, or a bad timeout.
    """
    global _timeout_s
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    missing = [name for name in _REQUIRED_ENV if name not in os.environ]
    if missing:
        if required:
            raise ValueError(
                f"--distributed needs the environment torchrun sets up; {', '.join(missing)} "
                "missing. Start the command with torchrun, e.g. "
                "'torchrun --nproc-per-node 2 -m ann2snn.cli eval ...'"
            )
        return False
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed support")
    timeout = _timeout_from_env() if timeout_s is None else float(timeout_s)
    if not timeout > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    _timeout_s = timeout
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Destroy the default process group if one is initialized (safe to call twice)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_group_rank, _group_size = rank, world_size  # shard()'s arguments shadow these names


# -- rank-0 output ---------------------------------------------------------------------------


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def main_only(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Optional[T]:
    """Call ``fn(*args, **kwargs)`` on rank 0 only (e.g. to write a file); None elsewhere."""
    return fn(*args, **kwargs) if is_main() else None


# -- collectives -----------------------------------------------------------------------------


def _comm_device() -> torch.device:
    return local_device()


def _collective(name: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except Exception as exc:  # gloo / NCCL raise on a dead peer or an expired timeout
        timeout = f"{_timeout_s:g} s" if _timeout_s is not None else "the process group's"
        raise DistributedError(
            f"rank {rank()} of {world_size()}: the collective {name} did not complete "
            f"({type(exc).__name__}: {_first_line(exc)}). Another rank has probably died or "
            f"stopped responding; collectives wait at most {timeout} "
            f"(set ${TIMEOUT_ENV} or the timeout of init_from_env to change it). "
            "Look at the other ranks' output for the cause."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def all_reduce_sum(values: Sequence[float], dtype: torch.dtype = torch.float64) -> List[Any]:
    """Sum ``values`` element-wise over all ranks (identity in one process).

    Args:
        values: numbers, the same count on every rank.
        dtype: ``torch.int64`` for counts (exact), ``torch.float64`` for sums.

    Returns:
        The summed values as Python numbers.
    """
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=dtype, device=_comm_device())
    _collective("all_reduce(sum)", torch.distributed.all_reduce, t)
    return t.cpu().tolist()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``t`` over all ranks (a new tensor on ``t``'s device)."""
    if not is_distributed():
        return t.clone()
    work = t.detach().to(_comm_device(), copy=True)
    _collective(
        "all_reduce(max)", torch.distributed.all_reduce, work, torch.distributed.ReduceOp.MAX
    )
    return work.to(t.device)


def all_gather(t: torch.Tensor) -> List[torch.Tensor]:
    work = t.detach().to(_comm_device()).contiguous()
    out = [torch.empty_like(work) for _ in range(world_size())]
    _collective("all_gather", torch.distributed.all_gather, out, work)
    return [o.to(t.device) for o in out]


def _all_gather_objects(obj: Any) -> List[Any]:
    out: List[Any] = [None] * world_size()
    _collective("all_gather_object", torch.distributed.all_gather_object, out, obj)
    return out


def _broadcast_object(obj: Any) -> Any:
    box = [obj]
    _collective("broadcast_object_list", torch.distributed.broadcast_object_list, box, 0)
    return box[0]


def _describe(exc: BaseException) -> str:
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno}, in {last.name})"
    text = f"{type(exc).__name__}: {exc}{where}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


@contextlib.contextmanager
def failure_check(what: str) -> Iterator[None]:
    """Run a step that every rank runs; afterwards every rank learns whether it failed anywhere.

    A collective: every rank must enter it. In one process it does nothing. When the body
    raises on some ranks, every rank raises :class:`DistributedError` naming each failing
    rank and its message, so rank 0 reports the cause and no rank waits forever. When it
    raised the same error on every rank (a deterministic problem such as an unsupported
    layer), each rank re-raises its own error unchanged. A :class:`DistributedError` from
    the body (a nested check, or a broken connection) passes through without a collective.

    Args:
        what: the step, for the message (e.g. ``"calibration"``).

    Raises:
        DistributedError: when the body raised on some ranks.
    """
    if not is_distributed():
        yield
        return
    error: Optional[BaseException] = None
    try:
        yield
    except DistributedError:
        raise  # every rank already raised it, or the group is broken
    except Exception as exc:  # reported to every rank below, then re-raised as one error
        error = exc
    report = None if error is None else _describe(error)
    try:
        reports = _all_gather_objects(report)
    except DistributedError as comm:
        if error is not None:
            raise DistributedError(
                f"{what} failed on rank {rank()}: {report}; and the ranks could not agree "
                f"on stopping: {comm}"
            ) from error
        raise
    failed = [(r, m) for r, m in enumerate(reports) if m is not None]
    if error is not None and len(failed) == len(reports) and len(set(reports)) == 1:
        raise error  # the same failure on every rank: its own message says it all
    if failed:
        ranks = ", ".join(str(r) for r, _ in failed)
        details = "\n".join(f"  rank {r}: {m}" for r, m in failed)
        raise DistributedError(
            f"{what} failed on rank {ranks} of {world_size()}:\n{details}\n"
            "Every rank stopped. Fix the cause (often unreadable data in that rank's shard) "
            "and rerun."
        ) from error


# -- sharding --------------------------------------------------------------------------------


class _Strided:
    """Batches ``start, start + step, ...`` (before ``stop``) of a re-iterable ``data``."""

    def __init__(self, data: Iterable[Any], start: int, step: int, stop: Optional[int]):
        self.data, self.start, self.step, self.stop = data, start, step, stop

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.data), self.start, self.stop, self.step)

    def __len__(self) -> int:
        n = len(self.data)  # type: ignore[arg-type]  # TypeError: length unknown
        if self.stop is not None:
            n = min(n, self.stop)
        return len(range(self.start, n, self.step))


_LOADER_OPTIONS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def _loader_options(loader: DataLoader) -> dict:
    import inspect

    accepted = inspect.signature(DataLoader.__init__).parameters
    opts = {k: getattr(loader, k) for k in _LOADER_OPTIONS if k in accepted and hasattr(loader, k)}
    if loader.num_workers > 0 and "prefetch_factor" in accepted:
        opts["prefetch_factor"] = loader.prefetch_factor
    if loader.num_workers == 0:
        opts.pop("persistent_workers", None)
        opts.pop("multiprocessing_context", None)
    return opts


def _units(loader: DataLoader) -> List[Any]:
    """The loader's batches as index lists (or its sample indices without auto-batching)."""
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    inner = sampler.sampler if isinstance(sampler, BatchSampler) else sampler
    deterministic = type(inner) is SequentialSampler
    if deterministic or not is_distributed():
        return list(sampler)
    # A random sampler draws differently on each rank: rank 0 draws once for everyone.
    return _broadcast_object(list(sampler) if is_main() else None)


def shard(
    data: Any,
    max_batches: Optional[int] = None,
    *,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> Any:
    """This rank's part of ``data``: whole batches ``rank, rank + W, ...`` of its first
    ``max_batches``.

    Shards are never padded (sizes differ by at most one batch; a rank may get none), so
    together they hold every batch exactly once and each batch is the batch a single
    process would compute. A map-style ``DataLoader`` is rebuilt over the same dataset and
    options with only this rank's batches (only they are read); a random sampler is drawn
    once on rank 0 and broadcast. Other iterables (an ``IterableDataset`` loader, a
    generator) are read in full on each rank and every ``W``-th batch is kept. A tensor
    (one batch) is split along its first dimension; a map-style ``Dataset`` by sample.

    Args:
        data: a DataLoader, Dataset, list/iterable of batches or a tensor.
        max_batches: the global number of batches to use (None: all).
        rank: override this process's rank (for tests; default: the group's).
        world_size: override the number of ranks.

    Returns:
        An object of the same kind (a DataLoader stays a DataLoader; a one-shot iterator
        stays one-shot).

    Raises:
        ValueError: on a rank outside ``[0, world_size)``.
    """
    r = _group_rank() if rank is None else int(rank)
    w = _group_size() if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank must be in [0, world_size), got rank={r}, world_size={w}")
    if isinstance(data, torch.Tensor):
        part = torch.tensor_split(data, w)[r] if max_batches != 0 else data[:0]
        return [part] if part.shape[0] else []
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        units = _units(data)[:max_batches][r::w]
        opts = _loader_options(data)
        if data.batch_sampler is not None:
            return DataLoader(data.dataset, batch_sampler=units, **opts)
        return DataLoader(data.dataset, batch_size=None, sampler=units, **opts)
    if isinstance(data, (list, tuple)):
        return list(data[:max_batches][r::w])
    if isinstance(data, Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if max_batches is None else min(len(data), max_batches)
        return Subset(data, range(r, n, w))
    if not isinstance(data, DataLoader) and iter(data) is data:  # (iter() starts workers)
        return itertools.islice(data, r, max_batches, w)
    return _Strided(data, r, w, max_batches)
