"""Run and tune results as the HTML report shows them: `cimc run --json` / `cimc tune --json` objects given with
`cimc report --results FILE`, and the hybrid-training record a tuned manifest keeps in provenance.tuning.

Everything is turned into plain rows the template loops over: the object's scalars as label/value pairs, each list
of flat objects (per_trial, layers, per_copy) as a table, and nested settings (crossbar options) flattened to
dotted keys. Keys this module does not know are shown too, so a field added to the JSON later still appears.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cimc.errors import DataError

MAX_BYTES = 64 << 20          # a results JSON is a few KB; refuse anything absurd before reading it

_TITLES = {"per_trial": "per chip instance", "layers": "per layer", "per_copy": "per copy (copies count from 0)"}


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) if value else "none"
    return str(value)


def _flatten(value: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            rows += _flatten(v, name + ".")
        elif isinstance(v, list) and not all(_scalar(x) for x in v):
            rows.append((name, json.dumps(v)))
        else:
            rows.append((name, _text(v)))
    return rows


def _table(name: str, items: list[dict]) -> dict:
    columns: list[str] = []
    for item in items:
        columns += [k for k in item if k not in columns]
    return {"name": name, "title": _TITLES.get(name, name.replace("_", " ")), "columns": columns,
            "rows": [[_text(item.get(c)) if _scalar(item.get(c)) else json.dumps(item.get(c)) for c in columns]
                     for item in items]}


def view(obj: dict) -> dict:
    """One JSON object -> {"pairs": [(key, text)], "tables": [...], "settings": [(dotted key, text)]}."""
    pairs, tables, settings = [], [], []
    for key, value in obj.items():
        if _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value)):
            pairs.append({"key": key, "value": _text(value)})
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            tables.append(_table(key, value))
        elif isinstance(value, dict):
            settings += [{"key": k, "value": v} for k, v in _flatten(value, key + ".")]
        else:
            settings.append({"key": key, "value": json.dumps(value)})
    return {"pairs": pairs, "tables": tables, "settings": settings}


def _kind(obj: dict) -> str:
    if "backend" in obj and "n" in obj:
        return (f"cimc run: {obj['backend']} backend on {obj['n']} sample(s)"
                + (f", seed {obj['seed']}" if obj.get("seed") is not None else ""))
    if obj.get("method") == "affine" and "layers" in obj:
        return (f"cimc tune --method affine: column calibration of {len(obj['layers'])} layer(s), chip instance "
                f"{obj.get('seed', '?')}, accuracy {_text(obj.get('accuracy_before'))} → "
                f"{_text(obj.get('accuracy_after'))}, no device writes"
                + (f", fitted to the {obj['target']} network" if obj.get("target") else ""))
    if "accuracy_before" in obj and "writes" in obj:
        return (f"cimc tune: layer {obj.get('layer', '?')}, chip instance {obj.get('seed', '?')}, "
                f"accuracy {_text(obj['accuracy_before'])} → {_text(obj.get('accuracy_after'))}, "
                f"{_text(obj['writes'])} device writes")
    return "results"


def load_results(paths) -> list[dict]:
    """Read every `--results` file (before anything is written) and view it; a bad one is a DataError naming it."""
    shown = []
    for raw in paths or []:
        path = Path(raw)
        try:
            if path.is_dir():
                raise DataError(f"--results {raw}: is a directory; give the JSON file that `cimc run --json` or "
                                "`cimc tune --json` printed (e.g. cimc run DIR --json > run.json)")
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise DataError(f"--results {raw}: {size:,} bytes is not a run or tune result (they are a few KB)")
            obj = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"--results {raw}: cannot read it ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"--results {raw}: not a text file; give the JSON printed by `cimc run --json` or "
                            "`cimc tune --json`") from None
        except ValueError as exc:
            raise DataError(f"--results {raw}: not valid JSON ({exc}); give the JSON printed by `cimc run --json` "
                            "or `cimc tune --json`") from None
        except RecursionError:
            raise DataError(f"--results {raw}: nested too deeply to be a run or tune result") from None
        if not isinstance(obj, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
            raise DataError(f"--results {raw}: holds {kind}, not the JSON object printed by `cimc run --json` or "
                            "`cimc tune --json`")
        try:
            shown.append({"file": str(raw), "kind": _kind(obj), **view(obj)})
        except RecursionError:
            raise DataError(f"--results {raw}: nested too deeply to be a run or tune result") from None
    return shown


def tuning_history(provenance: dict) -> list[dict]:
    """A tuned manifest's hybrid-training rounds, oldest first (provenance.previous_tunings, then .tuning)."""
    rounds = [t for t in list(provenance.get("previous_tunings") or []) + [provenance.get("tuning")]
              if isinstance(t, dict)]
    return [{"round": i + 1, "kind": _kind(t), **view(t)} for i, t in enumerate(rounds)]


__all__ = ["load_results", "tuning_history", "view"]
