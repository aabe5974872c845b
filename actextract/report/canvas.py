"""What the renderer's pictures share: the options, the report they go into, and a
:class:`Canvas` of one store to draw on.

:class:`RenderOptions` says what to draw, :class:`Report` collects what was drawn (a
:class:`Picture` per PNG) and the notes. A :class:`Canvas` holds the store with what every
picture reads from it (the layers' specs, the labels and their names, the sample rows, the
inputs) and the helpers that grid maps and hand a picture to the writer. It is given to each
group of pictures: :class:`actextract.report.pictures.Drawer`'s own, and those of
:mod:`actextract.report.classpictures` and :mod:`actextract.report.clusterpictures`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from actextract.errors import OptionError
from actextract.report import figures
from actextract.report.rebuild import Inputs, RebuildError, open_inputs
from actextract.store import Store

__all__ = [
    "KINDS",
    "MAX_SAMPLE_ROWS",
    "Canvas",
    "OpenInputs",
    "Picture",
    "RenderOptions",
    "Report",
    "Write",
    "file_stem",
]

log = logging.getLogger(__name__)

KINDS = ("grids", "averages", "histograms", "filters", "confusion", "clusters", "tokens")
MAX_SAMPLE_ROWS = 32  # rows in a samples figure

Write = Callable[["Picture", "Figure | np.ndarray"], None]
OpenInputs = Callable[[dict[str, Any], Any], Inputs]  # (the store's attrs, its ids) -> inputs


@dataclass(frozen=True)
class RenderOptions:
    """What to draw. ``samples``: 'per-class' (the first stored row of each label) or row
    indices; ``only``: a subset of :data:`KINDS`."""

    layers: Sequence[str] | None = None
    samples: str | Sequence[int] = "per-class"
    max_channels: int = 64
    only: Sequence[str] | None = None
    same_scale: bool = False
    cmap: str = figures.DEFAULT_CMAP
    bins: int = 30

    def __post_init__(self) -> None:
        if self.max_channels <= 0:
            raise OptionError(f"--max-channels {self.max_channels} must be a positive integer.")
        if self.bins <= 0:
            raise OptionError(f"--bins {self.bins} must be a positive integer.")
        unknown = sorted(set(self.only or ()) - set(KINDS))
        if unknown:
            raise OptionError(
                f"--only {','.join(unknown)}: unknown picture kind; choose from {', '.join(KINDS)}."
            )
        if isinstance(self.samples, str) and self.samples != "per-class":
            raise OptionError(
                f"--samples {self.samples}: give 'per-class' or row indices such as 0,17,42."
            )
        if self.cmap not in matplotlib.colormaps:
            raise OptionError(
                f"--cmap {self.cmap} is not a matplotlib colour map; try viridis, magma, gray."
            )

    def wants(self, kind: str) -> bool:
        return not self.only or kind in self.only


@dataclass
class Picture:
    """One PNG of the report. ``path`` is relative to the report folder."""

    kind: str
    layer: str | None
    path: str
    caption: str


@dataclass
class Report:
    """What ``render`` wrote: the pictures, per-layer notes (what was skipped and why), the
    accuracy when the store holds the model's output, and the page."""

    out: Path
    index: Path
    pictures: list[Picture] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # layer ('' = run) -> lines
    html: dict[str, list[str]] = field(default_factory=dict)  # layer -> fragments (top tokens)
    accuracy: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # true x predicted
    seconds: float = 0.0

    def note(self, layer: str | None, line: str, *, level: int = logging.INFO) -> None:
        log.log(level, "%s%s", f"{layer}: " if layer else "", line)
        self.notes.setdefault(layer or "", []).append(line)


def file_stem(layer: str) -> str:
    """A layer name as a safe file name (dots kept: ``layer1.0.conv1``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


class Canvas:
    """One store to draw, with what is shared across layers and pictures: the layers' specs,
    the labels and their names, the inputs (opened once, by ``open_inputs``), and
    :meth:`save`, which hands each picture to ``write``."""

    def __init__(
        self,
        store: Store,
        options: RenderOptions,
        report: Report,
        write: Write,
        *,
        open_inputs: OpenInputs = open_inputs,
    ):
        self.store, self.options, self.report = store, options, report
        self._write, self._open_inputs = write, open_inputs
        self.attrs = store.attrs
        self.specs = {s["name"]: s for s in self.attrs["layers"]}
        self.stats_specs = store.stats_layers()  # layers with --stats (maybe not stored)
        classes = (self.attrs.get("dataset") or {}).get("classes") or []
        self.class_names = list(map(str, classes))
        self.labels = np.asarray(store.labels[:])
        self._inputs: Inputs | str | None = None  # str: why there are none

    def name_of(self, label: int) -> str:
        if label < 0:
            return "unlabelled"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def sample_rows(self) -> list[int]:
        """The rows the grids and strips show (stored rows only)."""
        rows_done = np.repeat(self.store.done(), self.store.chunk_rows)[: self.store.n]
        skipped = {int(s["index"]) for s in self.attrs.get("skipped", [])}
        stored = rows_done & ~np.isin(np.arange(self.store.n), list(skipped))
        samples = self.options.samples
        if isinstance(samples, str):  # per-class: the first stored row of each label
            labels = np.where(stored, self.labels, -2)
            values = [v for v in np.unique(labels) if v >= 0]
            rows = [int(np.argmax(labels == v)) for v in values]
            if not rows:
                rows = [int(i) for i in np.flatnonzero(stored)[:10]]
        else:
            bad = [i for i in samples if not 0 <= i < self.store.n]
            if bad:
                raise OptionError(
                    f"--samples {','.join(map(str, bad))}: the store has rows 0 to "
                    f"{self.store.n - 1}."
                )
            rows = [i for i in samples if stored[i]]
            missing = [i for i in samples if not stored[i]]
            if missing:
                self.report.note(None, f"rows {missing} are not stored (skipped or not written).")
        if len(rows) > MAX_SAMPLE_ROWS:
            self.report.note(
                None, f"showing the first {MAX_SAMPLE_ROWS} of {len(rows)} chosen samples."
            )
            rows = rows[:MAX_SAMPLE_ROWS]
        return rows

    def inputs(self) -> Inputs | None:
        """The store's inputs, or None (noted once) when they cannot be opened."""
        if self._inputs is None:
            try:
                self._inputs = self._open_inputs(self.attrs, self.store.ids)
            except RebuildError as e:
                self._inputs = str(e)
                self.report.note(None, f"inputs not shown: {e}")
        return self._inputs if isinstance(self._inputs, Inputs) else None

    def input_image(self, row: int) -> np.ndarray | None:
        inputs = self.inputs()
        if inputs is None:
            return None
        try:
            return inputs.image(row)
        except RebuildError as e:
            self.report.note(None, f"input of row {row} not shown: {e}")
            return None

    def save(self, content: Figure | np.ndarray, name: str, kind: str, layer: str, caption: str):
        """Hand one picture (file ``name``, of ``kind``) to the writer."""
        self._write(Picture(kind, layer, name, caption), content)

    def grid(self, maps: np.ndarray, value_range=None) -> np.ndarray:
        """(C, h, w) maps as one image, with the options' channels, scale and colour map."""
        return figures.feature_grid(
            maps,
            max_channels=self.options.max_channels,
            same_scale=self.options.same_scale,
            cmap=self.options.cmap,
            value_range=value_range,
        )
