"""Chunks written where the rows lie (actextract.store.chunks): the file is the one zarr's own
codec pipeline writes for the same rows, byte for byte, zarr reads it back through its crc32c
codec, the NaN/Inf rows found on the way are exactly those of the pieces, and a write that
fails leaves nothing under a real name."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from actextract.store.chunks import PIECE_BYTES, BlockRows, chunk_file, nonfinite_rows, write_chunk


def _arrays(root, dtype, row_shape, *, chunk_rows=4, n=10, compressors=None):
    compressors = compressors or (Crc32cCodec(),)
    group = zarr.open_group(root, mode="w")
    made = []
    for name in ("zarr", "direct"):
        arr = group.create_array(
            name,
            shape=(n, *row_shape),
            chunks=(chunk_rows, *row_shape),
            dtype=dtype,
            fill_value=np.nan,
            compressors=compressors,
        )
        made.append(arr.with_config({"write_empty_chunks": True}))
    return made


def _rows(dtype, row_shape, n=10, seed=0):
    data = np.random.default_rng(seed).standard_normal((n, *row_shape)).astype(dtype)
    flat = data.reshape(n, -1)
    flat[1, 0] = np.inf
    flat[2, -1] = np.nan
    flat[6, flat.shape[1] // 2] = -np.inf
    flat[9, -1] = np.nan
    return data


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("row_shape", [(3, 2), (1,), (700, 800)])  # the last: rows over 1 MB
def test_a_direct_chunk_is_zarrs_chunk_byte_for_byte(tmp_path, dtype, row_shape):
    ref, direct = _arrays(tmp_path / "s.zarr", dtype, row_shape)
    data = _rows(dtype, row_shape)
    skipped = {1, 5}  # gaps: the fill value
    for block in range(3):  # the last block holds 2 of its 4 rows: padded with the fill value
        lo, hi = 4 * block, min(10, 4 * block + 4)
        whole = data[lo:hi].copy()
        pieces, start = [], None
        for r in range(lo, hi + 1):  # runs of rows that are not skipped
            if r < hi and r not in skipped and start is None:
                start = r
            if (r == hi or r in skipped) and start is not None:
                pieces.append((start - lo, data[start:r]))
                start = None
        for r in skipped & set(range(lo, hi)):
            whole[r - lo] = np.nan
        ref[lo:hi] = whole
        flags = np.zeros(hi - lo, bool)
        path = chunk_file(direct, tmp_path / "s.zarr", block)
        write_chunk(direct, path, BlockRows(hi - lo, pieces), flags)
        key = ref.metadata.encode_chunk_key((block,) + (0,) * len(row_shape))
        assert path.read_bytes() == (tmp_path / "s.zarr" / "zarr" / key).read_bytes(), block
        want = ~np.isfinite(data[lo:hi].reshape(hi - lo, -1)).all(1)
        want[[r - lo for r in skipped if lo <= r < hi]] = False  # a gap is not checked
        assert flags.tolist() == want.tolist(), block
    assert np.array_equal(direct[:], ref[:], equal_nan=True)  # read through zarr's crc32c
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))


def test_only_the_default_codec_on_a_local_store_is_written_directly(tmp_path):
    plain, _ = _arrays(tmp_path / "a.zarr", "float16", (3,))
    zstd, _ = _arrays(
        tmp_path / "b.zarr", "float16", (3,), compressors=(ZstdCodec(), Crc32cCodec())
    )
    assert chunk_file(plain, tmp_path / "a.zarr", 0) == tmp_path / "a.zarr" / "zarr/c/0/0"
    assert chunk_file(plain, None, 0) is None  # a remote store: zarr writes it
    assert chunk_file(zstd, tmp_path / "b.zarr", 0) is None


def test_a_failed_write_leaves_no_partial_file_and_no_chunk(tmp_path):
    _, direct = _arrays(tmp_path / "s.zarr", "float32", (3,))
    path = chunk_file(direct, tmp_path / "s.zarr", 0)
    wrong = np.zeros((2, 3), np.float64)  # not the array's dtype
    with pytest.raises(ValueError, match="float64"):
        write_chunk(direct, path, BlockRows(4, [(0, np.zeros((2, 3), np.float32)), (2, wrong)]))
    assert not path.exists() and not list((tmp_path / "s.zarr").rglob("*.partial"))


def test_a_disk_full_in_the_middle_of_a_chunk_leaves_nothing_under_a_real_name(
    tmp_path, monkeypatch
):
    import errno

    import actextract.store.chunks as chunks

    _, direct = _arrays(tmp_path / "s.zarr", "float32", (700, 800), chunk_rows=2)
    path = chunk_file(direct, tmp_path / "s.zarr", 0)
    calls, write_all = [], chunks._write_all

    def full(fd, view):
        calls.append(view.nbytes)
        if len(calls) == 3:  # two megabytes in
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, view)

    monkeypatch.setattr(chunks, "_write_all", full)
    rows = BlockRows(2, [(0, np.ones((2, 700, 800), np.float32))])
    with pytest.raises(OSError, match="No space"):
        write_chunk(direct, path, rows)
    assert not path.exists() and not list((tmp_path / "s.zarr").rglob("*.partial"))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_nonfinite_rows_flags_nan_and_inf_and_nothing_else(dtype):
    x = np.random.default_rng(0).standard_normal((8, 50)).astype(dtype)
    x[1, 3], x[3, 49], x[4, 0] = np.nan, -np.inf, np.inf
    x[5] = np.finfo(dtype).max  # the largest finite value is finite
    x[6, :3] = [-0.0, np.finfo(dtype).smallest_subnormal, -np.finfo(dtype).max]
    utype, bits = {np.float16: (np.uint16, 0x7C01), np.float32: (np.uint32, 0x7F800001)}[dtype]
    x[7].view(utype)[10] = bits  # a signalling NaN, its payload 1
    expected = [False, True, False, True, True, False, False, True]
    assert nonfinite_rows(x).tolist() == expected
    assert nonfinite_rows(x[:, :0]).tolist() == [False] * 8  # rows of no values
    big = np.zeros((2, PIECE_BYTES), dtype)  # scratch space grows to the window
    big[1, -1] = np.nan
    assert nonfinite_rows(big).tolist() == [False, True]
