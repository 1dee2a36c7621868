"""`cimc sweep` on Dask: a row is `cimc run --seed S` (and `cimc tune` then `cimc run`) with the point's flags; a
sweep on a real cluster (a scheduler and two worker processes on 127.0.0.1) equals a local one byte for byte, with
other shard sizes; a killed sweep resumes without recomputing its rows; a worker killed mid-run loses nothing; bad
grid values are refused naming the axis. Model: the trained mCNN of examples/mcnn_mnist, on a few dozen images."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.cli import main

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
# read noise is drawn per sample by its index in the data set: shards must number their samples right
GRID = ["--grid", "program_sigma=0.54uS,2uS", "--grid", "adc_bits=5,8", "--grid", "read_noise=0.5uS"]
SEEDS = 3
RESULT_FILES = ("rows.csv", "rows.jsonl", "summary.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    calib = np.load(ART / "calib_200.npz")["x"][:32]
    cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=calib).save(d / "m")
    test = np.load(ART / "test_500.npz")
    np.savez(d / "test.npz", x=test["x"][:30], y=test["y"][:30])
    train = np.load(ART / "train_2000.npz")
    np.savez(d / "tune.npz", x=train["x"][:60], y=train["y"][:60])
    return d


@pytest.fixture(scope="module")
def cluster():
    """A real Dask cluster: a scheduler and two single-threaded worker processes on 127.0.0.1."""
    from distributed import LocalCluster
    import logging
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as c:
        yield c


def _sweep(setup, out, capsys, *extra):
    rc = main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), *GRID, "--seeds", str(SEEDS),
               "-o", str(out), "--json", *extra])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else None), captured.err


@pytest.fixture(scope="module")
def reference(setup, cluster, tmp_path_factory):
    """The sweep run once on the cluster, the test set in shards of 7 samples (5 tasks per row)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    rc = main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), *GRID, "--seeds", str(SEEDS),
               "-o", str(out), "--json", "--scheduler", cluster.scheduler_address, "--shard-size", "7"])
    assert rc == 0
    return out


def _row_files(out) -> list[Path]:
    return sorted((out / "rows").glob("p*.json")) if (out / "rows").is_dir() else []


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def test_rows_are_cimc_run_with_the_point_flags(setup, reference, capsys):
    rows = _rows(reference)
    assert len(rows) == 4 * SEEDS and [(r["point"], r["seed"]) for r in rows] == \
        [(p, s) for p in range(4) for s in range(SEEDS)]
    summary = json.loads((reference / "summary.json").read_text())["points"]
    for row in (rows[1], rows[-1]):                    # point 0 seed 1, point 3 seed 2
        flags = summary[row["point"]]["run_flags"]
        assert flags == ["--program-sigma", row["params"]["program_sigma"], "--adc-bits", row["params"]["adc_bits"],
                         "--read-noise", "0.5uS"]
        rc = main(["run", str(setup / "m"), "--data", str(setup / "test.npz"), "--backend", "crossbar",
                   "--seed", str(row["seed"]), *flags, "--json"])
        run = json.loads(capsys.readouterr().out)
        assert rc == 0 and run["accuracy"] == row["accuracy"] and run["n"] == row["samples"] == 30
    # the summary against numpy over the rows
    accs = [r["accuracy"] for r in rows if r["point"] == 3]
    assert summary[3]["accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-15)
    assert summary[3]["accuracy_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-15)
    lo, hi = summary[3]["accuracy_ci95"]
    assert hi - lo == pytest.approx(2 * 4.302652729911275 * np.std(accs, ddof=1) / np.sqrt(3))   # t(0.975, 2)
    # the effect is real: 2 uS of programming error costs accuracy against 0.54 uS
    assert summary[2]["accuracy_mean"] < summary[0]["accuracy_mean"]


def test_a_local_sweep_equals_the_cluster_sweep_byte_for_byte(setup, reference, tmp_path, capsys):
    rc, r, err = _sweep(setup, tmp_path / "local", capsys, "--workers", "2")     # its own local cluster, 1 shard
    assert rc == 0, err
    for name in RESULT_FILES:
        assert (tmp_path / "local" / name).read_bytes() == (reference / name).read_bytes(), name
    assert r["rows"] == 12 and r["computed"] == 12 and r["resumed"] == 0
    assert [p["n"] for p in r["points"]] == [SEEDS] * 4
    assert set(r["points"][0]) >= {"params", "accuracy_mean", "accuracy_std", "n"} and "seconds" in r
    html = (tmp_path / "local" / "index.html").read_text()
    assert "<svg" in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    assert html.count("<polyline") == 4               # 2 axes x 2 values of the other axis
    # rerun: nothing computed, the same files
    rc, r, _ = _sweep(setup, tmp_path / "local", capsys, "--workers", "1")
    assert rc == 0 and r["computed"] == 0 and r["resumed"] == 12
    assert (tmp_path / "local" / "rows.csv").read_bytes() == (reference / "rows.csv").read_bytes()


def test_a_killed_sweep_resumes_without_recomputing(setup, reference, cluster, tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cimc.cli", "sweep", str(setup / "m"), "--data", str(setup / "test.npz"), *GRID,
           "--seeds", str(SEEDS), "-o", str(out), "--json", "--scheduler", cluster.scheduler_address,
           "--shard-size", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _row_files(out):
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)           # the sweep and anything it started
    finally:
        proc.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "rows").glob("p*.json")}
    assert 1 <= len(before) < 12, "the sweep was not killed mid-run"
    assert not (out / "rows.csv").exists()
    rc, r, err = _sweep(setup, out, capsys, "--scheduler", cluster.scheduler_address)
    assert rc == 0, err
    assert r["resumed"] == len(before) and r["computed"] == 12 - len(before)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "rows").glob("p*.json")}
    assert all(after[name] == stamp for name, stamp in before.items())     # done rows were not rewritten
    for name in RESULT_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    # the folder now belongs to this command: another one is refused, naming what differs
    rc = main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), *GRID, "--seeds", "4", "-o", str(out),
               "--scheduler", cluster.scheduler_address])
    err = capsys.readouterr().err
    assert rc == 2 and "cimc: error:" in err and "--seeds: 3 there, 4 here" in err


def test_tuning_rows_are_cimc_tune_then_cimc_run(setup, cluster, tmp_path, capsys):
    rc = main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), "--grid", "program_sigma=1.5uS",
               "--seeds", "2", "-o", str(tmp_path / "out"), "--tune-data", str(setup / "tune.npz"), "--json",
               "--scheduler", cluster.scheduler_address])
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert rc == 0 and "tuned_accuracy_mean" in r["points"][0]
    row = _rows(tmp_path / "out")[1]
    assert row["seed"] == 1 and row["tune_writes"] > 0
    common = ["--seed", "1", "--program-sigma", "1.5uS"]
    assert main(["tune", str(setup / "m"), "--data", str(setup / "tune.npz"), "-o", str(tmp_path / "t"), "--json",
                 *common]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["writes"] == row["tune_writes"] and tuned["holdout"]["accuracy_after"] == row["tune_holdout_after"]
    # pulses as cimc tune counts them (no pulse model here: one per write and per write-verify retry)
    assert tuned["pulses"] == row["tune_pulses"] > 0 and tuned["warnings"] == row["tune_warnings"]
    assert f",{row['tune_writes']},{row['tune_pulses']}\n" in (tmp_path / "out" / "rows.csv").read_text()
    # tuning's warnings: one summary line per kind, not one per chip; the messages stay in the rows
    rows = _rows(tmp_path / "out")
    assert sum(len(x["tune_warnings"]) for x in rows) >= 1, "the fixture should warn on some chip"
    tuning_lines = [line for line in captured.err.splitlines() if line.startswith("cimc: warning: tuning ")]
    kinds = [("tuning epoch ", "wrote no device"), ("tuning made the chip worse", "made the chip worse"),
             ("the final state scores worse", "kept a final state worse")]
    expected = []
    for start, summary in kinds:
        chips = [x for x in rows if any(m.startswith(start) for m in x["tune_warnings"])]
        if chips:
            expected.append(summary)
            line, = [line for line in tuning_lines if summary in line]
            assert f" on {len(chips)} of {len(rows)} tuned chips " in line, line
        for x in chips:          # no chip's own message printed on its own line
            for m in x["tune_warnings"]:
                assert f"cimc: warning: {m}\n" not in captured.err
    assert len(tuning_lines) == len(expected)
    for manifest, key in ((setup / "m", "accuracy"), (tmp_path / "t", "tuned_accuracy")):
        assert main(["run", str(manifest), "--data", str(setup / "test.npz"), "--backend", "crossbar", "--json",
                     *common]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == row[key], key
    assert "tuned" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.parametrize("method, target", [("affine", []), ("affine+fc", []),
                                            ("affine", ["--affine-target", "ideal"])])
def test_tune_method_rows_are_cimc_tune_method_then_cimc_run(setup, cluster, tmp_path, capsys, method, target):
    """--tune-method (and --tune-affine-target): each tuned row is `cimc tune --method M` then `cimc run` on the
    same chip instance."""
    rc = main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), "--grid", "program_sigma=1.5uS",
               "--seeds", "2", "-o", str(tmp_path / "out"), "--tune-data", str(setup / "tune.npz"), "--json",
               "--tune-method", method, "--scheduler", cluster.scheduler_address,
               *[("--tune-" + t[2:] if t.startswith("--") else t) for t in target]])
    capsys.readouterr()
    assert rc == 0
    row = _rows(tmp_path / "out")[1]
    common = ["--seed", "1", "--program-sigma", "1.5uS"]
    assert main(["tune", str(setup / "m"), "--data", str(setup / "tune.npz"), "-o", str(tmp_path / "t"), "--json",
                 "--method", method, *target, *common]) == 0
    tuned = json.loads(capsys.readouterr().out)
    fc = tuned.get("fc")
    assert row["tune_writes"] == (0 if fc is None else fc["writes"])
    assert row["tune_holdout_after"] == (None if fc is None else fc["holdout"]["accuracy_after"])
    assert main(["run", str(tmp_path / "t"), "--data", str(setup / "test.npz"), "--backend", "crossbar", "--json",
                 *common]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == row["tuned_accuracy"]
    words = {"affine": "after column calibration", "affine+fc": "after column calibration and hybrid training"}
    assert words[method] in (tmp_path / "out" / "index.html").read_text()


def test_an_affine_sweep_from_before_the_target_flag_resumes_with_ideal(setup, cluster, tmp_path, capsys):
    """Sweeps written before --tune-affine-target fitted to the ideal chip and recorded no target: the same sweep
    with `--tune-affine-target ideal` records none either, so it resumes them; without the flag (now the float
    target) the folder is refused, naming the difference."""
    argv = ["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), "--grid", "program_sigma=1.5uS",
            "--seeds", "1", "-o", str(tmp_path / "out"), "--tune-data", str(setup / "tune.npz"), "--json",
            "--tune-method", "affine", "--scheduler", cluster.scheduler_address]
    assert main(argv + ["--tune-affine-target", "ideal"]) == 0
    capsys.readouterr()
    marker = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert marker["command"]["tune"] == {"epochs": 1, "method": "affine"}        # as before the flag existed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different command" in err and "affine_target" in err, err
    assert main(argv + ["--tune-affine-target", "ideal"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 0


def test_a_worker_killed_mid_run_loses_nothing(setup, reference, cluster, tmp_path, capsys):
    """One of the two workers is SIGKILLed while it holds tasks: the scheduler reruns them on the other (the nanny
    restarts the killed one), and the results are the reference's."""
    from distributed import Client
    out = tmp_path / "out"
    killed = {}

    def kill_a_busy_worker():
        with Client(cluster.scheduler_address, timeout=20) as client:
            pids = client.run(os.getpid)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items() if any("cimc-sweep" in str(k) for k in keys)]
                if busy and _row_files(out):
                    killed["worker"] = busy[0]
                    killed["rows_before"] = len(_row_files(out))
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    return
                time.sleep(0.005)

    thread = threading.Thread(target=kill_a_busy_worker)
    thread.start()
    rc, r, err = _sweep(setup, out, capsys, "--scheduler", cluster.scheduler_address, "--shard-size", "5")
    thread.join()
    assert rc == 0, err
    assert killed and killed["rows_before"] < 12, "no worker was killed mid-run"
    assert r["computed"] == 12
    for name in RESULT_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize("grid, words", [
    (["program_sigma=0,abc"], ["--grid program_sigma", "'abc'", "conductance"]),
    (["adc_bits=4,x"], ["--grid adc_bits", "'x'", "integer"]),
    (["stuck_rate=0.1,2"], ["--grid stuck_rate", "'2'", "between 0 and 1"]),
    (["drift_time=1h,soon"], ["--grid drift_time", "'soon'"]),
    (["wire_resistance=1ohm,2Mohm"], ["--grid wire_resistance", "'2Mohm'", "unknown unit"]),
    (["temperature=300"], ["--grid temperature", "unknown axis", "program_sigma"]),
    (["adc.bitz=6"], ["--grid adc.bitz", "unknown field"]),
    (["array.rows=64"], ["--grid array.rows", "recompile"]),
    (["program_sigma=0,,1uS"], ["--grid program_sigma", "empty value"]),
    (["program_sigma"], ["--grid 'program_sigma'", "FIELD=V1,V2"]),
    (["adc_bits=6,6"], ["--grid adc_bits", "'6'", "twice"]),
    (["adc_bits=6", "adc.bits=8"], ["--grid adc_bits", "--grid adc.bits", "both set adc.bits"]),
    (["adc_full_scale=max,widest"], ["--grid adc_full_scale", "'widest'"]),
])
def test_bad_grid_values_name_the_axis(setup, tmp_path, capsys, grid, words):
    argv = ["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), "--seeds", "2", "-o", str(tmp_path / "o")]
    for item in grid:
        argv += ["--grid", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error:") and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_not_a_sweep_is_refused_untouched(setup, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["sweep", str(setup / "m"), "--data", str(setup / "test.npz"), "--grid", "adc_bits=8", "--seeds",
                 "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cimc: error:" in err and "not a sweep folder" in err and "notes.txt" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_grid_points_are_the_run_flags_and_warn_about_axes_without_effect(setup):
    """The points in grid order (last axis fastest), their backend options as `cimc run` makes them from the same
    flags, and a warning for an axis that cannot change anything."""
    from cimc.commands.run import add_chip_options, crossbar_options
    from cimc.commands.sweep_grid import grid_points, parse_axes
    from cimc.manifest import load
    target = load(setup / "m").target
    axes, points, warnings = grid_points(parse_axes(["drift_time=1h,1d", "adc.bits=6,8"]), target,
                                         ["adc.lossless=true"])
    assert [p["params"] for p in points] == [{"drift_time": t, "adc.bits": b} for t in ("1h", "1d") for b in "68"]
    assert points[1]["run_flags"] == ["--drift-time", "1h", "--set", "adc.lossless=true", "--set", "adc.bits=8"]
    parser = argparse.ArgumentParser()
    add_chip_options(parser)
    for point in points:
        assert point["options"] == {k: v for k, v in crossbar_options(parser.parse_args(point["run_flags"])).items()
                                    if k != "defect_map"}
    assert axes[0]["numbers"] == [3600.0, 86400.0] and axes[1]["numbers"] == [6.0, 8.0]
    assert len(warnings) == 2 and "drift_time" in warnings[0] and "drift_nu" in warnings[0]
    assert "adc.bits" in warnings[1] and "lossless" in warnings[1]
    _, _, quiet = grid_points(parse_axes(["drift_time=1h,1d", "drift_nu=0.05", "adc_bits=6,8"]), target)
    assert quiet == []


@pytest.mark.parametrize("extra, words", [
    (["--seeds", "0"], ["--seeds 0", "at least 1"]),
    (["--seeds", "2", "--shard-size", "0"], ["--shard-size 0"]),
    (["--seeds", "2", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers", "--scheduler"]),
    (["--seeds", "2", "--tune-limit", "5"], ["--tune-limit", "--tune-data"]),
    (["--seeds", "2", "--tune-method", "affine"], ["--tune-method", "--tune-data"]),
    (["--seeds", "2", "--tune-method", "lbfgs", "--tune-data", "TUNE"], ["--tune-method 'lbfgs'", "affine+fc"]),
    (["--seeds", "2", "--tune-method", "affine", "--tune-epochs", "2", "--tune-data", "TUNE"],
     ["--tune-epochs", "affine trains nothing"]),
    (["--seeds", "2", "--tune-affine-target", "ideal", "--tune-data", "TUNE"],
     ["--tune-affine-target", "--tune-method fc", "fits no column"]),
    (["--seeds", "2", "--set", "adc.bits=6", "--grid", "adc.bits=6,8"], ["--grid adc.bits", "--set adc.bits"]),
    (["--seeds", "2", "--data-labels-missing"], ["nolabels.npz", "labels 'y'"]),
])
def test_bad_options_name_the_flag(setup, tmp_path, capsys, extra, words):
    data = setup / "test.npz"
    if "--data-labels-missing" in extra:
        extra = [e for e in extra if e != "--data-labels-missing"]
        data = tmp_path / "nolabels.npz"
        np.savez(data, x=np.load(setup / "test.npz")["x"])
    extra = [str(setup / "tune.npz") if e == "TUNE" else e for e in extra]
    argv = ["sweep", str(setup / "m"), "--data", str(data), "-o", str(tmp_path / "o"), *extra]
    if "--grid" not in extra:
        argv += ["--grid", "adc_bits=8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error:") and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_one_sweep_at_a_time_per_folder_and_half_written_rows_are_dropped(tmp_path):
    """A second sweep on a folder another one holds is refused at once; a temporary row left by a killed sweep is
    removed, and a row file whose name and content disagree is refused naming it."""
    from cimc.sweep_store import SweepError, SweepFolder
    identity = {"grid": [["adc_bits", ["8"]]], "seeds": 1}
    first = SweepFolder(tmp_path / "out", identity)
    assert first.open() == {}
    with pytest.raises(SweepError, match="another cimc sweep is writing"):
        SweepFolder(tmp_path / "out", identity).open()
    first.write_row({"point": 0, "seed": 0, "accuracy": 0.5})
    first.close()
    (tmp_path / "out" / "rows" / ".tmp-abc").write_text('{"point": 0, "se')
    again = SweepFolder(tmp_path / "out", identity)
    assert again.open() == {(0, 0): {"point": 0, "seed": 0, "accuracy": 0.5}}
    again.close()
    assert sorted(p.name for p in (tmp_path / "out" / "rows").iterdir()) == ["p0000-s0000.json"]
    (tmp_path / "out" / "rows" / "p0000-s0001.json").write_text('{"point": 0, "seed": 0}')
    with pytest.raises(SweepError, match="p0000-s0001.json"):
        SweepFolder(tmp_path / "out", identity).open()
    (tmp_path / "out" / "rows" / "p0000-s0001.json").unlink()
    assert SweepFolder(tmp_path / "out", identity).open() == {(0, 0): {"point": 0, "seed": 0, "accuracy": 0.5}}


def test_tune_warnings_summarise_per_kind_and_old_rows_resume():
    from cimc.sweep_results import rows_csv, tune_warning_summary
    none = "tuning epoch {} of 2 wrote no device of layer 'FC' (fewer than 0.1% of its 40 devices): raise --lr"
    worse = "tuning made the chip worse on the held-out data (0.5 after epoch 2 against 0.6 before tuning): ..."
    rows = [{"point": p, "params": {"a": p}, "seed": s, "samples": 10, "correct": 5, "accuracy": 0.5,
             "tuned_correct": 6, "tuned_accuracy": 0.6, "tune_holdout_before": 0.5, "tune_holdout_after": 0.6,
             "tune_writes": 0, "tune_pulses": 0,
             # both epochs wrote nothing on every chip but (1, 2); chip (2, 0) also got worse
             "tune_warnings": ([] if (p, s) == (1, 2) else [none.format(1), none.format(2)])
             + ([worse] if (p, s) == (2, 0) else [])}
            for p in range(3) for s in range(3)]
    old = {k: v for k, v in rows[0].items() if k not in ("tune_pulses", "tune_warnings")} | {"point": 3}
    lines = tune_warning_summary(rows + [old])     # a row from before tune_warnings existed: not counted
    assert lines == [f"tuning wrote no device on 8 of 9 tuned chips (points: 0, 1, 2; each row's tune_warnings in "
                     f"rows.jsonl holds its messages); point 0 seed 0: {none.format(1)}",
                     "tuning made the chip worse on the held-out data (an earlier state kept) on 1 of 9 tuned "
                     "chips (points: 2; each row's tune_warnings in rows.jsonl holds its messages); point 2 seed 0: "
                     + worse]
    csv = rows_csv(rows + [old], ["a"]).splitlines()
    assert csv[0].endswith(",tune_writes,tune_pulses") and csv[-1].endswith(",0,") and csv[1].endswith(",0,0")
