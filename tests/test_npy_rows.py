"""Reading rows of .npy files without memory maps (spinepipe.npy_rows), and the stack cache
built on it keeping only a few series in memory."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spinepipe.localize.stacks import StackCache
from spinepipe.npy_rows import NpyRows


def test_rows_read_back_exactly(tmp_path):
    array = np.random.default_rng(0).random((7, 3, 4)).astype(np.float16)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 7
    assert np.array_equal(rows.read(0, 7), array)
    assert np.array_equal(rows.read(5), array[5:6])
    assert np.array_equal(rows.read(2, 3), array[2:5])
    part = rows.read(1)
    part[:] = 0  # the caller owns it: the file is not touched
    assert np.array_equal(NpyRows(tmp_path / "a.npy").read(1), array[1:2])
    with pytest.raises(IndexError, match="a.npy"):
        rows.read(6, 2)


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    np.save(tmp_path / "b.npy", np.ones((4, 8), dtype=np.float32))
    data = (tmp_path / "b.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(data[:-40])
    with pytest.raises(OSError, match="b.npy: truncated"):
        NpyRows(tmp_path / "b.npy").read(3)


def _index(tmp_path, n_series: int, slices: int = 3) -> tuple[pl.DataFrame, np.ndarray]:
    images = np.arange(n_series * slices * 4, dtype=np.float16).reshape(n_series * slices, 2, 2)
    np.save(tmp_path / "stacks.npy", images)
    index = pl.DataFrame({
        "series_id": list(range(n_series)), "path": [str(tmp_path / "stacks.npy")] * n_series,
        "offset": [k * slices for k in range(n_series)], "n_slices": [slices] * n_series,
        "instance_numbers": [list(range(1, slices + 1))] * n_series,
        "slice_ok": [[True] * slices] * n_series, "scale_x": [2.0] * n_series,
        "scale_y": [3.0] * n_series, "status": ["ok"] * n_series})
    return index, images


def test_stack_cache_reads_each_series_where_the_index_says_and_keeps_a_few(tmp_path):
    index, images = _index(tmp_path, 6)
    cache = StackCache(index, keep=2)
    for series_id in range(6):
        stack = cache.get(series_id)
        assert np.array_equal(stack["images"], images[series_id * 3:series_id * 3 + 3])
        assert stack["scale"].tolist() == [2.0, 3.0]
        assert np.array_equal(cache.slice(series_id, 1), images[series_id * 3 + 1])
    assert list(cache._cache) == [4, 5]  # older series dropped: memory bounded by `keep`
    assert np.array_equal(cache.slice(0, 2), images[2])  # read on its own, not cached
    assert list(cache._cache) == [4, 5]
    assert cache.meta(3)["instance_numbers"].tolist() == [1, 2, 3]
