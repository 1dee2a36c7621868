"""cimc.mnist: IDX files (plain and .gz) with hand-made headers, npz files, model input, and the errors."""
import gzip
import struct

import numpy as np
import pytest

from cimc.errors import DataError
from cimc.mnist import load_mnist, read_idx, to_model_input


def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_split(directory, prefix, x, y, gz=False):
    for name, magic, a in ((f"{prefix}-images-idx3-ubyte", 2051, x), (f"{prefix}-labels-idx1-ubyte", 2049, y)):
        data = _idx(magic, a)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


@pytest.fixture
def digits():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x[0, 0, 0] = 255
    return x, np.array([3, 1, 4, 1, 5], dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, digits, gz):
    x, y = digits
    _write_split(tmp_path, "train", x, y, gz)
    _write_split(tmp_path, "t10k", x[:2], y[:2], gz)
    xt, yt = load_mnist(tmp_path, "train")
    assert xt.dtype == np.uint8 and xt.shape == (5, 28, 28) and np.array_equal(xt, x)
    assert yt.dtype == np.int64 and yt.tolist() == [3, 1, 4, 1, 5]
    xs, ys = load_mnist(tmp_path, split="test")
    assert np.array_equal(xs, x[:2]) and ys.tolist() == [3, 1]


def test_header_is_big_endian(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    f = tmp_path / "tiny-idx3-ubyte"
    f.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]) + a.tobytes())
    assert np.array_equal(read_idx(f, 2051), a)


def test_npz_round_trip(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "m.npz", x=x, y=y.astype(np.int64))
    xl, yl = load_mnist(tmp_path / "m.npz", "test")
    assert np.array_equal(xl, x) and yl.dtype == np.int64 and np.array_equal(yl, y)


def test_to_model_input(digits):
    x, _ = digits
    m = to_model_input(x)
    assert m.dtype == np.float32 and m.shape == (5, 1, 28, 28)
    assert m.max() == 1.0 and np.array_equal(np.rint(m[:, 0] * 255).astype(np.uint8), x)


def test_bad_magic_names_the_file(tmp_path, digits):
    x, y = digits
    _write_split(tmp_path, "train", x, y)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(_idx(2051, y))  # an images magic on the labels file
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*2051.*2049"):
        load_mnist(tmp_path, "train")
    bad.write_bytes(b"\x12\x34\x56\x78" + y.tobytes())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path, "train")


def test_truncated_and_missing(tmp_path, digits):
    x, y = digits
    _write_split(tmp_path, "train", x, y)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "test")
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere.npz")


def test_label_count_mismatch_and_float_npz(tmp_path, digits):
    x, y = digits
    _write_split(tmp_path, "train", x, y[:4])
    with pytest.raises(DataError, match="5 images"):
        load_mnist(tmp_path, "train")
    np.savez(tmp_path / "f.npz", x=to_model_input(x), y=y)
    with pytest.raises(DataError, match="f.npz.*uint8"):
        load_mnist(tmp_path / "f.npz")


def test_directory_of_npz_files(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "mnist_train.npz", x=x, y=y.astype(np.int64))
    np.savez(tmp_path / "mnist_test.npz", x=x[:1], y=y[:1].astype(np.int64))
    assert len(load_mnist(tmp_path, "train")[0]) == 5 and len(load_mnist(tmp_path, "test")[0]) == 1
    with pytest.raises(DataError, match="unknown MNIST split"):
        load_mnist(tmp_path, "validation")
