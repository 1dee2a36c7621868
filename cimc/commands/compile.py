"""`cimc compile`: ONNX model -> deployment manifest directory."""
from __future__ import annotations

import time

from cimc.commands.common import (add_target_options, defect_placement_summary, emit, replication_options,
                                  replication_summary)


def add_parser(sub) -> None:
    sp = sub.add_parser("compile", help="compile an ONNX model into a deployment manifest directory")
    sp.add_argument("model", help="ONNX model file")
    sp.add_argument("--calibration", required=True, metavar="NPZ",
                    help="a few hundred representative inputs: npz with 'x' (or one array per model input name)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR",
                    help="manifest directory to write: a new or empty folder, or one cimc wrote that holds only "
                    "cimc's files (it is replaced atomically; anything else is refused)")
    add_target_options(sp)
    sp.add_argument("--defect-map", metavar="NPZ",
                    help="the chip's defect map (the file `cimc run --defect-map` reads): place each layer's tiles "
                         "and rows so that stuck devices hold the smallest weights (passes/place_defects.py)")
    sp.add_argument("--copies-for", default="throughput", metavar="throughput|accuracy|mix:W",
                    help="what a layer's copies buy under the array budget: throughput (default: copies pipeline), "
                         "accuracy (copies are read together and averaged, noise down by sqrt(copies), copies go to "
                         "the most sensitive layers) or mix:W (W in [0, 1] weighs throughput against accuracy)")
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc.compiler import compile
    from cimc.output_dir import check_output
    from cimc.report import layer_table_text
    start = time.perf_counter()
    check_output(args.output)        # before compiling, so a bad -o costs nothing
    manifest = compile(args.model, args.target, calibration=args.calibration, overrides=args.set,
                       defect_map=args.defect_map, copies_for=args.copies_for, **replication_options(args))
    path = manifest.save(args.output)
    seconds = time.perf_counter() - start
    table = manifest.summary()
    if args.json:
        emit({"manifest": str(path), "total_arrays": table["total_arrays"], "layers": table["layers"],
              "replication": manifest.replication, "estimates": manifest.estimates["totals"],
              "seconds": seconds, "pass_seconds": manifest.pass_seconds,
              **({"defect_placement": manifest.provenance["defect_placement"]}
                 if "defect_placement" in manifest.provenance else {})})
    else:
        print(layer_table_text(table, manifest.target), end="")
        print(replication_summary(manifest.replication), end="")
        print(defect_placement_summary(manifest.provenance.get("defect_placement")), end="")
        print(f"wrote {path} ({table['total_arrays']} arrays; replication.json holds the copies to edit) "
              f"in {seconds:.2f} s")
    return 0

