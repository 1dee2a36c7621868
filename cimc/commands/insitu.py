"""`cimc insitu`: Li et al. 2018's in-situ training of a 64-54-10 MLP on one chip instance (sklearn digits), or on
several (--seeds N) with the mean ± std over them."""
from __future__ import annotations

import sys

from cimc.commands.common import emit
from cimc.errors import ConfigError


def add_parser(sub) -> None:
    sp = sub.add_parser("insitu", help="in-situ training of a 64-54-10 MLP on one 128x64 array (Li 2018), vs an "
                        "ideal simulation and ex-situ transfer",
                        description="Train a 64-54-10 MLP (sklearn's 8x8 digits) in situ on one chip instance of the "
                        "target: forward pass on the array, backprop in software on the weights read back, each "
                        "update applied as equal and opposite conductance changes on the device pair. Prints the "
                        "ideal-simulation accuracy (no stuck devices, no variation), the in-situ accuracy with the "
                        "target's defects, their gap, and the accuracy of software-trained weights transferred to "
                        "the same defective chip. See cimc/insitu.py for the model.")
    sp.add_argument("--target", default="li2018", help="preset name or target TOML (default li2018; li2018-pulsed: "
                    "updates as SET/RESET pulses, see the target's [pulse])")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="override one target field, e.g. --set nonideal.program_sigma_us=0.5 (repeatable)")
    sp.add_argument("--stuck-rate", metavar="R", help="fraction of stuck devices, e.g. 0.11 or 11%% "
                    "(default: the target's)")
    sp.add_argument("--stuck-at", metavar="G", help="stuck conductance: g_min, g_max or uS (default: the target's)")
    sp.add_argument("--epochs", type=int, default=None, metavar="N", help="training epochs (default 30)")
    sp.add_argument("--seed", type=int, default=0, metavar="S", help="chip instance and training seed (default 0)")
    sp.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="run N chip instances, seeds S..S+N-1, and print each and the mean ± std over them "
                         "(default 1; one instance is a noisy sample: README's figures are means over 5)")
    sp.add_argument("--lr", type=float, default=None, metavar="LR", help="SGD learning rate (default 0.1)")
    sp.add_argument("--adc-bits", type=int, default=None, metavar="B",
                    help="round the line currents to B bits (default: exact readout)")
    sp.add_argument("--wire-resistance", metavar="R", help="resistance of one row or column line segment, e.g. 1ohm: "
                    "every read (forward passes and weight read-back) goes through the array's circuit "
                    "(nonideal.wire_ohm; cimc.targets.ir_drop)")
    sp.add_argument("--access-resistance", metavar="R", help="on-resistance of each cell's 1T1R access transistor, "
                    "e.g. 5kohm (nonideal.access_ohm)")
    sp.add_argument("--drift-time", metavar="T", help="test the trained chip this long after its last write, e.g. "
                    "1d: drift, 1/f noise and relaxation of the target's [nonideal] (nonideal.drift_time_s; "
                    "training reads happen right after each write)")
    sp.add_argument("--curve", action="store_true",
                    help="also the defect-tolerance table: in situ vs ex situ at 0..50%% devices stuck OFF (g_min)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc import insitu
    from cimc.targets.devices import parse_fraction
    from cimc.targets.devices import parse_duration
    from cimc.targets.ir_drop import parse_resistance
    from cimc.targets.registry import load_target
    overrides = []       # the flags as target fields, before --set (as `cimc run` orders them)
    for attr, field, parse in (("wire_resistance", "wire_ohm", parse_resistance),
                               ("access_resistance", "access_ohm", parse_resistance),
                               ("drift_time", "drift_time_s", parse_duration)):
        value = getattr(args, attr)
        if value is not None:
            overrides.append(f"nonideal.{field}={parse(value, '--' + attr.replace('_', '-'))!r}")
    target = load_target(args.target, overrides + list(args.set or []))
    from cimc.targets.device_stats import time_matters
    if args.drift_time is not None and not time_matters(target.nonideal):
        print("cimc: warning: --drift-time has no effect while the target has no drift exponent, 1/f noise or "
              "relaxation; set nonideal.drift_nu (--set nonideal.drift_nu=0.05) or a device_stats model",
              file=sys.stderr)
    stuck_rate = None if args.stuck_rate is None else parse_fraction(args.stuck_rate, "--stuck-rate")
    epochs = insitu.DEFAULT_EPOCHS if args.epochs is None else args.epochs
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    lr = insitu.DEFAULT_LR if args.lr is None else args.lr
    if not 0 < lr < float("inf"):      # also refuses nan
        raise ConfigError(f"--lr {lr}: must be a positive, finite learning rate")
    if args.adc_bits is not None and not 2 <= args.adc_bits <= 24:
        raise ConfigError(f"--adc-bits {args.adc_bits}: must be between 2 and 24")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be 0 or more (it numbers a chip instance)")
    if args.stuck_at is not None and args.stuck_at not in ("g_min", "g_max"):
        try:
            g = float(args.stuck_at)
        except ValueError:
            raise ConfigError(f"--stuck-at {args.stuck_at!r}: expected g_min, g_max or a conductance in uS") from None
        g_max = target.device.g_max_us
        if not 0 <= g <= g_max:         # also refuses nan and inf
            raise ConfigError(f"--stuck-at {args.stuck_at!r}: a stuck conductance must lie in 0..{g_max:g} uS (the "
                              f"target's g_max), or be g_min / g_max")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be at least 1 (the number of chip instances)")
    progress = _progress if sys.stderr.isatty() else None
    options = dict(curve=args.curve, stuck_at=args.stuck_at, lr=lr, adc_bits=args.adc_bits, progress=progress)
    if args.seeds == 1:
        result = insitu.study(target, stuck_rate, epochs, args.seed, **options)
    else:
        result = insitu.study_seeds(target, stuck_rate, epochs, args.seed, args.seeds, **options)
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if args.json:
        emit(result)
    else:
        print(text(result) if args.seeds == 1 else seeds_text(result), end="")
    return 0


def _progress(line: str) -> None:
    print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)


def text(r: dict) -> str:
    ideal, ins, exs = r["ideal_simulation"], r["in_situ"], r["ex_situ"]
    chip = ins["chip"]
    var = ins["update_sigma_rel"] or 0.0
    pulses = ins.get("pulse_model")
    update = (f"{100 * var:g}% update variation" if pulses is None else
              f"{pulses['kind']} pulses, {100 * pulses['c2c']:g}% c2c, {100 * pulses['d2d']:g}% d2d")
    writes = (f"{ins['writes']:,} device writes" if pulses is None else
              f"{ins['writes']:,} device writes, {ins['pulses']:,} pulses ({ins['set_pulses']:,} SET, "
              f"{ins['reset_pulses']:,} RESET)")
    stuck = (f"{100 * ins['stuck_fraction']:.1f}% of devices stuck at {ins['stuck_at_us']:g} uS"
             if ins["stuck_devices"] else "no stuck devices")
    lines = [
        f"target {r['target']}: one {chip['rows']}x{chip['cols']} array, 64-54-10 MLP ({_layers(chip)}), "
        f"analog devices {chip['g_min_us']:g}..{chip['g_max_us']:g} uS, g_scale {chip['g_scale_us']:g} "
        f"uS per unit weight, {chip['adc']} readout{_circuit(chip)}; sklearn digits 1347/450, {r['epochs']} epochs, "
        f"batch {r['batch']}, seed {r['seed']}\n",
        f"ideal simulation (no stuck devices, no variation): {100 * ideal['final_accuracy']:.2f}%\n",
        f"in situ ({stuck}, {update}): {100 * ins['final_accuracy']:.2f}%{_aged(ins)} ({writes} in "
        f"{ins['updates']} updates)\n",
        f"gap: {r['gap_points']:.2f} points (paper: {r['paper']['gap_points']} points, 91.71% on 8x8 MNIST with 11% "
        f"stuck at ~10 uS)\n",
        f"ex situ (software {100 * exs['software_accuracy']:.2f}%, transferred to the same chip): "
        f"{100 * exs['final_accuracy']:.2f}%{_aged(exs)}\n",
    ]
    if "defect_tolerance" in r:
        lines.append(f"defect tolerance (stuck at {r['defect_tolerance'][0]['stuck_at']}):\n")
        lines.append(f"{'stuck':>6}  {'in situ':>8}  {'ex situ':>8}\n")
        for row in r["defect_tolerance"]:
            lines.append(f"{100 * row['stuck_rate']:>5.0f}%  {100 * row['in_situ']:>7.2f}%  "
                         f"{100 * row['ex_situ']:>7.2f}%\n")
    return "".join(lines)


def _layers(chip: dict) -> str:
    """'fc1 128x54 devices, fc2 108x10' (pairs on +v/-v rows), or the offset encoding's one device per weight."""
    parts = [f"{lay['name']} {lay['devices'] // lay['outputs']}x{lay['outputs']}" for lay in chip["layers"]]
    parts[0] += " devices"
    if "reference_column" in chip:
        return ", ".join(parts) + f", offset encoding, reference column {chip['reference_column']}"
    return ", ".join(parts) + (", offset encoding" if chip.get("encoding") == "offset" else "")


def _circuit(chip: dict) -> str:
    if "wire_ohm" not in chip:
        return ""
    access = f" + {chip['access_ohm']:g} ohm access" if chip["access_ohm"] else ""
    return f", wires {chip['wire_ohm']:g} ohm per segment{access} ({chip['cell']})"


def _aged(run: dict) -> str:
    if "drift_time_s" not in run:
        return ""
    return f" at {run['drift_time_s']:g} s after the last write ({100 * run['accuracy_before_drift']:.2f}% right after)"


def seeds_text(r: dict) -> str:
    """Several chip instances: each on one line, then mean ± std (population) over them."""
    first, summ, n = r["runs"][0], r["summary"], len(r["seeds"])
    header = text(first).splitlines()[0].replace(f"seed {first['seed']}", f"seeds {r['seeds'][0]}..{r['seeds'][-1]}")
    lines = [header + "\n"]
    for run in r["runs"]:
        pulses = (f", {run['in_situ']['writes']:,} writes, {run['in_situ']['pulses']:,} pulses"
                  if "pulses" in run["in_situ"] else "")
        lines.append(f"seed {run['seed']}: ideal {100 * run['ideal_simulation']['final_accuracy']:.2f}%, in situ "
                     f"{100 * run['in_situ']['final_accuracy']:.2f}%{pulses}, gap {run['gap_points']:.2f} points, "
                     f"ex situ {100 * run['ex_situ']['final_accuracy']:.2f}%\n")

    def pct(key):
        return f"{100 * summ[key]['mean']:.2f}% ± {100 * summ[key]['std']:.2f}"
    lines += [
        f"mean ± std over {n} chip instances:\n",
        f"ideal simulation (no stuck devices, no variation): {pct('ideal_simulation')}\n",
        f"in situ: {pct('in_situ')}\n",
        f"gap: {summ['gap_points']['mean']:.2f} ± {summ['gap_points']['std']:.2f} points (paper: "
        f"{r['paper']['gap_points']} points, 91.71% on 8x8 MNIST with 11% stuck at ~10 uS)\n",
        f"ex situ (software {pct('software')}, transferred to the same chip): {pct('ex_situ')}\n",
    ]
    if "defect_tolerance" in summ:
        lines.append(f"defect tolerance (stuck at {summ['defect_tolerance'][0]['stuck_at']}, mean ± std):\n")
        lines.append(f"{'stuck':>6}  {'in situ':>15}  {'ex situ':>15}\n")
        for row in summ["defect_tolerance"]:
            ins, exs = row["in_situ"], row["ex_situ"]
            lines.append(f"{100 * row['stuck_rate']:>5.0f}%  {100 * ins['mean']:>7.2f}% ± {100 * ins['std']:<5.2f}"
                         f"  {100 * exs['mean']:>7.2f}% ± {100 * exs['std']:.2f}\n")
    return "".join(lines)
