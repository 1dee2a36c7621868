"""Find a target by preset name or TOML path and apply `section.field=value` overrides."""
from __future__ import annotations

import copy
import dataclasses
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from cimc.errors import TargetError
from cimc.targets.spec import Target

_PRESETS = resources.files("cimc.targets") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _PRESETS.iterdir() if p.name.endswith(".toml"))


def load_target(name_or_path: str | Path | Target, overrides: list[str] | dict | None = None) -> Target:
    """A preset name (`yao2020-resnet`) or a path to a TOML file, plus overrides such as `adc.bits=6`."""
    if isinstance(name_or_path, Target):
        raw, source = name_or_path.to_dict(), f"target {name_or_path.name!r}"
    else:
        raw, source = _read_raw(str(name_or_path))
    for key, value in _parse_overrides(overrides).items():
        _apply_override(raw, key, value, source)
    return Target.from_dict(raw, source)


def _read_raw(name: str) -> tuple[dict, str]:
    path = Path(name)
    if name.endswith(".toml") or path.exists():
        if not path.is_file():
            raise TargetError(f"target file {name!r} does not exist")
        source = str(path)
        text = path.read_bytes()
    else:
        preset = _PRESETS / f"{name}.toml"
        if not preset.is_file():
            raise TargetError(f"unknown target {name!r}: built-in targets are {', '.join(preset_names())}, "
                              "or give a path to a .toml file")
        source = f"preset {name!r}"
        text = preset.read_bytes()
    try:
        return tomllib.loads(text.decode("utf-8")), source
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{source}: not valid TOML: {exc}") from None


def _parse_overrides(overrides) -> dict[str, str]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise TargetError(f"override {item!r}: expected SECTION.FIELD=VALUE, e.g. adc.bits=6")
        parsed[key.strip()] = value.strip()
    return parsed


def _apply_override(raw: dict, key: str, value, source: str) -> None:
    section, _, name = key.partition(".")
    section_field = {f.name: f for f in dataclasses.fields(Target)}.get(section)
    if section_field is None or section in ("name", "description"):
        raise TargetError(f"override {key!r}: unknown section {section!r}")
    section_type = section_field.default_factory().__class__
    fields = {f.name: f for f in dataclasses.fields(section_type)}
    if name not in fields:
        raise TargetError(f"override {key!r}: unknown field; [{section}] has {', '.join(fields)}")
    raw.setdefault(section, {})
    raw[section] = copy.copy(raw[section])
    raw[section][name] = _parse_value(value, str(fields[name].type), key) if isinstance(value, str) else value


def _parse_value(text: str, type_text: str, key: str):
    allowed = [t.strip() for t in type_text.split("|")]
    if allowed[0].startswith("tuple[float"):          # a list: comma-separated numbers, e.g. 0.1,0.2,0.3 (or empty)
        try:
            return [float(v) for v in text.strip("[]").split(",") if v.strip()]
        except ValueError:
            raise TargetError(f"override {key}={text!r}: expected comma-separated numbers, e.g. 0.5,0.6,0.7") from None
    if text.lower() in ("none", "null") and "None" in allowed:
        return None
    if "bool" in allowed:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    for kind, parse in (("int", int), ("float", float)):
        if kind in allowed:
            try:
                return parse(text)
            except ValueError:
                pass
    if "str" in allowed:
        return text
    raise TargetError(f"override {key}={text!r}: expected {type_text}")
