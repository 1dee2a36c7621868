"""Models with a fixed batch (every graph input's first dimension is the same number, e.g. [1, 1, 28, 28] in ONNX
model-zoo files and torch exports without dynamic axes) run on any number of samples in chunks of exactly that
batch. Chunking is the general rule because such graphs may hard-code the batch (torch writes Reshape(x, [1, 256])),
so making the batch symbolic is not exact in general. The last chunk, if partial, is padded with copies of its last
sample; the padding rows (axis 0) are dropped from every result."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def fixed_batch(shapes) -> int | None:
    """The fixed batch of a model whose inputs have these shapes: their shared first dimension when every one is a
    number; None for a symbolic batch (or inputs that disagree: those run as given)."""
    firsts = {s[0] if len(s) else None for s in shapes}
    if len(firsts) != 1:
        return None
    (first,) = firsts
    return first if isinstance(first, (int, np.integer)) and first >= 1 else None


def chunks(feeds: dict[str, np.ndarray], batch: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(start, real samples, feeds of exactly `batch` samples) for consecutive chunks of `feeds` (equal sample
    counts). A partial last chunk is padded with copies of its last sample; no samples at all give one chunk of
    zeros with 0 real samples, so results still have the model's output shapes."""
    n = len(next(iter(feeds.values())))
    if n == 0:
        yield 0, 0, {k: np.zeros((batch,) + v.shape[1:], v.dtype) for k, v in feeds.items()}
        return
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        count = len(next(iter(part.values())))
        yield start, count, {k: pad(v, batch) for k, v in part.items()}


def pad(x: np.ndarray, batch: int) -> np.ndarray:
    """`x` with copies of its last row appended up to `batch` rows."""
    if len(x) >= batch:
        return x
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])


def run_chunked(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feeds: dict[str, np.ndarray],
                batch: int) -> dict[str, np.ndarray]:
    """`run(feeds of `batch` samples) -> {name: array with the samples on axis 0}` over all samples of `feeds`,
    chunk by chunk; the results concatenated, without the padding."""
    parts = [{k: v[:count] for k, v in run(part).items()} for _, count, part in chunks(feeds, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
