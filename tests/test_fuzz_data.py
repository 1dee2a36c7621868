"""Bad data files through every command that reads one (compile --calibration, run --data, run --calibration,
tune --data): each is refused with `cimc: error:` naming the file and the culprit, nothing written; npz files are
read lazily and within bounds (cimc/npz.py)."""
from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format
from refusal import assert_refused, run_cli

import cimc
from cimc.data import load_npz
from cimc.errors import DataError
from cimc.npz import LIMIT_ENV, NpzReader

SHAPE = (1, 28, 28)          # the mCNN's input (tests/conftest.py mcnn_dir)
N = 20
LABELS = np.arange(N) % 10


def _images(n=N, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def setup(mcnn_dir, tmp_path_factory):
    """A compiled mCNN manifest, valid data, and a folder for the bad files (watched: nothing may appear there)."""
    root = tmp_path_factory.mktemp("fuzz_data")
    manifest = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz")
    manifest.save(root / "m")
    np.savez(root / "good.npz", x=_images(), y=np.arange(N) % 10)
    bad = root / "bad"
    bad.mkdir()
    return {"root": root, "manifest": root / "m", "good": root / "good.npz", "bad": bad,
            "model": mcnn_dir / "mcnn.onnx"}


def _with_bad(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zip_members(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _lying_header(path, declared_rows):
    """An npz whose 'x' header declares `declared_rows` samples but whose data holds 4."""
    body = _images(4).tobytes()
    head = io.BytesIO()
    npy_format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                             "shape": (declared_rows, *SHAPE)})
    _zip_members(path, {"x.npy": head.getvalue() + body})


def _header_only(path, shape):
    head = io.BytesIO()
    npy_format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    _zip_members(path, {"x.npy": head.getvalue() + bytes(4096)})


def _unsupported_compression(path):
    """A stored member whose compression method (local header and central directory) says 99 (AES)."""
    np.savez(path, x=_images())
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    data[local + 8:local + 10] = (99).to_bytes(2, "little")
    data[central + 10:central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def _truncated(path, fraction):
    np.savez_compressed(path, x=_images())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _corrupted(path):
    """Deflated data with bytes flipped in the middle of the member (the zip directory intact)."""
    np.savez_compressed(path, x=_images())
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# name -> (writer(path), strings the error must name besides the file)
CORPUS = {
    "nan_first": (lambda p: np.savez(p, x=_with_bad(_images(), (0, 0, 0, 0), np.nan)), ["'x'", "NaN", "(0, 0, 0, 0)"]),
    "nan_middle": (lambda p: np.savez(p, x=_with_bad(_images(), (17, 0, 3, 5), np.nan)),
                   ["'x'", "NaN", "(17, 0, 3, 5)"]),
    "nan_last": (lambda p: np.savez(p, x=_with_bad(_images(), (N - 1, 0, 27, 27), np.nan)),
                 ["NaN", f"({N - 1}, 0, 27, 27)"]),
    "inf": (lambda p: np.savez(p, x=_with_bad(_images(), (5, 0, 1, 2), np.inf)), ["'x'", "inf", "(5, 0, 1, 2)"]),
    "minus_inf": (lambda p: np.savez(p, x=_with_bad(_images(), (2, 0, 9, 9), -np.inf)), ["-inf", "(2, 0, 9, 9)"]),
    "float16_inf": (lambda p: np.savez(p, x=_with_bad(_images().astype(np.float16), (3, 0, 0, 1), np.inf)),
                    ["inf", "(3, 0, 0, 1)"]),
    "float64_beyond_float32": (lambda p: np.savez(p, x=_with_bad(_images().astype(np.float64), (4, 0, 2, 2), 1e300)),
                               ["1e+300", "float32", "(4, 0, 2, 2)"]),
    "nan_compressed": (lambda p: np.savez_compressed(p, x=_with_bad(_images(), (8, 0, 8, 8), np.nan)),
                       ["NaN", "(8, 0, 8, 8)"]),
    "complex64": (lambda p: np.savez(p, x=_images().astype(np.complex64)), ["'x'", "complex64"]),
    "complex128": (lambda p: np.savez(p, x=_images().astype(np.complex128) * 1j), ["'x'", "complex128"]),
    "bool": (lambda p: np.savez(p, x=_images() > 0.5), ["'x'", "bool"]),
    "strings": (lambda p: np.savez(p, x=np.array([["a"] * 3] * N)), ["'x'", "dtype"]),
    "structured": (lambda p: np.savez(p, x=np.zeros(N, dtype=[("a", "f4"), ("b", "i4")])), ["'x'", "dtype"]),
    "object": (lambda p: np.savez(p, x=np.array([None] * N, dtype=object)), ["'x'", "object"]),
    "datetime": (lambda p: np.savez(p, x=np.zeros(N, dtype="datetime64[s]")), ["'x'", "datetime64"]),
    "scalar": (lambda p: np.savez(p, x=np.float32(1.0)), ["'x'", "scalar"]),
    "zero_samples": (lambda p: np.savez(p, x=np.zeros((0, *SHAPE), np.float32)), ["'x'", "0 samples"]),
    "wrong_key": (lambda p: np.savez(p, images=_images()), ["'x'", "images"]),
    "only_labels": (lambda p: np.savez(p, y=np.arange(N)), ["'x'"]),
    "empty_npz": (lambda p: np.savez(p), ["no arrays"]),
    "empty_zip": (lambda p: zipfile.ZipFile(p, "w").close(), ["no arrays"]),
    "zero_bytes": (lambda p: p.write_bytes(b""), ["not a readable .npz"]),
    "text": (lambda p: p.write_text("x,y\n1,2\n"), ["not a readable .npz"]),
    "npy_renamed": (lambda p: p.write_bytes(_npy_bytes(_images())), [".npy", "np.savez"]),
    "npy_truncated_renamed": (lambda p: p.write_bytes(_npy_bytes(_images())[:100]), [".npy"]),
    "truncated_10": (lambda p: _truncated(p, 0.1), ["not a readable .npz"]),
    "truncated_50": (lambda p: _truncated(p, 0.5), ["not a readable .npz"]),
    "truncated_99": (lambda p: _truncated(p, 0.99), ["not a readable .npz"]),
    "corrupted_deflate": (_corrupted, ["'x'", "damaged"]),
    "lying_header": (lambda p: _lying_header(p, 10_000), ["'x'", "declares", "10000"]),
    "huge_header": (lambda p: _lying_header(p, 10 ** 12), ["'x'", "declares"]),
    "negative_dimension": (lambda p: _header_only(p, (-4, *SHAPE)), ["'x'", "negative dimension"]),
    "unsupported_compression": (_unsupported_compression, ["'x'", "cannot be read"]),
    "bad_magic_member": (lambda p: _zip_members(p, {"x.npy": b"not an array at all"}), ["'x'", "header"]),
    "bad_header_dict": (lambda p: _zip_members(p, {"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n"}),
                        ["'x'", "header"]),
    "rank_too_low": (lambda p: np.savez(p, x=np.zeros((N, 28, 28), np.float32), y=LABELS), ["'input'", "shape"]),
    "channels_wrong": (lambda p: np.savez(p, x=np.zeros((N, 3, 28, 28), np.float32), y=LABELS),
                       ["'input'", "[20, 3, 28, 28]"]),
    "size_wrong": (lambda p: np.savez(p, x=np.zeros((N, 1, 32, 32), np.float32), y=LABELS), ["'input'", "shape"]),
    "flat_vector": (lambda p: np.savez(p, x=np.zeros(N, np.float32), y=LABELS), ["'input'", "shape"]),
    "labels_2d": (lambda p: np.savez(p, x=_images(), y=np.zeros((N, 10), np.int64)), ["'y'", "1-D"]),
    "labels_short": (lambda p: np.savez(p, x=_images(), y=np.zeros(N - 1, np.int64)), ["'y'", "one label"]),
    "labels_float": (lambda p: np.savez(p, x=_images(), y=np.zeros(N)), ["'y'", "float64"]),
    "labels_bool": (lambda p: np.savez(p, x=_images(), y=np.zeros(N, bool)), ["'y'", "bool"]),
    "labels_negative": (lambda p: np.savez(p, x=_images(), y=np.r_[np.zeros(N - 1, int), -3]),
                        ["'y'", "-3", f"index {N - 1}"]),
    "labels_scalar": (lambda p: np.savez(p, x=_images(), y=np.int64(1)), ["'y'"]),
}

SHAPE_CASES = {"rank_too_low", "channels_wrong", "size_wrong", "flat_vector"}

# how each command takes a data file; "labels": whether the command reads labels (compile ignores them)
COMMANDS = {
    "compile": lambda s, f: ["compile", s["model"], "--target", "yao2020-mcnn", "--calibration", f,
                             "-o", s["bad"] / "out"],
    "run": lambda s, f: ["run", s["manifest"], "--data", f],
    "run_crossbar_calibration": lambda s, f: ["run", s["manifest"], "--data", s["good"], "--backend", "crossbar",
                                              "--calibration", f],
    "tune": lambda s, f: ["tune", s["manifest"], "--data", f, "-o", s["bad"] / "tuned"],
    "sweep": lambda s, f: ["sweep", s["manifest"], "--data", f, "--grid", "adc_bits=8", "--seeds", "1",
                           "-o", s["bad"] / "sweep"],
}
# sweep reads --tune-data with the same code as --data: checked for a missing file and a folder only
OTHER_COMMANDS = {
    "sweep_tune_data": lambda s, f: ["sweep", s["manifest"], "--data", s["good"], "--grid", "adc_bits=8", "--seeds",
                                     "1", "--tune-data", f, "-o", s["bad"] / "sweep"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_data_file_is_refused(setup, case, command):
    write, culprit = CORPUS[case]
    path = setup["bad"] / f"{case}.npz"
    if not path.exists():
        write(path)
    argv = COMMANDS[command](setup, path)
    names = [path.name]
    if command in ("compile", "run_crossbar_calibration") and case.startswith("labels"):
        # calibration ignores labels, but a label array that is not one integer >= 0 per sample is still refused
        culprit = ["'y'"]
    if command == "tune" and case in SHAPE_CASES:
        names = []    # tune checks shapes in cimc/training.py, as "tuning data"
    assert_refused(argv, names + culprit, watch=[setup["root"]], case=f"{command} {case}")


@pytest.mark.parametrize("command", ["compile", "run", "tune", "sweep", "sweep_tune_data"])
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_or_directory_data_path(setup, command, kind):
    path = setup["bad"] / f"{kind}-data.npz"
    if kind == "directory":
        path.mkdir(exist_ok=True)
    assert_refused({**COMMANDS, **OTHER_COMMANDS}[command](setup, path),
                   [path.name, "does not exist" if kind == "missing" else "not a file"], watch=[setup["root"]])


@pytest.mark.parametrize("command", ["compile", "run", "run_crossbar_calibration", "tune"])
def test_a_npy_file_is_refused(setup, command):
    """An .npy file (one array, no key) where an .npz is expected."""
    path = setup["bad"] / "images.npy"
    np.save(path, _images())
    assert_refused(COMMANDS[command](setup, path), [path.name, ".npy", "np.savez"], watch=[setup["root"]])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(-10 ** 6, 3 * N))
def test_limit_runs_exactly_the_first_n_samples(setup, limit):
    """--limit N: N >= 1 runs min(N, samples) samples (before: 0 ran all, -5 ran all but 5); N < 1 is refused."""
    argv = ["run", setup["manifest"], "--data", setup["good"], "--limit", str(limit), "--json"]
    if limit < 1:
        assert_refused(argv, f"--limit {limit}", watch=[setup["root"]])
        return
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert json.loads(out)["n"] == min(limit, N)


@pytest.mark.parametrize("label", [10, 11, 1000, -1, np.iinfo(np.int64).min])
def test_run_refuses_labels_outside_the_model_outputs(setup, label):
    """The mCNN has 10 outputs: a label must lie in 0..9 (it scored 0 silently before)."""
    path = setup["bad"] / f"label{label}.npz"
    y = np.arange(N) % 10
    y[7] = label
    np.savez(path, x=_images(), y=y)
    expected = "0..9" if label >= 0 else ">= 0"
    assert_refused(["run", setup["manifest"], "--data", path], [path.name, "'y'", f"label {label}", "index 7",
                                                                expected], watch=[setup["root"]])


def test_run_uses_labels_at_the_edges(setup, tmp_path):
    """Labels 0 and 9 are valid for 10 outputs: the boundary of the check is not off by one."""
    path = tmp_path / "edges.npz"
    np.savez(path, x=_images(), y=np.where(np.arange(N) % 2, 9, 0))
    code, out, err = run_cli(["run", setup["manifest"], "--data", path, "--json"])
    assert code == 0, err
    assert json.loads(out)["accuracy"] is not None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.tuples(st.integers(0, N - 1), st.just(0), st.integers(0, 27), st.integers(0, 27)),
       value=st.sampled_from([np.nan, np.inf, -np.inf]),
       dtype=st.sampled_from([np.float16, np.float32, np.float64]),
       compressed=st.booleans())
def test_any_nonfinite_value_is_refused_at_its_index(setup, index, value, dtype, compressed):
    path = setup["bad"] / "hypothesis_nonfinite.npz"
    x = _images().astype(dtype)
    x[index] = value
    (np.savez_compressed if compressed else np.savez)(path, x=x)
    with pytest.raises(DataError) as info:
        load_npz(path, ["input"])
    message = str(info.value)
    assert f"at index {index}" in message and "'x'" in message and path.name in message
    assert ("NaN" if np.isnan(value) else str(value)) in message
    path.unlink()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30), limit=st.one_of(st.none(), st.integers(1, 40)),
       dtype=st.sampled_from([np.float16, np.float32, np.float64, np.uint8, np.int16, ">f4", ">f8"]),
       fortran=st.booleans(), compressed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_valid_files_read_as_numpy_reads_them(setup, n, limit, dtype, fortran, compressed, seed):
    """Lazy reading changes nothing for valid files: the first `limit` rows of what np.load gives, as float32."""
    path = setup["bad"] / "hypothesis_valid.npz"
    x = (np.random.default_rng(seed).random((n, *SHAPE)) * 100).astype(dtype)
    if fortran:
        x = np.asfortranarray(x)
    y = np.random.default_rng(seed).integers(0, 10, n)
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    ds = load_npz(path, ["input"], limit=limit)
    with np.load(path) as f:
        expected_x, expected_y = f["x"][:limit], f["y"][:limit]
    assert ds.inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(ds.inputs["input"], expected_x.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, expected_y)
    path.unlink()


def _zero_bomb(path, rows):
    """A deflated npz of `rows` zero images, written by streaming (never whole in memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, *SHAPE)})
            block = bytes(4 * int(np.prod(SHAPE)) * 1000)
            for start in range(0, rows, 1000):
                f.write(block[:4 * int(np.prod(SHAPE)) * min(1000, rows - start)])


@pytest.fixture(scope="module")
def bomb(setup):
    """200 MB of zeros in well under 1 MB on disk."""
    path = setup["root"] / "bomb.npz"
    _zero_bomb(path, 64_000)
    assert path.stat().st_size < 1 << 20
    return path


def test_limit_reads_only_the_samples_asked_for(bomb):
    tracemalloc.start()
    try:
        ds = load_npz(bomb, ["input"], limit=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.inputs["input"].shape == (10, *SHAPE) and not ds.inputs["input"].any()
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MB for 10 images of 3 KB"


def test_run_limit_on_a_zip_bomb(setup, bomb):
    code, out, err = run_cli(["run", setup["manifest"], "--data", bomb, "--limit", "10", "--json"])
    assert code == 0, err
    assert json.loads(out)["n"] == 10


@pytest.mark.parametrize("command", ["run", "compile", "tune"])
def test_data_over_the_memory_limit_is_refused(setup, bomb, monkeypatch, command):
    monkeypatch.setenv(LIMIT_ENV, "50MiB")
    assert_refused(COMMANDS[command](setup, bomb), [bomb.name, "'x'", "50.0 MiB", LIMIT_ENV, "--limit"],
                   watch=[setup["root"]])


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "lots", "5 parsecs", "0.1"])
def test_bad_memory_limit_setting_is_refused(setup, monkeypatch, value):
    monkeypatch.setenv(LIMIT_ENV, value)
    assert_refused(COMMANDS["run"](setup, setup["good"]), [LIMIT_ENV, value], watch=[setup["root"]])


def test_header_is_read_without_the_data(setup, bomb):
    """Opening reads headers only: shape and dtype of a 200 MB member with almost no memory."""
    tracemalloc.start()
    try:
        with NpzReader(bomb) as z:
            member = z.members["x"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert member.shape == (64_000, *SHAPE) and member.dtype == np.float32
    assert peak < 4 << 20


def test_compile_refuses_zero_size_calibration_arrays(mcnn_dir):
    """The Python API with an empty array: a DataError, not KeyError in passes/quantize.py."""
    with pytest.raises(DataError, match="0 samples"):
        cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=np.zeros((0, *SHAPE), np.float32))
    with pytest.raises(DataError, match="NaN at index"):
        cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn",
                     calibration=_with_bad(_images(), (1, 0, 2, 3), np.nan))
