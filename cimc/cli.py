"""The `cimc` command. Every user-fixable error prints `cimc: error: ...` and exits with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time

from cimc.errors import CimcError, ConfigError


def _replicate(items: list[str] | None) -> dict[str, int]:
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


def _emit(obj: dict) -> None:
    print(json.dumps(obj, indent=1))


def cmd_targets(args) -> int:
    from cimc.targets.registry import load_target, preset_names
    targets = [load_target(n) for n in preset_names()]
    if args.json:
        _emit({"targets": [t.to_dict() for t in targets]})
        return 0
    for t in targets:
        budget = t.chip.array_budget
        print(f"{t.name:16s} {t.array.rows}x{t.array.cols} ({t.array.differential}-differential, "
              f"{t.array.inputs_per_tile} in x {t.array.outputs_per_tile} out per array), "
              f"{t.device.levels}-level devices {t.device.g_min_us}-{t.device.g_max_us} uS, "
              f"{t.input.bits}-bit {t.input.encoding} inputs, "
              f"{'lossless' if t.adc.lossless else f'{t.adc.bits}-bit'} ADC, "
              f"{'unlimited' if budget is None else budget} arrays")
        print(f"{'':16s} {t.description}")
    return 0


def cmd_count(args) -> int:
    from cimc.compiler import count
    from cimc.report import layer_table_text
    from cimc.targets.registry import load_target
    table = count(args.model, args.target, _replicate(args.replicate), args.set)
    if args.json:
        _emit(table)
    else:
        print(layer_table_text(table, load_target(args.target, args.set)), end="")
    return 0


def cmd_compile(args) -> int:
    from cimc.compiler import compile
    from cimc.report import layer_table_text
    start = time.perf_counter()
    manifest = compile(args.model, args.target, calibration=args.calibration,
                       replicate=_replicate(args.replicate), overrides=args.set)
    path = manifest.save(args.output)
    seconds = time.perf_counter() - start
    table = manifest.summary()
    if args.json:
        _emit({"manifest": str(path), "total_arrays": table["total_arrays"], "layers": table["layers"],
               "seconds": seconds, "pass_seconds": manifest.pass_seconds})
    else:
        print(layer_table_text(table, manifest.target), end="")
        print(f"wrote {path} ({table['total_arrays']} arrays) in {seconds:.2f} s")
    return 0


def cmd_run(args) -> int:
    from cimc.data import load_npz
    from cimc.evaluate import evaluate
    from cimc.manifest import load
    manifest = load(args.manifest)
    data = load_npz(args.data, [t.name for t in manifest.graph.inputs])
    if args.limit:
        data.inputs = {k: v[:args.limit] for k, v in data.inputs.items()}
        data.labels = None if data.labels is None else data.labels[:args.limit]
    result = evaluate(manifest, data, backend=args.backend, reference=args.reference,
                      batch_size=args.batch_size, progress=not args.json)
    result["manifest"] = str(args.manifest)
    result["data"] = {"path": data.path, "sha256": data.sha256}
    if args.json:
        _emit(result)
    else:
        acc = "n/a (no labels)" if result["accuracy"] is None else \
            f"{result['accuracy']:.4f} (onnxruntime {result['reference_accuracy']:.4f})"
        print(f"backend {result['backend']} on {result['n']} samples: accuracy {acc}; top-1 agreement with "
              f"onnxruntime {result['agreement']:.4f}; max abs error {result['max_abs_error']:.4g} "
              f"({result['max_rel_error']:.3g} of the output range); {result['backend_seconds']:.2f} s vs "
              f"onnxruntime {result['reference_seconds']:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import cimc
    p = argparse.ArgumentParser(prog="cimc", description="Compile ONNX models onto memristor crossbar arrays and "
                                "run them bit-accurately.")
    p.add_argument("--version", action="version", version=f"cimc {cimc.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def target_opts(sp):
        sp.add_argument("--target", default="yao2020-resnet",
                        help="preset name (see `cimc targets`) or path to a target TOML (default yao2020-resnet)")
        sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                        help="override one target field, e.g. --set adc.bits=6 (repeatable)")
        sp.add_argument("--replicate", action="append", metavar="NODE=N",
                        help="copies of a crossbar layer's weights, e.g. --replicate conv1=4 (repeatable)")
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    sp = sub.add_parser("targets", help="list the built-in targets")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_targets)

    sp = sub.add_parser("count", help="arrays needed per layer (no calibration needed)")
    sp.add_argument("model", help="ONNX model file")
    target_opts(sp)
    sp.set_defaults(func=cmd_count)

    sp = sub.add_parser("compile", help="compile an ONNX model into a deployment manifest directory")
    sp.add_argument("model", help="ONNX model file")
    sp.add_argument("--calibration", required=True, metavar="NPZ",
                    help="a few hundred representative inputs: npz with 'x' (or one array per model input name)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR", help="manifest directory to write")
    target_opts(sp)
    sp.set_defaults(func=cmd_compile)

    sp = sub.add_parser("run", help="run a manifest on data and compare with onnxruntime")
    sp.add_argument("manifest", help="manifest directory written by `cimc compile`")
    sp.add_argument("--data", required=True, metavar="NPZ", help="npz with 'x' (model layout) and optional labels 'y'")
    sp.add_argument("--backend", default="integer", choices=["float", "integer"],
                    help="float: lowered float weights; integer: the ideal quantised chip (default)")
    sp.add_argument("--reference", metavar="ONNX", help="source model for onnxruntime (default: the path recorded "
                    "in the manifest)")
    sp.add_argument("--limit", type=int, metavar="N", help="use only the first N samples")
    sp.add_argument("--batch-size", type=int, default=100)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CimcError as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cimc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
