"""Pieces shared by the `cimc` subcommands."""
from __future__ import annotations

import json

from cimc.errors import ConfigError


def parse_replicate(items: list[str] | None) -> dict[str, int]:
    copies = {}
    for item in items or []:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ConfigError(f"--replicate {item!r}: expected NODE=COPIES, e.g. conv1=4")
        try:
            copies[name] = int(value)
        except ValueError:
            raise ConfigError(f"--replicate {item!r}: COPIES must be an integer") from None
    return copies


def emit(obj: dict) -> None:
    print(json.dumps(obj, indent=1))


def add_target_options(sp) -> None:
    sp.add_argument("--target", default="yao2020-resnet",
                    help="preset name (see `cimc targets`) or path to a target TOML (default yao2020-resnet)")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="override one target field, e.g. --set adc.bits=6 (repeatable)")
    sp.add_argument("--replicate", action="append", metavar="NODE=N",
                    help="fixed copies of a crossbar layer's weights; NODE is the ONNX node's name, exactly (as `cimc "
                    "count` lists it), e.g. --replicate /conv1/Conv=4 (repeatable)")
    sp.add_argument("--replication", metavar="JSON",
                    help="replication.json (written by compile, editable): its copies are kept fixed")
    sp.add_argument("--arrays", type=int, metavar="N",
                    help="array budget: choose copies by CP-SAT to minimise the bottleneck (default: the target's "
                         "chip budget, if it has one)")
    sp.add_argument("--target-fps", type=float, metavar="F",
                    help="instead: the fewest arrays whose pipeline reaches F inferences per second")
    sp.add_argument("--no-optimize", action="store_true",
                    help="keep one copy per layer (or the fixed copies) even if the target has a budget")
    sp.add_argument("--time-limit", type=float, default=10.0, metavar="S", help="CP-SAT time limit (default 10 s)")
    sp.add_argument("--pack", action="store_true",
                    help="choose copies and place tiles jointly (CP-SAT), several tiles per array time-sharing it; "
                         "needs a budget (--arrays or the target's); small chips only (passes/pack.py)")
    sp.add_argument("--max-memory", metavar="SIZE",
                    help="refuse a request whose arrays would need more memory than this to compile, e.g. 32GiB "
                         "(default: $CIMC_MAX_MEMORY, else 8 GiB or 3/4 of the physical memory if less)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")


def replication_options(args) -> dict:
    return {"replicate": parse_replicate(args.replicate), "replication": args.replication, "arrays": args.arrays,
            "target_fps": args.target_fps, "optimize": not args.no_optimize, "time_limit": args.time_limit,
            "pack": args.pack, "max_memory": args.max_memory}


def replication_summary(report: dict | None) -> str:
    """One line on the replication plan and its greedy baseline."""
    if not report:
        return ""
    line = (f"replication: {report['status']} ({report['mode']}), bottleneck {report['bottleneck_cycles']} cycles "
            f"(unreplicated {report['unreplicated_bottleneck_cycles']}, speedup {report['speedup']:.2f}x), "
            f"{report['arrays']} arrays")
    if report.get("mode") == "pack" and report.get("one_tile_per_array"):
        one = report["one_tile_per_array"]
        line += (f"; one tile per array: {one['bottleneck_cycles']} cycles on {one['arrays']} arrays "
                 f"(packing {report['gain_vs_one_tile_per_array']:.2f}x faster"
                 + (f", {report['arrays_saved']} array(s) saved at that period" if report.get("arrays_saved") else "")
                 + f"); {report['speedup_vs_sequential']:.2f}x over all layers unreplicated one after another")
    elif report.get("greedy_bottleneck_cycles") is not None:     # only budget plans have a greedy baseline
        line += (f"; greedy baseline {report['greedy_bottleneck_cycles']} cycles on {report['greedy_arrays']} "
                 f"arrays")
    if report.get("average"):         # --copies-for accuracy|mix
        averaged = [f"{n} {a}x" for n, a in report["average"].items() if a > 1]
        line += (f"; copies averaged: {', '.join(averaged) or 'none'} (sensitivity-weighted noise "
                 f"{report['noise_unaveraged']:.3g} -> {report['noise']:.3g})")
    if report["status"] not in ("FIXED",):
        line += f"; solved in {report['solve_seconds']:.2f} s"
    return line + "\n"


def defect_placement_summary(report: dict | None) -> str:
    """One line on defect-aware placement (compile --defect-map): the defect error before and after."""
    if not report:
        return ""
    gain = "" if not report["error_before"] else \
        f", {100 * (1 - report['error_after'] / report['error_before']):.1f}% less"
    return (f"defect-aware placement ({report['defect_map']}): defect error {report['error_before']:.1f} -> "
            f"{report['error_after']:.1f} conductance steps{gain}\n")
