"""`cimc sweep`: accuracy over a grid of device and ADC settings x chip instances, on Dask (cimc.sweep)."""
from __future__ import annotations

import sys

from cimc.commands.common import emit
from cimc.errors import ConfigError, DataError
from cimc.tune_defaults import AFFINE_TARGETS, DEFAULT_AFFINE_TARGET

_GEMMS = ("float32", "int8", "lut")


def add_parser(sub) -> None:
    sp = sub.add_parser("sweep", help="Monte-Carlo sweep: accuracy over a grid of device/ADC settings and chip "
                        "instances, on Dask",
                        description="Run the manifest on the simulated chip (cimc run --backend crossbar) for every "
                        "point of a grid of run options or target fields and every seed 0..N-1, on local worker "
                        "processes or an existing Dask cluster. Each finished (point, seed) is written to OUT at once; "
                        "rerunning the same command resumes. OUT then holds rows.csv, rows.jsonl, summary.json "
                        "(mean, std, 95% interval per point) and index.html (the plots).")
    sp.add_argument("manifest", metavar="DIR", help="manifest directory written by `cimc compile`")
    sp.add_argument("--data", required=True, metavar="NPZ", help="test set: npz with 'x' (model layout) and labels 'y'")
    sp.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,...",
                    help="one axis and its values (repeatable; the points are all combinations): a run option of "
                    "`cimc run` with underscores, in its units (program_sigma=0,0.54uS,1uS; read_noise; stuck_rate; "
                    "drift_time=1h,1d; adc_bits=4,6,8; program_sigma_rel; stuck_at; drift_nu; drift_nu_sigma; "
                    "adc_full_scale; wire_resistance=0,1ohm,5ohm; access_resistance=5kohm), or a target field as "
                    "--set takes it (adc.bits=6,8). One value fixes an option")
    sp.add_argument("--seeds", type=int, required=True, metavar="N",
                    help="chip instances per point: seeds 0..N-1, each exactly `cimc run --seed S`")
    sp.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="sweep folder: new, empty, or one this same command wrote (then it resumes)")
    sp.add_argument("--scheduler", metavar="ADDRESS",
                    help="an existing Dask scheduler, e.g. tcp://HOST:8786 (default: a local cluster of worker "
                    "processes, one per core)")
    sp.add_argument("--workers", type=int, metavar="N",
                    help="worker processes of the local cluster (default: one per core); not with --scheduler")
    sp.add_argument("--tune-data", metavar="NPZ",
                    help="also tune every chip instance with `cimc tune`'s hybrid training on this data (its "
                    "defaults) and record the accuracy with and without tuning")
    sp.add_argument("--tune-method", default="fc", metavar="M",
                    help="how each chip instance is tuned, as `cimc tune --method`: fc (default), affine or affine+fc")
    sp.add_argument("--tune-affine-target", choices=AFFINE_TARGETS, metavar="T",
                    help="with an affine --tune-method: what the columns are fitted to, as `cimc tune "
                    "--affine-target`: float (default) or ideal")
    sp.add_argument("--tune-epochs", type=int, default=1, metavar="N", help="tuning epochs (default 1, as cimc tune)")
    sp.add_argument("--tune-limit", type=int, metavar="N", help="use only the first N samples of --tune-data")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="a fixed target override for every point, as cimc run --set (repeatable)")
    sp.add_argument("--gemm", choices=_GEMMS, help="how bit-plane reads are computed, as cimc run --gemm "
                    "(default: the same as cimc run: lut wherever it applies, else float32)")
    sp.add_argument("--limit", type=int, metavar="N", help="use only the first N test samples")
    sp.add_argument("--batch-size", type=int, default=100, metavar="B", help="samples run together (default 100)")
    sp.add_argument("--shard-size", type=int, default=None, metavar="N",
                    help="test samples per task (default 1000): a large test set splits into shards that run on "
                    "several workers; the results do not depend on it")
    sp.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    sp.set_defaults(func=run)


def _check_counts(args) -> None:
    for flag, value in (("--seeds", args.seeds), ("--workers", args.workers), ("--tune-epochs", args.tune_epochs),
                        ("--limit", args.limit), ("--tune-limit", args.tune_limit), ("--batch-size", args.batch_size),
                        ("--shard-size", args.shard_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if args.workers is not None and args.scheduler is not None:
        raise ConfigError("--workers sizes the local cluster; with --scheduler the cluster's own workers run the "
                          "sweep (leave --workers out)")


def _load_labelled(path: str, manifest, limit, what: str):
    from cimc.commands.run import output_classes
    from cimc.data import check_labels, load_npz
    from cimc.executor import check_feeds
    data = load_npz(path, [t.name for t in manifest.graph.inputs], limit=limit, what=what)
    if data.labels is None:
        raise DataError(f"{path}: has no labels 'y'; a sweep measures accuracy, so the {what} needs them")
    check_feeds(manifest.graph, data.inputs, data.path)
    check_labels(data.labels, output_classes(manifest), data.path)
    return data


def run(args) -> int:
    from cimc.commands.sweep_grid import grid_points, parse_axes
    from cimc.manifest import load
    from cimc.sweep import DEFAULT_SHARD, SweepRequest, dask_client, run_sweep
    from cimc.sweep_store import SweepFolder
    from cimc.sweep_tasks import files_digest, manifest_files
    _check_counts(args)
    if args.tune_data is None and (args.tune_limit is not None or args.tune_epochs != 1 or args.tune_method != "fc"):
        raise ConfigError("--tune-limit, --tune-epochs and --tune-method apply with --tune-data (the data to tune "
                          "each chip on)")
    from cimc.commands.tune import METHODS
    if args.tune_method not in METHODS:
        raise ConfigError(f"--tune-method {args.tune_method!r}: unknown method; choose one of {', '.join(METHODS)}")
    if args.tune_affine_target is not None and not args.tune_method.startswith("affine"):
        raise ConfigError(f"--tune-affine-target: --tune-method {args.tune_method} fits no column; use it with "
                          "--tune-method affine or affine+fc")
    if args.tune_method == "affine" and args.tune_epochs != 1:
        raise ConfigError("--tune-epochs: --tune-method affine trains nothing (use fc or affine+fc)")
    axes = parse_axes(args.grid)
    manifest = load(args.manifest)
    described, points, warnings = grid_points(axes, manifest.target, args.set, args.gemm)
    data = _load_labelled(args.data, manifest, args.limit, "data file")
    tune_data = None if args.tune_data is None else _load_labelled(args.tune_data, manifest, args.tune_limit,
                                                                       "tuning data")
    tune_options = {"epochs": args.tune_epochs}
    if args.tune_method != "fc":         # left out for fc, so a sweep from before the flag resumes as it was
        tune_options["method"] = args.tune_method
    target = args.tune_affine_target or DEFAULT_AFFINE_TARGET
    if args.tune_method.startswith("affine") and target != "ideal":
        # recorded unless ideal: the fit of sweeps written before the flag, which therefore resume as they were
        tune_options["affine_target"] = target
    identity = {"manifest": files_digest(manifest_files(args.manifest)),
                "data": {"sha256": data.sha256, "samples": len(data)},
                "grid": [[name, values] for name, values in axes], "seeds": args.seeds, "set": list(args.set or []),
                "gemm": args.gemm or "default",     # not None: before the lut default, None meant float32
                "tune_data": None if tune_data is None else {"sha256": tune_data.sha256, "samples": len(tune_data)},
                "tune": tune_options if tune_data is not None else None}
    folder = SweepFolder(args.output, identity)
    folder.check()                     # before starting any worker
    for message in warnings:
        print(f"cimc: warning: {message}", file=sys.stderr)
    request = SweepRequest(str(args.manifest), data, points, described, args.seeds, tune_data, tune_options,
                           args.batch_size, args.shard_size or DEFAULT_SHARD)
    result = run_sweep(request, folder, lambda: dask_client(args.scheduler, args.workers), progress=not args.json)
    for message in result["warnings"]:
        print(f"cimc: warning: {message}", file=sys.stderr)
    if args.json:
        emit({"points": [_json_point(p) for p in result["summary"]], "rows": result["rows"],
              "seconds": result["seconds"], "computed": result["computed"], "resumed": result["resumed"],
              "output": str(args.output), "warnings": warnings + result["warnings"]})
    else:
        _print(result, args.output)
    return 0


def _json_point(entry: dict) -> dict:
    keys = ["params", "accuracy_mean", "accuracy_std", "n", "accuracy_ci95"]
    if "tuned_accuracy_mean" in entry:
        keys += ["tuned_accuracy_mean", "tuned_accuracy_std", "tuned_accuracy_ci95"]
    return {k: entry[k] for k in keys}


def _print(result: dict, out) -> None:
    for entry in result["summary"]:
        params = " ".join(f"{k}={v}" for k, v in entry["params"].items())
        line = f"{params}: accuracy {_stat(entry, 'accuracy')}"
        if "tuned_accuracy_mean" in entry:
            line += f"; tuned {_stat(entry, 'tuned_accuracy')}"
        print(line + f" over {entry['n']} seeds")
    print(f"wrote {out}/index.html, rows.csv, rows.jsonl, summary.json ({result['rows']} rows: {result['computed']} "
          f"computed, {result['resumed']} already done) in {result['seconds']:.1f} s")


def _stat(entry: dict, key: str) -> str:
    if entry.get(f"{key}_mean") is None:
        return "-"
    lo, hi = entry[f"{key}_ci95"]
    return f"{entry[f'{key}_mean']:.4f} +- {entry[f'{key}_std']:.4f} (95% {lo:.4f}..{hi:.4f})"
