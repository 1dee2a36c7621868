"""What the user asked of a compile (flags / keyword arguments), checked before any work. Read-only to the passes:
what they find goes into the pipeline's context (cimc.pipeline.CompileContext), never back into the options."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from cimc import resources
from cimc.errors import ConfigError
from cimc.passes.replicate import read_replication_file


@dataclass
class CompileConfig:
    replicate: dict[str, int] = field(default_factory=dict)   # fixed copies per layer (--replicate)
    replication_file_copies: dict[str, int] | None = None     # fixed copies from --replication FILE
    arrays: int | None = None          # array budget for the replication solver (default: the target's budget)
    target_fps: float | None = None    # or: fewest arrays that reach this throughput
    optimize: bool = True              # False: no solver even if the target has a budget
    time_limit: float = 10.0           # CP-SAT seconds
    pack: bool = False                 # joint copies + placement, several tiles per array (passes/pack.py)
    max_memory: int | str | None = None  # compile memory limit (cimc.resources; default 8 GiB or CIMC_MAX_MEMORY)


def make_config(replicate=None, replication=None, arrays=None, target_fps=None, optimize=True,
                time_limit=10.0, pack=False, max_memory=None) -> CompileConfig:
    """`replication`: a replication.json path (or a {layer: copies} dict) whose copies are kept fixed."""
    if isinstance(replication, (str, Path)):
        replication = read_replication_file(replication)
    if arrays is not None and (isinstance(arrays, bool) or not isinstance(arrays, int) or arrays < 1):
        raise ConfigError(f"--arrays {arrays!r}: must be a positive integer")
    if not _positive_number(time_limit):
        raise ConfigError(f"--time-limit {time_limit!r}: must be a finite number of seconds > 0")
    if target_fps is not None and not _positive_number(target_fps):
        raise ConfigError(f"--target-fps {target_fps!r}: must be a finite number of inferences per second > 0")
    if max_memory is not None:
        resources.memory_limit(max_memory)          # a bad size is refused before any work
    return CompileConfig(replicate=dict(replicate or {}), replication_file_copies=replication, arrays=arrays,
                         target_fps=target_fps, optimize=optimize, time_limit=time_limit, pack=bool(pack),
                         max_memory=max_memory)


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
