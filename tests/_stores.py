"""Stores as older actextract versions wrote them, made from a store of today's format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr


def old_strings(path: Path, version: int = 6) -> None:
    """Rewrite the run's store at ``path`` as formats before 7 kept strings: ids and
    progress/skipped as zarr's variable-length strings (same text), no ``id_width``, no
    consolidated metadata; its ``format_version`` becomes ``version``."""
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    rows = root.attrs["chunk_rows"]
    for name, chunks, dims in (
        ("ids", (rows,), ("sample",)),
        ("progress/skipped", (1,), ("block",)),
    ):
        texts = [bytes(r).rstrip(b"\0").decode() for r in root[name][...]]
        shutil.rmtree(path / name)
        arr = root.create_array(
            name,
            shape=(len(texts),),
            chunks=chunks,
            dtype=str,
            compressors=(zarr.codecs.Crc32cCodec(),),
            dimension_names=dims,
        )
        arr[:] = np.asarray(texts, dtype=str)
    meta = json.loads((path / "zarr.json").read_text())
    meta.pop("consolidated_metadata", None)
    meta["attributes"]["format_version"] = version
    meta["attributes"].pop("id_width", None)
    (path / "zarr.json").write_text(json.dumps(meta))
