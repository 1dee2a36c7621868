"""Bounded, lazy reading of .npz files (a zip of .npy members).

`np.load` trusts each member's header and reads whole arrays: a header that declares a huge shape, or a small zip
that inflates to gigabytes, is allocated before anything is checked. Here each member's header is read first
(shape and dtype, no data); the declared size must fit the member's uncompressed size in the zip directory and the
data limit (`CIMC_MAX_DATA`, a size such as 4GiB; default DEFAULT_LIMIT); and only the rows asked for are decompressed.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cimc.errors import DataError
from cimc.sizes import human, parse_size

DEFAULT_LIMIT = 4 << 30
LIMIT_ENV = "CIMC_MAX_DATA"
_CHUNK = 1 << 24          # bytes decompressed per read: bounds the extra memory beside the result array
# what zipfile raises on a damaged or unsupported member (RuntimeError: encrypted; NotImplementedError: compression)
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError)


def data_limit_bytes() -> int:
    """The most bytes one data file may put in memory: CIMC_MAX_DATA (a size as `--max-memory` takes it, e.g.
    4GiB or 500MB), default DEFAULT_LIMIT."""
    text = os.environ.get(LIMIT_ENV)
    return DEFAULT_LIMIT if text is None else parse_size(text, LIMIT_ENV)


@dataclass(frozen=True)
class Member:
    """One array of the archive as its header declares it."""
    key: str
    name: str             # the zip member name (key + ".npy")
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_header(stream, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        else:   # 3.0 differs from 2.0 only in the header's text encoding (utf-8, latin-1 for 2.0)
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
    except _READ_ERRORS + (ValueError,) as exc:
        raise DataError(f"{where}: not a valid .npy array header ({exc})") from None
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: the header declares shape {list(shape)} with a negative dimension; the file is "
                        "damaged or crafted")
    return tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


class NpzReader:
    """`NpzReader(path, what)`: the members' headers on opening; `read(key, rows=None)` reads one array (only its
    first `rows` rows). Use as a context manager. Errors are DataErrors naming the file, the key and what to do."""

    def __init__(self, path, what: str = "data file"):
        self.path, self.what = str(path), what
        p = Path(self.path)
        if not p.is_file():
            raise DataError(f"{what} {self.path!r} does not exist" if not p.exists() else
                            f"{what} {self.path!r} is not a file")
        with open(p, "rb") as f:
            head = f.read(6)
        if head == b"\x93NUMPY":
            raise DataError(f"{self.path}: is a single .npy array, not an .npz {what}; save it as "
                            f"np.savez('{p.with_suffix('.npz').name}', x=array)")
        try:
            self._zip = zipfile.ZipFile(p)
        except _READ_ERRORS + (ValueError,) as exc:
            raise DataError(f"{self.path}: not a readable .npz {what} ({exc}); write it with np.savez") from None
        try:
            self.members = self._headers()
        except BaseException:
            self._zip.close()
            raise
        if not self.members:
            self._zip.close()
            raise DataError(f"{self.path}: the .npz {what} holds no arrays; write it with np.savez(path, x=...)")

    def _headers(self) -> dict[str, Member]:
        members = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy") or info.is_dir():
                continue
            key = info.filename[:-4]
            where = f"{self.path}: {key!r}"
            try:
                with self._zip.open(info) as stream:
                    shape, dtype, fortran = _read_header(stream, where)
                    header_len = stream.tell()
            except _READ_ERRORS as exc:
                raise DataError(f"{where}: the member cannot be read ({exc}); the file is damaged") from None
            if dtype.hasobject or dtype.itemsize == 0:
                raise DataError(f"{where}: dtype {dtype} holds no numbers; cimc reads numeric arrays only")
            member = Member(key, info.filename, shape, dtype, fortran)
            if member.nbytes > info.file_size - header_len:
                raise DataError(f"{where}: the header declares shape {list(shape)} {dtype} ({member.nbytes} bytes) "
                                f"but the member holds {max(info.file_size - header_len, 0)} bytes; the file is "
                                "damaged or crafted")
            members[key] = member
        return members

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def keys(self) -> list[str]:
        return list(self.members)

    def read(self, key: str, rows: int | None = None, budget: int | None = None) -> np.ndarray:
        """The array under `key`, or its first `rows` rows (the whole array if it has fewer). `budget`: bytes this
        read may allocate (default: the data limit)."""
        m = self.members[key]
        where = f"{self.path}: {key!r}"
        shape = m.shape
        if rows is not None and m.shape and not m.fortran_order:
            shape = (min(rows, m.shape[0]),) + m.shape[1:]
        nbytes = math.prod(shape) * m.dtype.itemsize
        budget = data_limit_bytes() if budget is None else budget
        if nbytes > budget:
            raise DataError(f"{where}: shape {list(shape)} {m.dtype} needs {human(nbytes)}, over the "
                            f"{human(budget)} data limit; use fewer samples (`cimc run --limit N` reads "
                            f"only the first N) or raise the limit with {LIMIT_ENV}=SIZE (e.g. 16GiB)")
        out = np.empty(nbytes, dtype=np.uint8)
        view = memoryview(out)
        try:
            with self._zip.open(m.name) as stream:
                _read_header(stream, where)
                done = 0
                while done < nbytes:
                    chunk = stream.read(min(_CHUNK, nbytes - done))
                    if not chunk:
                        break
                    view[done:done + len(chunk)] = chunk
                    done += len(chunk)
        except _READ_ERRORS as exc:
            raise DataError(f"{where}: the member cannot be read ({exc}); the file is damaged") from None
        if done < nbytes:
            raise DataError(f"{where}: the data ends after {done} of {nbytes} bytes; the file is truncated")
        array = out.view(m.dtype)
        if m.fortran_order:   # read whole (rows are not contiguous); keep the rows asked for
            return np.ascontiguousarray(array.reshape(shape[::-1]).transpose()[:rows])
        return array.reshape(shape)
