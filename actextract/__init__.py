"""actextract: batch activation extraction for PyTorch, into chunked Zarr v3 stores.

store = actextract.extract("resnet18", "folder:./imgs", layers=["layer3", "avgpool"],
                           out="run.zarr", batch_size=128)
store = actextract.open_store("run.zarr"); store["layer3"][:8]
report = actextract.render("run.zarr", "report/")   # PNGs and report/index.html
actextract.verify(actextract.open_store("run.zarr")).ok  # every chunk read back and checked
result = actextract.cluster("run.zarr", "avgpool", k=10, pca=32)  # into clusters/avgpool/
result.metrics["ari"], result["assignments"]   # against the labels; each row's cluster
rec = actextract.Recorder(model, layers=["layer4"], probe=loader, out="train.zarr")
rec.capture(epoch)   # in the training loop: the probe's activations at this epoch
"""

from __future__ import annotations

from actextract.check.verification import VerifyReport, verify
from actextract.clusters.job import cluster
from actextract.clusters.results import Clustering, clusterings
from actextract.core.versions import __version__
from actextract.data.source import Preprocess
from actextract.errors import (
    ActextractError,
    BadSampleError,
    CaptureError,
    CheckpointError,
    LayerNotFoundError,
    ModelSpecError,
    NonFiniteError,
    OptionError,
    OutputExistsError,
    SourceError,
    StoreError,
)
from actextract.extraction.api import LayerTable, extract, list_layers
from actextract.record.recorder import Recorder
from actextract.report.graph import draw_graph
from actextract.report.writer import Report, render
from actextract.store.run import Store, open_store
from actextract.store.xarray import to_xarray

__all__ = [
    "ActextractError",
    "BadSampleError",
    "CaptureError",
    "CheckpointError",
    "Clustering",
    "LayerNotFoundError",
    "LayerTable",
    "ModelSpecError",
    "NonFiniteError",
    "OptionError",
    "OutputExistsError",
    "Preprocess",
    "Recorder",
    "Report",
    "SourceError",
    "Store",
    "StoreError",
    "VerifyReport",
    "__version__",
    "cluster",
    "clusterings",
    "draw_graph",
    "extract",
    "list_layers",
    "open_store",
    "render",
    "to_xarray",
    "verify",
]
