"""Compile resource bounds (cimc/resources.py): a request whose arrays would need more memory than the limit is
refused from shapes, before anything that size is allocated, by `compile` and `count` alike, naming the field or
flag at fault; the limit is --max-memory, else CIMC_MAX_MEMORY, else the default."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_models as om
import pytest
from hypothesis import given, settings, strategies as st
from refusal import assert_refused, run_cli

from cimc import resources


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    onnx.save(om.small_cnn(), d / "m.onnx")
    np.savez(d / "calib.npz", **om.random_feeds(om.small_cnn(), batch=4, seed=0))
    return d


def argv(command, files, out, *extra):
    base = ["count", files / "m.onnx"] if command == "count" else \
        ["compile", files / "m.onnx", "--calibration", files / "calib.npz", "-o", out]
    return [*base, "--no-optimize", *extra]


def total_arrays(files, *extra) -> int:
    """The arrays a request places, from count's own table (an independent count of tiles x copies)."""
    code, out, err = run_cli(["count", files / "m.onnx", "--no-optimize", "--json", "--max-memory", "1PiB", *extra])
    assert code == 0, err
    return json.loads(out)["total_arrays"]


# -- too big: refused, naming the culprit, nothing written --------------------------------------------------
HUGE = {
    "rows 1e8": (["--set", "array.rows=100000000"], ["array.rows", "100000000"]),
    "rows 1e7": (["--set", "array.rows=10000000"], ["array.rows", "10000000"]),
    "cols 1e8": (["--set", "array.cols=100000000"], ["array.cols", "100000000"]),
    "rows and cols 1e5": (["--set", "array.rows=100000", "--set", "array.cols=100000"], ["array.rows", "100000"]),
    "replicate 1e9": (["--replicate", "conv1=1000000000"], ["--replicate conv1=1000000000"]),
    "replicate 1e18": (["--replicate", "gemm1=1000000000000000000"], ["--replicate gemm1=1000000000000000000"]),
    "replicate 1e6": (["--replicate", "conv2_grouped=1000000"], ["--replicate conv2_grouped=1000000"]),
    "two replicated layers": (["--replicate", "conv1=600000", "--replicate", "gemm1=600000"],
                              ["--replicate conv1=600000", "--replicate gemm1=600000"]),
    "replicate and big rows": (["--replicate", "conv1=1000", "--set", "array.rows=1000000"],
                               ["--replicate conv1=1000", "array.rows"]),
    "small --max-memory": (["--max-memory", "500KB"], ["--max-memory", "488.3 KiB"]),
    "small --max-memory, copies": (["--max-memory", "10MiB", "--replicate", "conv1=200"],
                                   ["--max-memory", "--replicate conv1=200"]),
}


@pytest.mark.parametrize("command", ["compile", "count"])
@pytest.mark.parametrize("case", sorted(HUGE))
def test_a_request_over_the_memory_limit_is_refused(case, command, files, tmp_path):
    extra, culprits = HUGE[case]
    assert_refused(argv(command, files, tmp_path / "out", *extra), ["memory", *culprits], watch=[tmp_path, files],
                   case=f"{command} {case}")


def test_the_replication_file_counts_too(files, tmp_path):
    (tmp_path / "replication.json").write_text(json.dumps({"copies": {"conv1": 10**9}}))
    assert_refused(argv("compile", files, tmp_path / "out", "--replication", tmp_path / "replication.json"),
                   ["memory", "conv1=1000000000"], watch=[tmp_path, files])


@pytest.mark.parametrize("command", ["compile", "count"])
def test_the_environment_variable_sets_the_limit(command, files, tmp_path, monkeypatch):
    monkeypatch.setenv(resources.ENV, "100KiB")
    assert_refused(argv(command, files, tmp_path / "out"), [resources.ENV, "100.0 KiB"], watch=[tmp_path, files])


def test_the_option_overrides_the_environment(files, monkeypatch):
    monkeypatch.setenv(resources.ENV, "100KiB")
    code, _out, err = run_cli(["count", files / "m.onnx", "--no-optimize", "--max-memory", "1GiB"])
    assert code == 0, err


BAD_SIZES = ["lots", "-1GB", "0", "0.1", "nan", "inf", "1XB", "", "8 GiB GiB", "1e400"]


@pytest.mark.parametrize("command", ["compile", "count"])
@pytest.mark.parametrize("size", BAD_SIZES)
def test_a_bad_size_is_refused(size, command, files, tmp_path):
    assert_refused(argv(command, files, tmp_path / "out", "--max-memory", size), "--max-memory",
                   watch=[tmp_path, files])


@pytest.mark.parametrize("size", ["lots", "-5", "1ZB"])
def test_a_bad_environment_size_is_refused(size, files, tmp_path, monkeypatch):
    monkeypatch.setenv(resources.ENV, size)
    assert_refused(argv("count", files, tmp_path / "out"), resources.ENV, watch=[tmp_path, files])


@pytest.mark.parametrize("text, expected", [("8GiB", 8 << 30), ("512MB", 512 * 10**6), ("1.5g", 1_500_000_000),
                                            ("1000", 1000), ("2 tib", 2 << 40), ("64k", 64_000), ("1e9", 10**9)])
def test_sizes_parse(text, expected):
    assert resources.parse_size(text, "--max-memory") == expected


# -- the bound is exact: refused iff arrays x rows x cols x BYTES_PER_CELL exceeds the limit ----------------
@settings(max_examples=12, deadline=None)
@given(rows=st.sampled_from([16, 144, 1000, 4096]), cols=st.sampled_from([2, 16, 64]),
       copies=st.integers(1, 50), slack=st.sampled_from([-1, 0]))
def test_the_limit_is_the_estimate(files, rows, cols, copies, slack):
    extra = ["--set", f"array.rows={rows}", "--set", f"array.cols={cols}", "--replicate", f"conv1={copies}"]
    need = total_arrays(files, *extra) * rows * cols * resources.BYTES_PER_CELL
    code, _out, err = run_cli(["count", files / "m.onnx", "--no-optimize", *extra, "--max-memory",
                               str(need + slack)])
    assert "Traceback" not in err
    assert (code, "cimc: error:" in err) == ((2, True) if slack < 0 else (0, False)), err


def test_raising_the_limit_lets_through_what_the_default_refuses(files):
    extra = ["--replicate", "conv1=400000"]          # 400,012 arrays of 144 x 16: about 27 GiB to compile
    code, _out, err = run_cli(["count", files / "m.onnx", "--no-optimize", *extra])
    assert code == 2 and "memory" in err and "Traceback" not in err
    code, out, err = run_cli(["count", files / "m.onnx", "--no-optimize", "--json", "--max-memory", "64GiB", *extra])
    assert code == 0, err
    assert json.loads(out)["total_arrays"] == 400_012
