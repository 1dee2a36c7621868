"""`cimc device fit DATA.npz -o device.toml [--json] [--force]`: device statistics from measurements
(cimc.device_fit says what is read and fitted)."""
from __future__ import annotations

from pathlib import Path

from cimc.commands.common import emit
from cimc.errors import CimcError, ConfigError


def add_parser(sub) -> None:
    sp = sub.add_parser("device", help="device statistics from measured data")
    dsub = sp.add_subparsers(dest="device_command", required=True)
    fp = dsub.add_parser("fit", help="fit programming sigma, drift exponents and 1/f read noise per level to "
                         "measured conductances and write a target's [device] and [nonideal] sections",
                         description="DATA.npz holds target_uS [n], time_s [m] (the first read time is t0) and "
                         "measured_uS [n, m]; optionally t_read_s. See cimc/device_fit.py.")
    fp.add_argument("data", metavar="DATA.npz", help="measurements: target_uS, time_s, measured_uS")
    fp.add_argument("-o", "--output", required=True, metavar="device.toml", help="the target TOML to write")
    fp.add_argument("--force", action="store_true", help="replace an existing output file")
    fp.add_argument("--json", action="store_true", help="print the fitted statistics as one JSON object")
    fp.set_defaults(func=run_fit)


def run_fit(args) -> int:
    from cimc.data import read_npz
    from cimc.device_fit import check_data, fit, toml_text
    from cimc.sweep_store import atomic_write
    out = Path(args.output)
    if out.suffix != ".toml":
        raise ConfigError(f"-o {args.output}: the output is a target TOML; give a name ending in .toml")
    if out.is_dir():
        raise ConfigError(f"-o {args.output}: is a folder; give the path of the .toml file to write")
    if out.exists() and not args.force:
        raise ConfigError(f"-o {args.output}: the file exists; choose another name or add --force to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {args.output}: the folder {str(out.parent)!r} does not exist; create it first")
    data = check_data(read_npz(args.data, "measurement file"), args.data)
    result = fit(data)
    text = toml_text(result, out.stem, Path(args.data).name)
    try:                                   # what is written must read back as a target
        import tomllib
    except ModuleNotFoundError:            # Python 3.10
        import tomli as tomllib
    from cimc.targets.spec import Target
    try:
        Target.from_dict(tomllib.loads(text), str(out))
    except CimcError as exc:
        raise ConfigError(f"{args.data}: the fitted statistics do not form a valid target ({exc})") from None
    atomic_write(out, text)
    result["output"] = str(out)
    if args.json:
        emit(result)
    else:
        rows = result["levels"]
        print(f"fitted {result['devices']} devices at {result['times']} read times over {len(rows)} levels "
              f"({result['device']['g_min_us']:g}-{result['device']['g_max_us']:g} uS); wrote {out}")
        for r in rows:
            extra = "".join(f", {k} {r[k]:.4g}" for k in ("nu_mean", "nu_std", "q_s") if k in r)
            print(f"  level {r['level']:3d}  {r['g_us']:8.3f} uS  {r['devices']:6d} devices  program sigma "
                  f"{r['program_sigma_us']:.4g} uS{extra}")
    return 0
