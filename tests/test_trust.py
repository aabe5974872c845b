"""A damaged store is never shown as complete, every repair verify advises works, and a store
has one writer at a time (issue 16): each kind of damage is made on a copy of a sealed store,
then info, render, resume and verify are asked, and the advised repair is followed to a store
identical to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from _runner import ARGS, ENV, SMALL, same_store, start, wait_for_done_blocks
from _runner import run as run_cli

import actextract
from actextract.check.verification import format_verify, verify
from actextract.cli.commands import main
from actextract.errors import StoreError
from actextract.store import lock, open_store
from actextract.store.location import Location

STATS = "conv1=class-mean,channel-hist"


@pytest.fixture
def run(small_reference, tmp_path) -> Path:
    """A copy of the sealed SMALL store (320 digits, 5 blocks of 64 rows), to damage."""
    return Path(shutil.copytree(small_reference.path, tmp_path / "r.zarr"))


def chunk(store: Path, array: str, block: int) -> Path:
    arr = zarr.open_array(store / array, mode="r")
    return store / array / arr.metadata.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def cli(runner, *args: str):
    result = runner.invoke(main, list(args))
    # a user error or a verdict, never a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def refused_everywhere(runner, out: Path, tmp_path: Path, *expect: str) -> None:
    """info says DAMAGED and exits 2; render and a resume refuse, pointing at verify."""
    info = cli(runner, "info", str(out))
    assert info.exit_code == 2 and "DAMAGED" in info.output and "verify" in info.output
    for text in expect:
        assert text in info.output, info.output
    render = cli(runner, "render", str(out), "--out", str(tmp_path / "report"))
    assert render.exit_code == 2 and "DAMAGED" in render.output, render.output
    assert "actextract verify" in render.output
    with pytest.raises(StoreError, match=r"DAMAGED.*would seal the store"):
        actextract.extract(**SMALL, out=out, resume=True)


def repair_and_resume(runner, out: Path, reference, settings=SMALL) -> str:
    """verify --repair, then the same run with --resume: the store is the reference's."""
    repaired = cli(runner, "verify", str(out), "--repair")
    assert repaired.exit_code in (0, 1), repaired.output
    resumed = actextract.extract(**settings, out=out, resume=True)
    assert resumed.complete and verify(resumed).ok
    same_store(resumed, reference)
    return repaired.output


# -- missing metadata ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gone",
    [
        "acts/conv1/zarr.json",
        "labels/zarr.json",
        "ids/zarr.json",
        "progress/done/zarr.json",
        "progress/skipped/zarr.json",
        "progress/zarr.json",
        "acts/zarr.json",
        "acts/conv1",  # the whole layer, chunks and all
    ],
)
def test_a_missing_metadata_file_is_damage_that_repair_and_resume_mend(
    run, gone, runner, tmp_path, small_reference
):
    path = run / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    node = gone.removesuffix("/zarr.json")
    report = verify(open_store(run))
    assert report.state == "damaged" and [m.path for m in report.metadata] == [node]
    text = cli(runner, "verify", str(run))
    assert text.exit_code == 1 and f"{node}: metadata file (zarr.json) missing" in text.output
    assert "--repair` rewrites these metadata files" in text.output
    refused_everywhere(runner, run, tmp_path, node)

    output = repair_and_resume(runner, run, small_reference)
    assert f"rewrote the metadata of {node}" in output
    if gone == "acts/conv1":  # its chunks went with it: the blocks are done again
        assert "5 damaged blocks marked not done" in output
    else:  # the chunks were there all along: nothing to compute
        assert "complete: 5/5 blocks done" in output


def test_restored_metadata_is_what_creation_wrote(run, small_reference):
    before = files(run)
    for name in ("acts/conv1/zarr.json", "labels/zarr.json", "progress/zarr.json"):
        (run / name).unlink()
    verify(open_store(run, mode="r+"), repair=True)
    assert files(run) == before


# -- missing and damaged chunks -----------------------------------------------------------------
def test_a_missing_chunk_makes_info_and_render_refuse_and_allow_damaged_draws_the_rest(
    run, runner, tmp_path, small_reference
):
    chunk(run, "acts/conv1", 2).unlink()
    refused_everywhere(runner, run, tmp_path, "conv1: rows 128-191")
    with pytest.raises(StoreError, match=r"DAMAGED.*rows that are not there"):
        actextract.cluster(run, "conv1", 3, device="cpu", epochs=1)
    drawn = cli(runner, "render", str(run), "--out", str(tmp_path / "rest"), "--allow-damaged")
    assert drawn.exit_code == 0, drawn.output
    page = (tmp_path / "rest" / "index.html").read_text()
    assert "DAMAGED" in page and "rows 128-191" in page
    manifest = json.loads((tmp_path / "rest" / "report.json").read_text())
    assert any("rows 128-191" in line for line in manifest["notes"][""])
    output = repair_and_resume(runner, run, small_reference)
    assert "1 damaged blocks marked not done" in output


def test_a_checksum_failure_in_labels_points_at_verify(run, runner, tmp_path, small_reference):
    flip(chunk(run, "labels", 1))
    refused_everywhere(runner, run, tmp_path, "labels: rows 64-127", "checksum")
    repair_and_resume(runner, run, small_reference)


def test_a_checksum_failure_in_a_layer_stops_render_and_allow_damaged_skips_the_layer(
    run, runner, tmp_path, small_reference
):
    flip(chunk(run, "acts/conv1", 0))  # info does not read conv1's chunks: verify does
    render = cli(runner, "render", str(run), "--out", str(tmp_path / "a"))
    assert render.exit_code == 2 and "does not read back" in render.output
    assert "actextract verify" in render.output and "Traceback" not in render.output
    drawn = cli(runner, "render", str(run), "--out", str(tmp_path / "b"), "--allow-damaged")
    assert drawn.exit_code == 0 and "conv1: DAMAGED" in drawn.output, drawn.output
    repair_and_resume(runner, run, small_reference)


# -- root attributes and array metadata that disagree -------------------------------------------
@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda a: a.update(n_samples=160), "disagree with every array's rows"),
        (lambda a: a.update(chunk_rows=32), "disagree with every array's rows"),
        (lambda a: a["layers"][0].update(shape=[32, 13, 52]), "does not follow from its output"),
        (lambda a: a["layers"][0].update(name="conv9"), "layer conv9 names the array acts/conv1"),
        (lambda a: a["row_arrays"].pop(0), "are not the layers"),
    ],
)
def test_edited_root_attributes_are_damage_that_is_not_repairable(run, runner, edit, what):
    edit_json(run / "zarr.json", lambda doc: edit(doc["attributes"]))
    before = files(run)
    text = cli(runner, "verify", str(run))
    assert text.exit_code == 1 and "DAMAGED" in text.output and what in text.output, text.output
    assert "cannot be repaired" in text.output and "--overwrite" in text.output
    assert "--repair" not in text.output  # never advised where it cannot work
    again = cli(runner, "verify", str(run), "--repair")
    assert again.exit_code == 1 and "cannot be repaired" in again.output
    assert files(run) == before  # nothing was touched
    info = cli(runner, "info", str(run))
    assert info.exit_code == 2 and "DAMAGED" in info.output
    render = cli(runner, "render", str(run), "--out", str(run.parent / "report"))
    assert render.exit_code == 2 and "root attributes cannot be repaired" in render.output
    assert "--repair" not in render.output


def test_an_edited_array_shape_is_rewritten_from_the_root_attributes(
    run, runner, tmp_path, small_reference
):
    edit_json(run / "acts/conv1/zarr.json", lambda doc: doc.update(shape=[320, 32, 13, 52]))
    text = cli(runner, "verify", str(run))
    assert text.exit_code == 1 and "metadata disagrees with the root attributes" in text.output
    assert "shape [320, 32, 13, 52] (expected [320, 32, 26, 26])" in text.output
    refused_everywhere(runner, run, tmp_path, "acts/conv1")
    repair_and_resume(runner, run, small_reference)


def test_a_whole_store_verifies_as_before(run):
    report = verify(open_store(run))
    assert report.ok and report.metadata == [] and format_verify(report).endswith("reads back.")


# -- one writer at a time -----------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first_and_its_files_stay(run, small_reference):
    zarr.open_array(run / "progress/done", mode="r+")[3:] = 0  # a run still writing 3 and 4
    zarr.open_group(run, mode="r+").attrs["status"] = "incomplete"
    partial = chunk(run, "acts/conv1", 3).with_suffix(".1234abcd.partial")
    partial.write_bytes(b"a chunk being written")
    with lock.acquire(Location.parse(run), "a test's writer"):
        for kwargs in (dict(resume=True), dict(overwrite=True), dict(shard="0/2")):
            with pytest.raises(StoreError, match=f"being written by process {os.getpid()} on"):
                actextract.extract(**SMALL, out=run, **kwargs)
        with pytest.raises(StoreError, match="a test's writer"):
            verify(open_store(run, mode="r+"), repair=True)
        assert verify(open_store(run)).state == "incomplete"  # reading is never refused
        assert partial.exists()  # a live writer's chunk write is left alone
    resumed = actextract.extract(**SMALL, out=run, resume=True)
    assert resumed.complete and not partial.exists()  # no writer left: a killed one's
    same_store(resumed, small_reference)


def test_shards_of_one_run_share_the_store_and_the_same_shard_twice_is_refused(
    tmp_path, small_reference
):
    out = tmp_path / "r.zarr"
    with lock.acquire(Location.parse(out), "shard 0", shard=(0, 2)):
        with pytest.raises(StoreError, match=r"shard 0/2 of .* is being written by process"):
            actextract.extract(**SMALL, out=out, shard="0/2")
        with pytest.raises(StoreError, match="being written by process"):
            actextract.extract(**SMALL, out=out, resume=True)
        second = actextract.extract(**SMALL, out=out, shard="1/2")
        assert not second.complete
    first = actextract.extract(**SMALL, out=out, shard="0/2")
    assert first.complete
    same_store(first, small_reference)


def test_a_lock_goes_with_its_process_however_it_ends(tmp_path, small_reference):
    out = tmp_path / "r.zarr"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from actextract.store import lock; from actextract.store.location "
            "import Location; lock.acquire(Location.parse(sys.argv[1]), 'a holder'); "
            "print('held', flush=True); time.sleep(600)",
            str(out),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"process {holder.pid} on {socket.gethostname()}"):
            actextract.extract(**SMALL, out=out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert actextract.extract(**SMALL, out=out).complete  # the kernel dropped it


def test_two_resumes_with_stats_the_second_is_refused_and_the_store_stays_resumable(
    tmp_path, reference
):
    out = tmp_path / "r.zarr"
    first = start(*ARGS, "--out", str(out), "--resume", stall=2)
    try:
        wait_for_done_blocks(out, 2, first)
        second = run_cli(*ARGS, "--out", str(out), "--resume")
        assert first.poll() is None, "the first run ended before the second started"
        assert second.returncode == 2, second.stderr
        assert f"being written by process {first.pid}" in second.stderr
        assert "extract --resume" in second.stderr
    finally:
        first.kill()  # a writer killed mid-run, its sums half committed
        first.communicate()
    third = run_cli(*ARGS, "--out", str(out), "--resume")
    assert third.returncode == 0, third.stderr
    store = open_store(out)
    assert store.complete and verify(store).ok
    same_store(store, reference)


def test_a_block_in_two_statistics_parts_is_reported_and_repair_makes_it_resumable(
    tmp_path, runner
):
    settings = {**SMALL, "stats": STATS}
    whole = actextract.extract(**settings, out=tmp_path / "whole.zarr")
    out = tmp_path / "r.zarr"
    actextract.extract(**settings, out=out, shard="0/2")
    actextract.extract(**settings, out=out, shard="1/2")
    parts = out / "progress" / "parts"
    first = sorted(p for p in parts.iterdir() if p.is_dir())[0]
    shutil.copytree(first, parts / "copy")  # two writers that summed the same blocks
    zarr.open_group(out, mode="r+").attrs["status"] = "incomplete"
    info = cli(runner, "info", str(out))
    assert info.exit_code == 2 and "which progress/parts/" in info.output, info.output
    with pytest.raises(StoreError, match=r"verify .* --repair"):
        actextract.extract(**settings, out=out, resume=True)
    text = cli(runner, "verify", str(out))
    assert text.exit_code == 1 and "damaged statistics" in text.output
    repaired = repair_and_resume(runner, out, whole, settings)
    assert "dropped progress/parts/" in repaired, repaired


# -- leftovers of a killed creation -------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_creation_leftovers_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "r.zarr"
    host = socket.gethostname()
    dead = tmp_path / f".r.zarr.creating-{host}-{_dead_pid()}-0badf00d"
    live = tmp_path / f".r.zarr.creating-{host}-{os.getpid()}-0badf00d"
    old = tmp_path / ".r.zarr.creating-0123456789ab"  # named as before hosts and pids
    for leftover in (dead, live, old):
        (leftover / "acts").mkdir(parents=True)
    actextract.extract(**SMALL, out=out, shard="0/2")  # shards: only a dead process's go
    assert not dead.exists() and live.exists() and old.exists()
    assert actextract.extract(**SMALL, out=out, resume=True).complete  # alone: all go
    assert not live.exists() and not old.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.zarr"]  # the lock files went too


def test_the_lock_file_is_beside_the_store_names_its_holder_and_goes_with_it(tmp_path):
    out = tmp_path / "r.zarr"
    with lock.acquire(Location.parse(out), "a test's writer"):
        holder = json.loads((tmp_path / ".r.zarr.lock").read_text().splitlines()[-1])
        assert holder["pid"] == os.getpid() and holder["doing"] == "a test's writer"
        assert holder["host"] == socket.gethostname() and holder["since"][:4].isdigit()
    assert not (tmp_path / ".r.zarr.lock").exists()
    actextract.extract(**SMALL, out=out)
    assert [p.name for p in tmp_path.iterdir()] == ["r.zarr"]
    assert not list(out.rglob("*lock*"))


def test_an_unreadable_root_zarr_json_says_what_it_is_and_what_to_do(run, runner):
    (run / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')  # cut short
    for command in ("info", "verify", "render"):
        args = [command, str(run)] + (["--out", str(run.parent / "report")] * (command == "render"))
        result = cli(runner, *args)
        assert result.exit_code == 2, result.output
        assert "root zarr.json (the record of the run) is damaged" in result.output
        assert "restore that file from a copy" in result.output


@pytest.mark.parametrize("gone", ["stats/conv1/mean/zarr.json", "stats/conv1"])
def test_missing_statistics_totals_are_damage_that_repair_and_resume_mend(tmp_path, runner, gone):
    settings = {**SMALL, "stats": STATS}
    whole = actextract.extract(**settings, out=tmp_path / "whole.zarr")
    out = Path(shutil.copytree(whole.path, tmp_path / "r.zarr"))
    path = out / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    info = cli(runner, "info", str(out))
    assert info.exit_code == 2 and "stats/conv1/mean: missing" in info.output, info.output
    render = cli(runner, "render", str(out), "--out", str(tmp_path / "report"))
    assert render.exit_code == 2 and "DAMAGED" in render.output
    text = cli(runner, "verify", str(out))
    assert text.exit_code == 1 and "stats/conv1/mean: damaged statistics" in text.output
    repaired = repair_and_resume(runner, out, whole, settings)
    assert "dropped" in repaired, repaired
