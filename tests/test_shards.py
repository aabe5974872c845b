"""Many writers, one store: --shard processes and torchrun ranks split the row blocks without
overlap or padding, and together write what one process writes."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from _runner import ARGS, ENV, N_BLOCKS, run, same_store

import actextract
from actextract.check.verification import verify
from actextract.extraction.work import Shard, Work


# -- the split ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "batch", "rows"), [(640, 32, 64), (641, 32, 64), (100, 8, 12), (50, 6, 4), (7, 8, 16)]
)
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_cover_every_block_once_with_the_full_runs_batches(n, batch, rows, count):
    work = Work(n, batch, rows)
    parts = [work.blocks(Shard(i, count)) for i in range(count)]
    flat = [b for part in parts for b in part]
    assert sorted(flat) == list(range(work.n_blocks)) and len(flat) == len(set(flat))
    full = [range(s, min(n, s + batch)) for s in range(0, n, batch)]  # one process, no resume
    for part in parts:
        batches = work.batches(part)
        assert all(b in full for b in batches)  # the same batches: the same kernels, same bits
        covered = {r for b in batches for r in b}
        assert all(
            r in covered for blk in part for r in range(blk * rows, min(n, (blk + 1) * rows))
        )
        assert all(len(b) == batch for b in batches[:-1])  # full but the dataset's last
    # shards are contiguous ranges of whole units (an lcm of batch and chunk rows)
    for part in parts:
        assert part == list(range(part[0], part[-1] + 1)) if part else True


def test_batches_of_scattered_blocks_are_not_repeated():
    work = Work(100, 8, 12)  # batches straddle blocks
    batches = work.batches([0, 1, 5])
    assert len(batches) == len(set(b.start for b in batches))
    assert [b.start for b in batches] == sorted(b.start for b in batches)


# -- processes ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_shard_processes_fill_one_store_like_one_process(tmp_path, reference):
    out = tmp_path / "run.zarr"
    first, second = 1, 0  # the last shard seals the store, whichever it is
    done = run(*ARGS, "--out", str(out), "--shard", f"{first}/2")
    assert done.returncode == 0, done.stderr
    store = actextract.open_store(out)
    # the first shard finishes alone: its half is done, the store is not sealed
    mine = Work(640, 32, 64).blocks(Shard(first, 2))
    assert store.done().nonzero()[0].tolist() == mine and store.status == "incomplete"
    done = run(*ARGS, "--out", str(out), "--shard", f"{second}/2")
    assert done.returncode == 0, done.stderr
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok  # the last shard to finish seals it
    same_store(store, reference)


@pytest.mark.slow
def test_a_lost_shards_blocks_are_picked_up_by_resume(tmp_path, reference):
    out = tmp_path / "run.zarr"
    assert run(*ARGS, "--out", str(out), "--shard", "1/3").returncode == 0
    assert run(*ARGS, "--out", str(out), "--resume").returncode == 0
    store = actextract.open_store(out)
    assert store.complete
    same_store(store, reference)


def _torchrun(out, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "actextract", *ARGS, "--out", str(out)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_ranks_write_one_store_like_one_process(tmp_path, reference):
    out = tmp_path / "run.zarr"
    done = _torchrun(out)
    assert done.returncode == 0, done.stderr[-3000:]
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok
    summary = store.attrs["summary"]
    assert summary["processes"] == 2 and summary["images"] == 640
    same_store(store, reference)


@pytest.mark.slow
def test_torchrun_rank_errors_reach_every_rank(tmp_path):
    """Rank 0 refuses an existing store; rank 1 stops with the same message, not a hang."""
    out = tmp_path / "run.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("not a store")
    done = _torchrun(out)
    assert done.returncode != 0
    assert done.stderr.count("already exists") >= 2, done.stderr[-3000:]
    assert (out / "keep.txt").read_text() == "not a store"


def test_every_block_once_over_all_orders():
    """Shards finishing in any order: the union of their blocks is every block, once."""
    work = Work(640, 32, 64)
    for order in itertools.permutations(range(3)):
        seen = [b for i in order for b in work.blocks(Shard(i, 3))]
        assert sorted(seen) == list(range(N_BLOCKS))


# -- --shard parsing ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shard", "match"),
    [
        ("2/2", r"--shard 2/2: the shard index counts from 0 and must be below"),
        ("x", r"--shard 'x' is not of the form INDEX/COUNT, e\.g\. 0/4"),
        ("1/0", r"--shard 1/0: the number of shards must be at least 1"),
        ("-1/2", r"--shard -1/2: the shard index counts from 0"),
        ("1/2/3", r"--shard '1/2/3' is not of the form INDEX/COUNT"),
    ],
)
def test_bad_shards_are_refused(tmp_path, shard, match):
    with pytest.raises(actextract.OptionError, match=match):
        actextract.extract(
            "digits-cnn", "digits", layers="fc1", out=tmp_path / "x.zarr", shard=shard
        )
    assert list(tmp_path.iterdir()) == []


def test_a_shard_with_overwrite_is_refused(tmp_path):
    with pytest.raises(actextract.OptionError, match="each shard would delete the others' work"):
        actextract.extract(
            "digits-cnn",
            "digits",
            layers="fc1",
            out=tmp_path / "x.zarr",
            shard="0/2",
            overwrite=True,
        )
    assert list(tmp_path.iterdir()) == []
