"""Epochs: the store with an epoch axis that :class:`actextract.Recorder` writes: its layout,
its creation or continuation (:func:`open_recording`), and its reader.

::

    train.zarr/
      zarr.json         a run's root attributes (layers, n_samples, chunk_rows, dtype, codec,
                        model, dataset, software, status) plus axis "epoch" and ``every``
      acts/<layer>      (E, N, *shape): epoch e, probe sample i; chunks (1, chunk_rows, *shape);
                        dimension_names ("epoch", "sample", "channel", "y", "x")
      labels, ids       (N,): the probe's samples, as in a run's store
      progress/epochs   (E,) uint8: 1 once every array of that epoch is written
      progress/records  (E,) str: JSON {state_sha256, captured, seconds, nonfinite} per epoch

Index e is the epoch number the training loop gave ``Recorder.capture``; an epoch it did not
capture (``every``) reads as NaN and is not done. The arrays grow along the epoch axis, and
the completion flag of an epoch is written after all of its data: only the flag is trusted.

:func:`actextract.open_store` returns an :class:`EpochStore` for such a store;
``store.at(epoch)`` is one epoch read like a run's store of N rows (an :class:`EpochView`),
so the renderer and the aggregates draw it with the code they use for a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from actextract.errors import OutputExistsError, StoreError
from actextract.store.layout import ArraySpec, StoreOptions, quiet_numcodecs
from actextract.store.location import Location, writable
from actextract.store.run import Store, open_store

__all__ = [
    "AXIS",
    "EpochArray",
    "EpochStore",
    "EpochView",
    "format_epochs",
    "identity",
    "open_recording",
]

log = logging.getLogger(__name__)

AXIS = "epoch"  # the root attribute ``axis`` of a Recorder's store


def format_epochs(epochs: Sequence[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] → '0-3, 5, 7-8'."""
    runs: list[list[int]] = []
    for e in epochs:
        if runs and e == runs[-1][-1] + 1:
            runs[-1].append(e)
        else:
            runs.append([e])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"


class _NoRowBlocks:
    """A store with an epoch axis is written by a Recorder, one epoch at a time, never by
    ``extract``'s row blocks."""

    location: Any

    def write_block(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError(
            f"'{self.location}' has an epoch axis (a Recorder's store); extract cannot write "
            "into it. Choose another --out, or --overwrite to replace it."
        )

    def seal(self, *args: Any, **kwargs: Any) -> None:
        self.write_block()


class EpochStore(_NoRowBlocks, Store):
    """A Recorder's store. ``store[layer]`` is the zarr Array (E, N, *shape); ``done()`` says
    which epochs are completely written; ``at(epoch)`` reads one of them like a run's store."""

    def _node(self, path: str) -> Any:
        if path == "progress/done":  # what verify (of a run's row blocks) reads first
            raise StoreError(
                "a recording has no row blocks to verify (it has an epoch axis); its chunks "
                "carry crc32c checksums, checked whenever they are read"
            )
        return super()._node(path)

    def done(self) -> np.ndarray:
        """(E,) bool: which epochs are completely written (E: one past the highest epoch the
        arrays have room for)."""
        return self._node("progress/epochs")[:].astype(bool)

    def epochs(self) -> list[int]:
        """The epochs completely written, in order."""
        return [int(e) for e in np.flatnonzero(self.done())]

    def records(self) -> dict[int, dict[str, Any]]:
        """{epoch: its record (state_sha256 of the weights, captured, seconds, nonfinite)}
        for the epochs completely written."""
        done = self.done()
        texts = self._node("progress/records")[: len(done)]
        return {int(e): json.loads(texts[e]) for e in np.flatnonzero(done) if texts[e]}

    def at(self, epoch: int) -> EpochView:
        """Epoch ``epoch``, read like a run's store of N rows."""
        epochs = self.epochs()
        if epoch not in epochs:
            raise StoreError(
                f"epoch {epoch} is not recorded in '{self.location}'; it holds epochs "
                f"{format_epochs(epochs)}."
            )
        return EpochView(self, epoch)

    @property
    def complete(self) -> bool:
        """The last capture finished: every epoch recorded so far is whole."""
        return self.status == "complete"

    def has_records(self) -> bool:
        """Asked only by ``extract --resume`` (of a run's row-block records), which cannot
        continue a recording: refused here, with the reason."""
        raise StoreError(
            f"'{self.location}' has an epoch axis (a Recorder's store); extract cannot resume "
            "it. Choose another --out, or --overwrite to replace it."
        )

    def skipped(self) -> list[dict[str, Any]]:
        return []  # a probe set loads completely, or the capture fails

    def nonfinite(self) -> dict[str, int]:
        """{layer: rows holding NaN or Inf}, summed over the epochs written."""
        total = dict.fromkeys(self.layers, 0)
        for record in self.records().values():
            for layer, n in (record.get("nonfinite") or {}).items():
                total[layer] = total.get(layer, 0) + int(n)
        return total

    def info(self) -> dict[str, Any]:
        """A run's :meth:`Store.info`, with the epochs: ``blocks_done``/``n_blocks`` count
        epochs here."""
        data = super().info()
        epochs = self.epochs()
        data.update(axis=AXIS, epochs=epochs, every=self.attrs.get("every"))
        data["nonfinite"] = self.nonfinite()
        return data

    def __repr__(self) -> str:
        return (
            f"EpochStore('{self.location}', layers={self.layers}, n={self.n}, "
            f"epochs={format_epochs(self.epochs())}, status={self.status})"
        )


class EpochView(_NoRowBlocks, Store):
    """One written epoch of an :class:`EpochStore`, read like a run's complete store:
    ``view[layer]`` is (N, *shape), every row block done, labels and ids the store's."""

    def __init__(self, recording: EpochStore, epoch: int):
        super().__init__(recording.location, recording.group)
        self.recording, self.epoch = recording, epoch

    def _node(self, path: str) -> Any:
        node = self.recording._node(path)
        return EpochArray(node, self.epoch) if path.startswith("acts/") else node

    def done(self) -> np.ndarray:
        return np.ones(self.n_blocks, dtype=bool)  # only written epochs are viewed

    @property
    def status(self) -> str:
        return "complete"

    def has_records(self) -> bool:
        return False

    def skipped(self) -> list[dict[str, Any]]:
        return []

    def nonfinite(self) -> dict[str, int]:
        record = self.recording.records().get(self.epoch) or {}
        return {layer: int(record.get("nonfinite", {}).get(layer, 0)) for layer in self.layers}

    def __repr__(self) -> str:
        return f"EpochView('{self.location}', epoch={self.epoch}, n={self.n})"


class EpochArray:
    """Epoch ``epoch`` of an (E, N, *shape) zarr Array, read like an (N, *shape) one: basic
    and orthogonal selections (the rows, then the per-sample axes)."""

    def __init__(self, array: zarr.Array, epoch: int):
        self.array, self.epoch = array, epoch

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.array.nbytes // max(1, self.array.shape[0])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        rest = selection if isinstance(selection, tuple) else (selection,)
        return np.asarray(self.array[(self.epoch, *rest)])

    def get_orthogonal_selection(self, selection: Any) -> np.ndarray:
        rest = selection if isinstance(selection, tuple) else (selection,)
        return np.asarray(self.array.get_orthogonal_selection((self.epoch, *rest)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"<epoch {self.epoch} of {self.array.path}: shape {self.shape}, {self.dtype}>"


def open_recording(
    location: Location,
    *,
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: dict[str, Any],
    overwrite: bool = False,
) -> EpochStore:
    """The recording at ``location``: continued when it is one of the same run
    (:func:`identity`), else created (no epoch yet; ``overwrite`` replaces a store)."""
    if location.is_store() and not overwrite:
        store = open_store(location, mode="r+")
        if not isinstance(store, EpochStore):
            raise OutputExistsError(
                f"'{location}' is a store written by extract (no epoch axis); a Recorder "
                "continues only its own recordings. Choose another out, or pass "
                "overwrite=True to replace it."
            )
        ours, theirs = identity(attrs), identity(store.attrs)
        for field, was in theirs.items():
            if ours[field] != was:
                raise StoreError(
                    f"'{location}' records another run: its {field} is {was!r}, this "
                    f"Recorder's is {ours[field]!r}. Give the same settings to continue it, "
                    "or pass overwrite=True to replace it (or choose another out)."
                )
        with writable(location, "clean up after an interrupted capture"):
            location.clean_partials()
            if store.attrs.get("every") != attrs.get("every"):
                store.update_attrs(every=attrs.get("every"))
        if store.status != "complete" and store.attrs.get("capturing") is not None:
            log.info("the capture of epoch %s did not finish", store.attrs["capturing"])
        log.info("continuing %s: epochs %s recorded", location, format_epochs(store.epochs()))
        return store
    if location.exists() and not (location.is_store() or location.is_empty_dir()):
        raise OutputExistsError(
            f"out '{location}' exists and is not a Zarr store; a Recorder creates a new store "
            "or continues its own. Remove it yourself or choose another out."
        )
    if location.exists():
        with writable(location, "remove the old store (overwrite=True)"):
            location.remove()
    if not location.create(_build(n, arrays, options, chunk_rows, attrs)):
        raise OutputExistsError(f"'{location}' was created by another process meanwhile.")
    return open_store(location, mode="r+")  # type: ignore[return-value]


def identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What must match for a Recorder to continue a recording, named as the user knows it."""
    model, dataset = attrs.get("model") or {}, attrs.get("dataset") or {}
    layers = attrs.get("layers") or []
    out = {
        "model class": model.get("class"),
        "probe": dataset.get("spec"),
        "probe rows": dataset.get("rows"),
        "probe size": attrs.get("n_samples"),
        "preprocessing": dataset.get("transform"),
        "layers": [spec["name"] for spec in layers],
        "reductions": {spec["name"]: spec.get("reduce", "none") for spec in layers},
        "dtype": attrs.get("dtype"),
        "codec": attrs.get("codec"),
        "precision": attrs.get("precision"),
        "layer shapes": {spec["name"]: spec["shape"] for spec in layers},
    }
    return json.loads(json.dumps(out))  # tuples → lists, as zarr.json gives them back


def _build(
    n: int, arrays: Sequence[ArraySpec], options: StoreOptions, chunk_rows: int, attrs: dict
) -> Any:
    """What :meth:`Location.create` runs to lay out a new recording (no epoch yet)."""

    def build(zstore: zarr.abc.store.Store) -> None:
        group = zarr.open_group(zstore, mode="w-")
        crc = (Crc32cCodec(),)
        with quiet_numcodecs():
            for spec in arrays:
                group.create_array(
                    spec.array,
                    shape=(0, n, *spec.shape),
                    chunks=(1, chunk_rows, *spec.shape),
                    dtype=options.dtype,
                    fill_value=np.nan,  # an epoch not captured reads as NaN, never as zeros
                    compressors=options.compressors(),
                    dimension_names=(AXIS, *spec.dimension_names()),
                )
        for name, dtype, fill in (("labels", "int64", -1), ("ids", str, None)):
            group.create_array(
                name,
                shape=(n,),
                chunks=(chunk_rows,),
                dtype=dtype,
                fill_value=fill,
                compressors=crc,
                dimension_names=("sample",),
            )
        for name, dtype, fill in (("progress/records", str, None), ("progress/epochs", "uint8", 0)):
            group.create_array(
                name,
                shape=(0,),
                chunks=(1,),
                dtype=dtype,
                fill_value=fill,
                compressors=crc,
                dimension_names=(AXIS,),
            )
        group.update_attributes(attrs)

    return build
