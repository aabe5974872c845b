"""Nothing left behind, nothing lost: a `cluster` run killed at any step of its swap leaves the
old result or the new one complete, and the next run tidies; a killed `render` leaves a folder
its rerun accepts, while a folder of other files is still refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from test_cluster import K, blobs, make_store

import actextract
from actextract.check import store_info
from actextract.check.verification import verify
from actextract.cli.commands import main
from actextract.clusters import results as clustering
from actextract.clusters.job import cluster
from actextract.clusters.results import clusterings
from actextract.clusters.rows import RowWriter
from actextract.store import open_store

ARGS = ["--layer", "maps", "--k", str(K), "--pca", "3", "--device", "cpu"]


class Killed(KeyboardInterrupt):
    """A kill where it is raised: nothing after it runs, no ``except Exception`` catches it."""


def kill_at(monkeypatch, name: str, call: int = 1) -> None:
    """``clustering.<name>`` raises :class:`Killed` on its ``call``-th call."""
    real, calls = getattr(clustering, name), []

    def step(*args, **kw):
        calls.append(args)
        if len(calls) == call:
            raise Killed(name)
        return real(*args, **kw)

    monkeypatch.setattr(clustering, name, step)


def hidden(layer_dir) -> list[str]:
    return sorted(p.name for p in layer_dir.iterdir() if p.name.startswith("."))


@pytest.fixture
def clustered(tmp_path):
    """A store with one complete result of maps, marked 'old' (a new run does not mark it)."""
    data, truth = blobs(400)
    path = tmp_path / "b.zarr"
    make_store(path, data, truth)
    old = cluster(path, "maps", K, pca=3, device="cpu")
    old.group.update_attributes({"mark": "old"})
    return path, old


def the_result(path):
    (found,) = clusterings(open_store(path), "maps")
    assert found.complete and found.name == "k5-poolnone-pca3-seed0"
    assert found["assignments"].shape == (400,) and found["centroids"].shape == (K, 3)
    return found


# -- cluster ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step, call, survivor",
    [
        ("install", 1, "old"),  # the new result complete, the swap not begun
        ("_rename", 1, "old"),  # before the old one is moved out
        ("_rename", 2, "new"),  # the old one moved out, the new one not yet in: its copy
        ("_remove", 1, "new"),  # swapped, the old one not yet deleted
    ],
    ids=["before-swap", "before-old-out", "between", "before-delete"],
)
def test_a_cluster_run_killed_in_its_swap_loses_nothing(
    clustered, monkeypatch, runner, step, call, survivor
):
    path, old = clustered
    assignments = old["assignments"]
    layer_dir = path / "clusters" / "maps"
    kill_at(monkeypatch, step, call)
    with pytest.raises(Killed):
        cluster(path, "maps", K, pca=3, device="cpu")
    monkeypatch.undo()
    assert hidden(layer_dir)  # the leftovers of the killed run
    found = the_result(path)
    assert ("mark" in found.attrs) == (survivor == "old")
    np.testing.assert_array_equal(found["assignments"], assignments)  # same settings
    # info and verify see the one result, never the leftovers
    info = store_info(open_store(path))["clusters"]
    assert [c["name"] for c in info] == [found.name] and info[0]["status"] == "complete"
    report = verify(open_store(path))
    assert report.ok and not report.cluster_problems
    checked = clustering.arrays(open_store(path))
    assert checked and all(p.startswith(f"clusters/maps/{found.group.basename}/") for p in checked)
    # the next run finishes, and leaves no hidden name
    done = runner.invoke(main, ["cluster", str(path), *ARGS])
    assert done.exit_code == 0, done.output
    assert "written   clusters/maps/k5-poolnone-pca3-seed0" in done.output
    assert hidden(layer_dir) == []
    assert "mark" not in the_result(path).attrs
    assert verify(open_store(path)).ok


def killed_while_writing(path, layer_dir, monkeypatch) -> str:
    """A cluster run killed while it writes its new result; the hidden name it leaves."""
    monkeypatch.setattr(RowWriter, "close", lambda self: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        cluster(path, "maps", K, pca=3, device="cpu")
    monkeypatch.undo()
    (left,) = hidden(layer_dir)
    return left


def test_a_run_killed_while_writing_leaves_the_old_result(clustered, monkeypatch, runner):
    path, _ = clustered
    layer_dir = path / "clusters" / "maps"
    left = killed_while_writing(path, layer_dir, monkeypatch)
    assert left.startswith(".k5-poolnone-pca3-seed0.new-")
    assert json.loads((layer_dir / left / "zarr.json").read_text())["attributes"]["status"] == (
        "writing"
    )
    assert "mark" in the_result(path).attrs
    info = runner.invoke(main, ["info", str(path)])
    assert info.exit_code == 0 and ".new-" not in info.output and "WRITING" not in info.output
    # a run of other settings on the layer removes the leftover too, and keeps the old result
    other = cluster(path, "maps", 3, device="cpu")
    assert hidden(layer_dir) == []
    names = {c.name for c in clusterings(open_store(path), "maps")}
    assert names == {"k5-poolnone-pca3-seed0", other.name}


def test_the_new_result_of_a_live_process_is_left_alone(clustered, monkeypatch):
    """Two cluster runs on one layer at once: neither deletes what the other is writing."""
    path, _ = clustered
    layer_dir = path / "clusters" / "maps"
    left = killed_while_writing(path, layer_dir, monkeypatch)
    meta = layer_dir / left / "zarr.json"
    data = json.loads(meta.read_text())
    data["attributes"]["writer"]["pid"] = os.getppid()  # another process, alive
    meta.write_text(json.dumps(data))
    cluster(path, "maps", 3, device="cpu")
    assert hidden(layer_dir) == [left]
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    data["attributes"]["writer"]["pid"] = int(gone.stdout)  # a process that has ended
    meta.write_text(json.dumps(data))
    cluster(path, "maps", 3, device="cpu")
    assert hidden(layer_dir) == []


def test_a_swap_cut_short_of_other_settings_is_finished_not_deleted(clustered, monkeypatch):
    path, _ = clustered
    kill_at(monkeypatch, "_rename", 2)  # the k5 result exists only as its hidden copy
    with pytest.raises(Killed):
        cluster(path, "maps", K, pca=3, device="cpu")
    monkeypatch.undo()
    cluster(path, "maps", 3, device="cpu")
    names = sorted(p.name for p in (path / "clusters" / "maps").iterdir() if p.is_dir())
    assert names == ["k3-poolnone-pcaoff-seed0", "k5-poolnone-pca3-seed0"]
    assert all(c.complete for c in clusterings(open_store(path)))


@pytest.mark.parametrize(
    "step, call, survivor",
    [("install", 1, "old"), ("_remove", 1, "old"), ("_move", 1, "new"), ("_remove", 2, "new")],
    ids=["before-swap", "before-delete", "before-copy", "before-hidden-goes"],
)
def test_a_store_without_rename_copies_and_loses_nothing(monkeypatch, step, call, survivor):
    """memory:// (as s3://): the old result is deleted, then the new one copied into place,
    its zarr.json last, then its hidden copy deleted; a kill at any step leaves one complete
    result."""
    data, truth = blobs(300)
    url = f"memory://leftovers-{uuid.uuid4().hex}/b.zarr"
    make_store(url, data, truth)
    cluster(url, "maps", K, device="cpu").group.update_attributes({"mark": "old"})
    kill_at(monkeypatch, step, call)
    with pytest.raises(Killed):
        cluster(url, "maps", K, device="cpu")
    monkeypatch.undo()
    (found,) = clusterings(open_store(url))
    assert found.complete and found["assignments"].shape == (300,)
    assert ("mark" in found.attrs) == (survivor == "old")
    assert verify(open_store(url)).ok
    again = cluster(url, "maps", K, device="cpu")
    assert again.group.basename == again.name and "mark" not in again.attrs
    store = open_store(url)
    assert [n for n, _ in store.group["clusters/maps"].groups()] == [again.name]
    np.testing.assert_array_equal(clusterings(store)[0]["sizes"], again["sizes"])


# -- render -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    from _fixtures import SeededImages, tiny_cnn

    return actextract.extract(
        tiny_cnn(),
        SeededImages(12),
        layers="conv1,fc",
        out=tmp_path_factory.mktemp("run") / "run.zarr",
        batch_size=4,
        device="cpu",
        progress=False,
    )


def kill_pictures_after(monkeypatch, n: int) -> None:
    """The picture writers (Agg's savefig, PIL's save) write ``n`` pictures, then half of one
    and are killed."""
    from matplotlib.figure import Figure
    from PIL import Image

    written = []

    def writer(real):
        def save(self, path, *args, **kw):
            written.append(path)
            if len(written) > n:
                with open(path, "wb") as f:
                    f.write(b"\x89PNG\r\n")  # half a file
                raise Killed(str(path))
            return real(self, path, *args, **kw)

        return save

    monkeypatch.setattr(Figure, "savefig", writer(Figure.savefig))
    monkeypatch.setattr(Image.Image, "save", writer(Image.Image.save))


def render_cli(runner, store, out, *more):
    return runner.invoke(main, ["render", str(store.path), "--out", str(out), *more])


def assert_whole_report(out, *keep: str) -> dict:
    """The folder holds the report's files (each picture a whole PNG) and ``keep``, no more."""
    from PIL import Image

    manifest = json.loads((out / "report.json").read_text())
    assert manifest["status"] == "complete" and (out / "index.html").is_file()
    present = {p.name for p in out.iterdir()}
    assert set(keep) <= present and present - set(keep) <= set(manifest["files"])
    assert "report.json.partial" not in present
    for picture in manifest["pictures"]:
        with Image.open(out / picture["path"]) as image:
            image.load()
    return manifest


def test_a_killed_render_leaves_a_folder_its_rerun_completes(
    run_store, tmp_path, monkeypatch, runner
):
    out = tmp_path / "report"
    kill_pictures_after(monkeypatch, 2)
    with pytest.raises(Killed):
        actextract.render(run_store, out)
    monkeypatch.undo()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and not (out / "index.html").exists()
    stub = (out / "report.json").read_text().splitlines()
    assert json.loads(stub[0])["status"] == "writing"
    assert sorted(json.loads(line) for line in stub[1:]) == pngs  # named before written
    (out / "notes.txt").write_text("mine")  # a file of the user's, beside a report: kept
    done = render_cli(runner, run_store, out)
    assert done.exit_code == 0, done.output
    assert f"open {(out / 'index.html').resolve()}" in done.output
    manifest = assert_whole_report(out, "notes.txt")
    assert set(pngs) <= set(manifest["files"])  # the half picture was drawn again, whole
    assert (out / "notes.txt").read_text() == "mine"


def test_a_render_killed_replacing_a_report_leaves_nothing_behind(
    run_store, tmp_path, monkeypatch, runner
):
    out = tmp_path / "report"
    full = actextract.render(run_store, out)
    assert len(full.pictures) > 3
    kill_pictures_after(monkeypatch, 1)
    with pytest.raises(Killed):
        actextract.render(run_store, out, only="histograms")
    monkeypatch.undo()
    assert not (out / "index.html").exists()  # the earlier report's files went first
    done = render_cli(runner, run_store, out, "--only", "histograms")
    assert done.exit_code == 0, done.output
    manifest = assert_whole_report(out)
    assert {p["kind"] for p in manifest["pictures"]} == {"histograms"}
    assert len(list(out.glob("*.png"))) == len(manifest["pictures"]) < len(full.pictures)


@pytest.mark.parametrize(
    "files",
    [{"notes.txt": "keep"}, {"report.json": "[1, 2]"}, {"report.json": 'not json\n"x"\n'}],
    ids=["a-file", "a-json-list", "not-json"],
)
def test_a_folder_of_other_files_is_still_refused(run_store, tmp_path, runner, files):
    out = tmp_path / "theirs"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    refused = render_cli(runner, run_store, out)
    assert refused.exit_code == 2
    assert "holds files and no earlier report; give an empty or new folder" in refused.output
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # untouched


def test_a_render_killed_writing_its_first_stub_is_its_own(run_store, tmp_path, runner):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json.partial").write_text('{"report": "actext')
    done = render_cli(runner, run_store, out, "--only", "histograms")
    assert done.exit_code == 0, done.output
    assert_whole_report(out)
