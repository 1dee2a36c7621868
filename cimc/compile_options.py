"""What the user asked of a compile (flags / keyword arguments), checked before any work. Read-only to the passes:
what they find goes into the pipeline's context (cimc.pipeline.CompileContext), never back into the options."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from cimc import resources
from cimc.errors import ConfigError
from cimc.passes.replicate import read_replication_file
from cimc.targets.devices import DefectMap, load_defect_map


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
    defect_map: object = None          # a DefectMap: place tiles and rows around its stuck devices (place_defects)
    copies_for: tuple[str, float] = ("throughput", 1.0)   # what copies buy (passes/copies_for.py): mode, weight


def make_config(replicate=None, replication=None, arrays=None, target_fps=None, optimize=True,
                time_limit=10.0, pack=False, max_memory=None, defect_map=None,
                copies_for="throughput") -> CompileConfig:
    """`replication`: a replication.json path (or a {layer: copies} dict) whose copies are kept fixed;
    `defect_map`: a defect map npz path (or DefectMap) to place around; `copies_for`: "throughput" (default),
    "accuracy" or "mix:W" (passes/copies_for.py)."""
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
    copies_for = parse_copies_for(copies_for)
    if pack and copies_for[0] != "throughput":
        raise ConfigError(f"--copies-for {copies_for[0]} with --pack: averaging copies are placed one tile per array; "
                          "drop --pack")
    if pack and defect_map is not None:
        raise ConfigError("--defect-map with --pack: defect-aware placement moves whole tiles among a layer's own "
                          "arrays (one tile per array); drop --pack, or pass the map to `cimc run --defect-map` only")
    if defect_map is not None and not isinstance(defect_map, DefectMap):
        defect_map = load_defect_map(defect_map)     # a bad file is refused before any work, naming it
    return CompileConfig(replicate=dict(replicate or {}), replication_file_copies=replication, arrays=arrays,
                         target_fps=target_fps, optimize=optimize, time_limit=time_limit, pack=bool(pack),
                         max_memory=max_memory, defect_map=defect_map, copies_for=copies_for)


def parse_copies_for(text) -> tuple[str, float]:
    """--copies-for: "throughput" -> ("throughput", 1), "accuracy" -> ("accuracy", 0), "mix:W" -> ("mix", W): W in
    [0, 1] is the weight of throughput against accuracy (mix alone: 0.5)."""
    if isinstance(text, tuple):
        text = text[0] if text[0] != "mix" else f"mix:{text[1]}"
    s = str(text).strip().lower()
    if s == "throughput":
        return ("throughput", 1.0)
    if s == "accuracy":
        return ("accuracy", 0.0)
    if s == "mix" or s.startswith("mix:"):
        try:
            w = 0.5 if s == "mix" else float(s[4:])
        except ValueError:
            w = float("nan")
        if not 0.0 <= w <= 1.0:
            raise ConfigError(f"--copies-for {text!r}: the mix weight must be a number in [0, 1] (the weight of "
                              "throughput against accuracy), e.g. --copies-for mix:0.5")
        return ("mix", w)
    raise ConfigError(f"--copies-for {text!r}: choose throughput (copies pipeline), accuracy (copies average "
                      "their reads) or mix:W (W in [0, 1] weighs throughput against accuracy)")


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
