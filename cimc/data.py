"""Data files. An npz holds the model input under `x` (single-input models) or under each input's name, in the
model's layout and any numeric dtype (converted to float32), and optionally integer labels under `y`."""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.errors import DataError


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    path: str | None
    sha256: str | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_npz(path, what: str = "data file") -> dict[str, np.ndarray]:
    """Every array of an .npz file; errors name the file and say what it was meant to be."""
    path = str(path)
    if not Path(path).is_file():
        raise DataError(f"{what} {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz {what} ({exc})") from None


def load_npz(path, input_names: list[str]) -> Dataset:
    path = str(path)
    content = read_npz(path)
    if len(input_names) == 1 and "x" in content:
        inputs = {input_names[0]: content["x"]}
    else:
        missing = [n for n in input_names if n not in content]
        if missing:
            expected = "'x'" if len(input_names) == 1 else ", ".join(map(repr, input_names))
            raise DataError(f"{path}: no array {expected} for the model input(s); keys present: "
                            f"{sorted(content)}")
        inputs = {n: content[n] for n in input_names}
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(f"{path}: input arrays are empty or of different lengths {sorted(sizes)}")
    labels = content.get("y")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(next(iter(inputs.values()))):
            raise DataError(f"{path}: 'y' must be a 1-D array with one label per sample")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'y' must hold integer class labels, got dtype {labels.dtype}")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return Dataset(inputs, labels, path, digest)
