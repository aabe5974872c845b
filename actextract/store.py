"""Store: the on-disk schema of a run (Zarr v3), its creation, block writes and the reader.

::

    run.zarr/
      zarr.json        root attributes: provenance, layers, dtype, chunk rows, status
      acts/<layer>     (N, *shape) per layer, chunks of chunk_rows samples, dimension_names
      labels           (N,) int64, -1 where a sample has none (or was skipped)
      ids              (N,) str: the sample's id (relative path, or dataset index)
      progress/done    (n_blocks,) uint8: 1 once every array of that row block is written

A row block (``chunk_rows`` samples, addressed by dataset index) is the unit of work. Its
completion record is written after all of its data, and is the only thing a reader trusts.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from actextract.errors import OutputExistsError, StoreError
from actextract.layout import (
    DEFAULT_LEVEL,
    FORMAT_VERSION,
    ArraySpec,
    StoreOptions,
    choose_chunk_rows,
    quiet_numcodecs,
)

__all__ = [
    "FORMAT_VERSION",
    "ArraySpec",
    "Store",
    "StoreOptions",
    "check_output",
    "choose_chunk_rows",
    "create_store",
    "open_store",
]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Store:
    """A run's store, for writing blocks and for reading lazily.

    ``store[layer]`` is a zarr Array of shape (N, *shape): slicing reads only the chunks it
    touches. ``labels`` (N,) int64, ``ids`` (N,) str, ``attrs`` the provenance.
    """

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group
        self._nodes: dict[str, zarr.Array] = {}
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def layers(self) -> list[str]:
        return [spec["name"] for spec in self.attrs["layers"]]

    def __getitem__(self, layer: str) -> zarr.Array:
        if layer not in self.layers:
            raise StoreError(
                f"layer '{layer}' is not in {self.path}; it holds: {', '.join(self.layers)}."
            )
        return self._node(f"acts/{layer}")

    def _node(self, path: str) -> zarr.Array:
        """An array of the store, opened once: its metadata never changes after creation, and
        block writes would otherwise re-read it from disk every time.

        Opened with ``write_empty_chunks``: every chunk is written as it is, so zarr does not
        scan each one for being all fill value (a pass over the data that halved the speed of
        uncompressed writes), and a written chunk is never deleted. The setting is read when
        an array is opened, hence the lock (writer threads open arrays on first use)."""
        with self._lock:
            if path not in self._nodes:
                with quiet_numcodecs(), zarr.config.set({"array.write_empty_chunks": True}):
                    self._nodes[path] = self.group[path]  # type: ignore[assignment]
            return self._nodes[path]

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    @property
    def labels(self) -> zarr.Array:
        return self._node("labels")

    @property
    def ids(self) -> zarr.Array:
        return self._node("ids")

    @property
    def n(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    def block_range(self, block: int) -> range:
        return range(block * self.chunk_rows, min(self.n, (block + 1) * self.chunk_rows))

    def done(self) -> np.ndarray:
        """(n_blocks,) bool: which row blocks are completely written."""
        return self._node("progress/done")[:].astype(bool)  # chunks are read afresh

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete" and bool(self.done().all())

    def __repr__(self) -> str:
        return f"Store('{self.path}', layers={self.layers}, n={self.n}, status={self.status})"

    # -- writing ---------------------------------------------------------------------------
    def write_block(
        self, block: int, acts: Mapping[str, np.ndarray], labels: np.ndarray, ids: Sequence[str]
    ) -> None:
        """Write one row block (arrays of len(block_range(block)) rows), then mark it done."""
        rows = self.block_range(block)
        sl = slice(rows.start, rows.stop)
        with quiet_numcodecs():
            for name, data in acts.items():
                self._node(f"acts/{name}")[sl] = data
        self._node("labels")[sl] = labels
        self._node("ids")[sl] = np.asarray(ids, dtype=str)
        self._node("progress/done")[block] = 1  # only now is the block trusted

    def update_attrs(self, **values: Any) -> None:
        self.group.attrs.update(values)

    def finish(self, **values: Any) -> None:
        """Mark the run complete if every block is done, else incomplete; record ``values``."""
        status = "complete" if self.done().all() else "incomplete"
        self.update_attrs(status=status, finished=_now(), **values)

    # -- summary ---------------------------------------------------------------------------
    def disk_bytes(self, node: str = "") -> int:
        """Bytes on disk under ``node`` ('' for the whole store)."""
        root = self.path / node
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def info(self) -> dict[str, Any]:
        """What ``actextract info`` shows: arrays, shapes, codec, sizes, labels, status."""
        attrs = self.attrs
        done = self.done()
        arrays = []
        for spec in attrs["layers"]:
            arr = self[spec["name"]]
            raw = arr.nbytes
            disk = self.disk_bytes(f"acts/{spec['name']}")
            arrays.append(
                {
                    "name": spec["name"],
                    "shape": tuple(arr.shape),
                    "dtype": str(arr.dtype),
                    "chunks": tuple(arr.chunks),
                    "reduce": spec.get("reduce", "none"),
                    "raw_bytes": raw,
                    "disk_bytes": disk,
                }
            )
        labels = self.labels[:]
        values, counts = np.unique(labels, return_counts=True)
        return {
            "path": str(self.path),
            "status": attrs.get("status"),
            "blocks_done": int(done.sum()),
            "n_blocks": len(done),
            "n_samples": self.n,
            "chunk_rows": self.chunk_rows,
            "dtype": attrs.get("dtype"),
            "codec": attrs.get("codec"),
            "model": attrs.get("model"),
            "dataset": attrs.get("dataset"),
            "precision": attrs.get("precision"),
            "arrays": arrays,
            "disk_bytes": self.disk_bytes(),
            "labels": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
            "skipped": attrs.get("skipped", []),
            "error": attrs.get("error"),
            "summary": attrs.get("summary"),
        }


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, and never one that is not a Zarr store
    (or an empty folder): ``--out ~`` must not delete a home directory. Touches nothing."""
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(
            f"output '{path}' already exists; pass --overwrite to replace it, "
            "or choose another --out."
        )
    is_store = path.is_dir() and (path / "zarr.json").is_file()
    if not (path.is_dir() and (is_store or not any(path.iterdir()))):
        raise OutputExistsError(
            f"output '{path}' exists and is not a Zarr store; --overwrite "
            "only replaces stores. Remove it yourself or choose another --out."
        )


def create_store(
    path: str | Path,
    *,
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: Mapping[str, Any],
    overwrite: bool = False,
) -> Store:
    """Create an empty store for ``n`` samples; ``status`` is 'incomplete' until finish()."""
    path = Path(path)
    if n <= 0:
        raise StoreError(f"cannot create '{path}' for {n} samples: the dataset is empty.")
    check_output(path, overwrite)
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w-")
    fill = np.nan  # an unwritten or skipped row reads as NaN, never as real zeros
    compressors = options.compressors()
    with quiet_numcodecs():
        for spec in arrays:
            group.create_array(
                f"acts/{spec.name}",
                shape=(n, *spec.shape),
                chunks=(chunk_rows, *spec.shape),
                dtype=options.dtype,
                fill_value=fill,
                compressors=compressors,
                dimension_names=spec.dimension_names(),
            )
    group.create_array(
        "labels",
        shape=(n,),
        chunks=(chunk_rows,),
        dtype="int64",
        fill_value=-1,
        dimension_names=("sample",),
    )
    group.create_array(
        "ids", shape=(n,), chunks=(chunk_rows,), dtype=str, dimension_names=("sample",)
    )
    n_blocks = math.ceil(n / chunk_rows)
    # one chunk per block: processes writing different blocks never touch the same file
    group.create_array(
        "progress/done",
        shape=(n_blocks,),
        chunks=(1,),
        dtype="uint8",
        fill_value=0,
        dimension_names=("block",),
    )
    group.attrs.update(
        {
            **attrs,
            "format_version": FORMAT_VERSION,
            "n_samples": n,
            "chunk_rows": chunk_rows,
            "dtype": options.dtype,
            "codec": {
                "name": options.codec,
                "level": options.level
                if options.level is not None
                else DEFAULT_LEVEL.get(options.codec),
            },
            "layers": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "shape": list(s.shape),
                    "output_shape": list(s.output_shape or s.shape),
                    "reduce": s.reduce,
                    "model_output": s.model_output,
                    "array": f"acts/{s.name}",
                }
                for s in arrays
            ],
            "status": "incomplete",
            "created": _now(),
        }
    )
    return Store(path, group)


def open_store(path: str | Path, *, mode: str = "r") -> Store:
    """Open a store written by actextract. ``mode='r'`` reads; ``'r+'`` lets a run write."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"'{path}' is not a Zarr store (no zarr.json); give the --out of an actextract run."
        )
    try:
        group = zarr.open_group(zarr.storage.LocalStore(path, read_only=mode == "r"), mode=mode)
    except Exception as e:
        raise StoreError(f"'{path}' cannot be opened as a Zarr v3 group: {e}") from None
    version = group.attrs.get("format_version")
    if version is None or "layers" not in group.attrs:
        raise StoreError(
            f"'{path}' is a Zarr group but not an actextract store (no "
            "format_version/layers attributes)."
        )
    if int(version) > FORMAT_VERSION:  # type: ignore[arg-type]
        raise StoreError(
            f"'{path}' has store format {version}; this actextract reads up to "
            f"{FORMAT_VERSION}. Upgrade actextract."
        )
    return Store(path, group)
