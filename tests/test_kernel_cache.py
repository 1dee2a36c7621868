"""cimc.backends.kernel_cache: a kernel cached on disk by numba is recompiled when a file it inlines code from
changes, not only when its own file does. Two throw-away modules in a temporary folder: `helper.py` (an inlined
function and a constant) and `kernel.py` (a cached kernel that uses them); each run is a fresh interpreter, as a
user's next `cimc run` is. Without the shared stamp numba loads the stale machine code (the control case), with it
the kernel sees the edit."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba")

KERNEL = '''
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
if {grouped}:
    from cimc.backends import kernel_cache
    kernel_cache.share_stamp([Path(__file__).with_name("helper.py"), __file__])
from numba import njit
from helper import SCALE, offset


@njit(cache=True)
def kernel(x):
    return x * SCALE + offset(x)
'''


def _run(folder: Path) -> str:
    code = "import sys; sys.path.insert(0, sys.argv[1]); import kernel; print(kernel.kernel(10))"
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _helper(folder: Path, scale: int, offset: int) -> None:
    (folder / "helper.py").write_text(textwrap.dedent(f'''
        from numba import njit
        SCALE = {scale}


        @njit(inline="always")
        def offset(x):
            return x + {offset}
        '''))


@pytest.mark.parametrize("grouped", [True, False])
def test_an_edit_to_an_inlined_file_recompiles_the_cached_kernel(tmp_path, grouped):
    (tmp_path / "kernel.py").write_text(KERNEL.format(grouped=grouped))
    _helper(tmp_path, 2, 1)
    assert _run(tmp_path) == "31"                  # 10 * 2 + (10 + 1), compiled and cached
    assert list((tmp_path / "__pycache__").glob("kernel.kernel-*.nbi"))
    assert _run(tmp_path) == "31"                  # loaded from the cache
    _helper(tmp_path, 3, 5)                        # kernel.py itself unchanged
    expected = "45" if grouped else "31"           # 10 * 3 + (10 + 5); numba alone keeps the stale code
    assert _run(tmp_path) == expected


def test_the_table_read_kernels_are_keyed_on_all_their_sources():
    """_lut_kernel registers itself, _lut_packed and lut_limits as one group: each kernel's cache locator is the
    grouped one, and its stamp is the group's digest (not its own file's)."""
    from cimc.backends import _lut_kernel, _lut_packed, kernel_cache
    group = {Path(f).resolve() for f in _lut_kernel.KERNEL_SOURCES}
    assert {p.name for p in group} == {"_lut_kernel.py", "_lut_packed.py", "lut_limits.py"}
    stamps = set()
    for kernel in (_lut_kernel.reads, _lut_packed.reads, _lut_packed.conv_reads):
        locator = kernel._cache._impl._locator             # the locator numba chose when it decorated the kernel
        assert getattr(locator, "_cimc_grouped", False), type(locator)
        stamps.add(locator.get_source_stamp())
    assert stamps == {kernel_cache._stamp(_lut_kernel.__file__)}


def _numba_opt(env: dict) -> str:
    import os
    code = ("import cimc.backends._lut_kernel as k; from numba.core import config; "
            "print(config.OPT.is_opt_max, k.reads.targetctx.codegen()._loopvect)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_kernels_compile_at_numba_opt_max_unless_the_user_chose():
    """The kernels' code generator optimises fully on numba's first pass (NUMBA_OPT=max: loop vectorisation in the
    cheap pass), even where numba was imported before cimc; a user's own NUMBA_OPT is kept."""
    assert _numba_opt({"NUMBA_OPT": None}) == "True True"
    assert _numba_opt({"NUMBA_OPT": "2"}) == "False False"
