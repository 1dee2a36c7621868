"""Where an example writes: a folder the user names with --out, or else a fresh temporary folder. Never into the
checkout (its tracked files stay as shipped, and a read-only checkout works), never over files that are already
there."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def output_folder(out: str | None, name: str) -> Path:
    """`out` (created if missing; refused if it already holds files) or a new folder `cimc-NAME-XXXX` in the
    system's temporary directory. Exits with a one-line message, like the cimc CLI, when `out` cannot be used."""
    if out is None:
        path = Path(tempfile.mkdtemp(prefix=f"cimc-{name}-"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o777 & ~umask)          # mkdtemp makes it 0700; give it an ordinary folder's mode
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        sys.exit(f"{name}: error: --out {out}: is a file; give a folder")
    if path.is_dir() and any(path.iterdir()):
        sys.exit(f"{name}: error: --out {out}: already holds files; give a new or empty folder (nothing is "
                 "overwritten)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"{name}: error: --out {out}: cannot create it ({exc.strerror or exc})")
    return path
