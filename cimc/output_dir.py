"""The manifest output folder (`-o DIR`): which folders cimc may replace, and how it replaces one with no gap.

Rules (README "Command line" and docs/design.md say the same):
- Ownership. DIR is written only if it does not exist, is an empty folder, or is a folder cimc wrote: its
  manifest.json is a JSON object with "format": "cimc-manifest" and a "schema_version", and it holds nothing but
  cimc's own files (MANIFEST_FILES). Anything else is refused (ManifestError) naming the foreign entries; nothing is
  touched.
- Symlinks. A symlinked DIR is written through: the link is kept and the folder it points to is replaced by the
  same rule (the temporaries live beside that folder, on its file system).
- Writers serialise on an flock of `.DIR.lock` beside DIR; a writer that waits longer than LOCK_WAIT_S is refused.
  The lock file is removed by the writer that holds it when it is done (one left by a killed writer is reused).
- Swap. The new manifest is written into a temporary sibling `.DIR.cimc-new-XXXXXXXX`, then exchanged with DIR by
  renameat2(RENAME_EXCHANGE) (Linux): at every instant DIR is the old complete manifest or the new one. Where the
  exchange is unavailable, DIR is renamed to `.DIR.cimc-old-XXXXXXXX` and the new one renamed in; a kill between
  the two renames leaves DIR missing, and the next writer (or `recover`) renames the old manifest back.
- Leftovers. Under the lock no other writer is alive, so temporaries with those names found then are a killed
  writer's: they are removed (only when they hold nothing but cimc's files), and so are older cimc's
  `.DIR.XXXXXXXX` and `.DIR.old.XXXXXXXX/m` (whose manifest is renamed back if DIR is missing). The last
  successful write leaves nothing beside DIR.
Safe against a killed process; durability against power loss is left to the file system (no fsync).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from cimc.errors import ManifestError

try:
    import fcntl
except ImportError:            # not POSIX: writers are not serialised
    fcntl = None

# every file cimc writes into a manifest folder (cimc.manifest.Manifest.save)
MANIFEST_FILES = frozenset({"manifest.json", "arrays.npz", "params.npz", "digital.onnx", "conductances.npz",
                            "replication.json"})
MANIFEST_FORMAT = "cimc-manifest"
LOCK_WAIT_S = 120.0
_NEW, _OLD = "cimc-new-", "cimc-old-"
_SUFFIX = re.compile(r"[a-z0-9_]{8}")          # tempfile.mkdtemp's random part


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve(directory) -> Path:
    """The folder that `-o DIR` writes: DIR made absolute, through a symlink to its target (the link is kept)."""
    shown = str(directory)
    path = Path(os.path.abspath(directory))
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if real.is_symlink():
            raise ManifestError(f"-o {shown}: a symbolic link that does not resolve (a loop?); choose another -o path")
        path = real
    if not path.name:
        raise ManifestError(f"-o {shown}: is the root folder; choose a new folder for the manifest")
    cwd = Path(os.path.realpath(os.getcwd()))
    if Path(os.path.realpath(path)) in (cwd, *cwd.parents):
        raise ManifestError(f"-o {shown}: is the current folder (or holds it); choose a new folder for the manifest")
    return path


def check_output(directory) -> Path:
    """Everything that can be checked before the work that produces a manifest: the folder would be accepted and
    its parent can be created and written. Changes nothing. Returns the resolved folder."""
    path = resolve(directory)
    _check_replaceable(path, str(directory))
    ancestor = path.parent
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ManifestError(f"-o {directory}: {ancestor} is a file, not a folder; choose another -o path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ManifestError(f"-o {directory}: cannot write in {ancestor} (permission denied); choose another -o path")
    return path


def replace_dir(directory, write: Callable[[Path], None]) -> Path:
    """Make `directory` hold exactly what `write(tmp)` puts into an empty folder, by the rules above. Returns the
    path as given (a symlink stays a symlink). On failure nothing is changed, and folders made for it are removed."""
    shown = str(directory)
    path = resolve(directory)
    _check_replaceable(path, shown)                  # before creating anything: a refusal touches nothing
    created = _make_parent(path.parent, shown)
    try:
        with _locked(path, shown):
            _recover_and_clean(path)
            _check_replaceable(path, shown)          # again: another writer may have changed it meanwhile
            _write_and_swap(path, shown, write)
    except BaseException:
        for d in reversed(created):                  # innermost first; stops at one that is not empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return Path(directory)


def _write_and_swap(path: Path, shown: str, write: Callable[[Path], None]) -> None:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_NEW}", dir=path.parent))
    except OSError as exc:
        raise ManifestError(f"-o {shown}: cannot write in {path.parent} ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o777 & ~umask())              # mkdtemp makes 0700; a manifest folder is an ordinary folder
        write(tmp)
        _swap_in(tmp, path)
    except OSError as exc:
        raise ManifestError(f"-o {shown}: cannot write the manifest ({exc.strerror or exc}); "
                            "the folder is unchanged") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)       # the new folder if it failed, the old one if it succeeded


def recover(directory) -> bool:
    """If a writer was killed between the two renames of the fallback swap, DIR is missing and its old manifest is
    in `.DIR.cimc-old-*`: rename it back. True if something was restored."""
    path = resolve(directory)
    if not path.parent.is_dir():
        return False
    with _locked(path, str(directory)):
        missing = not path.exists()
        _recover_and_clean(path)
        return missing and path.exists()


# -- ownership --------------------------------------------------------------------------------------------------
def is_manifest_doc(manifest_json: Path) -> bool:
    try:
        doc = json.loads(manifest_json.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT and "schema_version" in doc


def _foreign_entries(path: Path) -> list[str]:
    """Entries of a folder that are not cimc's own files (folders end in '/')."""
    out = []
    for p in sorted(path.iterdir()):
        if p.name in MANIFEST_FILES and p.is_file() and not p.is_symlink():
            continue
        out.append(p.name + ("/" if p.is_dir() and not p.is_symlink() else ""))
    return out


def _check_replaceable(path: Path, shown: str) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise ManifestError(f"-o {shown}: is a file, not a manifest folder; choose another -o path")
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise ManifestError(f"-o {shown}: cannot read the folder ({exc.strerror}); choose another -o path") from None
    if not entries:
        return
    base = shown.rstrip("/") or shown
    if not is_manifest_doc(path / "manifest.json"):
        listed = _listing(base, [p.name + ("/" if p.is_dir() else "") for p in sorted(entries)])
        raise ManifestError(f"-o {shown}: is not a manifest folder written by cimc (no manifest.json with "
                            f"\"format\": \"{MANIFEST_FORMAT}\"); refusing to overwrite it and what it holds "
                            f"({listed}). Choose a new or empty -o folder.")
    foreign = _foreign_entries(path)
    if foreign:
        raise ManifestError(f"-o {shown}: holds files that cimc did not write ({_listing(base, foreign)}); refusing "
                            "to overwrite the folder and delete them. Move them elsewhere or choose another -o folder.")


def _listing(base: str, names: list[str], most: int = 6) -> str:
    shown = [f"{base}/{n}" for n in names[:most]]
    return ", ".join(shown) + (f" and {len(names) - most} more" if len(names) > most else "")


def _make_parent(parent: Path, shown: str) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first."""
    created = [d for d in [parent, *parent.parents] if not d.exists()][::-1]
    try:
        parent.mkdir(parents=True, exist_ok=True)        # mode 0777 & ~umask, like mkdir -p
    except (FileExistsError, NotADirectoryError):
        blocker = parent
        while not blocker.exists() and blocker != blocker.parent:    # the nearest existing ancestor: a file
            blocker = blocker.parent
        raise ManifestError(f"-o {shown}: {blocker} is a file, not a folder; choose another -o path") from None
    except OSError as exc:
        raise ManifestError(f"-o {shown}: cannot create the folder {parent} ({exc.strerror}); "
                            "choose another -o path") from None
    return created


# -- the lock ---------------------------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path, shown: str):
    """Hold an exclusive flock on `.NAME.lock` beside `path`; unlink it on the way out. A waiter re-checks that the
    file it locked is still the one at the path (the holder may have unlinked it meanwhile)."""
    if fcntl is None:
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ManifestError(f"-o {shown}: cannot create the lock file {lock} ({exc.strerror}); "
                                "choose another -o path") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ManifestError(f"-o {shown}: another cimc process has been writing this folder for "
                                            f"over {LOCK_WAIT_S:.0f} s (lock {lock}); try again when it is done")
                    time.sleep(0.02)
            held = os.fstat(fd)
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)                                     # locked a file already unlinked: take the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


# -- swap and recovery ------------------------------------------------------------------------------------------
def _swap_in(new: Path, path: Path) -> None:
    """Put `new` at `path`; afterwards `new` holds the previous folder (or nothing)."""
    if not path.exists():
        os.rename(new, path)
        return
    if _exchange(new, path):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_OLD}", dir=path.parent))
    os.rmdir(old)
    os.rename(path, old)          # a kill right here leaves `path` missing: _recover_and_clean renames it back
    os.rename(new, path)
    os.rename(old, new)           # so that the caller's cleanup removes it


_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE). False where the system cannot."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False               # old kernel or a file system without the exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _temporaries(path: Path, kind: str) -> list[Path]:
    prefix = f".{path.name}.{kind}"
    found = []
    for p in path.parent.iterdir():
        if p.name.startswith(prefix) and _SUFFIX.fullmatch(p.name[len(prefix):]) and p.is_dir() \
                and not p.is_symlink() and not _foreign_entries(p):
            found.append(p)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _legacy_old(path: Path) -> list[Path]:
    """cimc before this module swapped by renaming DIR to `.DIR.old.XXXXXXXX/m`: the same leftovers, other names."""
    prefix = f".{path.name}.old."
    found = []
    for p in path.parent.iterdir():
        if p.name.startswith(prefix) and _SUFFIX.fullmatch(p.name[len(prefix):]) and p.is_dir() \
                and not p.is_symlink() and {e.name for e in p.iterdir()} <= {"m"}:
            m = p / "m"
            if not m.exists() or (m.is_dir() and not m.is_symlink() and not _foreign_entries(m)):
                found.append(p)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _recover_and_clean(path: Path) -> None:
    """Under the lock: restore a manifest stranded by a kill between the two renames of a swap (this module's
    fallback, or older cimc), then remove the temporaries of killed writers (older cimc's `.DIR.XXXXXXXX` too)."""
    if not path.exists() and not path.is_symlink():
        stranded = _temporaries(path, _OLD) + [p / "m" for p in _legacy_old(path)]
        for old in sorted(stranded, key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True):
            if is_manifest_doc(old / "manifest.json"):           # the newest complete one
                os.rename(old, path)
                break
    for p in _temporaries(path, _NEW) + _temporaries(path, _OLD) + _temporaries(path, "") + _legacy_old(path):
        shutil.rmtree(p, ignore_errors=True)
