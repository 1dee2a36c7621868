"""One line on a terminal when numba compiles cimc's table-read kernels, so that the pause of the first run after
installing or upgrading cimc or numba (about 30 s) is explained. numba broadcasts "numba:compile" only when it
compiles a kernel, not when it loads one from its disk cache, so later runs print nothing. Shown once per process,
and only when stderr is a terminal (like cimc.evaluate.Progress): piped or captured output stays as it was."""
from __future__ import annotations

import sys

from numba.core import event

KERNEL_MODULES = "cimc.backends._lut"        # _lut_kernel, _lut_packed
MESSAGE = ("cimc: compiling the crossbar backend's table-read kernels with numba (first run after installing or "
           "upgrading: about 30 s; cached on disk for later runs)")


class _Notice(event.Listener):
    def __init__(self):
        self.shown = False

    def on_start(self, ev):
        if self.shown:
            return
        module = getattr(getattr(ev.data.get("dispatcher"), "py_func", None), "__module__", "") or ""
        if module.startswith(KERNEL_MODULES) and sys.stderr.isatty():
            self.shown = True
            print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


NOTICE = _Notice()
_installed = False


def install() -> None:
    """Listen for numba compiling a kernel (once per process)."""
    global _installed
    if not _installed:
        event.register("numba:compile", NOTICE)
        _installed = True
