"""The `cimc` command. Every user-fixable error prints `cimc: error: ...` and exits with code 2."""
from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import sys

from cimc import checker_server
from cimc.commands import COMMANDS
from cimc.errors import CimcError


def build_parser() -> argparse.ArgumentParser:
    import cimc
    p = argparse.ArgumentParser(prog="cimc", description="Compile ONNX models onto memristor crossbar arrays and "
                                "run them bit-accurately.")
    p.add_argument("--version", action="version", version=f"cimc {cimc.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cimc.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _freeze_at_exit()
    args = build_parser().parse_args(argv)
    model = getattr(args, "model", None)
    if isinstance(model, str) and os.path.isfile(model):     # an ONNX file (a manifest is a folder): its checks
        checker_server.start()                               # run in a fork server; start it while we import
    try:
        return args.func(args)
    except CimcError as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("cimc: interrupted", file=sys.stderr)
        return 130


_exit_hook = False


def _freeze_at_exit() -> None:
    """At interpreter exit, after the atexit handlers, move every object to gc's permanent generation (gc.freeze):
    the collections of the interpreter's shutdown then skip the millions of objects that numpy, onnx, onnxruntime
    and pandas (OR-Tools imports it) leave, which took 0.3-0.5 s after a ResNet-56 compile had written its files
    (README, Performance). Every file is written and closed by then; only an in-process caller's exit is affected."""
    global _exit_hook
    if not _exit_hook:
        atexit.register(gc.freeze)      # registered first: runs after the other handlers (they run last in, first out)
        _exit_hook = True


if __name__ == "__main__":
    sys.exit(main())
