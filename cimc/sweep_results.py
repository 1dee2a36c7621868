"""A sweep's rows as files (CSV, JSON lines) and its summary per grid point (mean, std, 95% interval over seeds).

A row is one (point, seed): {"point", "params": {axis: value as given}, "seed", "samples", "correct", "accuracy"},
plus with tuning "tuned_correct", "tuned_accuracy", "tune_holdout_before", "tune_holdout_after", "tune_writes",
"tune_pulses" and "tune_warnings" (the list of that chip's tuning warnings; JSON lines only, not a CSV column). Rows
written before "tune_pulses"/"tune_warnings" existed resume as they are: their CSV cell is empty.
Rows hold no timings, so the files are the same bytes whatever the workers or the order they finished in.
"""
from __future__ import annotations

import csv
import io
import json
import math

# new columns go last, so a resumed sweep's CSV keeps the columns it had
TUNE_COLUMNS = ("tuned_correct", "tuned_accuracy", "tune_holdout_before", "tune_holdout_after", "tune_writes",
                "tune_pulses")


def sorted_rows(rows) -> list[dict]:
    return sorted(rows, key=lambda r: (r["point"], r["seed"]))


def rows_jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in sorted_rows(rows))


def rows_csv(rows, axes: list[str]) -> str:
    rows = sorted_rows(rows)
    tuned = any("tuned_accuracy" in r for r in rows)
    columns = ["point", *axes, "seed", "samples", "correct", "accuracy", *(TUNE_COLUMNS if tuned else ())]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r["point"], *(r["params"][a] for a in axes), r["seed"], r["samples"], r["correct"],
                         repr(r["accuracy"]), *(_cell(r.get(c)) for c in (TUNE_COLUMNS if tuned else ()))])
    return out.getvalue()


def _cell(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def interval95(values: list[float], mean: float | None = None) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high): the 95% confidence interval of the mean, Student's t with n-1 degrees of
    freedom (the interval is the mean itself for one value). `mean`: the exact mean where the caller has it."""
    n = len(values)
    mean = math.fsum(values) / n if mean is None else mean
    if n < 2:
        return mean, 0.0, mean, mean
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy.stats import t
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarise(points: list[dict], rows) -> list[dict]:
    """Per point (in grid order): its params, the number of seeds done, and accuracy mean, std and 95% interval;
    the same for the tuned accuracy where the sweep tunes. Points without a finished row have n = 0 and no
    statistics."""
    by_point: dict[int, list[dict]] = {}
    for r in sorted_rows(rows):
        by_point.setdefault(r["point"], []).append(r)
    out = []
    for i, point in enumerate(points):
        done = by_point.get(i, [])
        entry = {"point": i, "params": dict(point["params"]), "n": len(done), "run_flags": point["run_flags"]}
        for key, count in (("accuracy", "correct"), ("tuned_accuracy", "tuned_correct")):
            values = [r[key] for r in done if r.get(key) is not None]
            if key == "tuned_accuracy" and not values:
                continue
            if values:
                # the mean from the integer counts (every seed runs the same samples): 3 x 0.99 averages to 0.99
                exact = sum(r[count] for r in done) / sum(r["samples"] for r in done)
                mean, std, lo, hi = interval95(values, exact)
                entry.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_ci95": [lo, hi]})
            else:
                entry.update({f"{key}_mean": None, f"{key}_std": None, f"{key}_ci95": None})
        out.append(entry)
    return out


# the kinds of tuning warning (cimc.training.tune's messages), by how each message starts or what it holds
_TUNE_KINDS = (("tuning epoch ", " wrote no device ", "wrote no device"),
               ("tuning epoch ", " wrote only ", "wrote fewer than 0.1% of a layer's devices"),
               ("tuning made the chip worse", "", "made the chip worse on the held-out data (an earlier state kept)"),
               ("the final state scores worse", "", "kept a final state worse on the held-out data (--keep final)"))


def _tune_kind(message: str) -> str:
    for start, holds, kind in _TUNE_KINDS:
        if message.startswith(start) and holds in message:
            return kind
    return message


def tune_warning_summary(rows) -> list[str]:
    """One line per kind of tuning warning over the rows' "tune_warnings" (instead of one warning per chip):
    how many of the tuned chips had it, at which points, and the first such chip's message (its hint). Rows
    without "tune_warnings" (not tuned, or written before it existed) are not counted."""
    tuned = [r for r in sorted_rows(rows) if "tune_warnings" in r]
    kinds: dict[str, list[tuple[dict, str]]] = {}
    for r in tuned:
        first: dict[str, str] = {}
        for message in r["tune_warnings"]:
            first.setdefault(_tune_kind(message), message)
        for kind, message in first.items():
            kinds.setdefault(kind, []).append((r, message))
    out = []
    for kind, hits in kinds.items():
        points = sorted({r["point"] for r, _ in hits})
        r, message = hits[0]
        out.append(f"tuning {kind} on {len(hits)} of {len(tuned)} tuned chips (points: "
                   f"{', '.join(map(str, points))}; each row's tune_warnings in rows.jsonl holds its messages); "
                   f"point {r['point']} seed {r['seed']}: {message}")
    return out
