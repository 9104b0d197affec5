"""Conversion and evaluation over 2 gloo processes equal the single-process results.

The multi-process tests start real ranks (``torch.multiprocessing`` spawn, one CPU thread
each) that join through :func:`ann2snn.distributed.init_from_env`, exactly as under
``torchrun``, and compare what they compute with the same calls in this process.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import time
import traceback

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import ann2snn
from ann2snn import distributed
from ann2snn.calibration import ActivationObserver, calibrate
from ann2snn.distributed import shard

WORLD = 2
MODEL = "fmnist_maxpool_cnn"
CALIB_N, CALIB_BATCH = 700, 64  # 11 batches, the last one partial: shards of 6 and 5
TEST_N, TEST_BATCH = 290, 60  # 5 batches, the last one partial: shards of 3 and 2
TIMESTEPS = (1, 4, 16, 32)
CASES = ("99.9%", "99%-channelwise", "max", "generator", "small-first", "tensor", "one-batch")


# -- helpers that run in every rank ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(fn, rank, world, port, out_dir, timeout_s, stacks_after_s, args):
    """One rank: join the group from torchrun-style variables, run ``fn``, save the outcome.

    If it is still running after ``stacks_after_s``, its Python stacks go to rankN.stacks.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    stacks = open(os.path.join(out_dir, f"rank{rank}.stacks"), "w")
    faulthandler.dump_traceback_later(stacks_after_s, file=stacks)
    try:
        assert distributed.init_from_env(timeout_s=timeout_s, backend="gloo")
        result = {"ok": fn(*args)}
    except BaseException as exc:
        result = {"error": type(exc).__name__, "message": str(exc), "tb": traceback.format_exc()}
    result["end_time"] = time.time()
    faulthandler.cancel_dump_traceback_later()
    torch.save(result, path)
    distributed.shutdown()


def _launch(fn, args, tmp_path, *, timeout_s=120.0, wait_s=600.0, wait_ranks=(0, 1)):
    """Start WORLD ranks running ``fn(*args)``; return {rank: outcome}.

    Ranks not in ``wait_ranks`` are killed once the others have finished.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    common = (port, str(tmp_path), timeout_s, wait_s - 10, args)
    procs = [ctx.Process(target=_rank_entry, args=(fn, r, WORLD) + common) for r in range(WORLD)]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        for r in wait_ranks:
            procs[r].join(max(1.0, wait_s - (time.monotonic() - start)))
        hung = [r for r in wait_ranks if procs[r].is_alive()]
        if hung:
            stacks = {r: (tmp_path / f"rank{r}.stacks").read_text()[-4000:] for r in hung}
            raise AssertionError(f"ranks {hung} still running after {wait_s} s: {stacks}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    outcomes = {}
    for r in range(WORLD):
        path = tmp_path / f"rank{r}.pt"
        if path.exists():
            outcomes[r] = torch.load(path, weights_only=False)
    return outcomes


def _ok(outcomes, rank):
    out = outcomes.get(rank)
    assert out is not None, f"rank {rank} saved no result"
    assert "ok" in out, f"rank {rank} failed: {out.get('tb')}"
    return out["ok"]


# -- the conversion / evaluation scenarios -------------------------------------------------------


def _model() -> nn.Module:
    from ann2snn.models import load_pretrained

    return load_pretrained(MODEL)


def _data():
    from ann2snn.data.datasets import load_dataset

    train = load_dataset("fashion-mnist", "train", limit=CALIB_N)
    test = load_dataset("fashion-mnist", "test", limit=TEST_N)
    return train, test


def _calib(case, train):
    """Calibration data for a case, built identically on every rank."""
    loader = DataLoader(train, batch_size=CALIB_BATCH)
    images = train.tensors[0]
    if case == "generator":  # no length: a counting pass, then an exact second pass
        return (x for x, _ in loader), {}
    if case == "small-first":  # rank 1's first batch is small: its bound is too low
        return [images[:64], images[64:74], images[74:200]], {}
    if case == "tensor":  # one batch, split by rows
        return images[:300], {}
    if case == "one-batch":  # rank 1 gets no batch at all
        return [images[:64]], {}
    if case == "99%-channelwise":
        return loader, {"mode": "99%", "channelwise": True}
    return loader, {"mode": case}


def _growing_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.relu(torch.randn(5 + 3 * i, 4, 6, 6, generator=g)) for i in range(9)]


def _observe(channel_axis):
    """A bare observer calibrated on batches that grow: every rank's first-batch bound is
    too low, so the exact second pass runs."""
    obs = nn.Sequential(ActivationObserver(quantile=0.99, channel_axis=channel_axis))
    calibrate(obs, _growing_batches())
    return obs[0].statistic(), obs[0].max_value, obs[0].count


def _thresholds(snn):
    return {name: (n.threshold.clone(), n.scale.clone()) for name, n in snn.neurons()}


def _convert_all():
    """Every case's thresholds, and the accuracy curve of the first case."""
    model = _model()
    train, test = _data()
    results = {f"observer-{axis}": _observe(axis) for axis in (None, 1)}
    for case in CASES:
        data, kwargs = _calib(case, train)
        kwargs.setdefault("mode", "99.9%")
        snn = ann2snn.convert(model, calib_data=data, **kwargs)
        results[case] = _thresholds(snn)
        if case == "99.9%":
            curve = ann2snn.evaluate(
                snn, DataLoader(test, batch_size=TEST_BATCH), timesteps=TIMESTEPS
            )
            results["curve"] = curve.to_dict()
    # evaluate() converting an ANN itself, with max_batches on both passes.
    curve = ann2snn.evaluate(
        model,
        DataLoader(test, batch_size=TEST_BATCH),
        timesteps=(8, 16),
        max_batches=3,
        calib_batches=3,
        mode="99.9%",
    )
    results["curve_from_ann"] = curve.to_dict()
    return results


def _assert_same_thresholds(got, expected, case):
    assert got.keys() == expected.keys(), case
    for name in expected:
        for a, b in zip(got[name], expected[name]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=f"{case}: {name}")


def _assert_same_curve(got, expected):
    assert got["samples"] == expected["samples"]
    # Identical correct counts (percent = 100 * count / samples, from the same integers).
    counts = {t: round(a * got["samples"] / 100) for t, a in got["accuracy"].items()}
    ref = {t: round(a * expected["samples"] / 100) for t, a in expected["accuracy"].items()}
    assert counts == ref
    assert got["accuracy"] == expected["accuracy"]
    assert got["ann_accuracy"] == expected["ann_accuracy"]
    for t, e in expected["output_error"].items():
        assert got["output_error"][t] == pytest.approx(e, rel=1e-9)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks use one thread each; keep the arithmetic identical
    try:
        expected = _convert_all()
    finally:
        torch.set_num_threads(threads)
    outcomes = _launch(_convert_all, (), tmp_path)
    for rank in range(WORLD):
        got = _ok(outcomes, rank)
        for case in CASES:
            _assert_same_thresholds(got[case], expected[case], case)
        _assert_same_curve(got["curve"], expected["curve"])
        _assert_same_curve(got["curve_from_ann"], expected["curve_from_ann"])
        for axis in (None, 1):
            stat, maximum, count = got[f"observer-{axis}"]
            assert count == expected[f"observer-{axis}"][2]
            assert torch.equal(maximum, expected[f"observer-{axis}"][1])
            torch.testing.assert_close(stat, expected[f"observer-{axis}"][0], rtol=1e-6, atol=0)
    assert expected["curve"]["samples"] == TEST_N
    assert expected["curve_from_ann"]["samples"] == 3 * TEST_BATCH
    # The single-process reference itself is numpy's percentile.
    values = torch.cat([b.transpose(0, 1).reshape(4, -1) for b in _growing_batches()], dim=1)
    per_channel = np.percentile(values.double().numpy(), 99, axis=1)
    np.testing.assert_allclose(expected["observer-1"][0].numpy(), per_channel, rtol=1e-6)
    layer = np.percentile(values.double().numpy().reshape(-1), 99)
    assert float(expected["observer-None"][0]) == pytest.approx(layer, rel=1e-6)


# -- failures end the job with a clear error -----------------------------------------------------


def _png_folder(root, corrupt):
    """2 classes x 4 tiny PNGs; ``corrupt`` names files overwritten with garbage."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        os.makedirs(root / cls, exist_ok=True)
        for i in range(4):
            pixels = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{cls}{i}.png")
    for name in corrupt:
        (root / name[0] / name).write_bytes(b"this is not an image")


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).eval()


def _convert_then_evaluate(folders):
    from ann2snn.data.imagefolder import image_folder_loader

    # Each rank reads its own copy of the images (as on two machines); rank 1's copy of
    # b3.png is unreadable. Batches [a0 a1] [a2 a3] [b0 b1] [b2 b3]: rank 1 evaluates 1 and 3.
    loader = image_folder_loader(folders[distributed.rank()], batch_size=2, image_size=8, resize=8)
    errors = {}
    try:
        ann2snn.convert(_tiny_net(), calib_data=loader)
    except RuntimeError as exc:  # a DistributedError, possibly wrapped naming the pass
        errors["convert"] = str(exc)
    # Calibrating on batches 0-1 works; evaluation then reaches the bad file on rank 1.
    snn = ann2snn.convert(_tiny_net(), calib_data=loader, calib_batches=2)
    try:
        ann2snn.evaluate(snn, loader, timesteps=(2,))
    except distributed.DistributedError as exc:
        errors["evaluate"] = str(exc)
    # The same problem on every rank keeps its own error type and message.
    try:
        ann2snn.convert(nn.Sequential(nn.Flatten(), nn.Sigmoid()), calib_data=loader)
    except Exception as exc:
        errors["unsupported"] = (type(exc).__name__, str(exc))
    return errors


def test_unreadable_image_on_one_rank_fails_on_every_rank(tmp_path):
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    _png_folder(folders[0], corrupt=[])
    _png_folder(folders[1], corrupt=["b3.png"])
    outcomes = _launch(_convert_then_evaluate, ([str(f) for f in folders],), tmp_path)
    for rank in range(WORLD):
        errors = _ok(outcomes, rank)
        for what in ("convert", "evaluate"):
            assert what in errors, f"rank {rank}: {what} did not fail"
            message = errors[what]
            assert "failed on rank 1 of 2" in message and "rank 0:" not in message
            assert "b3.png" in message and "UnidentifiedImageError" in message
        assert "evaluation failed" in errors["evaluate"]
        kind, message = errors["unsupported"]
        assert kind == "ConversionError" and "Sigmoid" in message and "rank" not in message


class _DiesOnRank1(Dataset):
    """Samples of a tensor; reading sample 7 on rank 1 kills the process (or hangs it),
    after writing the time to ``stamp``."""

    def __init__(self, hang: bool, stamp: str):
        self.x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.hang, self.stamp = hang, stamp

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 7 and distributed.rank() == 1:
            with open(self.stamp, "w") as f:
                f.write(repr(time.time()))
            if self.hang:
                time.sleep(600)
            os._exit(3)
        return self.x[i], i % 2


def _evaluate_dying(hang, stamp):
    data = _DiesOnRank1(hang, stamp)
    snn = ann2snn.convert(_tiny_net(), calib_data=DataLoader(Subset(data, range(4)), batch_size=2))
    ann2snn.evaluate(snn, DataLoader(data, batch_size=2), timesteps=(2,))
    return "finished"


@pytest.mark.parametrize("hang", [False, True], ids=["dies", "hangs"])
def test_dead_or_stuck_rank_ends_the_job_with_an_error_on_rank_0(tmp_path, hang):
    timeout_s = 45.0  # long enough for uneven progress on a loaded machine
    stamp = tmp_path / "rank1_failed_at"
    outcomes = _launch(
        _evaluate_dying, (hang, str(stamp)), tmp_path, timeout_s=timeout_s, wait_ranks=(0,)
    )
    assert 1 not in outcomes  # rank 1 died or was killed while stuck
    out = outcomes[0]
    assert out.get("error") == "DistributedError", out.get("tb")
    assert "rank 0 of 2" in out["message"] and "did not complete" in out["message"]
    assert "probably died" in out["message"]
    # Rank 0 gave up soon after rank 1 failed (a crash is seen at once, a hang at the timeout).
    waited = out["end_time"] - float(stamp.read_text())
    assert 0 < waited < timeout_s + 60


# -- sharding (no process group) -----------------------------------------------------------------


def _batch_ids(data):
    return [
        tuple(b[1].tolist()) if isinstance(b, (list, tuple)) else tuple(b.tolist()) for b in data
    ]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_of_a_loader_partitions_whole_batches_without_padding(world):
    ds = TensorDataset(torch.zeros(23, 1), torch.arange(23))
    loader = DataLoader(ds, batch_size=4)
    everything = _batch_ids(loader)
    parts = [shard(loader, rank=r, world_size=world) for r in range(world)]
    assert all(isinstance(p, DataLoader) for p in parts)
    got = [_batch_ids(p) for p in parts]
    assert sorted(b for part in got for b in part) == sorted(everything)
    for r, part in enumerate(got):
        assert part == everything[r::world]  # same batches, same composition
        assert len(parts[r]) == len(part)


def test_shard_applies_max_batches_globally_and_may_leave_a_rank_empty():
    loader = DataLoader(TensorDataset(torch.zeros(10, 1), torch.arange(10)), batch_size=4)
    assert _batch_ids(shard(loader, 1, rank=0, world_size=2)) == [(0, 1, 2, 3)]
    assert _batch_ids(shard(loader, 1, rank=1, world_size=2)) == []
    assert shard([torch.ones(2)], rank=1, world_size=2) == []
    assert shard(torch.ones(1, 3), rank=1, world_size=2) == []


def test_shard_of_a_shuffled_loader_still_partitions_the_samples():
    loader = DataLoader(
        TensorDataset(torch.zeros(20, 1), torch.arange(20)), batch_size=3, shuffle=True
    )
    torch.manual_seed(0)
    a = _batch_ids(shard(loader, rank=0, world_size=2))
    torch.manual_seed(0)
    b = _batch_ids(shard(loader, rank=1, world_size=2))
    assert sorted(i for batch in a + b for i in batch) == list(range(20))


def test_shard_of_iterables_keeps_their_kind():
    gen = (torch.full((1,), i) for i in range(7))
    part = shard(gen, rank=1, world_size=3)
    assert iter(part) is part  # still one-shot: calibrate() buffers it for a second pass
    assert [int(x) for x in part] == [1, 4]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.arange(9).reshape(9, 1))

    part = shard(DataLoader(Stream(), batch_size=2), 3, rank=0, world_size=2)
    assert [b.tolist() for b in part] == [[[0], [1]], [[4], [5]]]
    assert [b.tolist() for b in part] == [[[0], [1]], [[4], [5]]]  # re-iterable

    assert shard((1, 2, 3, 4, 5), rank=0, world_size=2) == [1, 3, 5]
    ds = TensorDataset(torch.arange(5))
    assert [int(s[0]) for s in shard(ds, rank=1, world_size=2)] == [1, 3]
    rows = shard(torch.arange(5).reshape(5, 1), rank=0, world_size=2)
    assert [t.reshape(-1).tolist() for t in rows] == [[0, 1, 2]]


def test_shard_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank must be in"):
        shard([1, 2], rank=2, world_size=2)


# -- single process: everything is a no-op --------------------------------------------------------


def test_single_process_helpers_do_nothing(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env() is False
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_sum([1, 2], dtype=torch.int64) == [1, 2]
    distributed.print0("hello")
    assert capsys.readouterr().out == "hello\n"
    assert distributed.main_only(lambda: 7) == 7
    with pytest.raises(KeyError):
        with distributed.failure_check("anything"):
            raise KeyError("unchanged in one process")
    with pytest.raises(ValueError, match="torchrun --nproc-per-node"):
        distributed.init_from_env(required=True)


def test_bad_timeout_is_rejected(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    for name, value in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="x", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="positive number of seconds"):
        distributed.init_from_env()
