"""The fork server that cimc.onnx_checks forks its checker children from, and its early start.

A module of its own, importing nothing heavy: the `cimc` command starts the server (`start`) before it imports
onnx, numpy or onnxruntime itself, so the server's interpreter and its preload (cimc.onnx_checks, onnx) start up
on the other core while the command imports and reads the model."""
from __future__ import annotations

import multiprocessing

PRELOAD = ["cimc.onnx_checks"]


def available() -> bool:
    """Checks can run in a fork server child here (a daemonic process, a Dask worker, may not start children)."""
    return "forkserver" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now, without waiting for it (it is started on first use otherwise)."""
    if available():
        try:
            from multiprocessing import forkserver
            context()
            forkserver.ensure_running()
        except OSError:       # no process to be had: onnx_checks.check_valid falls back on its own
            pass
