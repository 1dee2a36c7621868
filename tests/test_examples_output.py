"""The examples write only into a folder the user names (--out, new or empty) or a fresh temporary folder they
print: never into the checkout (tracked results stay as shipped; a read-only checkout works), never over files."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
from refusal import snapshot

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _module(rel: str):
    path = EXAMPLES / rel
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(module, argv) -> tuple[object, str]:
    """Run an example's main in-process -> (its return value or the exception it raised, stdout + stderr)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            result = module.main([str(a) for a in argv])
        except (Exception, SystemExit) as exc:      # an early failure still shows where it was going to write
            result = exc
    return result, buf.getvalue()


def _written_to(text: str) -> Path:
    m = re.search(r"writing into (\S+)", text)
    assert m, text
    return Path(m.group(1))


@pytest.fixture(scope="module")
def output_folder():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from example_output import output_folder
    finally:
        sys.path.remove(str(EXAMPLES))
    return output_folder


# -- the helper --------------------------------------------------------------------------------------------------
def test_default_is_a_fresh_folder_in_the_temp_dir(output_folder):
    a, b = output_folder(None, "t"), output_folder(None, "t")
    try:
        assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())
        assert a.parent == Path(tempfile.gettempdir()).resolve() or a.parent == Path(tempfile.gettempdir())
        umask = os.umask(0)
        os.umask(umask)
        assert a.stat().st_mode & 0o777 == 0o777 & ~umask
    finally:
        a.rmdir()
        b.rmdir()


def test_named_folder_is_created(output_folder, tmp_path):
    out = output_folder(str(tmp_path / "new" / "deeper"), "t")
    assert out == tmp_path / "new" / "deeper" and out.is_dir()


@pytest.mark.parametrize("kind", ["file", "folder with a file", "folder with a folder"])
def test_occupied_out_is_refused_and_left_alone(output_folder, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine") if kind.endswith("file") else (out / "sub").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exc:
        output_folder(str(out), "t")
    assert f"--out {out}" in str(exc.value.code)
    assert snapshot(tmp_path) == before


# -- the examples ------------------------------------------------------------------------------------------------
def test_li2018_example_writes_to_a_printed_temp_folder_not_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(EXAMPLES)
    module = _module("li2018_mlp/run_example.py")
    result, text = _main(module, ["--seeds", "1", "--epochs", "1"])
    assert result == 0, text
    out = _written_to(text)
    try:
        assert not out.is_relative_to(ROOT) and out.parent == Path(tempfile.gettempdir())
        assert sorted(f.name for f in out.iterdir()) == ["defect_tolerance.svg", "results.json"]
        results = json.loads((out / "results.json").read_text())
        assert results["seeds"] == [0] and results["epochs"] == 1
    finally:
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    assert snapshot(EXAMPLES) == before                     # the shipped results.json is untouched
    assert list(tmp_path.iterdir()) == []                   # nor is anything left in the current folder


def test_li2018_example_refuses_an_occupied_out(tmp_path):
    (tmp_path / "results.json").write_text("my earlier run")
    before = snapshot(tmp_path)
    result, _ = _main(_module("li2018_mlp/run_example.py"), ["--seeds", "1", "--epochs", "1", "--out", tmp_path])
    assert isinstance(result, SystemExit) and "already holds files" in str(result.code)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("rel, argv", [("mcnn_mnist/run_example.py", ["--mnist", "{tmp}/no-such-mnist"]),
                                       ("resnet56_cifar10/run_example.py", ["--model", "{tmp}/no-such.onnx"])])
def test_other_examples_default_to_a_printed_temp_folder(tmp_path, monkeypatch, rel, argv):
    """Stopped early by a missing input, after choosing where to write: the choice is a temp folder, not ./out."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(EXAMPLES)
    result, text = _main(_module(rel), [a.format(tmp=tmp_path) for a in argv])
    assert result != 0
    out = _written_to(text)
    try:
        assert out.parent == Path(tempfile.gettempdir()) and not out.is_relative_to(ROOT)
    finally:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    assert snapshot(EXAMPLES) == before
    assert list(tmp_path.iterdir()) == []
