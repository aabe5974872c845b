"""Recording: the store a Recorder writes — a new recording, or one of the same run to
continue — through the one way stores are created or reopened
(:func:`actextract.store.opening.open_for_writing`), with the Recorder's identity check.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from actextract.errors import OutputExistsError
from actextract.store.epochs import EpochStore, build_recording, format_epochs
from actextract.store.layout import ArraySpec, StoreOptions
from actextract.store.location import Location, writable
from actextract.store.opening import check_identity, open_for_writing, open_store

__all__ = ["identity", "open_recording"]

log = logging.getLogger(__name__)


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

    def reopen(location: Location) -> EpochStore:
        store = open_store(location, mode="r+")
        if not isinstance(store, EpochStore):
            raise OutputExistsError(
                f"'{location}' is a store written by extract (no epoch axis); a Recorder "
                "continues only its own recordings. Choose another out, or pass "
                "overwrite=True to replace it."
            )
        check_identity(
            location,
            identity(attrs),
            identity(store.attrs),
            whose="this Recorder's",
            fix="Give the same settings to continue it, or pass overwrite=True to replace it "
            "(or choose another out).",
        )
        with writable(location, "clean up after an interrupted capture"):
            location.clean_partials()
            if store.attrs.get("every") != attrs.get("every"):
                store.update_attrs(every=attrs.get("every"))
        if store.status != "complete" and store.attrs.get("capturing") is not None:
            log.info("the capture of epoch %s did not finish", store.attrs["capturing"])
        log.info("continuing %s: epochs %s recorded", location, format_epochs(store.epochs()))
        return store

    build = build_recording(n, arrays, options, chunk_rows, attrs)
    store = open_for_writing(
        location, build, None if overwrite else reopen, overwrite=overwrite, reused="continued"
    )
    return store  # type: ignore[return-value]


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
