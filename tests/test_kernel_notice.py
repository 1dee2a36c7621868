"""The one-line notice while numba compiles cimc's table-read kernels (cimc.backends.kernel_notice): shown once, on
a terminal only, for cimc's kernel modules only. numba's own "numba:compile" event drives it, so a fresh function
(never cached) is compiled here to trigger it."""
from __future__ import annotations

import importlib
import io

import pytest
from numba import njit

from cimc.backends import kernel_notice

importlib.import_module("cimc.backends._lut_kernel")    # importing the kernels installs the notice


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _compile_in(module: str, value: int) -> int:
    def bump(x):
        return x + value
    bump.__module__ = module
    return njit(bump)(1)


@pytest.fixture
def fresh_notice(monkeypatch):
    monkeypatch.setattr(kernel_notice.NOTICE, "shown", False)
    return kernel_notice.NOTICE


def test_a_kernel_compile_prints_the_notice_once_on_a_terminal(monkeypatch, fresh_notice):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert _compile_in("numpy.somewhere", 1) == 2                 # not cimc's kernel: nothing
    assert err.getvalue() == ""
    assert _compile_in("cimc.backends._lut_kernel", 2) == 3
    assert err.getvalue() == kernel_notice.MESSAGE + "\n"
    assert _compile_in("cimc.backends._lut_packed", 3) == 4        # a second compile: no second line
    assert err.getvalue() == kernel_notice.MESSAGE + "\n"


def test_no_notice_when_stderr_is_not_a_terminal(monkeypatch, fresh_notice):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert _compile_in("cimc.backends._lut_kernel", 4) == 5
    assert err.getvalue() == "" and not fresh_notice.shown
