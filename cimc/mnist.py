"""MNIST readers: an npz (`x` uint8 [N, 28, 28], `y` int labels) or a directory holding the four standard IDX files
(or, failing those, mnist_train.npz / mnist_test.npz).

    from cimc.mnist import load_mnist, to_model_input
    x, y = load_mnist("/data/mnist", split="test")     # uint8 [10000, 28, 28], int64 [10000]
    feed = to_model_input(x)                            # float32 [10000, 1, 28, 28] = pixel / 255

IDX files (LeCun's format): big-endian; a 4-byte magic number 0x00000803 = 2051 (uint8 images, 3 dims) or
0x00000801 = 2049 (uint8 labels, 1 dim), then one big-endian uint32 per dimension, then the data. The standard names
are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
each possibly gzip-compressed (``.gz``); the dotted variants some mirrors use (``train-images.idx3-ubyte``) are
accepted too.

Model input: the pixel value divided by 255, as float32 ([N, 1, 28, 28]). These are the 8-bit inputs of Yao et al.
2020: if the calibration set contains a white pixel (max 1.0, true of practically every MNIST batch), the compiler's
unsigned 8-bit activation quantiser gets scale 1/255 for the first layer's input, so its 256 codes are exactly the 256
pixel values and quantising the input loses nothing.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from cimc.errors import DataError

__all__ = ["load_mnist", "read_idx", "to_model_input", "IDX_FILES"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """One IDX file (optionally .gz) -> uint8 array of the shape in its header. `magic`: the number it must carry
    (2051 for images, 2049 for labels); None accepts any unsigned-byte IDX file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic number {found}, expected "
                        f"{magic if magic is not None else '2051 or 2049'})")
    if magic is not None and found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'} file)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path}: header says shape {dims} ({size} bytes of data), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(directory: Path, name: str) -> Path:
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    raise DataError(f"{directory}: no {name} (or {name}.gz) in this directory; MNIST needs the four IDX files "
                    f"{', '.join(n for pair in IDX_FILES.values() for n in pair)}")


def _check(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{where}: images must have shape [N, 28, 28], got {list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: {len(x)} images but labels of shape {list(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: labels must be digits 0..9, found {int(y.min())}..{int(y.max())}")
    return x, y.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path}: no array {' or '.join(map(repr, missing))}; keys present: {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{path}: 'x' must hold uint8 pixels 0..255, got dtype {x.dtype} (an npz made for a model, "
                        "with float inputs, is not raw MNIST)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must hold integer labels, got dtype {y.dtype}")
    return _check(x, y, str(path))


def load_mnist(path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """-> (x uint8 [N, 28, 28], y int64 [N]).

    `path`: an .npz with `x` and `y` (the split is whatever the file holds; `split` is then ignored), or a directory
    with the IDX files of the split ("train": 60,000 images, "test": the 10,000 t10k images) or, failing those, with
    ``mnist_train.npz`` / ``mnist_test.npz``."""
    if split not in IDX_FILES:
        raise DataError(f"unknown MNIST split {split!r}: use 'train' or 'test'")
    p = Path(path)
    if p.is_dir():
        if not any((p / (n + gz)).is_file() or (p / (n.replace("-idx", ".idx") + gz)).is_file()
                   for n in IDX_FILES[split] for gz in ("", ".gz")) and (p / f"mnist_{split}.npz").is_file():
            return _load_npz(p / f"mnist_{split}.npz")
        images, labels = (_find(p, name) for name in IDX_FILES[split])
        x = read_idx(images, IMAGES_MAGIC)
        y = read_idx(labels, LABELS_MAGIC)
        return _check(x, y, f"{images} + {labels.name}")
    if p.is_file():
        return _load_npz(p)
    raise DataError(f"MNIST path {str(p)!r} does not exist (give an .npz with x, y or a directory with the IDX files)")


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images [N, 28, 28] -> float32 [N, 1, 28, 28] = pixel / 255 (the input of the mCNN example model)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise DataError(f"expected images of shape [N, 28, 28], got {list(x.shape)}")
    return (x.astype(np.float32) / np.float32(255.0))[:, None, :, :]
