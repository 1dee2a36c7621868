"""numba's disk cache (`cache=True`) keys a compiled kernel on the source of the one file that defines it. cimc's
table-read kernels also compile in code from other files: _lut_packed inlines _lut_kernel's helpers (line_adc,
zero_pairs, conv_words, ...) and both freeze lut_limits' constants into their machine code. An edit to those files
alone, or an upgrade that changes only them (pip leaves numba's cache files behind in __pycache__), would then load
stale machine code: wrong reads, silently. `share_stamp(files)` keys the cache of every kernel defined in one of
`files` on all of them together, so a change to any one recompiles them all.

It works through numba's cache locators (numba.core.caching.CacheImpl._locator_classes, the classes that say where a
function's cache lives and what its source stamp is): for each source-file-backed locator it adds a subclass, tried
first, that claims only the listed files and stamps them with one digest of all their contents. Where a numba
version lacks that interface, nothing is changed (the kernels still compile and cache as numba does by default)."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

_GROUPS: dict[Path, tuple[Path, ...]] = {}     # a kernel file -> the files whose contents its cache is keyed on


def share_stamp(files) -> None:
    """Key the numba cache of every kernel defined in one of `files` on the contents of all of them. Call it before
    the kernels are decorated (numba picks a function's locator when `@njit(cache=True)` wraps it)."""
    group = tuple(sorted(Path(f).resolve() for f in files))
    for f in group:
        _GROUPS[f] = group
    _install()


@functools.lru_cache(maxsize=None)
def _digest(group: tuple[Path, ...], stats: tuple) -> bytes:
    """One sha256 of the group's contents (memoised on every file's mtime and size, as numba's own stamp is)."""
    h = hashlib.sha256()
    for f in group:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.digest()


def _stamp(py_file: str) -> bytes:
    group = _GROUPS[Path(py_file).resolve()]
    stats = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in group)
    return _digest(group, stats)


def _grouped(base):
    """A locator like `base` that claims only the grouped files, with the group's digest as the source stamp."""
    class Grouped(base):
        _cimc_grouped = True

        def get_source_stamp(self):
            return _stamp(self._py_file)

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve() not in _GROUPS:
                return None
            return super().from_function(py_func, py_file)

    Grouped.__name__ = Grouped.__qualname__ = "Grouped" + base.__name__
    return Grouped


def _install() -> None:
    try:
        from numba.core import caching
        classes = caching.CacheImpl._locator_classes
        backed = caching._SourceFileBackedLocatorMixin
    except (ImportError, AttributeError):          # another numba: its own per-file stamps
        return
    if any(getattr(c, "_cimc_grouped", False) for c in classes):
        return
    ordered = []
    for c in classes:                               # each grouped locator just before the one it refines
        if isinstance(c, type) and issubclass(c, backed):
            ordered.append(_grouped(c))
        ordered.append(c)
    classes[:] = ordered
