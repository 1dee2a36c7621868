"""`cimc targets`: list the built-in targets."""
from __future__ import annotations

from cimc.commands.common import emit


def add_parser(sub) -> None:
    sp = sub.add_parser("targets", help="list the built-in targets")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc.targets.registry import load_target, preset_names
    targets = [load_target(n) for n in preset_names()]
    if args.json:
        emit({"targets": [t.to_dict() for t in targets]})
        return 0
    for t in targets:
        budget = t.chip.array_budget
        w = t.weights
        offset = "offset weights" + (", reference column" if w.reference_column else "")
        held = {"differential": f"{t.array.differential}-differential", "offset": offset,
                "bit-sliced": f"bit-sliced x {w.slices} ({t.array.differential}-differential)"}[w.encoding]
        print(f"{t.name:16s} {t.array.rows}x{t.array.cols} ({held}, "
              f"{t.array.inputs_per_tile} in x {t.array.outputs_per_tile} out per array), "
              f"{t.device.levels}-level devices {t.device.g_min_us}-{t.device.g_max_us} uS, "
              f"{t.input.bits}-bit {t.input.encoding} inputs, "
              f"{'lossless' if t.adc.lossless else f'{t.adc.bits}-bit'} ADC, "
              f"{'unlimited' if budget is None else budget} arrays")
        print(f"{'':16s} {t.description}")
    return 0

