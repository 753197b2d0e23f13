"""A .npy file that grows by rows: the store's arrays are streamed to disk batch by batch, never
held whole in memory, and `np.load(mmap_mode="r")` reads them with no conversion step.

The header has a fixed size (HEADER_BYTES), so it is rewritten in place at every commit: after a
commit the file is a valid .npy of exactly the committed rows. Rows appended after the last
commit (a killed run) are cut off when the file is reopened with its committed row count.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    body_len = HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    return _MAGIC + body_len.to_bytes(2, "little") + (text.ljust(body_len - 1) + "\n").encode("latin1")


class GrowingNpy:
    """Rows of one dtype and row shape, appended to `path` and committed with `commit()`."""

    def __init__(self, path: str | Path, dtype: np.dtype | str, row_shape: tuple[int, ...] = (), rows: int = 0):
        """Open `path` holding `rows` committed rows (a new file when rows == 0 and it is missing)."""
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.rows = rows
        end = HEADER_BYTES + rows * self.row_bytes
        if rows == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w+b")  # noqa: SIM115  (held open across appends; close() closes it)
        else:
            if not self.path.is_file() or self.path.stat().st_size < end:
                raise OSError(f"{self.path} is shorter than its {rows} committed rows")
            self.file = open(self.path, "r+b")  # noqa: SIM115  (as above)
        self.file.truncate(end)
        self.file.seek(end)
        self.commit()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self.file.write(rows.tobytes())
        self.rows += len(rows)

    def commit(self) -> None:
        """Make the rows appended so far part of the file's header, and flush them to the OS."""
        self.file.seek(0)
        self.file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.seek(0, os.SEEK_END)
        self.file.flush()

    def close(self) -> None:
        self.commit()
        os.fsync(self.file.fileno())
        self.file.close()
