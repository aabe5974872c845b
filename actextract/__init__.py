"""actextract: batch activation extraction for PyTorch, into chunked Zarr v3 stores.

store = actextract.extract("resnet18", "folder:./imgs", layers=["layer3", "avgpool"],
                           out="run.zarr", batch_size=128)
store = actextract.open_store("run.zarr"); store["layer3"][:8]
report = actextract.render("run.zarr", "report/")   # PNGs and report/index.html
actextract.verify(actextract.open_store("run.zarr")).ok  # every chunk read back and checked
actextract.store_info(actextract.open_store("run.zarr"))  # what `actextract info` shows
result = actextract.cluster("run.zarr", "avgpool", k=10, pca=32)  # into clusters/avgpool/
result.metrics["ari"], result["assignments"]   # against the labels; each row's cluster
rec = actextract.Recorder(model, layers=["layer4"], probe=loader, out="train.zarr")
rec.capture(epoch)   # in the training loop: the probe's activations at this epoch
store = actextract.extract("hf:./tiny-gpt2", "text:corpus.txt", layers="h.*", max_length=128,
                           out="lm.zarr")   # text: the tokenizer's ids, attention mask kept
actextract.token_activations(store, "h.3"), actextract.token_table(store)  # one row per token

This module is the facade; the families live in subpackages whose imports only go down
(docs/architecture.md): core and errors, store, data, model, stats, clusters, check,
extraction, record, report, cli.
"""

from __future__ import annotations

from actextract.check import VerifyReport, store_info, verify
from actextract.clusters import Clustering, cluster, clusterings
from actextract.core.versions import __version__
from actextract.data import Preprocess
from actextract.errors import (
    ActextractError,
    BadSampleError,
    CaptureError,
    CheckpointError,
    GraphvizError,
    LayerNotFoundError,
    ModelSpecError,
    NonFiniteError,
    OptionError,
    OutputExistsError,
    RankError,
    RebuildError,
    SourceError,
    StoreError,
    UntrustedCheckpointError,
)
from actextract.extraction import ExtractOptions, extract
from actextract.model import LayerTable, list_layers
from actextract.record import Recorder
from actextract.report import Report, draw_graph, render
from actextract.store import (
    EpochStore,
    Store,
    iter_token_blocks,
    open_store,
    sample_tokens,
    to_xarray,
    token_activations,
    token_table,
)

__all__ = [
    "ActextractError",
    "BadSampleError",
    "CaptureError",
    "CheckpointError",
    "Clustering",
    "EpochStore",
    "ExtractOptions",
    "GraphvizError",
    "LayerNotFoundError",
    "LayerTable",
    "ModelSpecError",
    "NonFiniteError",
    "OptionError",
    "OutputExistsError",
    "Preprocess",
    "RankError",
    "RebuildError",
    "Recorder",
    "Report",
    "SourceError",
    "Store",
    "StoreError",
    "UntrustedCheckpointError",
    "VerifyReport",
    "__version__",
    "cluster",
    "clusterings",
    "draw_graph",
    "extract",
    "iter_token_blocks",
    "list_layers",
    "open_store",
    "render",
    "sample_tokens",
    "store_info",
    "to_xarray",
    "token_activations",
    "token_table",
    "verify",
]
