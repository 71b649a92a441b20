"""Rows of a .npy file read on demand with plain file reads.

A memory map would do the same with less code, but every page a job touches through it
counts in the job's resident memory (and against a Slurm job's limit) until the map is
dropped: a training job that visits every crop of a large dataset once per epoch would
look, and be accounted, as large as the dataset. Reads into arrays the caller owns keep a
job's memory at what it holds at once; the kernel's page cache still serves repeated reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NpyRows:
    """Read rows (along the first axis) of one .npy file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self.data_start = handle.tell()
        if fortran:
            raise ValueError(f"{self.path}: a Fortran-ordered array (rows are not contiguous)")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, first: int, count: int = 1) -> np.ndarray:
        """Rows ``first`` .. ``first + count - 1``, shape (count, *row shape)."""
        if first < 0 or count < 0 or first + count > self.shape[0]:
            raise IndexError(f"{self.path}: rows {first}..{first + count - 1} outside 0..{self.shape[0] - 1}")
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + first * self.row_items * self.dtype.itemsize)
            data = np.fromfile(handle, dtype=self.dtype, count=count * self.row_items)
        if data.size != count * self.row_items:
            raise OSError(f"{self.path}: truncated (rows {first}..{first + count - 1} incomplete)")
        return data.reshape(count, *self.shape[1:])
