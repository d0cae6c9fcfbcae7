"""Sizes checked before memory is touched: the most any one array (read from a file, or a
layer's weights) may make convnet allocate, and readers that hold every file to it and to
what the file itself promises.

A file names the sizes of what it holds (an IDX header, an .npy header in an .npz, a
pickle's byte counts, a model's layer sizes); a damaged or crafted one can name 10^12
values from a few bytes. Every reader checks those sizes here first, so such a file is an
error naming it, never gigabytes allocated or a bare ``MemoryError``.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

# 4 GiB: 20 times the largest array the book's data holds (its expanded training set,
# 250,000 x 784 float32 = 784 MB as float32, 196 MB as bytes).
MAX_ARRAY_BYTES = 4 * 2**30


class TooLargeError(ValueError):
    """A size a file names is past what it holds or past :data:`MAX_ARRAY_BYTES`."""


def check_bytes(nbytes: int, what: str) -> None:
    """Refuse ``what`` (shape and bytes, in words) past :data:`MAX_ARRAY_BYTES`."""
    if nbytes > MAX_ARRAY_BYTES:
        raise TooLargeError(
            f"{what} is {nbytes:,} bytes, more than the {MAX_ARRAY_BYTES:,} convnet allows "
            "any one array or file"
        )


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's (shape, dtype) in the ``.npz`` at ``path``, from its header alone,
    checked against the bytes the archive holds for it before any array is read."""
    shapes = {}
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            check_bytes(info.file_size, f"array {name!r} (uncompressed)")
            with archive.open(info) as member:
                shape, dtype = _npy_header(member, name)
            nbytes = math.prod(shape) * dtype.itemsize
            header = info.file_size - nbytes
            if nbytes > info.file_size or header > 2**16:
                raise TooLargeError(
                    f"array {name!r}: its header claims shape {shape} ({nbytes:,} bytes of "
                    f"{dtype}); the archive holds {info.file_size:,} bytes for it"
                )
            total += nbytes
            check_bytes(total, "the archive's arrays together")
            shapes[name] = (shape, dtype)
    return shapes


def _npy_header(member: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"array {name!r}: .npy format {version} is not one convnet reads")
    if dtype.hasobject:
        raise ValueError(f"array {name!r}: object arrays are not accepted")
    return tuple(int(n) for n in shape), dtype


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (without pickle), its size checked by
    :func:`npz_shapes` first and read in full (a damaged member is found here, by its CRC)."""
    npz_shapes(path)
    with np.load(path, allow_pickle=False) as stored:
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        return {name: stored[name] for name in stored.files}
