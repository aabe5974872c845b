"""Resume after a kill: exact, computing only the blocks not recorded done; Ctrl-C; refusals.

The runs are child processes (tests/_runner.py) that kill themselves at chosen points or are
killed from here; every resumed store must equal, to the byte, one uninterrupted run.
"""

from __future__ import annotations

import signal

import pytest
import torch
from _runner import (
    ARGS,
    N_BLOCKS,
    SMALL,
    check_done_blocks,
    record_writes,
    run,
    same_store,
    start,
    wait_for_done_blocks,
)

import actextract
from actextract.check.verification import format_verify, verify
from actextract.stats.parts import summed_blocks

pytestmark = pytest.mark.slow


def _written(log) -> list[int]:
    return [int(b) for b in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize("kill", ["first-block", "mid-block:4", "mid-commit:3", "before-seal"])
def test_a_run_killed_anywhere_resumes_to_the_same_store(tmp_path, reference, kill):
    """Rows byte for byte, and statistics equal to the uninterrupted run's: each block's
    sums are counted once, though the kill leaves some blocks written and not summed, or
    (mid-commit) a half-written commit of the sums."""
    out = tmp_path / "run.zarr"
    killed = run(*ARGS, "--out", str(out), kill=kill)
    assert killed.returncode == -signal.SIGKILL
    store = actextract.open_store(out)
    assert store.status == "incomplete" and not store.complete
    if kill == "mid-commit:3":  # commits hold blocks [0], [0, 1]; the third never landed
        assert summed_blocks(store).nonzero()[0].tolist() == [0, 1]
    done = check_done_blocks(store, reference)
    if kill == "before-seal":
        assert done.all() and verify(store).state == "complete-but-unsealed"
    else:
        report = verify(store)
        assert not done.all() and report.state == "incomplete", format_verify(report)
    # a chunk write cut short by the kill leaves a *.partial file; resume removes it
    stale = out / "acts" / "conv1" / "c" / "9" / "0" / "0" / "0.0123456789ab.partial"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a chunk")

    log = tmp_path / "written.log"
    resumed = run(*ARGS, "--out", str(out), "--resume", log=log)
    assert resumed.returncode == 0, resumed.stderr
    # no block recorded done is computed again, every other block exactly once
    assert sorted(_written(log)) == [b for b in range(N_BLOCKS) if not done[b]]
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok
    same_store(store, reference)
    assert not list(out.rglob("*.partial"))


def test_a_sigkill_from_outside_mid_run_resumes_to_the_same_store(tmp_path, reference):
    out = tmp_path / "run.zarr"
    proc = start(*ARGS, "--out", str(out), stall=3)
    wait_for_done_blocks(out, 2, proc)
    proc.kill()
    proc.wait()
    assert not check_done_blocks(actextract.open_store(out), reference).all()
    assert run(*ARGS, "--out", str(out), "--resume").returncode == 0
    same_store(actextract.open_store(out), reference)


def test_ctrl_c_stops_cleanly_with_exit_code_130(tmp_path, reference):
    out = tmp_path / "run.zarr"
    proc = start(*ARGS, "--out", str(out), stall=3)
    wait_for_done_blocks(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "--resume" in err and "Traceback" not in err
    store = actextract.open_store(out)
    assert store.status == "interrupted" and not store.done().all()
    check_done_blocks(store, reference)
    assert run(*ARGS, "--out", str(out), "--resume").returncode == 0
    store = actextract.open_store(out)
    assert store.complete and store.attrs.get("error") is None
    same_store(store, reference)


# -- refusals (in this process: small runs) ----------------------------------------------------
BASE = {**SMALL, "limit": 128}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return actextract.extract(**BASE, out=tmp_path_factory.mktemp("small") / "s.zarr")


def _checkpoint(path):
    from actextract.model.zoo import load_model

    torch.manual_seed(1)
    torch.save(load_model("digits-cnn").module.state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layers": "conv1"}, "layers"),
        ({"dtype": "float32"}, "dtype"),
        ({"reduce": "conv1=mean"}, "reductions"),
        ({"layout": "conv1=nhwc"}, "layouts"),
        ({"chunk_rows": 32}, "chunk rows"),
        ({"limit": 100}, "samples"),
        ({"dataset": "synthetic:128:1:28:28"}, "dataset"),
        ({"precision": "bf16"}, "precision"),
        ({"codec": "zstd"}, "codec"),
        ({"weights": "CHECKPOINT"}, "checkpoint"),
        ({"model": "MODULE"}, "model"),
    ],
)
def test_resume_refuses_another_run_naming_the_field_and_both_values(
    small_store, tmp_path, change, field
):
    from actextract.model.zoo import load_model

    if change.get("weights") == "CHECKPOINT":
        change = {"weights": _checkpoint(tmp_path / "other.pt")}
    if change.get("model") == "MODULE":
        change = {"model": load_model("digits-cnn").module}
    before = (small_store.path / "zarr.json").read_bytes()
    with pytest.raises(actextract.StoreError, match=f"another run: its {field}") as e:
        actextract.extract(**{**BASE, **change}, out=small_store.path, resume=True)
    assert "this run's is" in str(e.value) and "--overwrite" in str(e.value)
    assert (small_store.path / "zarr.json").read_bytes() == before  # untouched


def test_an_existing_store_is_never_touched_without_resume_or_overwrite(small_store):
    before = sorted(p.stat().st_mtime_ns for p in small_store.path.rglob("*"))
    with pytest.raises(actextract.OutputExistsError, match="--resume"):
        actextract.extract(**BASE, out=small_store.path)
    assert sorted(p.stat().st_mtime_ns for p in small_store.path.rglob("*")) == before


def test_resume_of_a_complete_store_computes_nothing(small_store, monkeypatch):

    calls = record_writes(monkeypatch)
    again = actextract.extract(**BASE, out=small_store.path, resume=True)
    assert calls == [] and again.complete


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(actextract.OptionError, match="pass one of them"):
        actextract.extract(**BASE, out=tmp_path / "x.zarr", resume=True, overwrite=True)


def test_resume_creates_a_missing_store(tmp_path):
    store = actextract.extract(**BASE, out=tmp_path / "new.zarr", resume=True)
    assert store.complete


def test_resume_with_batches_straddling_blocks_writes_only_the_missing_ones(tmp_path, monkeypatch):
    """Batches of 8 over blocks of 12 rows: a resumed batch also holds rows of done blocks,
    which are computed (the batch must be the same) but not written again; a skipped sample
    in a resumed block is recorded once."""
    from _fixtures import FailsAt, tiny_cnn

    data = FailsAt(40, n=60)
    kwargs = dict(layers=["bn1", "fc"], batch_size=8, chunk_rows=12, device="cpu")
    kwargs.update(on_bad_sample="skip", progress=False)
    full = actextract.extract(tiny_cnn(), data, out=tmp_path / "full.zarr", **kwargs)
    part = actextract.extract(tiny_cnn(), data, out=tmp_path / "part.zarr", **kwargs)
    store = actextract.open_store(part.path, mode="r+")
    store._node("progress/done")[[1, 3]] = 0  # block 3 holds the bad sample 40
    store.update_attrs(status="interrupted")
    written = record_writes(monkeypatch)
    again = actextract.extract(tiny_cnn(), data, out=part.path, resume=True, **kwargs)
    assert sorted(written) == [1, 3] and again.complete
    for name in ("bn1", "fc"):
        assert again[name][:].tobytes() == full[name][:].tobytes()
    assert again.ids[:].tolist() == full.ids[:].tolist()
    assert (
        [s["index"] for s in again.attrs["skipped"]]
        == [40]
        == [s["index"] for s in full.attrs["skipped"]]
    )
