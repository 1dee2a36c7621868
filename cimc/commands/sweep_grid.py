"""`cimc sweep --grid FIELD=V1,V2,...`: the axes, and each grid point's chip options.

An axis is a run option (a flag of `cimc run`'s chip options, written with underscores: program_sigma, read_noise,
stuck_rate, drift_time, adc_bits, ...) or a target field (`section.field`, as `--set` takes it at run time). A point's
options are made by `cimc run`'s own code (cimc.commands.run.crossbar_options) from the flags the point stands for,
so a row equals `cimc run DIR --backend crossbar --seed S` with those flags (the point's `run_flags`).
"""
from __future__ import annotations

import argparse
import itertools

from cimc.commands.run import add_chip_options, crossbar_options
from cimc.errors import CimcError, ConfigError
from cimc.targets.device_stats import time_matters

# chip flags that are not grid axes: the seed is the sweep's own, the rest are not quantities to sweep
_NOT_AXES = ("seed", "ideal", "set", "gemm", "defect_map")
# effects the issue names that the crossbar backend does not model yet (an axis only once a run flag exists)
_NOT_MODELLED: dict[str, str] = {}


def _chip_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_chip_options(parser)
    return parser


def run_axes() -> dict[str, argparse.Action]:
    """The run options a grid may sweep, by name (the flag's dest), with their argparse actions."""
    return {a.dest: a for a in _chip_parser()._actions if a.option_strings and a.dest not in _NOT_AXES}


def parse_axes(items: list[str]) -> list[tuple[str, list[str]]]:
    """[(axis name, [value text, ...])] in the order given; refuses bad syntax, naming the axis."""
    known = run_axes()
    axes = []
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--grid {item!r}: expected FIELD=V1,V2,..., e.g. --grid program_sigma=0,0.54uS,1uS "
                              "or --grid adc.bits=6,8")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            raise ConfigError(f"--grid {name}: an empty value in {text!r}; give values separated by commas, e.g. "
                              f"--grid {name}=V1,V2")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"--grid {name}: the value {repeated[0]!r} is given twice; give each value once")
        if any(name == other for other, _ in axes):
            raise ConfigError(f"--grid {name}: the axis is given twice; give all its values in one --grid")
        if "." not in name and name not in known:
            if name in _NOT_MODELLED:
                raise ConfigError(f"--grid {name}: the crossbar backend does not model {_NOT_MODELLED[name]} yet, so "
                                  "it cannot be a sweep axis; leave this axis out (the run options it models: "
                                  f"{', '.join(known)})")
            raise ConfigError(f"--grid {name}: unknown axis; a grid axis is a run option ({', '.join(known)}) or "
                              "a target field SECTION.FIELD as --set takes it, e.g. adc.bits")
        action = known.get(name)
        if action is not None and action.choices is not None:
            bad = [v for v in values if v not in action.choices]
            if bad:
                raise ConfigError(f"--grid {name}: value {bad[0]!r} is not one of {', '.join(action.choices)}")
        axes.append((name, values))
    return axes


def _flags(values: dict[str, str], fixed_set: list[str], gemm: str | None) -> list[str]:
    """The `cimc run` flags of a point (after --backend crossbar)."""
    flags, sets = [], []
    for name, value in values.items():
        if "." in name:
            sets.append(f"{name}={value}")
        else:
            flags += ["--" + name.replace("_", "-"), value]
    for item in list(fixed_set) + sets:
        flags += ["--set", item]
    if gemm is not None:
        flags += ["--gemm", gemm]
    return flags


def _options(values: dict[str, str], fixed_set: list[str], gemm: str | None) -> dict:
    """CrossbarBackend keywords for these axis values, by cimc run's own parsing of the equivalent flags."""
    ns = _chip_parser().parse_args([])
    for name, value in values.items():
        if "." not in name:
            setattr(ns, name, value)
    ns.set = list(fixed_set) + [f"{name}={value}" for name, value in values.items() if "." in name]
    ns.gemm = gemm
    options = crossbar_options(ns)
    options.pop("defect_map", None)
    return options


def _override_keys(overrides: list[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in overrides]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def grid_points(axes: list[tuple[str, list[str]]], target, fixed_set: list[str] | None = None,
                gemm: str | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(axes for the output: name, label, values, numbers; points in grid order, the last axis fastest:
    params, options, run_flags; warnings). Every value is checked alone first, so an error names its axis; then
    every point's options are checked against the manifest's target (`target`)."""
    from cimc.backends.crossbar import CrossbarBackend
    fixed_set = list(fixed_set or [])
    fixed_keys = set(_override_keys(fixed_set))

    def effective(options: dict):
        backend = CrossbarBackend(overrides=options["overrides"], ideal=options["ideal"], gemm=options["gemm"])
        return backend.effective_target(target)

    described, owner, warnings = [], {}, []
    for name, values in axes:
        numbers, fields = [], []
        for value in values:
            try:
                options = _options({name: value}, [], gemm)
                effective({**options, "overrides": fixed_set + options["overrides"]})
            except CimcError as exc:
                raise ConfigError(f"--grid {name}: value {value!r}: {exc}") from None
            fields = _override_keys(options["overrides"])[:1]     # the field the axis is about
            main = options["overrides"][0].partition("=")[2] if options["overrides"] else value
            numbers.append(_number(main))
        for key in fields:
            if key in fixed_keys:
                raise ConfigError(f"--grid {name} and --set {key}=... both set {key}; sweep it or fix it, not both")
            if key in owner and owner[key] != name:
                raise ConfigError(f"--grid {owner[key]} and --grid {name} both set {key}; keep one of the two axes")
            owner[key] = name
        label = name if "." in name else f"{name} ({fields[0]})"
        described.append({"name": name, "label": label, "values": list(values), "numbers": numbers})
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        params = {name: value for (name, _), value in zip(axes, combo)}
        try:
            options = _options(params, fixed_set, gemm)
            chip = effective(options)
        except CimcError as exc:
            shown = " ".join(f"{k}={v}" for k, v in params.items())
            raise ConfigError(f"--grid point {shown}: {exc}") from None
        points.append({"params": params, "options": options, "run_flags": _flags(params, fixed_set, gemm),
                       "chip": chip})
    warnings += _no_effect_warnings(axes, points)
    for point in points:
        del point["chip"]
    return described, points, warnings


def _no_effect_warnings(axes, points) -> list[str]:
    out = []
    names = [name for name, _ in axes]
    if "drift_time" in names and not any(time_matters(p["chip"].nonideal) for p in points):
        out.append("--grid drift_time has no effect while the drift exponent is 0; add --grid drift_nu=NU (one value "
                   "fixes it) or --set nonideal.drift_nu=NU")
    for name in names:
        if name.startswith("adc.") and all(p["chip"].adc.lossless for p in points):
            out.append(f"--grid {name} has no effect: the target's ADC is lossless (adc.lossless = true); sweep "
                       "adc_bits instead (as cimc run --adc-bits, it turns the lossless ADC off) or add --set "
                       "adc.lossless=false")
    return out
