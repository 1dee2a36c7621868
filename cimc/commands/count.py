"""`cimc count`: arrays needed per crossbar layer (no calibration needed)."""
from __future__ import annotations

from cimc.commands.common import add_target_options, emit, replication_options, replication_summary


def add_parser(sub) -> None:
    sp = sub.add_parser("count", help="arrays needed per layer (no calibration needed)")
    sp.add_argument("model", help="ONNX model file")
    add_target_options(sp)
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc.compiler import count
    from cimc.report import layer_table_text
    from cimc.targets.registry import load_target
    options = replication_options(args)
    table = count(args.model, args.target, overrides=args.set, **options)
    if args.json:
        emit(table)
    else:
        print(layer_table_text(table, load_target(args.target, args.set)), end="")
        print(replication_summary(table["replication"]), end="")
    return 0

