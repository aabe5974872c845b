"""actextract cluster: k-means of a stored layer recovers separated clusters, the streaming PCA
equals a full SVD, the results are kept per settings and survive reopening, bad requests are
refused, and the report draws them."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import actextract
from actextract.check import store_info
from actextract.cli.commands import main
from actextract.clusters.job import cluster
from actextract.clusters.kmeans import MiniBatchKMeans, StreamingPca, kmeans_pp
from actextract.clusters.results import Settings, clusterings
from actextract.clusters.rows import label_scores
from actextract.errors import OptionError, StoreError
from actextract.store import ArraySpec, StoreOptions, create_store, integrity, open_store

K, SHAPE = 5, (6, 3, 3)


def blobs(n: int = 1500, k: int = K, shape=SHAPE, seed: int = 0, spread: float = 1.0):
    """``k`` well separated Gaussian blobs of rows of ``shape``, labels in random order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 12, (k, *shape)).astype(np.float32)
    truth = rng.integers(0, k, n)
    noise = rng.normal(0, spread, (n, *shape)).astype(np.float32)
    return centres[truth] + noise, truth


def make_store(path, data, labels, *, chunk_rows=128, seal=True, name="maps", **attrs):
    store = create_store(
        path,
        n=len(data),
        arrays=[ArraySpec(name, data.shape[1:])],
        options=StoreOptions(dtype="float32"),
        chunk_rows=chunk_rows,
        attrs=attrs,
    )
    for b in range(store.n_blocks):
        r = store.block_range(b)
        store.write_block(b, {name: data[r.start : r.stop]}, labels[r.start : r.stop], list(r))
    if seal:
        store.seal()
    return store


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory):
    data, truth = blobs()
    return make_store(tmp_path_factory.mktemp("blobs") / "b.zarr", data, truth), data, truth


@pytest.mark.parametrize(
    "options",
    [
        {},  # every feature, the rows kept on the device between passes
        {"pca": 4},
        {"pool": "mean"},
        {"pca": 3, "cache_bytes": 0},  # every pass reads the store again, mixed block by block
    ],
    ids=["rows", "pca", "pool", "streamed"],
)
def test_kmeans_recovers_separated_clusters(blob_store, options):
    store, _, truth = blob_store
    result = cluster(store, "maps", K, device="cpu", **options)
    got = result["assignments"]
    assert adjusted_rand_score(truth, got) > 0.99
    m = result.metrics
    assert m["ari"] == pytest.approx(adjusted_rand_score(truth, got))
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(truth, got))
    assert m["purity"] > 0.99 and m["clustered"] == len(truth) and m["excluded"] == 0
    sizes = result["sizes"]
    np.testing.assert_array_equal(sizes, np.bincount(got, minlength=K))
    # the inertia is the sum of the stored distances, which are those to the own centre
    assert m["inertia"] == pytest.approx(float(result["distances"].astype(np.float64).sum()))


def test_streaming_pca_equals_a_full_svd(blob_store):
    store, data, _ = blob_store
    result = cluster(store, "maps", K, pca=5, device="cpu")
    x = data.reshape(len(data), -1).astype(np.float64)
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    pca = result.pca
    np.testing.assert_allclose(pca.mean, x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pca.explained_variance, s[:5] ** 2 / (len(x) - 1), rtol=1e-8)
    # the same axes: each component is ± the SVD's, and signed by its largest entry
    dots = np.abs(np.sum(pca.components * vt[:5], axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-8)
    for c in pca.components:
        assert c[np.argmax(np.abs(c))] > 0
    assert result.attrs["pca"]["total_variance"] == pytest.approx((s**2).sum() / (len(x) - 1))
    # the scatter's coordinates are the first two components of every row
    coords = centred @ pca.components[:2].T
    np.testing.assert_allclose(result["coords"], coords, rtol=1e-4, atol=1e-3)


def fit_in_passes(fit: StreamingPca, x: np.ndarray, batch: int = 100):
    """Feed ``x`` in uneven batches (the last shorter than the components), pass after pass."""
    more = True
    while more:
        for start in range(0, len(x), batch):
            fit.update(torch.from_numpy(x[start : start + batch]))
        more = fit.end_pass()
    return fit.result()


@pytest.mark.parametrize(
    "exact_dim, rtol", [(1024, 1e-9), (8, 1e-5)], ids=["covariance", "randomized"]
)
def test_streaming_pca_in_batches_equals_svd(exact_dim, rtol):
    """Both solvers: the covariance's eigenvectors (float64), and randomized subspace
    iteration (float32 within a batch), here run to convergence, for rows too wide for a
    covariance."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(403, 20)) @ rng.normal(size=(20, 20)) + 1000.0  # a large mean
    fit = StreamingPca(6, 20, torch.device("cpu"), exact_dim=exact_dim, tol=1e-12, max_passes=99)
    pca = fit_in_passes(fit, x)
    assert fit.passes == 1 if exact_dim == 1024 else fit.passes > 2
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert pca.n_samples == len(x) and pca.components.shape == (6, 20)
    np.testing.assert_allclose(pca.mean, x.mean(0), rtol=rtol)
    np.testing.assert_allclose(pca.explained_variance, s[:6] ** 2 / (len(x) - 1), rtol=rtol)
    np.testing.assert_allclose(np.abs(np.sum(pca.components * vt[:6], 1)), 1.0, atol=rtol)
    ratio = s[:6] ** 2 / (s**2).sum()
    np.testing.assert_allclose(pca.explained_variance_ratio, ratio, rtol=rtol)


def test_randomized_pca_of_wide_rows_with_its_defaults():
    """1,500 features (past the exact limit on a CPU), a power-law spectrum as activations
    have: the default tolerance (Ritz values moving by under 0.1% of the largest) stops in a
    few passes, with every variance within that of the largest, and the top components, whose
    gaps are wide, to 1e-5."""
    rng = np.random.default_rng(2)
    scales = 1.0 / np.arange(1, 1501)
    x = (rng.normal(size=(1200, 1500)) * scales) @ np.linalg.qr(rng.normal(size=(1500, 1500)))[0]
    fit = StreamingPca(8, 1500, torch.device("cpu"))
    assert not fit.exact
    pca = fit_in_passes(fit, x, batch=256)
    assert 2 < fit.passes < fit.max_passes and fit.converged
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    want = s[:8] ** 2 / (len(x) - 1)
    np.testing.assert_allclose(pca.explained_variance, want, atol=1e-3 * want[0])
    np.testing.assert_allclose(pca.explained_variance[:3], want[:3], rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(pca.components[:3] * vt[:3], 1)), 1.0, atol=1e-5)


def test_results_survive_reopening_and_other_settings_stay_apart(tmp_path):
    data, truth = blobs(600)
    path = tmp_path / "b.zarr"
    make_store(path, data, truth)
    first = cluster(path, "maps", K, pca=4, seed=0, device="cpu")
    other = cluster(path, "maps", 3, pool="max", seed=1, device="cpu")
    assert first.name == "k5-poolnone-pca4-seed0" and other.name == "k3-poolmax-pcaoff-seed1"
    reopened = {c.name: c for c in clusterings(open_store(path), "maps")}
    assert set(reopened) == {first.name, other.name}
    again = reopened[first.name]
    assert again.complete and again.settings == first.settings
    assert again.metrics == first.metrics
    for name in ("assignments", "distances", "coords", "centroids", "sizes", "nearest"):
        np.testing.assert_array_equal(again[name], first[name])
    assert again["centroids"].shape == (K, 4) and reopened[other.name]["centroids"].shape == (3, 6)
    # the same settings again: the same result, replacing the first (not added beside it)
    repeat = cluster(path, "maps", K, pca=4, seed=0, device="cpu")
    np.testing.assert_array_equal(repeat["assignments"], first["assignments"])
    np.testing.assert_array_equal(repeat["centroids"], first["centroids"])
    assert len(clusterings(open_store(path))) == 2
    # every array names its dimensions
    group = open_store(path).group[f"clusters/maps/{first.name}"]
    assert group["assignments"].metadata.dimension_names == ("sample",)
    assert group["centroids"].metadata.dimension_names == ("cluster", "feature")
    info = store_info(open_store(path))["clusters"]
    assert {c["name"] for c in info} == {first.name, other.name}


def test_nearest_rows_are_members_closest_to_their_centre(blob_store):
    store, _, _ = blob_store
    result = cluster(store, "maps", K, pca=3, nearest=6, device="cpu")
    assign, dist, nearest = result["assignments"], result["distances"], result["nearest"]
    assert nearest.shape == (K, 6)
    for c in range(K):
        members = np.flatnonzero(assign == c)
        want = members[np.argsort(dist[members], kind="stable")[:6]]
        np.testing.assert_allclose(np.sort(dist[nearest[c]]), np.sort(dist[want]))
        assert (assign[nearest[c]] == c).all()
        assert (np.diff(dist[nearest[c]]) >= 0).all()  # nearest first


def test_skipped_and_nonfinite_rows_are_left_out(tmp_path):
    data, truth = blobs(400)
    data[7] = np.nan  # a skipped sample's row
    data[300, 2, 1, 1] = np.inf  # a non-finite activation
    truth[10] = -1  # an unlabelled row: clustered, not scored
    store = make_store(tmp_path / "b.zarr", data, truth)
    result = cluster(store, "maps", K, device="cpu")
    assign = result["assignments"]
    assert assign[7] == -1 and assign[300] == -1 and assign[10] >= 0
    assert np.isnan(result["distances"][[7, 300]]).all()
    assert result.metrics["excluded"] == 2 and result.metrics["clustered"] == 398
    assert result.metrics["labelled"] == 397
    keep = (assign >= 0) & (truth >= 0)
    assert adjusted_rand_score(truth[keep], assign[keep]) > 0.99


def test_same_seed_same_result_other_seed_other_start(blob_store):
    store, _, _ = blob_store
    a = cluster(store, "maps", 8, pca=3, seed=3, epochs=2, device="cpu")
    first = a["centroids"]
    b = cluster(store, "maps", 8, pca=3, seed=3, epochs=2, device="cpu")
    np.testing.assert_array_equal(first, b["centroids"])
    c = cluster(store, "maps", 8, pca=3, seed=4, epochs=2, device="cpu")
    assert c.name != a.name and not np.array_equal(first, c["centroids"])


def test_the_layer_is_streamed_not_read_whole(tmp_path, monkeypatch):
    """A 7 MB layer in 150 KB chunks, nothing kept between passes: numpy never holds more
    than a few chunks (the block read, the one read ahead). The quick check before it reads
    the block records (fixed-width, mostly padding: 1.5 MB here) in slabs of SLAB_BYTES, a
    bound of its own (64 MB) that this store is too small to show: a chunk's worth here."""
    data, truth = blobs(3000, shape=(16, 8, 8))
    chunk_rows = 32
    store = make_store(tmp_path / "b.zarr", data, truth, chunk_rows=chunk_rows)
    chunk_bytes = chunk_rows * data[0].nbytes
    monkeypatch.setattr(integrity, "SLAB_BYTES", chunk_bytes)
    tracemalloc.start()
    try:
        cluster(store, "maps", K, pca=2, epochs=1, cache_bytes=0, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.nbytes > 40 * chunk_bytes
    assert peak < 12 * chunk_bytes, (peak, chunk_bytes)


def test_label_scores_equal_scikit_learn():
    rng = np.random.default_rng(2)
    truth, got = rng.integers(0, 4, 500), rng.integers(0, 6, 500)
    table = np.zeros((4, 6), np.int64)
    np.add.at(table, (truth, got), 1)
    scores = label_scores(table)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(truth, got))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(truth, got))
    purity = sum(np.bincount(truth[got == c]).max() for c in np.unique(got)) / len(truth)
    assert scores["purity"] == pytest.approx(purity)


def test_kmeans_pp_and_minibatch_find_blobs_on_their_own():
    data, truth = blobs(800, shape=(4,))
    x = torch.from_numpy(data)
    km = MiniBatchKMeans(kmeans_pp(x, K, torch.Generator().manual_seed(0)))
    for _ in range(5):
        for start in range(0, len(x), 100):
            km.step(x[start : start + 100])
        km.end_epoch()
    labels, _ = km.assign(x)
    assert adjusted_rand_score(truth, labels.numpy()) > 0.99


def test_a_centre_no_row_chooses_is_moved():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    km = MiniBatchKMeans(torch.tensor([[0.0, 0.0], [10.0, 10.0], [500.0, 500.0]]))
    km.step(x)
    assert km.end_epoch() == 1 and km.reassigned == 1
    assert not torch.equal(km.centers[2], torch.tensor([500.0, 500.0]))
    assert any(torch.equal(km.centers[2], row) for row in x)


# -- refused ---------------------------------------------------------------------------------
def test_bad_requests_are_refused_with_the_fix(tmp_path, blob_store):
    store, data, truth = blob_store
    with pytest.raises(OptionError, match="--pca 60: the rows of 'maps' have only 54"):
        cluster(store, "maps", K, pca=60, device="cpu")
    with pytest.raises(OptionError, match="at least 2 clusters"):
        cluster(store, "maps", 1, device="cpu")
    with pytest.raises(OptionError, match="--pool 'median'"):
        cluster(store, "maps", K, pool="median", device="cpu")
    with pytest.raises(StoreError, match="layer 'nope' is not in"):
        cluster(store, "nope", K, device="cpu")
    flat = make_store(tmp_path / "flat.zarr", data.reshape(len(data), -1)[:, :4], truth)
    with pytest.raises(
        OptionError, match="layout vector, with no spatial axes or tokens to pool; leave --pool out"
    ):
        cluster(flat, "maps", K, pool="mean", device="cpu")
    few = make_store(tmp_path / "few.zarr", data[:4], truth[:4])
    with pytest.raises(OptionError, match="--k 5: only 4 rows"):
        cluster(few, "maps", K, device="cpu")
    half = make_store(tmp_path / "half.zarr", data, truth, seal=False)
    with pytest.raises(StoreError, match=r"is incomplete .*--resume' before clustering it"):
        cluster(half, "maps", K, device="cpu")


def test_a_statistics_only_layer_is_refused(tmp_path):
    from _fixtures import SeededImages, tiny_cnn

    out = actextract.extract(
        tiny_cnn(),
        SeededImages(24),
        layers="conv1,fc",
        store_layers="fc",
        stats="conv1=class-mean",
        out=tmp_path / "s.zarr",
        device="cpu",
        progress=False,
    )
    with pytest.raises(StoreError, match=r"statistics only.*--store including 'conv1'"):
        cluster(out, "conv1", 2, device="cpu")


def test_an_interrupted_result_is_shown_as_such(tmp_path):
    data, truth = blobs(300)
    store = make_store(tmp_path / "b.zarr", data, truth)
    result = cluster(store, "maps", K, device="cpu")
    result.group.update_attributes({"status": "writing"})  # as a kill mid-write leaves it
    (found,) = clusterings(open_store(store.path))
    assert not found.complete
    out = CliRunner().invoke(main, ["info", str(store.path)])
    assert "WRITING: interrupted, run the cluster command again" in out.output


# -- the command -----------------------------------------------------------------------------
def test_cluster_command(tmp_path):
    data, truth = blobs(500)
    path = tmp_path / "b.zarr"
    make_store(path, data, truth, dataset={"classes": list("abcde")})
    runner = CliRunner()
    args = ["cluster", str(path), "--layer", "maps", "--k", "5", "--pca", "4", "--device", "cpu"]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "adjusted Rand 1.000" in out.output
    assert "written   clusters/maps/k5-poolnone-pca4-seed0" in out.output
    js = runner.invoke(main, [*args, "--json"])
    assert json.loads(js.output)["settings"] == {
        **Settings(k=5, pca=4).__dict__,
    }
    info = runner.invoke(main, ["info", str(path)])
    assert "maps/k5-poolnone-pca4-seed0: inertia" in info.output and "ARI 1.000" in info.output
    bad = runner.invoke(main, ["cluster", str(path), "--layer", "maps", "--k", "5", "--pca", "99"])
    assert bad.exit_code == 2 and "have only 54 features" in bad.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cluster_on_the_gpu_recovers_clusters_as_on_the_cpu(blob_store):
    store, _, truth = blob_store
    gpu = cluster(store, "maps", K, pca=4, device="cuda")
    assert gpu.attrs["device"].startswith("cuda")
    assert adjusted_rand_score(truth, gpu["assignments"]) > 0.99
    cpu = cluster(store, "maps", K, pca=4, pool="none", seed=0, device="cpu")
    np.testing.assert_allclose(gpu.pca.explained_variance, cpu.pca.explained_variance, rtol=1e-6)


# -- the report ------------------------------------------------------------------------------
def test_the_report_draws_each_clustering(tmp_path):
    """A scatter by label and by cluster, and the nearest samples as the inputs (digits can be
    given back); an interrupted result gets a note instead."""
    store = actextract.extract(
        "digits-cnn",
        "digits",
        layers="pool2",
        out=tmp_path / "d.zarr",
        limit=200,
        device="cpu",
        progress=False,
    )
    done = cluster(store, "pool2", 4, pca=8, nearest=3, device="cpu")
    broken = cluster(store, "pool2", 3, pool="mean", device="cpu")
    broken.group.update_attributes({"status": "writing"})
    report = actextract.render(store.path, tmp_path / "report", only="clusters")
    drawn = {p.path: p for p in report.pictures}
    assert set(drawn) == {f"pool2.clusters.{done.name}.png", f"pool2.nearest.{done.name}.png"}
    for p in drawn.values():
        assert (tmp_path / "report" / p.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.kind == "clusters" and p.layer == "pool2"
    assert "ARI" in drawn[f"pool2.clusters.{done.name}.png"].caption
    assert "(inputs;" in drawn[f"pool2.nearest.{done.name}.png"].caption
    assert any(broken.name in line and "interrupted" in line for line in report.notes["pool2"])
    assert f"pool2.nearest.{done.name}.png" in (tmp_path / "report" / "index.html").read_text()


def test_without_inputs_the_nearest_samples_are_their_maps(tmp_path):
    data, truth = blobs(300)
    store = make_store(tmp_path / "b.zarr", data, truth)  # no dataset spec: no inputs
    result = cluster(store, "maps", K, nearest=2, device="cpu")
    report = actextract.render(store.path, tmp_path / "report", only="clusters")
    (nearest,) = [p for p in report.pictures if p.path.startswith("maps.nearest")]
    assert "mean maps over channels" in nearest.caption and result.name in nearest.path
