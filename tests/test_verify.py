"""verify: a real store (digits-cnn, 300 rows in 5 blocks of 64) damaged in known ways."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zarr

import actextract
from actextract.check.verification import count_chunks, format_verify, verify
from actextract.errors import OptionError, StoreError
from actextract.store import open_store

N, ROWS, BLOCKS = 300, 64, 5


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "r.zarr"
    actextract.extract(
        "digits-cnn",
        "digits",
        layers="conv1,fc1",
        out=out,
        limit=N,
        chunk_rows=ROWS,
        batch_size=32,
        progress=False,
    )
    return out


@pytest.fixture
def run(sealed, tmp_path) -> Path:
    """A fresh copy of the sealed store, to damage."""
    return Path(shutil.copytree(sealed, tmp_path / "r.zarr"))


def chunk_file(run: Path, array: str, block: int) -> Path:
    arr = zarr.open_array(run / array, mode="r")
    return run / array / arr.metadata.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def check(run: Path, **kw):
    return verify(open_store(run, mode="r+" if kw.get("repair") else "r"), **kw)


def test_sealed_store_is_complete(run):
    store = open_store(run)
    ticks = []
    report = verify(store, progress=ticks.append)
    assert (report.state, report.ok, report.problems) == ("complete", True, [])
    assert (report.blocks_done, report.n_blocks, report.status) == (BLOCKS, BLOCKS, "complete")
    # done + conv1 + fc1 + labels + ids + progress/skipped + progress/nonfinite, 5 chunks each
    assert sum(ticks) == count_chunks(store) == report.chunks == 7 * BLOCKS
    assert report.unchecked == []
    assert format_verify(report).endswith("complete: 5/5 blocks done, every chunk reads back.")


def test_flipped_byte_is_undecodable(run):
    flip_byte(chunk_file(run, "acts/conv1", 1))
    report = check(run)
    assert (report.state, report.ok) == ("damaged", False)
    [p] = report.problems
    assert (p.kind, p.array, p.rows, p.blocks) == ("undecodable", "conv1", (64, 128), (1, 2))
    assert "checksum" in p.detail
    text = format_verify(report)
    assert "DAMAGED" in text and "conv1: rows 64-127 (block 1): undecodable" in text


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_chunk_is_undecodable(run, keep):
    path = chunk_file(run, "acts/fc1", 4)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    [p] = check(run).problems
    assert (p.kind, p.array, p.rows) == ("undecodable", "fc1", (256, 300))


def test_deleted_chunk_of_done_block_is_missing(run):
    # zarr reads it as the fill value (NaN) without a word: only the key check catches it
    chunk_file(run, "acts/fc1", 2).unlink()
    report = check(run)
    [p] = report.problems
    assert (report.state, p.kind, p.array, p.rows) == ("damaged", "missing", "fc1", (128, 192))
    assert "acts/fc1/c/2/0" in p.detail


def test_contiguous_damage_is_one_range(run):
    for b in (1, 2, 3):
        flip_byte(chunk_file(run, "acts/conv1", b))
    [p] = check(run).problems
    assert (p.array, p.rows, p.blocks) == ("conv1", (64, 256), (1, 4))
    assert "rows 64-255 (blocks 1-3)" in format_verify(check(run))


@pytest.mark.parametrize("array", ["labels", "ids", "progress/skipped", "progress/nonfinite"])
def test_damaged_labels_ids_and_records(run, array):
    flip_byte(chunk_file(run, array, 0))
    [p] = check(run).problems
    assert (p.kind, p.array, p.rows) == ("undecodable", array, (0, 64))


def test_damaged_done_record(run):
    flip_byte(chunk_file(run, "progress/done", 3))
    report = check(run)
    [p] = report.problems
    assert (report.state, report.blocks_done) == ("damaged", 4)
    assert (p.kind, p.array, p.blocks) == ("undecodable", "progress/done", (3, 4))


def test_blocks_not_done_are_incomplete(run):
    done = zarr.open_array(run / "progress/done", mode="r+")
    done[3:5] = 0
    flip_byte(chunk_file(run, "acts/conv1", 4))  # not done: not read, resume rewrites it
    store = open_store(run)
    ticks = []
    report = verify(store, progress=ticks.append, workers=1)
    assert (report.state, report.blocks_done, sum(ticks)) == ("incomplete", 3, count_chunks(store))
    [p] = report.problems
    assert (p.kind, p.array, p.rows, p.blocks) == ("not-done", "*", (192, 300), (3, 5))
    assert "all arrays: rows 192-299 (blocks 3-4): not written yet" in format_verify(report)


def test_all_done_but_unsealed(run):
    zarr.open_group(run, mode="r+").attrs["status"] = "incomplete"
    report = check(run)
    assert (report.state, report.ok, report.problems) == ("complete-but-unsealed", False, [])
    assert "--resume` seals it" in format_verify(report)


def test_unknown_arrays_are_ignored(run):
    group = zarr.open_group(run, mode="r+")
    group.create_array("notes", shape=(3,), dtype="int8")
    group.create_array("progress/other", shape=(BLOCKS + 1,), dtype="int8")
    store = open_store(run)
    assert verify(store).ok and count_chunks(store) == 7 * BLOCKS


def test_repair_marks_damaged_blocks_not_done(run):
    flip_byte(chunk_file(run, "acts/conv1", 1))
    chunk_file(run, "labels", 3).unlink()
    flip_byte(chunk_file(run, "progress/done", 4))
    with pytest.raises(StoreError, match="read-only"):
        verify(open_store(run), repair=True)
    report = check(run, repair=True)
    assert (report.state, report.reset_blocks) == ("damaged", [1, 3, 4])
    assert "3 damaged blocks marked not done" in format_verify(report)
    after = check(run)  # a resume would now redo exactly those blocks
    assert (after.state, after.status, after.blocks_done) == ("incomplete", "incomplete", 2)
    assert [(p.kind, p.blocks) for p in after.problems] == [
        ("not-done", (1, 2)),
        ("not-done", (3, 5)),
    ]


def test_workers_must_be_positive(run):
    with pytest.raises(OptionError, match="workers=0"):
        check(run, workers=0)


def test_fsspec_store(run):
    """The store API, not file paths: a copy in fsspec's in-memory filesystem."""
    fsspec = pytest.importorskip("fsspec")
    fs, root = fsspec.filesystem("memory"), f"/verify-{run.parent.name}/r.zarr"
    for path in run.rglob("*"):
        if path.is_file():
            fs.pipe(f"{root}/{path.relative_to(run).as_posix()}", path.read_bytes())
    try:
        fs.rm(f"{root}/ids/c/4/0")  # (rows, id bytes): chunk (4, 0)
        report = verify(open_store(f"memory://{root}"))
        [p] = report.problems
        assert (p.kind, p.array, p.rows) == ("missing", "ids", (256, 300))
    finally:
        fs.rm(root.rsplit("/", 1)[0], recursive=True)


def test_the_command_exits_0_only_for_a_complete_store_and_repairs(run, runner):
    from actextract.cli.commands import main

    ok = runner.invoke(main, ["verify", str(run)])
    assert ok.exit_code == 0 and "complete" in ok.output, ok.output
    flip_byte(chunk_file(run, "acts/conv1", 2))
    bad = runner.invoke(main, ["verify", str(run)])
    assert bad.exit_code == 1 and "conv1" in bad.output and "128-191" in bad.output, bad.output
    assert open_store(run).done()[2]  # without --repair nothing is written
    fixed = runner.invoke(main, ["verify", str(run), "--repair"])
    assert fixed.exit_code == 1 and not open_store(run).done()[2], fixed.output
    again = runner.invoke(main, ["verify", str(run)])
    assert again.exit_code == 1 and "--resume" in again.output, again.output


def test_the_command_names_a_path_that_is_not_a_store(tmp_path, runner):
    from actextract.cli.commands import main

    out = runner.invoke(main, ["verify", str(tmp_path / "nothing.zarr")])
    assert out.exit_code == 2 and "not a Zarr store" in out.output


def test_a_damaged_clustering_result_is_found_and_deleted_by_repair(run):
    good = actextract.cluster(run, "fc1", 3, device="cpu", epochs=1)
    bad = actextract.cluster(run, "fc1", 4, device="cpu", epochs=1)
    assert check(run).ok  # the results' chunks are read back too
    flip_byte(chunk_file(run, f"clusters/fc1/{bad.name}/assignments", 0))
    report = check(run)
    assert report.state == "damaged" and not report.problems
    assert report.cluster_problems[0][0] == f"clusters/fc1/{bad.name}/assignments"
    text = format_verify(report)
    assert "damaged clustering result" in text and "--repair` deletes" in text
    assert "marks them not done" not in text  # no row block is damaged
    repaired = check(run, repair=True)
    assert repaired.clusters_dropped == [f"clusters/fc1/{bad.name}"]
    after = check(run)
    assert after.ok and open_store(run).status == "complete"
    from actextract.clusters.results import clusterings

    assert [c.name for c in clusterings(open_store(run))] == [good.name]


def test_verify_lists_each_array_once_instead_of_asking_for_every_chunk(run, monkeypatch):
    """On an object store a request per chunk is a round trip each: verify lists the keys of
    each array once and finds a missing chunk in the listing."""
    chunk_file(run, "acts/fc1", 1).unlink()
    asked = []
    original = zarr.storage.LocalStore.exists

    async def exists(self, key):
        asked.append(key)
        return await original(self, key)

    monkeypatch.setattr(zarr.storage.LocalStore, "exists", exists)
    report = verify(open_store(run))
    assert [p.array for p in report.problems if p.kind == "missing"] == ["fc1"]
    assert not [k for k in asked if "/c/" in k]  # no chunk asked for on its own
