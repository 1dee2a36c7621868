"""`cimc run`: run a manifest on data and compare with onnxruntime."""
from __future__ import annotations

from cimc.commands.common import emit


def add_parser(sub) -> None:
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
    sp.set_defaults(func=run)


def run(args) -> int:
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
        emit(result)
    else:
        acc = "n/a (no labels)" if result["accuracy"] is None else \
            f"{result['accuracy']:.4f} (onnxruntime {result['reference_accuracy']:.4f})"
        print(f"backend {result['backend']} on {result['n']} samples: accuracy {acc}; top-1 agreement with "
              f"onnxruntime {result['agreement']:.4f}; max abs error {result['max_abs_error']:.4g} "
              f"({result['max_rel_error']:.3g} of the output range); {result['backend_seconds']:.2f} s vs "
              f"onnxruntime {result['reference_seconds']:.2f} s")
    return 0

