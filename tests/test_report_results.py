"""`cimc report` shows what was measured, not only what was compiled: a tuned manifest's hybrid-training record,
the JSON of `cimc run --json` / `cimc tune --json` given with `--results`, and target cost numbers given with
`--set` (as `cimc estimate --set`). Bad `--results` / `--set` are refused before anything is written."""
from __future__ import annotations

import html as html_module
import json
import re

import numpy as np
import pytest
from refusal import assert_refused, run_cli


def _text(page: str) -> str:
    """The page's visible text, one space between words."""
    return re.sub(r"\s+", " ", html_module.unescape(re.sub(r"<[^>]+>", " ", page)))


def _num(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@pytest.fixture(scope="module")
def work(mcnn_dir, tmp_path_factory):
    """A compiled mCNN, labelled data, a run JSON, a tune JSON and the tuned manifest."""
    d = tmp_path_factory.mktemp("report_results")
    rng = np.random.default_rng(7)
    np.savez(d / "lab.npz", x=rng.random((24, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 24))
    code, _, err = run_cli(["compile", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--calibration",
                            mcnn_dir / "calib.npz", "-o", d / "m"])
    assert code == 0, err
    code, out, err = run_cli(["run", d / "m", "--data", d / "lab.npz", "--backend", "crossbar", "--trials", "2",
                              "--layers", "--json"])
    assert code == 0, err
    (d / "run.json").write_text(out)
    code, out, err = run_cli(["tune", d / "m", "--data", d / "lab.npz", "--epochs", "1", "-o", d / "t", "--json"])
    assert code == 0, err
    (d / "tune.json").write_text(out)
    return d


def _report(argv) -> str:
    code, out, err = run_cli(["report", *argv])
    assert code == 0, err
    assert "wrote" in out
    return _text(open(argv[argv.index("-o") + 1], encoding="utf-8").read())


def test_tuned_manifest_shows_its_tuning_record(work, tmp_path):
    page = _report([work / "t", "-o", tmp_path / "r.html"])
    tuning = json.loads((work / "t" / "manifest.json").read_text())["provenance"]["tuning"]
    head = (f"cimc tune: layer {tuning['layer']}, chip instance {tuning['seed']}, accuracy "
            f"{_num(tuning['accuracy_before'])} → {_num(tuning['accuracy_after'])}, {tuning['writes']} device writes")
    assert "Hybrid training" in page and head in page
    for key in ("accuracy_before", "accuracy_after", "writes", "iterations"):
        assert f"{key} {_num(tuning[key])}" in page


def test_untuned_manifest_has_no_tuning_section(work, tmp_path):
    page = _report([work / "m", "-o", tmp_path / "r.html"])
    assert "Hybrid training" not in page and "Run and tune results" not in page


def test_results_files_appear_with_their_numbers(work, tmp_path):
    page = _report([work / "m", "-o", tmp_path / "r.html", "--results", work / "run.json",
                    "--results", work / "tune.json"])
    run, tune = json.loads((work / "run.json").read_text()), json.loads((work / "tune.json").read_text())
    assert "Run and tune results" in page
    assert f"cimc run: crossbar backend on {run['n']} sample(s), seed {run['seed']}" in page
    for key in ("accuracy", "agreement", "agreement_with_integer", "accuracy_mean", "accuracy_std"):
        assert f"{key} {_num(run[key])}" in page
    for trial in run["per_trial"]:                              # per chip instance table rows
        assert f"{trial['seed']} {_num(trial['accuracy'])} {_num(trial['agreement'])}" in page
    for layer in run["layers"]:
        assert f"{layer['name']} {_num(layer['rel_error'])} {_num(layer['snr_db'])}" in page
    assert f"accuracy_before {_num(tune['accuracy_before'])}" in page
    assert f"writes {tune['writes']}" in page
    for row in tune["per_copy"]:
        assert f"{row['copy']} {_num(row['accuracy_before'])} {_num(row['accuracy_after'])}" in page


def test_set_fills_a_missing_energy_number(work, tmp_path):
    plain = _report([work / "m", "-o", tmp_path / "a.html"])
    assert "unknown (needs" in plain and "energy.driver_pj_per_slot" in plain
    assert "cimc report DIR --set SECTION.FIELD=VALUE" in plain          # the page's advice names a real flag
    _, est, _ = run_cli(["estimate", work / "m", "--json", "--set", "energy.driver_pj_per_slot=5",
                         "--set", "energy.digital_pj_per_op=0"])
    total = json.loads(est)["totals"]["energy_pj"]["total"]
    assert total is not None
    page = _report([work / "m", "-o", tmp_path / "b.html", "--set", "energy.driver_pj_per_slot=5",
                    "--set", "energy.digital_pj_per_op=0"])
    m = re.search(r"energy per inference (\S+) (pJ|nJ|µJ|mJ)", page)
    assert m, page[:2000]
    scale = {"pJ": 1, "nJ": 1e3, "µJ": 1e6, "mJ": 1e9}[m.group(2)]
    assert float(m.group(1).replace(",", "")) * scale == pytest.approx(total, rel=5e-3)


# -- refusals ----------------------------------------------------------------------------------------------------
def _bad_results(d):
    """(name, file contents or None for a folder, culprit words)."""
    return [("list.json", "[1, 2]", "an array"), ("number.json", "3.5", "a number"), ("int.json", "7", "a number"),
            ("string.json", '"run"', "a string"), ("null.json", "null", "null"), ("bool.json", "true", "a boolean"), ("truncated.json", '{"accuracy": 0.9', "not valid JSON"),
            ("empty.json", "", "not valid JSON"), ("binary.json", b"\xff\xfe\x00\x81", "not a text file"),
            ("folder", None, "is a directory"), ("missing.json", "absent", "cannot read")]


BAD_RESULTS = [c[0] for c in _bad_results(None)]


@pytest.mark.parametrize("name", BAD_RESULTS)
def test_bad_results_file_is_refused_and_nothing_written(work, tmp_path, name):
    _, content, culprit = next(c for c in _bad_results(tmp_path) if c[0] == name)
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content != "absent":
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "r.html"
    assert_refused(["report", work / "m", "-o", out, "--results", work / "run.json", "--results", path],
                   [f"--results {path}", culprit], watch=[tmp_path, work / "m"])
    assert not out.exists()


@pytest.mark.parametrize("item, culprit", [
    ("array.rows=64", "array.rows"), ("device.levels=16", "device.levels"), ("adc.bits=4", "adc.bits"),
    ("energy.driver_pj_per_slot=abc", "energy.driver_pj_per_slot"),
    ("energy.driver_pj_per_slot=nan", "energy.driver_pj_per_slot"),
    ("energy.nonexistent=1", "energy.nonexistent"), ("energy", "energy"), ("=3", "=3")])
def test_bad_set_is_refused_and_nothing_written(work, tmp_path, item, culprit):
    out = tmp_path / "r.html"
    assert_refused(["report", work / "m", "-o", out, "--set", item], culprit, watch=[tmp_path, work / "m"])
    assert not out.exists()


def test_results_text_is_escaped(work, tmp_path):
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps({"<script>k</script>": "<img src=x onerror=alert(1)>",
                                "layers": [{"name": "<b>L</b>", "rel_error": 0.5}],
                                "crossbar": {"gemm": "</dl><script>"}}))
    out = tmp_path / "r.html"
    code, _, err = run_cli(["report", work / "m", "-o", out, "--results", evil])
    assert code == 0, err
    page = out.read_text()
    assert "<script>" not in page and "<img" not in page and "<b>L</b>" not in page
    assert "&lt;script&gt;k&lt;/script&gt;" in page and "&lt;b&gt;L&lt;/b&gt;" in page
