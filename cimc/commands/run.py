"""`cimc run`: run a manifest on data and compare with onnxruntime (and, for the crossbar backend, with the
integer backend, over one or more simulated chip instances)."""
from __future__ import annotations

import math
import sys
import warnings

from cimc.commands.common import emit
from cimc.errors import ConfigError

# options that need --backend crossbar (argparse dests)
_CROSSBAR_ONLY = ("seed", "trials", "ideal", "program_sigma", "program_sigma_rel", "stuck_rate", "stuck_at",
                  "read_noise", "drift_time", "drift_nu", "drift_nu_sigma", "defect_map", "adc_bits", "adc_full_scale",
                  "wire_resistance", "access_resistance", "calibration", "copy", "set", "layers", "gemm")
_NOISE_FLAGS = ("program_sigma", "program_sigma_rel", "stuck_rate", "stuck_at", "read_noise", "drift_time",
                "drift_nu", "drift_nu_sigma", "defect_map", "adc_bits", "adc_full_scale", "wire_resistance",
                "access_resistance")


def add_parser(sub) -> None:
    sp = sub.add_parser("run", help="run a manifest on data and compare with onnxruntime",
                        description="Run a manifest on a data set beside onnxruntime. --backend crossbar simulates the "
                        "chip read by read (devices from the target, overridable below); trials are independent chip "
                        "instances with seeds S, S+1, ...")
    sp.add_argument("manifest", help="manifest directory written by `cimc compile`")
    sp.add_argument("--data", required=True, metavar="NPZ", help="npz with 'x' (model layout) and optional labels 'y'")
    sp.add_argument("--backend", default="integer", choices=["float", "integer", "crossbar"],
                    help="float: lowered float weights; integer: the ideal quantised chip (default); crossbar: the "
                    "simulated chip with the target's devices and ADC")
    sp.add_argument("--reference", metavar="ONNX", help="source model for onnxruntime (default: the path recorded "
                    "in the manifest)")
    sp.add_argument("--limit", type=int, metavar="N", help="use only the first N samples (only they are read)")
    sp.add_argument("--batch-size", type=int, default=100, metavar="B",
                    help="samples run together (default 100); larger batches run faster and need more memory")
    sp.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    g = sp.add_argument_group("crossbar backend")
    add_chip_options(g)
    g.add_argument("--trials", type=int, default=None, metavar="N", help="independent chip instances, seeds S..S+N-1")
    g.add_argument("--calibration", metavar="NPZ", help="calibration inputs for the ADC full scale, where the "
                   "manifest holds none")
    g.add_argument("--copy", type=int, metavar="K", help="run every sample on replica K of each replicated layer "
                   "(default: sample b on copy b %% copies)")
    g.add_argument("--layers", action="store_true", help="per-layer error against the integer backend and ADC "
                   "clipping rate")
    sp.set_defaults(func=run)


def add_chip_options(g) -> None:
    """The flags that choose and shape a chip instance (shared by `cimc run` and `cimc tune`)."""
    g.add_argument("--seed", type=int, default=None, metavar="S", help="seed of the first chip instance (default 0)")
    g.add_argument("--ideal", action="store_true", help="ideal devices and a lossless ADC (equals --backend integer "
                   "bit for bit)")
    g.add_argument("--program-sigma", metavar="G", help="programming error per device, e.g. 0.54uS or 540nS "
                   "(nonideal.program_sigma_us)")
    g.add_argument("--program-sigma-rel", metavar="F", help="programming error proportional to the conductance, "
                   "e.g. 0.05 (nonideal.program_sigma_rel)")
    g.add_argument("--stuck-rate", metavar="F", help="fraction of stuck devices, e.g. 0.11 or 11%% "
                   "(nonideal.stuck_rate)")
    g.add_argument("--stuck-at", metavar="G", help="g_min, g_max or a conductance such as 10uS (nonideal.stuck_at)")
    g.add_argument("--read-noise", metavar="G", help="read noise per device and read, e.g. 0.1uS "
                   "(nonideal.read_noise_sigma_us)")
    g.add_argument("--drift-time", metavar="T", help="time since programming: 3600s, 2h, 1d, 10y "
                   "(nonideal.drift_time_s; drift g0*(t/t0)^-nu needs nonideal.drift_nu)")
    g.add_argument("--drift-nu", metavar="NU", help="mean drift exponent (nonideal.drift_nu)")
    g.add_argument("--drift-nu-sigma", metavar="S", help="per-device spread of the drift exponent "
                   "(nonideal.drift_nu_sigma)")
    g.add_argument("--defect-map", metavar="NPZ", help="measured stuck cells: 'stuck' [arrays, rows, cols] and "
                   "optional 'g_us' (see cimc.targets.devices)")
    g.add_argument("--wire-resistance", metavar="R", help="resistance of one row or column line segment (between "
                   "neighbouring cells), e.g. 1ohm or 0.5ohm: IR drop along the lines (nonideal.wire_ohm)")
    g.add_argument("--access-resistance", metavar="R", help="on-resistance of each cell's 1T1R access transistor, in "
                   "series with its device, e.g. 5kohm (nonideal.access_ohm)")
    g.add_argument("--adc-bits", metavar="B", help="ADC resolution (adc.bits; turns a lossless ADC off)")
    g.add_argument("--adc-full-scale", choices=["calibrated", "max"], help="ADC full-scale rule (adc.full_scale)")
    g.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override any target field for the simulated chip, e.g. --set adc.columns_per_adc=4")
    g.add_argument("--gemm", choices=["float32", "int8", "lut"],
                   help="how bit-plane reads are computed (default: lut wherever it applies, else float32): lut: "
                   "numba table lookups with the ADC and shift-and-add fused, conductances on a grid of step/~400 "
                   "(6 nS for Yao's devices; about 6x faster than float32; ADC gain, offset and INL fused; reads "
                   "with read noise or ADC sense noise run as float32, and so does the default where numba cannot be imported, with a "
                   "warning); float32: GEMMs of the drawn conductances exactly; int8: onnxruntime int8 GEMMs with "
                   "conductances on a grid of step/floor(127/largest conductance in steps), 0.18 uS for Yao's "
                   "devices (1.6x faster than float32)")


def _number(text, flag: str, lo: float | None = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a number") from None
    if not math.isfinite(value) or (lo is not None and value < lo):
        raise ConfigError(f"{flag} {text!r}: must be a finite number" + ("" if lo is None else f" >= {lo:g}"))
    return value


def crossbar_options(args) -> dict:
    """The crossbar backend's options from the command line (target overrides named by their flags)."""
    from cimc.targets.devices import parse_conductance, parse_duration, parse_fraction
    from cimc.targets.ir_drop import parse_resistance
    given = [f for f in _NOISE_FLAGS if getattr(args, f) is not None]
    if args.ideal and given:
        raise ConfigError(f"--ideal (ideal devices, lossless ADC) cannot be combined with "
                          f"{', '.join('--' + f.replace('_', '-') for f in given)}")
    # flag -> nonideal field, with the parser that checks its value and unit
    fields = (("program_sigma", "program_sigma_us", parse_conductance),
              ("program_sigma_rel", "program_sigma_rel", _number),
              ("stuck_rate", "stuck_rate", parse_fraction),
              ("read_noise", "read_noise_sigma_us", parse_conductance),
              ("drift_time", "drift_time_s", parse_duration),
              ("drift_nu", "drift_nu", lambda text, flag: _number(text, flag, None)),
              ("drift_nu_sigma", "drift_nu_sigma", _number),
              ("wire_resistance", "wire_ohm", parse_resistance),
              ("access_resistance", "access_ohm", parse_resistance))
    overrides = []
    for attr, field, parse in fields:
        value = getattr(args, attr)
        if value is not None:
            overrides.append(f"nonideal.{field}={parse(value, '--' + attr.replace('_', '-'))!r}")
    if args.stuck_at is not None:
        at = args.stuck_at if args.stuck_at in ("g_min", "g_max") else repr(parse_conductance(args.stuck_at,
                                                                                              "--stuck-at"))
        overrides.append(f"nonideal.stuck_at={at}")
    if args.adc_bits is not None:
        try:
            bits = int(args.adc_bits)
        except ValueError:
            raise ConfigError(f"--adc-bits {args.adc_bits!r}: expected an integer between 1 and 24") from None
        if not 1 <= bits <= 24:
            raise ConfigError(f"--adc-bits {bits}: must be between 1 and 24")
        overrides += [f"adc.bits={bits}", "adc.lossless=false"]
    if args.adc_full_scale is not None:
        overrides += [f"adc.full_scale={args.adc_full_scale}", "adc.lossless=false"]
    overrides += list(args.set or [])
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be an integer >= 0")
    copy = getattr(args, "copy", None)
    if copy is not None and copy < 0:
        raise ConfigError(f"--copy {copy}: must be a replica index >= 0")
    options = {"overrides": overrides, "ideal": args.ideal, "copy": copy, "gemm": args.gemm}
    if args.defect_map is not None:
        from cimc.targets.devices import load_defect_map
        options["defect_map"] = load_defect_map(args.defect_map)
    return options


def _check_defect_placement(manifest, options: dict, ideal: bool) -> None:
    """A manifest placed around a defect map (compile --defect-map) gains only on that chip: say so when the run
    gives no map or another one."""
    placed = manifest.provenance.get("defect_placement")
    if not placed or ideal:
        return
    given = options.get("defect_map")
    if given is None:
        print(f"cimc: warning: this manifest was placed around the defect map {placed['defect_map']} (cimc compile "
              "--defect-map); pass the same map with --defect-map to simulate that chip", file=sys.stderr)
    else:
        import hashlib
        import numpy as np
        if hashlib.sha256(np.ascontiguousarray(given.stuck)).hexdigest() != placed["sha256"]:
            print(f"cimc: warning: --defect-map {given.path} is not the map this manifest was placed around "
                  f"({placed['defect_map']}); its placement helps only on that chip", file=sys.stderr)


def output_classes(manifest) -> int | None:
    """The number of classes of the model's first output (its non-batch size), None where not known."""
    dims = manifest.graph.outputs[0].shape[1:]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def run(args) -> int:
    from cimc.data import check_labels, load_npz
    from cimc.evaluate import evaluate
    from cimc.executor import check_feeds
    from cimc.manifest import load
    crossbar = args.backend == "crossbar"
    if not crossbar:
        used = [f for f in _CROSSBAR_ONLY if getattr(args, f) is not None and getattr(args, f) is not False]
        if used:
            raise ConfigError(f"{', '.join('--' + f.replace('_', '-') for f in used)} appl"
                              f"{'ies' if len(used) == 1 else 'y'} to --backend crossbar only")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be at least 1 (the number of samples to run)")
    options = crossbar_options(args) if crossbar else None
    manifest = load(args.manifest)
    names = [t.name for t in manifest.graph.inputs]
    data = load_npz(args.data, names, limit=args.limit)
    check_feeds(manifest.graph, data.inputs, data.path)     # shapes against the model, naming the file
    check_labels(data.labels, output_classes(manifest), data.path)
    if crossbar:
        from cimc.targets.registry import load_target
        effective = load_target(manifest.target, options["overrides"])   # bad overrides fail here, before any work
        from cimc.targets.device_stats import time_matters
        if args.drift_time is not None and not time_matters(effective.nonideal):
            print("cimc: warning: --drift-time has no effect while the drift exponent is 0; set --drift-nu "
                  "(nonideal.drift_nu) and optionally --drift-nu-sigma", file=sys.stderr)
        _check_defect_placement(manifest, options, args.ideal)
        span = effective.device.g_max_us - effective.device.g_min_us
        if effective.nonideal.program_sigma_us > span:
            print(f"cimc: warning: the programming error {effective.nonideal.program_sigma_us:g} uS exceeds the "
                  f"device's whole conductance range ({effective.device.g_min_us:g}..{effective.device.g_max_us:g} "
                  "uS): the weights are mostly noise; check the unit of --program-sigma (uS, nS)", file=sys.stderr)
        if args.calibration is not None:
            options["calibration"] = check_feeds(manifest.graph, load_npz(args.calibration, names,
                                                                          what="calibration file").inputs,
                                                 args.calibration)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if crossbar:
            result = evaluate(manifest, data, backend="crossbar", seed=args.seed, reference=args.reference,
                              batch_size=args.batch_size, progress=not args.json, trials=args.trials or 1,
                              backend_options=options, layers=args.layers)
        else:
            result = evaluate(manifest, data, backend=args.backend, reference=args.reference,
                              batch_size=args.batch_size, progress=not args.json)
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for message in messages:
        print(f"cimc: warning: {message}", file=sys.stderr)
    result["warnings"] = messages
    result["manifest"] = str(args.manifest)
    result["data"] = {"path": data.path, "sha256": data.sha256}
    if args.json:
        emit(result)
    elif crossbar:
        _print_crossbar(result)
    else:
        acc = "n/a (no labels)" if result["accuracy"] is None else \
            f"{result['accuracy']:.4f} (onnxruntime {result['reference_accuracy']:.4f})"
        print(f"backend {result['backend']} on {result['n']} samples: accuracy {acc}; top-1 agreement with "
              f"onnxruntime {result['agreement']:.4f}; max abs error {result['max_abs_error']:.4g} "
              f"({result['max_rel_error']:.3g} of the output range); {result['backend_seconds']:.2f} s vs "
              f"onnxruntime {result['reference_seconds']:.2f} s")
    return 0


def _print_crossbar(r: dict) -> None:
    k = len(r["trials"])
    if r["accuracy_mean"] is None:
        acc = "n/a (no labels)"
    else:
        acc = f"{r['accuracy_mean']:.4f}" + (f" +- {r['accuracy_std']:.4f} over {k} chips" if k > 1 else "") + \
              f" (integer {r['integer_accuracy']:.4f}, onnxruntime {r['reference_accuracy']:.4f})"
    seeds = f"seeds {r['seeds'][0]}..{r['seeds'][-1]}" if k > 1 else f"seed {r['seeds'][0]}"
    print(f"backend crossbar on {r['n']} samples, {seeds}: accuracy {acc}")
    print(f"  top-1 agreement with integer {r['agreement_with_integer']:.4f}, max |diff| "
          f"{r['max_abs_diff_vs_integer']:.4g}; with onnxruntime {r['agreement']:.4f}")
    print(f"  {r['backend_seconds']:.2f} s crossbar ({k} trial{'s' if k > 1 else ''}) vs onnxruntime "
          f"{r['reference_seconds']:.2f} s, integer {r['integer_seconds']:.2f} s")
    if k > 1 and r["trials"][0] is not None:
        print("  per trial: " + ", ".join(f"{p['seed']}: {p['accuracy']:.4f}" for p in r["per_trial"]))
    if r.get("layers"):
        ir = any("ir_approx_error" in row for row in r["layers"])     # only with wire or access resistance
        print(f"  {'layer':28s} {'rel.error':>10s} {'SNR dB':>8s} {'input clip':>10s} {'ADC clip':>9s} "
              f"{'full scale':>12s}" + (f" {'IR approx':>10s}" if ir else ""))
        for row in r["layers"]:
            rel = "-" if row["rel_error"] is None else f"{row['rel_error']:.4g}"
            snr = "exact" if row["rel_error"] == 0 else ("-" if row["snr_db"] is None else f"{row['snr_db']:.1f}")
            fs = "lossless" if row["adc_full_scale_ua"] is None else f"{row['adc_full_scale_ua']:.4g} uA"
            clip = "-" if row.get("input_clip_rate") is None else f"{row['input_clip_rate']:.2%}"
            approx = "" if not ir else " " + ("-" if row.get("ir_approx_error") is None
                                               else f"{row['ir_approx_error']:.3g}").rjust(10)
            print(f"  {row['name'][:28]:28s} {rel:>10s} {snr:>8s} {clip:>10s} {row['adc_clip_rate']:>9.2%} "
                  f"{fs:>12s}{approx}")
