"""`cimc report` never overwrites a file it did not write, and refuses a bad manifest folder, output path or
results file cleanly (exit 2, the culprit named, nothing touched)."""
from __future__ import annotations

import pytest
from refusal import assert_refused, run_cli


@pytest.fixture(scope="module")
def manifest_dir(mcnn_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_refusals") / "m"
    code, _, err = run_cli(["compile", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--calibration",
                            mcnn_dir / "calib.npz", "-o", out])
    assert code == 0, err
    return out


FOREIGN = {                                  # files a user may have where -o points: never replaced
    "notes.txt": b"my notes",
    "index.html": b"<!DOCTYPE html><html><head><title>my site</title></head></html>",
    "empty.html": b"",
    "binary.html": bytes(range(256)) * 4,
    "mentions-cimc.html": b"<!DOCTYPE html><p>a page about cimc reports</p>",
    "other-generator.html": b'<!DOCTYPE html><meta name="generator" content="hugo 0.1">',
    "late-tag.html": b"x" * 5000 + b'<meta name="generator" content="cimc 0.1">',
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_existing_foreign_file_is_not_overwritten(manifest_dir, tmp_path, name):
    out = tmp_path / name
    out.write_bytes(FOREIGN[name])
    assert_refused(["report", manifest_dir, "-o", out], [str(out), "not a report cimc wrote"],
                   watch=[tmp_path, manifest_dir])
    assert out.read_bytes() == FOREIGN[name]


@pytest.mark.parametrize("inside", ["manifest.json", "replication.json"])
def test_output_onto_a_manifest_file_is_refused(manifest_dir, inside):
    target = manifest_dir / inside
    if not target.exists():
        pytest.skip(f"{inside} not written by this compile")
    assert_refused(["report", manifest_dir, "-o", target], [str(target), "not a report cimc wrote"],
                   watch=[manifest_dir])


def test_output_onto_its_own_results_file_is_refused(manifest_dir, tmp_path):
    results = tmp_path / "run.json"
    results.write_text('{"backend": "float", "n": 3, "accuracy": 0.5}')
    assert_refused(["report", manifest_dir, "-o", results, "--results", results], str(results),
                   watch=[tmp_path, manifest_dir])


def test_an_earlier_report_is_replaced(manifest_dir, tmp_path):
    out = tmp_path / "report.html"
    assert run_cli(["report", manifest_dir, "-o", out])[0] == 0
    first = out.read_text()
    (tmp_path / "run.json").write_text('{"backend": "float", "n": 3, "accuracy": 0.123456}')
    assert run_cli(["report", manifest_dir, "-o", out, "--results", tmp_path / "run.json"])[0] == 0
    assert out.read_text() != first and "0.123456" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run.json"]


@pytest.mark.parametrize("case", ["folder", "missing parent", "under a file", "deep missing"])
def test_bad_output_path_is_refused(manifest_dir, tmp_path, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    out = {"folder": tmp_path / "adir", "missing parent": tmp_path / "nope" / "r.html",
           "under a file": tmp_path / "afile" / "r.html", "deep missing": tmp_path / "a" / "b" / "c" / "r.html"}[case]
    assert_refused(["report", manifest_dir, "-o", out], str(out), watch=[tmp_path, manifest_dir])


@pytest.mark.parametrize("case", ["missing", "a file", "empty folder", "garbage manifest.json", "array json"])
def test_bad_manifest_folder_is_refused(tmp_path, case):
    d = tmp_path / "in"
    if case == "a file":
        d.write_text("x")
    elif case != "missing":
        d.mkdir()
        if case == "garbage manifest.json":
            (d / "manifest.json").write_text("{not json")
        elif case == "array json":
            (d / "manifest.json").write_text("[1, 2, 3]")
    out = tmp_path / "r.html"
    assert_refused(["report", d, "-o", out], str(d), watch=[tmp_path])
    assert not out.exists()


@pytest.mark.parametrize("depth", [5000, 100000])
@pytest.mark.parametrize("kind", ["list", "object"])
def test_absurdly_nested_results_are_refused(manifest_dir, tmp_path, depth, kind):
    path = tmp_path / "deep.json"
    path.write_text("[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth)
    out = tmp_path / "r.html"
    assert_refused(["report", manifest_dir, "-o", out, "--results", path], f"--results {path}",
                   watch=[tmp_path, manifest_dir])
