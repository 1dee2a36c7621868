"""`cimc insitu` refuses every bad option before training: exit 2, `cimc: error:` naming the option, no traceback,
nothing written (the corpus is generated here, one case per parameter)."""
from __future__ import annotations

import pytest
from refusal import assert_refused

pytest.importorskip("sklearn")

BAD = {
    "--epochs": ["0", "-1", "-100", "abc", "1.5", "", "nan"],
    "--lr": ["0", "-0.1", "nan", "inf", "-inf", "abc", ""],
    "--adc-bits": ["0", "1", "25", "100", "-3", "abc", "8.5"],
    "--stuck-rate": ["1.5", "-0.1", "nan", "inf", "abc", "200%", "-5%", ""],
    "--stuck-at": ["nan", "inf", "-inf", "-5", "1e9", "20.5", "abc", "", "g_mid"],
    "--seed": ["-1", "-99", "abc", "1.5", ""],
    "--wire-resistance": ["-1ohm", "abc", "5x", "nan", "inf", ""],
    "--access-resistance": ["-5kohm", "abc", "5mohm", "nan", ""],
    "--drift-time": ["-1s", "abc", "5parsecs", "nan", ""],
}
CASES = [(flag, value) for flag, values in BAD.items() for value in values]


@pytest.mark.parametrize("flag, value", CASES)
def test_bad_option_is_refused(tmp_path, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    assert_refused(["insitu", "--epochs", "1", flag, value] if flag != "--epochs" else ["insitu", flag, value],
                   flag, watch=[tmp_path])


@pytest.mark.parametrize("argv, culprit", [
    (["--target", "no-such-target"], "no-such-target"),
    (["--target", "{tmp}/missing.toml"], "missing.toml"),
    (["--set", "device.g_min_us=nan"], "device.g_min_us"),
    (["--set", "device.g_max_us=-1"], "g_max_us"),
    (["--set", "nosection.field=1"], "nosection"),
    (["--set", "device.levels=abc"], "device.levels"),
    (["--set", "device"], "device"),
    (["--set", "nonideal.cell=2t2r"], "nonideal.cell"),
    (["--set", "nonideal.cell=0t1r", "--access-resistance", "5kohm"], "nonideal.access_ohm"),
])
def test_bad_target_is_refused(tmp_path, monkeypatch, argv, culprit):
    monkeypatch.chdir(tmp_path)
    assert_refused(["insitu", "--epochs", "1", *[a.format(tmp=tmp_path) for a in argv]], culprit, watch=[tmp_path])
