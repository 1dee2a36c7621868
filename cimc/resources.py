"""Compile resource bounds: estimate from shapes the memory a compile request needs, and refuse it above a limit
before anything that size is allocated.

Compiling holds every physical array cell several times over (uint8 levels, int16 and float64 working copies for
the layout and the ADC calibration): measured at about 24 bytes per cell of the whole chip (arrays x rows x cols),
for large arrays (`--set array.rows=...`) and for many copies (`--replicate NODE=N`) alike. The estimate uses
BYTES_PER_CELL, a little above that. The limit is `--max-memory SIZE`, else the environment variable
CIMC_MAX_MEMORY, else DEFAULT_MAX_MEMORY (8 GiB) or three quarters of the physical memory, whichever is smaller.
"""
from __future__ import annotations

import os

from cimc.errors import ConfigError
from cimc.passes.replicate import fixed_copies
from cimc.passes.tile import tiles_for
from cimc.sizes import human, parse_size  # noqa: F401 - parse_size is part of this module's API

BYTES_PER_CELL = 32
DEFAULT_MAX_MEMORY = 8 << 30
ENV = "CIMC_MAX_MEMORY"
def memory_limit(max_memory=None) -> tuple[int, str]:
    """(bytes, where it came from): --max-memory, else CIMC_MAX_MEMORY, else the default."""
    if max_memory is not None:
        return (max_memory if isinstance(max_memory, int) else parse_size(max_memory, "--max-memory")), \
            "--max-memory"
    if os.environ.get(ENV):
        return parse_size(os.environ[ENV], ENV), ENV
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = None
    limit = DEFAULT_MAX_MEMORY if not physical else min(DEFAULT_MAX_MEMORY, physical * 3 // 4)
    return limit, "the default limit"


def check_request(graph, target, config) -> None:
    """Before tiling and placing: the arrays the request implies (tiles of each layer x its fixed copies)."""
    fixed = fixed_copies(graph, config)
    arrays = {op.name: len(tiles_for(op, target.array.inputs_per_tile, target.array.outputs_per_tile))
              * fixed.get(op.name, 1) for op in graph.mapped_ops()}
    _check(arrays, fixed, target, config, "")


def check_plan(graph, target, config) -> None:
    """After replication: the arrays actually planned (copies chosen by the solver included)."""
    fixed = fixed_copies(graph, config)
    arrays = {op.name: len(op.tiles) * op.replicas for op in graph.mapped_ops()}
    chosen = {op.name: op.replicas for op in graph.mapped_ops() if op.name not in fixed and op.replicas > 1}
    _check(arrays, fixed, target, config, ", ".join(f"{n}: {c} copies chosen by the replication solver "
                                                     "(--arrays / --target-fps)" for n, c in chosen.items()))


def _check(arrays: dict[str, int], fixed: dict[str, int], target, config, chosen: str) -> None:
    rows, cols = target.array.rows, target.array.cols
    total = sum(arrays.values())
    need = total * rows * cols * BYTES_PER_CELL
    limit, source = memory_limit(getattr(config, "max_memory", None))
    if need <= limit:
        return
    causes = [f"{total} arrays of array.rows x array.cols = {rows} x {cols} cells"]
    big = sorted(((n, c) for n, c in fixed.items() if c > 1), key=lambda nc: -arrays.get(nc[0], 0))
    causes += [f"--replicate {n}={c} ({arrays.get(n, 0)} arrays)" for n, c in big[:3]]
    if chosen:
        causes.append(chosen)
    raise ConfigError(f"this compile would need about {human(need)} of memory ({'; '.join(causes)}; about "
                      f"{BYTES_PER_CELL} bytes per cell), over {source} of {human(limit)}. Use smaller arrays "
                      "(--set array.rows=/array.cols=) or fewer copies (--replicate), or raise the limit with "
                      f"--max-memory SIZE (or {ENV}) if the machine has the memory.")
