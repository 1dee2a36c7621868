"""Output folders (cimc/output_dir.py): `-o DIR` replaces only a folder cimc wrote that holds nothing but cimc's files,
writes through symlinks, honours the umask, and swaps atomically: a SIGKILL at any moment leaves the old manifest or
the new one, complete, and concurrent writers serialise, with no traceback and no leftovers."""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om
import pytest
from refusal import assert_refused, run_cli, snapshot

import cimc
from cimc import output_dir
from cimc.errors import ManifestError
from cimc.manifest import load


# -- fixtures: two small models (different weights, so their manifests differ), calibration, tuning data -------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    for name, seed in (("a", 1), ("b", 0)):
        onnx.save(om.small_cnn(seed=seed), d / f"{name}.onnx")
    feeds = om.random_feeds(om.small_cnn(), batch=8, seed=0)
    np.savez(d / "calib.npz", **feeds)
    tune = om.random_feeds(om.small_cnn(), batch=20, seed=1)
    np.savez(d / "tune.npz", **tune, y=np.random.default_rng(2).integers(0, 10, 20))
    return d


@pytest.fixture(scope="module")
def manifests(files):
    """In-process compiles of a.onnx and b.onnx, the same as `cimc compile X --calibration calib.npz --no-optimize`."""
    calib = dict(np.load(files / "calib.npz"))
    return {name: cimc.compile(files / f"{name}.onnx", "yao2020-resnet", calibration=calib, optimize=False)
            for name in ("a", "b")}


def compile_argv(files, out, model="b"):
    return ["compile", files / f"{model}.onnx", "--calibration", files / "calib.npz", "-o", out, "--no-optimize"]


def tune_argv(files, manifest_dir, out):
    return ["tune", manifest_dir, "--data", files / "tune.npz", "-o", out, "--batch", "10", "--lr", "1",
            "--program-sigma", "1.5uS", "--seed", "3", "--json"]


def fingerprint(directory) -> tuple:
    """What a manifest computes with: its ops (quantisation, tiles) and the device levels."""
    m = load(directory)
    doc = json.loads((Path(directory) / "manifest.json").read_text())
    return json.dumps(doc["ops"], sort_keys=True), m.arrays.tobytes()


def beside(path: Path) -> list[str]:
    """Entries next to `path` that belong to it (its lock file or temporaries)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


# -- folders that are not cimc's: refused, untouched ----------------------------------------------------------
def _web_project(d):
    d.mkdir()
    (d / "manifest.json").write_text('{"name": "my-app", "start_url": "/"}')
    (d / "app.js").write_text("console.log(1)")
    (d / "src").mkdir()
    (d / "src" / "index.ts").write_text("export {}")
    return ["app.js", "src/"]


def _real_manifest_plus(extra):
    def make(d, manifests):
        manifests["a"].save(d)
        for name in extra:
            if name.endswith("/"):
                (d / name).mkdir()
                (d / name / "x").write_text("user data")
            else:
                (d / name).write_text("user data")
        return list(extra)
    return make


def _doc(text):
    def make(d, manifests):
        manifests["a"].save(d)
        (d / "manifest.json").write_text(text)
        return ["manifest.json"]
    return make


def _link_named_params(d, manifests):
    manifests["a"].save(d)
    (d / "params.npz").unlink()
    (d.parent / "elsewhere.npz").write_text("x")
    (d / "params.npz").symlink_to(d.parent / "elsewhere.npz")
    return ["params.npz"]


def _dir_named_arrays(d, manifests):
    manifests["a"].save(d)
    (d / "arrays.npz").unlink()
    (d / "arrays.npz").mkdir()
    return ["arrays.npz/"]


def _only_npz(d, manifests):
    d.mkdir()
    (d / "arrays.npz").write_text("x")
    return ["arrays.npz"]


FOREIGN = {
    "web project": lambda d, m: _web_project(d),
    "manifest + NOTES.txt": _real_manifest_plus(["NOTES.txt"]),
    "manifest + src/": _real_manifest_plus(["src/"]),
    "manifest + .git/": _real_manifest_plus([".git/"]),
    "manifest + two notes": _real_manifest_plus(["NOTES.txt", "plot.png"]),
    "manifest + results.json": _real_manifest_plus(["results.json"]),
    "manifest + arrays.npz.bak": _real_manifest_plus(["arrays.npz.bak"]),
    "manifest.json not JSON": _doc("not json {"),
    "manifest.json a list": _doc("[1, 2]"),
    "manifest.json other format": _doc('{"format": "web-manifest", "schema_version": 1}'),
    "manifest.json without schema_version": _doc('{"format": "cimc-manifest"}'),
    "manifest.json empty": _doc(""),
    "params.npz a symlink": _link_named_params,
    "arrays.npz a folder": _dir_named_arrays,
    "npz without manifest.json": _only_npz,
}


@pytest.mark.parametrize("command", ["compile", "tune"])
@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_folder_cimc_did_not_write_is_refused_and_untouched(case, command, files, manifests, tmp_path):
    out = tmp_path / "out"
    foreign = FOREIGN[case](out, manifests)
    argv = compile_argv(files, out) if command == "compile" else tune_argv(files, tmp_path / "missing", out)
    culprits = [f"{out}/{name}" for name in foreign]
    assert_refused(argv, culprits, watch=[tmp_path], case=f"{command} -o ({case})")


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_save_refuses_the_same_folders(case, manifests, tmp_path):
    """The Python API (Manifest.save) keeps the same rule, also when the folder appears after the CLI's check."""
    out = tmp_path / "out"
    foreign = FOREIGN[case](out, manifests)
    before = snapshot(tmp_path)
    with pytest.raises(ManifestError) as err:
        manifests["b"].save(out)
    assert all(name in str(err.value) for name in foreign)
    assert snapshot(tmp_path) == before


BAD_PLACES = {
    "a file": lambda t: (t / "f.txt", t / "f.txt"),
    "under a file": lambda t: (t / "f.txt" / "out", t / "f.txt"),
    "two below a file": lambda t: (t / "f.txt" / "a" / "b", t / "f.txt"),
    "a symlink to a file": lambda t: (t / "link", "link"),
    "a symlink loop": lambda t: (t / "loop", "loop"),
}


@pytest.mark.parametrize("command", ["compile", "tune"])
@pytest.mark.parametrize("case", sorted(BAD_PLACES))
def test_an_output_path_that_cannot_be_a_folder_is_refused(case, command, files, tmp_path):
    (tmp_path / "f.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(tmp_path / "f.txt")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out, culprit = BAD_PLACES[case](tmp_path)
    argv = compile_argv(files, out) if command == "compile" else tune_argv(files, tmp_path / "missing", out)
    assert_refused(argv, str(culprit), watch=[tmp_path], case=f"{command} -o {case}")


@pytest.mark.parametrize("spelling", [".", "./", "..", "/"])
def test_the_current_folder_or_root_is_refused(spelling, files, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    assert_refused(compile_argv(files, spelling), f"-o {spelling}", watch=[tmp_path])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_place_is_refused(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert_refused(compile_argv(files, locked / "out"), str(locked), watch=[tmp_path])
    finally:
        locked.chmod(0o700)


def test_a_place_the_system_will_not_create_is_refused(files, tmp_path):
    """/proc takes no new folders, even from root: the refusal comes at the write, after compiling."""
    err = assert_refused(compile_argv(files, "/proc/cimc-test/out"), "/proc/cimc-test", watch=[tmp_path])
    assert "choose another -o path" in err


def test_a_failed_write_leaves_nothing_behind(manifests, tmp_path, monkeypatch):
    """The disk fills up mid-write: a ManifestError names the path, and neither the temporary folder nor the
    parent folders made for the write remain."""
    (tmp_path / "keep").mkdir()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(ManifestError, match="No space left on device") as err:
        manifests["a"].save(tmp_path / "keep" / "new" / "deep" / "out")
    assert "deep/out" in str(err.value)
    assert list((tmp_path / "keep").iterdir()) == []


# -- what is accepted ------------------------------------------------------------------------------------------
def test_recompiling_over_a_cimc_manifest_replaces_it(files, manifests, tmp_path):
    out = tmp_path / "out"
    manifests["a"].save(out)
    (out / "replication.json").unlink()          # any subset of cimc's files is still cimc's folder
    assert fingerprint(out) != fingerprint(manifests["b"].save(tmp_path / "ref_b"))
    code, _out, err = run_cli(compile_argv(files, out, "b"))
    assert code == 0, err
    assert fingerprint(out) == fingerprint(tmp_path / "ref_b")
    assert {p.name for p in out.iterdir()} <= output_dir.MANIFEST_FILES
    assert beside(out) == []


def test_an_empty_folder_is_filled(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code, _out, err = run_cli(compile_argv(files, out))
    assert code == 0, err
    load(out)


def test_every_file_save_writes_is_one_cimc_owns(manifests, tmp_path):
    """MANIFEST_FILES must list whatever save writes, or a re-save would refuse cimc's own folder."""
    m = manifests["b"]
    m.conductances = {"arrays": np.zeros(0, np.int64), "programmed_us": np.zeros((0,) + m.arrays.shape[1:]),
                      "target_us": np.zeros((0,) + m.arrays.shape[1:])}
    try:
        m.save(tmp_path / "out")
    finally:
        m.conductances = None
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert "conductances.npz" in written and written <= output_dir.MANIFEST_FILES


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlinked_output_is_written_through_and_stays_a_link(target_exists, files, manifests, tmp_path):
    real = tmp_path / "disk" / "real"
    real.parent.mkdir()
    if target_exists:
        manifests["a"].save(real)
    link = tmp_path / "out"
    link.symlink_to(real)
    code, _out, err = run_cli(compile_argv(files, link, "b"))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert fingerprint(real) == fingerprint(manifests["b"].save(tmp_path / "ref_b"))
    assert beside(real) == [] and beside(link) == []


def test_a_symlink_to_a_foreign_folder_is_refused(files, tmp_path):
    real = tmp_path / "project"
    _web_project(real)
    (tmp_path / "out").symlink_to(real)
    assert_refused(compile_argv(files, tmp_path / "out"), [f"{tmp_path / 'out'}/app.js"], watch=[tmp_path])


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_folder_and_file_modes_follow_the_umask(mask, manifests, tmp_path):
    old = os.umask(mask)
    try:
        out = manifests["a"].save(tmp_path / "new" / "out")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask
    assert (out.parent.stat().st_mode & 0o777) == 0o777 & ~mask
    for f in out.iterdir():
        assert (f.stat().st_mode & 0o777) == 0o666 & ~mask, f


# -- tune -o INPUT: the input is read whole, then replaced by the tuned manifest ------------------------------
@pytest.fixture(scope="module")
def tuned_elsewhere(files, manifests, tmp_path_factory):
    d = tmp_path_factory.mktemp("tuned")
    manifests["b"].save(d / "m")
    code, out, err = run_cli(tune_argv(files, d / "m", d / "tuned"))
    assert code == 0, err
    assert json.loads(out)["writes"] > 0          # the tuned manifest really differs from its input
    return d / "tuned"


@pytest.mark.parametrize("spelling", ["same", "trailing slash", "dot segment", "relative", "symlink"])
def test_tune_onto_its_own_input_gives_the_tuned_manifest(spelling, files, manifests, tuned_elsewhere, tmp_path,
                                                          monkeypatch):
    m = tmp_path / "m"
    manifests["b"].save(m)
    loaded = load(m)      # the input is held in memory, not read lazily from files that the write replaces
    assert not any(isinstance(a, np.memmap) for a in [loaded.arrays, *(op.levels for op in loaded.graph.xbar_ops())])
    (tmp_path / "link").symlink_to(m)
    monkeypatch.chdir(tmp_path)
    out = {"same": m, "trailing slash": f"{m}/", "dot segment": tmp_path / "." / "m", "relative": "m",
           "symlink": tmp_path / "link"}[spelling]
    code, _out, err = run_cli(tune_argv(files, m, out))
    assert code == 0, err
    tuned, expected = load(m), load(tuned_elsewhere)
    for key in ("arrays", "programmed_us", "target_us"):
        np.testing.assert_array_equal(tuned.conductances[key], expected.conductances[key])
    assert fingerprint(m) == fingerprint(tuned_elsewhere)
    assert beside(m) == [] and (tmp_path / "link").is_symlink()


def test_tune_onto_a_tuned_manifest_replaces_it(files, tuned_elsewhere, tmp_path):
    """conductances.npz is cimc's own file: a tuned manifest can be tuned again in place."""
    import shutil
    m = tmp_path / "m"
    shutil.copytree(tuned_elsewhere, m)
    code, _out, err = run_cli(tune_argv(files, m, m))
    assert code == 0, err
    assert load(m).provenance["tuning"]


# -- leftovers, recovery, the lock -----------------------------------------------------------------------------
def test_stale_temporaries_of_killed_writers_are_removed_but_not_lookalikes(manifests, tmp_path):
    out = tmp_path / "out"
    manifests["a"].save(out)
    stale_new = tmp_path / ".out.cimc-new-ab12cd_3"
    stale_new.mkdir()
    (stale_new / "arrays.npz").write_bytes(b"half")
    stale_old = tmp_path / ".out.cimc-old-zz99zz99"
    manifests["a"].save(stale_old)
    (tmp_path / ".out.lock").touch()                        # a killed writer's lock file
    users = tmp_path / ".out.cimc-new-notes123"              # the right name, but a user's file inside
    users.mkdir()
    (users / "NOTES.txt").write_text("mine")
    other = tmp_path / ".out.cimc-new-toolong123"            # not mkdtemp's 8 characters
    other.mkdir()
    manifests["b"].save(out)
    assert beside(out) == [".out.cimc-new-notes123", ".out.cimc-new-toolong123"]
    assert (users / "NOTES.txt").read_text() == "mine"
    assert fingerprint(out) == fingerprint(manifests["b"].save(tmp_path / "ref_b"))


def test_leftovers_of_older_cimc_are_cleaned_and_a_stranded_manifest_restored(manifests, tmp_path):
    """cimc before output_dir wrote `.out.XXXXXXXX` and swapped through `.out.old.XXXXXXXX/m`; a kill between its
    renames left no `out` at all (issue 11)."""
    out = tmp_path / "out"
    manifests["a"].save(tmp_path / ".out.old.k1ll3d00" / "m")
    manifests["b"].save(tmp_path / ".out.hw8f_2a1")          # a half-written new one
    (tmp_path / ".out.hw8f_2a1" / "params.npz").unlink()
    (tmp_path / ".out.old.empty000").mkdir()
    (tmp_path / ".out.old.users000").mkdir()                 # not cimc's: a user's file inside
    (tmp_path / ".out.old.users000" / "NOTES.txt").write_text("mine")
    assert output_dir.recover(out) is True
    assert fingerprint(out) == fingerprint(manifests["a"].save(tmp_path / "ref_a"))
    assert beside(out) == [".out.old.users000"]


def test_a_kill_between_the_fallback_renames_is_recovered(manifests, tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is missing, the swap is two renames; a writer killed between them leaves DIR missing
    and the old manifest in `.DIR.cimc-old-*`: the next writer (or `recover`) puts it back."""
    out = tmp_path / "out"
    manifests["a"].save(out)
    old_print = fingerprint(out)
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt          # stands in for the SIGKILL: the write stops between the renames
        real_rename(src, dst)

    monkeypatch.setattr(output_dir.os, "rename", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        manifests["b"].save(out)
    monkeypatch.setattr(output_dir.os, "rename", real_rename)
    assert not out.exists() and any(n.startswith(".out.cimc-old-") for n in beside(out))
    assert output_dir.recover(out) is True
    assert fingerprint(out) == old_print and beside(out) == []
    manifests["b"].save(out)                 # and the fallback swap itself works
    assert fingerprint(out) == fingerprint(manifests["b"].save(tmp_path / "ref_b")) and beside(out) == []


def test_a_writer_waits_for_the_lock_and_then_gives_up_clearly(manifests, tmp_path, monkeypatch):
    out = tmp_path / "out"
    manifests["a"].save(out)
    before = snapshot(out)
    monkeypatch.setattr(output_dir, "LOCK_WAIT_S", 0.3)
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)               # another writer holds the folder
        with pytest.raises(ManifestError, match=r"another cimc process.*\.out\.lock"):
            manifests["b"].save(out)
    finally:
        os.close(fd)
    assert snapshot(out) == before
    manifests["b"].save(out)                         # free again: the stale lock file is reused and removed
    assert beside(out) == []


# -- SIGKILL at random moments, and concurrent writers -------------------------------------------------------
def test_a_kill_at_any_moment_leaves_the_old_or_the_new_manifest(files, manifests, tmp_path):
    """20 `cimc compile` processes over an existing manifest, each SIGKILLed after a seeded random delay: half spread
    over the whole compile, half inside the write (after the lock file appears). After each kill the folder loads
    and is exactly a.onnx's or b.onnx's manifest; after the next successful compile nothing is left beside it.
    The processes are forked from a forkserver that has imported cimc, so each costs only its compile."""
    out = tmp_path / "out"
    expected = {name: fingerprint(m.save(tmp_path / f"ref_{name}")) for name, m in manifests.items()}
    manifests["a"].save(out)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["cimc.cli", "cimc.compiler", "cimc.manifest", "cimc.backends.crossbar",
                                "onnx", "onnxruntime"])

    def start(model):
        p = ctx.Process(target=cimc.cli.main, args=([str(a) for a in compile_argv(files, out, model)],))
        p.start()
        return p

    for model in "ba":                                # the first also starts the forkserver; time the second
        t0 = time.monotonic()
        p = start(model)
        p.join()
        assert p.exitcode == 0 and fingerprint(out) == expected[model]
    duration = time.monotonic() - t0
    rng = np.random.default_rng(11)
    in_write = 0
    for i in range(20):
        there = set(beside(out))
        p = start("ba"[i % 2])
        if i % 2:                                     # inside the write: a live writer holds the lock (or, in any
            deadline = time.monotonic() + 60          # implementation, a new temporary appears beside the folder)
            while p.is_alive() and time.monotonic() < deadline and not _lock_held(tmp_path / ".out.lock") \
                    and not set(beside(out)) - there:
                time.sleep(0.002)
            in_write += p.is_alive()
            time.sleep(rng.uniform(0, 0.05))
        else:
            time.sleep(rng.uniform(0, 1.2 * duration))
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:                    # it had finished
            pass
        p.join()
        assert fingerprint(out) in expected.values(), f"kill {i}: neither the old nor the new manifest"
    assert in_write >= 3                              # the kills did reach the write
    p = start("a")
    p.join()
    assert p.exitcode == 0 and fingerprint(out) == expected["a"]
    assert beside(out) == []


def _lock_held(lock: Path) -> bool:
    """Whether a live process holds the flock on `lock` (a killed writer's lock file may linger, unheld)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_concurrent_writers_serialise_without_a_traceback(files, tmp_path):
    """8 `cimc compile` processes (the real command line) to one new -o at once: each succeeds or exits 2 with a
    `cimc: error:` line; the folder ends complete, holding one of the two manifests, nothing beside it."""
    out = tmp_path / "out"
    cmds = [[sys.executable, "-m", "cimc.cli", *map(str, compile_argv(files, out, "ab"[i % 2]))] for i in range(8)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    results = [(p.communicate(timeout=600)[1], p.returncode) for p in procs]
    results = [(code, "", stderr) for stderr, code in results]
    for code, _stdout, stderr in results:
        assert "Traceback" not in stderr
        assert code == 0 or (code == 2 and "cimc: error:" in stderr), stderr
    assert sum(code == 0 for code, _, _ in results) >= 1
    load(out)
    assert {p.name for p in out.iterdir()} <= output_dir.MANIFEST_FILES
    assert beside(out) == []
