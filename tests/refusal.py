"""The fuzz suite's yardstick: a bad input is refused cleanly.

`assert_refused(argv, culprit, watch)` runs the `cimc` command in-process and checks the promise of README's
"Guarantees": exit code 2, a `cimc: error:` line that names the culprit, no traceback, and no file written, changed
or deleted under any watched folder. Every case is counted in `CASES`; pytest's terminal summary prints the count
(tests/conftest.py) so that the closing notes can say how many there are.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

from cimc.cli import main

CASES: list[str] = []


def snapshot(*roots) -> dict[str, tuple]:
    """Every file, folder and link under `roots`: kind, mode, size and content hash (mtimes ignored: a refusal
    may read a file, and a read does not count as touching it)."""
    state = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if p.is_symlink():
                    state[str(p)] = ("link", os.readlink(p))
                elif p.is_dir():
                    state[str(p)] = ("dir", st.st_mode)
                else:
                    state[str(p)] = ("file", st.st_mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`cimc ARGV` in-process -> (exit code, stdout, stderr). argparse's own usage errors (SystemExit 2) count
    as exit code 2 too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: list, culprit: str | list[str], watch=(), case: str | None = None) -> str:
    """`cimc ARGV` exits 2 with `cimc: error:` naming every string in `culprit` (case-insensitive), prints no
    traceback and leaves every folder in `watch` exactly as it was. Returns stderr."""
    before = snapshot(*watch)
    code, out, err = run_cli(argv)
    CASES.append(case or " ".join(map(str, argv)))
    assert "Traceback" not in err + out, f"{argv}: traceback\n{err}"
    assert code == 2, f"{argv}: exit {code}, expected 2\nstdout: {out}\nstderr: {err}"
    assert "cimc: error:" in err or ": error:" in err, f"{argv}: no error line\n{err}"  # or argparse's usage
    for c in [culprit] if isinstance(culprit, str) else culprit:
        assert c.lower() in err.lower(), f"{argv}: the error does not name {c!r}:\n{err}"
    after = snapshot(*watch)
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    assert not changed, f"{argv}: refused but touched {changed}"
    return err
