"""`cimc estimate`: latency, throughput, energy, area and efficiency of a manifest, or of one array of a target."""
from __future__ import annotations

from cimc.commands.common import emit
from cimc.errors import ConfigError

# Target fields that --set may change on a compiled manifest: the cost numbers, not the geometry it was compiled for.
_MANIFEST_OVERRIDABLE = ("energy.", "timing.", "adc.energy_pj", "input.pulse_ns")


def add_parser(sub) -> None:
    sp = sub.add_parser("estimate", help="latency, throughput, energy and area: per layer of a manifest, or of one "
                        "array of a target (--target, no manifest)",
                        description="With a manifest directory: per crossbar layer and in total, from the "
                        "manifest's graph, copies and target. With --target and no manifest: one full-array "
                        "MVM on a single array of that target (e.g. --target yao2020-macro). Numbers the target "
                        "does not give are reported as null and listed under 'missing'.")
    sp.add_argument("manifest", nargs="?", metavar="DIR", help="manifest directory written by `cimc compile`")
    sp.add_argument("--target", help="without DIR: preset name or target TOML whose single array to estimate")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="override one target field, e.g. --set energy.driver_pj_per_slot=22.8 (repeatable); "
                         "applies to the manifest's target too")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc.passes.estimate import estimate_graph, estimate_macro
    from cimc.targets.registry import load_target
    if args.manifest is None and args.target is None:
        raise ConfigError("cimc estimate needs a manifest directory (cimc estimate DIR) or a target without one "
                          "(cimc estimate --target yao2020-macro)")
    if args.manifest is not None and args.target is not None:
        raise ConfigError("give either a manifest directory or --target, not both: a manifest carries its own "
                          "target (change its numbers with --set SECTION.FIELD=VALUE)")
    if args.manifest is None:
        result = estimate_macro(load_target(args.target, args.set))
        if args.json:
            emit(result)
        else:
            print(_macro_text(result), end="")
        return 0
    from cimc.manifest import load
    manifest = load(args.manifest)
    if args.set:
        fixed = [item for item in args.set if not item.strip().startswith(_MANIFEST_OVERRIDABLE)]
        if fixed:
            raise ConfigError(f"--set {fixed[0]!r}: a manifest is compiled for its target's geometry; with a manifest "
                              f"only {', '.join(_MANIFEST_OVERRIDABLE)} numbers can be changed (recompile for others)")
    target = load_target(manifest.target, args.set) if args.set else manifest.target
    result = estimate_graph(manifest.graph, target)
    result["manifest"] = str(args.manifest)
    if args.json:
        emit(result)
    else:
        print(_graph_text(result), end="")
    return 0


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def _missing_text(missing: list[str]) -> str:
    if not missing:
        return ""
    return (f"unknown in the target: {', '.join(missing)}; what depends on them is n/a "
            "(set them with --set SECTION.FIELD=VALUE)\n")


def _macro_text(r: dict) -> str:
    a, br = r["array"], r["breakdown_pj_per_slot"]
    parts = " + ".join(f"{name} {_f(br[name], '.2f')}" for name in ("array", "drivers", "adc", "digital"))
    area = r["area_um2"]
    return (f"target {r['target']}: one {a['rows']}x{a['cols']} array, one {r['input_bits']}-bit {r['encoding']} "
            f"input vector = {r['slots_per_vector']} slots x {r['slot_ns']:g} ns = {r['vector_ns']:g} ns\n"
            f"energy per 1-bit slot: {_f(r['pj_per_bit_slot'], '.2f')} pJ = {parts} pJ "
            f"({r['adc_conversions_per_slot']} conversions on {r['adcs']} ADCs)\n"
            f"{r['ops_per_vector']} ops per vector -> {r['gops']:.2f} GOP/s, {_f(r['power_mw'], '.3f')} mW, "
            f"{_f(r['gops_per_w'], ',.0f')} GOPS/W ({_f(r['tops_per_w'], '.2f')} TOPS/W)\n"
            f"{_weights_text(r['weights'])}"
            f"area {_f(area['total'], ',.2f')} um2 (array {_f(area['array'], ',.2f')} + periphery "
            f"{_f(area['peripheral'], ',.2f')}) = {_f(r['area_mm2'], '.4f')} mm2 -> "
            f"{_f(r['gops_per_mm2'], ',.0f')} GOPS/mm2\n" + _missing_text(r["missing"]))


def _weights_text(w: dict) -> str:
    """The macro's signed weights under another encoding than the pair (the count above is Yao's, per cell);
    nothing for the pair, whose count README's macro table explains."""
    if w["encoding"] == "differential":
        return ""
    how = {"differential": "a g+/g- pair each",
           "offset": "one offset device each" + (" and a reference column per array"
                                                 if w.get("offset_reference") == "column" else ""),
           "bit-sliced": f"{w['slices']} slice pairs each"}[w["encoding"]]
    return (f"{w['signed_weights']} signed weights ({how}): {w['signed_ops_per_vector']} signed ops per vector -> "
            f"{w['signed_gops']:.2f} GOP/s, {_f(w['signed_gops_per_w'], ',.0f')} GOPS/W\n")


def _graph_text(r: dict) -> str:
    layers, t = r["layers"], r["totals"]
    w = max([len("layer"), len("total")] + [len(l["name"]) for l in layers])
    head = (f"{'layer':<{w}}  {'positions':>9} {'copies':>6} {'arrays':>6} {'cycles':>8} {'latency_us':>10} "
            f"{'MOPs':>9} {'energy_nJ':>10} {'GOPS':>8} {'util':>5}\n")
    lines = [f"target {r['target']}: {r['array']['rows']}x{r['array']['cols']} arrays, {r['input_bits']}-bit "
             f"{r['encoding']} inputs, {r['slot_ns']:g} ns slots"
             f"{', ADC sharing stalls' if r['adc_sharing_stalls'] else ''}\n", head]
    for l in layers:
        lines.append(f"{l['name']:<{w}}  {l['positions']:>9d} {l['copies']:>6d} {l['arrays']:>6d} {l['cycles']:>8d} "
                     f"{l['latency_ns'] / 1e3:>10.2f} {l['ops'] / 1e6:>9.3f} "
                     f"{_f(l['energy_pj']['total'], '.2f', 1e-3):>10} {l['gops']:>8.2f} {l['utilisation']:>5.2f}\n")
    lines.append(f"{'total':<{w}}  {'':>9} {'':>6} {t['arrays']:>6d} {t['latency_cycles']:>8d} "
                 f"{t['latency_ns'] / 1e3:>10.2f} {t['ops'] / 1e6:>9.3f} "
                 f"{_f(t['energy_pj']['total'], '.2f', 1e-3):>10} {_f(t['gops'], '.2f'):>8} "
                 f"{t['utilisation']:>5.2f}\n")
    e = t["energy_pj"]
    lines.append(f"pipelined: {_f(t['throughput_per_s'], ',.0f')} inferences/s (period {t['bottleneck_cycles']} cycles, set by "
                 f"{t['bottleneck_layer']}{' on shared arrays' if t.get('shared_arrays') else ''}), {_f(t['gops'], '.2f')} GOPS, {_f(t['power_mw'], '.3f')} mW\n")
    lines.append("energy per inference (nJ): " + ", ".join(f"{name} {_f(e[name], '.2f', 1e-3)}"
                                                           for name in ("array", "drivers", "adc", "digital"))
                 + f"; {_f(t['gops_per_w'], ',.0f')} GOPS/W\n")
    lines.append(f"area {_f(t['area_mm2'], '.4f')} mm2; {_f(t['gops_per_mm2'], ',.1f')} GOPS/mm2\n")
    lines.append(_missing_text(r["missing"]))
    return "".join(lines)
