"""The sweep output folder (`cimc sweep -o OUT`): its marker, one file per finished (point, seed), and the results.

Rules, the project's output-folder rules (cimc.output_dir) for a folder that grows while the sweep runs:
- Ownership. OUT is used only if it does not exist, is an empty folder, or holds a sweep: its marker `sweep.json`
  has "format": "cimc-sweep", and it holds nothing but the sweep's own files (SWEEP_FILES). Anything else is refused
  (SweepError) naming the foreign entries; nothing is touched.
- Same command. The marker records what decides the results (the manifest's files, the data, the grid, the seeds,
  the fixed options; not the scheduler, batch or shard sizes). A sweep restarted with the same command resumes; one
  with a different command is refused, naming what differs.
- One writer. A sweep holds an flock on `OUT/.lock` while it runs; a second one is refused at once.
- Rows. Each finished (point, seed) is `rows/pPPPP-sSSSS.json`, written to a temporary file in `rows/` and renamed
  into place, so a row file is whole or absent whatever moment the sweep is killed. A restart reads them and skips
  those (point, seed). Temporaries left by a killed sweep are removed under the lock.
- Results (`rows.csv`, `rows.jsonl`, `summary.json`, `index.html`) are rewritten from the row files, each
  atomically, at the end of every run.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from cimc.errors import CimcError
from cimc.output_dir import resolve, umask

try:
    import fcntl
except ImportError:             # not POSIX: sweeps are not serialised
    fcntl = None

MARKER = "sweep.json"
FORMAT = "cimc-sweep"
VERSION = 1
ROWS = "rows"
SWEEP_FILES = frozenset({MARKER, ROWS, "rows.csv", "rows.jsonl", "summary.json", "index.html", ".lock"})
_TMP = ".tmp-"
_ROW_NAME = re.compile(r"p(\d+)-s(\d+)\.json")

# what each field of the command's identity is called on the command line (for the refusal)
_FLAGS = {"manifest": "DIR (the manifest's files)", "data": "--data", "grid": "--grid", "seeds": "--seeds",
          "set": "--set", "gemm": "--gemm", "tune_data": "--tune-data", "tune": "the tuning options"}


def _float32_before_default(identity: dict) -> dict:
    """gemm None was written when no --gemm meant float32 reads (before issue 16's lut default): it is float32."""
    return {**identity, "gemm": "float32"} if "gemm" in identity and identity["gemm"] is None else identity


class SweepError(CimcError):
    """The sweep output folder cannot be used as asked."""


def row_name(point: int, seed: int) -> str:
    return f"p{point:04d}-s{seed:04d}.json"


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SweepFolder:
    """`SweepFolder(out, identity)`; `open()` checks, locks and returns the rows already done."""

    def __init__(self, out, identity: dict):
        self.shown = str(out)
        self.identity = identity
        self.path = resolve(out)
        self._fd = None

    # -- opening ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Everything that can be checked before any work; changes nothing."""
        path = self.path
        if not path.exists():
            return
        if not path.is_dir():
            raise SweepError(f"-o {self.shown}: is a file, not a sweep folder; choose another -o path")
        entries = sorted(path.iterdir())
        if not entries:
            return
        marker = self._marker()
        if marker is None:
            names = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:6])
            raise SweepError(f"-o {self.shown}: is not a sweep folder written by cimc (no {MARKER} with \"format\": "
                             f"\"{FORMAT}\"); refusing to write into it (it holds {names}"
                             f"{' and more' if len(entries) > 6 else ''}). Choose a new or empty -o folder.")
        foreign = [e.name for e in entries if e.name not in SWEEP_FILES]
        if foreign:
            raise SweepError(f"-o {self.shown}: holds files that cimc sweep did not write ({', '.join(foreign[:6])}); "
                             "refusing to write beside them. Move them elsewhere or choose another -o folder.")
        self._check_same_command(marker.get("command", {}))

    def _marker(self) -> dict | None:
        try:
            doc = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None

    def _check_same_command(self, theirs: dict) -> None:
        ours, theirs = _float32_before_default(self.identity), _float32_before_default(theirs)
        differ = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
        if differ:
            parts = [f"{_FLAGS.get(k, k)}: {_show(theirs.get(k))} there, {_show(ours.get(k))} here" for k in differ]
            raise SweepError(f"-o {self.shown}: holds a sweep of a different command ({'; '.join(parts)}). Rerun "
                             "that sweep's own command to resume it, or choose another -o folder.")

    def finished(self) -> set[tuple[int, int]]:
        """The (point, seed) whose row files exist now (read-only: to decide whether there is work at all)."""
        rows = self.path / ROWS
        if not rows.is_dir():
            return set()
        return {(int(m[1]), int(m[2])) for m in map(_ROW_NAME.fullmatch, (p.name for p in rows.iterdir())) if m}

    def open(self) -> dict[tuple[int, int], dict]:
        """Create or resume the folder, take its lock, and return the finished rows by (point, seed)."""
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self._marker() is None:           # a new folder: marked first, so nothing unmarked is left in it
                atomic_write(self.path / MARKER, json.dumps({"format": FORMAT, "version": VERSION,
                                                             "command": self.identity}, indent=1) + "\n")
            (self.path / ROWS).mkdir(exist_ok=True)
        except OSError as exc:
            raise SweepError(f"-o {self.shown}: cannot create the folder ({exc.strerror}); choose another -o "
                             "path") from None
        self._lock()
        try:
            self.check()             # again, under the lock: another sweep may have marked it meanwhile
            return self._read_rows()
        except BaseException:
            self.close()
            raise

    def _read_rows(self) -> dict[tuple[int, int], dict]:
        rows = {}
        for p in sorted((self.path / ROWS).iterdir()):
            if p.name.startswith(_TMP):          # a killed sweep's half-written row
                p.unlink(missing_ok=True)
                continue
            try:
                row = json.loads(p.read_text())
                key = (int(row["point"]), int(row["seed"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise SweepError(f"{p}: not a sweep row (edited by hand?); remove it and rerun the sweep to "
                                 "compute that row again") from None
            if p.name != row_name(*key):
                raise SweepError(f"{p}: holds the row of point {key[0]}, seed {key[1]}; remove it and rerun")
            rows[key] = row
        return rows

    def _lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SweepError(f"-o {self.shown}: another cimc sweep is writing this folder; wait for it to finish, "
                             "or choose another -o folder") from None
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # the lock file stays: unlinking it could let two sweeps lock two files
            self._fd = None

    # -- writing ----------------------------------------------------------------------------------------------
    def write_row(self, row: dict) -> None:
        atomic_write(self.path / ROWS / row_name(row["point"], row["seed"]), json.dumps(row) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic_write(path, text)
        return path


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
