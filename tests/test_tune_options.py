"""`cimc tune` refuses options that cannot mean anything (issue 11: `tune --lr inf` and friends) with a ConfigError
naming the flag, before any work and without writing anything; and its help describes every option."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from refusal import assert_refused, run_cli

import cimc
from cimc.cli import build_parser
from cimc.errors import ConfigError, DataError
from cimc.training import check_options, tune

# (flag, value): every value here is out of range, not a number, or not finite
BAD_OPTIONS = [
    ("--lr", v) for v in ("inf", "-inf", "nan", "NaN", "0", "0.0", "-0", "-0.1", "-1", "-1e-30", "1e309", "abc", "")
] + [
    ("--batch", v) for v in ("0", "-1", "-100", "1.5", "x", "inf")
] + [
    ("--epochs", v) for v in ("0", "-1", "-5", "2.0", "one", "nan")
] + [
    ("--threshold", v) for v in ("nan", "-1uS", "-0.5", "inf", "1e400uS", "-inf", "1.5 parsecs", "uS")
] + [
    ("--write-verify", v) for v in ("-1", "-10", "x", "0.5")
] + [
    ("--verify-tolerance", v) for v in ("-1uS", "nan", "1e400uS", "fast")
] + [
    ("--holdout", v) for v in ("0", "1", "0.0", "1.0", "-0.2", "1.5", "nan", "inf", "-inf", "x", "20%", "100")
] + [
    ("--keep", v) for v in ("worst", "", "BEST")
]


@pytest.fixture(scope="module")
def workdir(mcnn_dir, tmp_path_factory):
    """A compiled mCNN (random weights) and 20 labelled samples, in a folder the refusals must leave alone."""
    d = tmp_path_factory.mktemp("tune_options")
    cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz").save(d / "m")
    rng = np.random.default_rng(1)
    np.savez(d / "data.npz", x=rng.random((20, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 20))
    return d


def _tune_argv(workdir, *extra):
    return ["tune", workdir / "m", "--data", workdir / "data.npz", "-o", workdir / "out", *extra]


@pytest.mark.parametrize("flag,value", BAD_OPTIONS, ids=[f"{f}={v}" for f, v in BAD_OPTIONS])
def test_bad_option_is_refused_naming_the_flag(workdir, flag, value):
    assert_refused(_tune_argv(workdir, f"{flag}={value}"), flag, watch=[workdir])


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.sampled_from([math.inf, -math.inf, math.nan])))
def test_any_non_positive_or_non_finite_lr_is_refused(workdir, lr):
    assert_refused(_tune_argv(workdir, f"--lr={lr!r}"), "--lr", watch=[workdir])


@settings(max_examples=15, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan)))
def test_any_holdout_outside_zero_one_is_refused(workdir, fraction):
    assert_refused(_tune_argv(workdir, f"--holdout={fraction!r}"), "--holdout", watch=[workdir])


@pytest.mark.parametrize("name,value", [
    ("epochs", 0), ("epochs", 1.5), ("epochs", True), ("batch", 0), ("batch", -3), ("lr", math.inf), ("lr", 0.0),
    ("lr", "0.1"), ("threshold_us", math.nan), ("threshold_us", -1.0), ("threshold_us", math.inf),
    ("write_verify", -1), ("verify_tolerance_us", math.nan), ("holdout", 0.0), ("holdout", 1.0), ("keep", "worst"),
])
def test_library_refuses_the_same_options(name, value):
    """tune() itself (the Python API) checks what the CLI checks; the message names the CLI flag."""
    flag = "--" + name.removesuffix("_us").replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        check_options(**{name: value})


def test_valid_options_pass():
    check_options(epochs=3, batch=1, lr=1e-6, threshold_us=0.0, write_verify=0, verify_tolerance_us=0.0,
                  holdout=0.5, keep="final")


def test_too_few_samples_for_a_held_out_part(workdir):
    """One sample cannot be split into training and held-out data: a DataError naming the file and --holdout."""
    manifest = cimc.manifest.load(workdir / "m")
    data = cimc.data.load_npz(workdir / "data.npz", ["input"])
    one = type(data)({k: v[:1] for k, v in data.inputs.items()}, data.labels[:1], "one.npz", None)
    with pytest.raises(DataError, match=r"one\.npz.*--holdout"):
        tune(manifest, one)


def test_every_option_has_help():
    """`cimc tune --help` describes each option, --epochs included (it had no help text)."""
    code, out, _ = run_cli(["tune", "--help"])
    assert code == 0
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    tune_parser = commands.choices["tune"]
    for action in tune_parser._actions:
        if action.option_strings and action.help is None:
            pytest.fail(f"{action.option_strings} has no help text")
    assert "--epochs N" in out and "passes over the training part" in " ".join(out.split())
