"""Epochs: the store with an epoch axis that :class:`actextract.Recorder` writes: its layout
(:func:`build_recording`) and its reader (its creation or continuation:
:func:`actextract.record.recording.open_recording`).

The arrays (``acts/<layer>`` (E, N, *shape), ``progress/epochs``, ``progress/records``) are
described in ``docs/store-format.md`` ("A recording's store"), the one copy of the schema.

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
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from actextract.errors import StoreError
from actextract.store.base import BlockReader, StoreReader, write_attributes
from actextract.store.build import create_labels, create_text, id_width
from actextract.store.layout import ArraySpec, StoreOptions, quiet_numcodecs
from actextract.store.strings import RECORD_MIN_BYTES, fit_json

__all__ = [
    "AXIS",
    "EpochArray",
    "EpochStore",
    "EpochView",
    "build_recording",
    "format_epochs",
    "record_width",
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


class EpochStore(StoreReader):
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
        texts = self.text("progress/records")[: len(done)].tolist()
        return {int(e): json.loads(texts[e]) for e in np.flatnonzero(done) if texts[e]}

    def write_record(self, epoch: int, record: dict[str, Any]) -> None:
        """Write epoch ``epoch``'s record (JSON, in the form the store keeps strings)."""
        records = self.text("progress/records")
        text = json.dumps(record)
        if records.fixed:
            text = fit_json(record, records.width or 0, f"epoch {epoch}'s record")
        records[epoch] = text

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

    def update_attrs(self, **values: Any) -> None:
        """Update the root attributes (:func:`~actextract.store.base.write_attributes`)."""
        write_attributes(self, values)

    def skipped(self) -> list[dict[str, Any]]:
        return []  # a probe set loads completely, or the capture fails

    def nonfinite(self) -> dict[str, int]:
        """{layer: rows holding NaN or Inf}, summed over the epochs written."""
        total = dict.fromkeys(self.layers, 0)
        for record in self.records().values():
            for layer, n in (record.get("nonfinite") or {}).items():
                total[layer] = total.get(layer, 0) + int(n)
        return total

    def __repr__(self) -> str:
        return (
            f"EpochStore('{self.location}', layers={self.layers}, n={self.n}, "
            f"epochs={format_epochs(self.epochs())}, status={self.status})"
        )


class EpochView(BlockReader):
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


def record_width(arrays: Sequence[ArraySpec]) -> int:
    """Bytes of a recording's per-epoch record (JSON): the weights' sha256, times, and a
    count per layer."""
    return max(RECORD_MIN_BYTES, 512 + sum(2 * len(a.name.encode()) + 32 for a in arrays))


def build_recording(
    n: int, arrays: Sequence[ArraySpec], options: StoreOptions, chunk_rows: int, attrs: dict
) -> Any:
    """What :meth:`Location.create` runs to lay out a new recording (no epoch yet), as
    :func:`actextract.store.build.build_store` does for a run."""

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
        create_labels(group, n, chunk_rows)
        group.create_array(
            "progress/epochs",
            shape=(0,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            compressors=crc,
            dimension_names=(AXIS,),
        )
        # the strings: fixed-width UTF-8 rows (actextract.store.strings)
        ids, record = id_width(attrs), record_width(arrays)
        for path, shape, chunks, dims, width in (
            ("ids", (n, ids), (chunk_rows, ids), ("sample", "id_byte"), ids),
            ("progress/records", (0, record), (1, record), (AXIS, "record_byte"), record),
        ):
            create_text(group, path, shape, chunks, dims, width)
        group.update_attributes(attrs)

    return build
