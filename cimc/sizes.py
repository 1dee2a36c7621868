"""Sizes of memory as people write them ('8GiB', '512MB', '1.5g', a bare number of bytes) and back."""
from __future__ import annotations

import re

from cimc.errors import ConfigError

_UNITS = {"": 1, "b": 1, **{p: 1000 ** i for i, p in enumerate("kmgtp", 1)},
          **{p + "b": 1000 ** i for i, p in enumerate("kmgtp", 1)},
          **{p + "ib": 1 << 10 * i for i, p in enumerate("kmgtp", 1)}}


def parse_size(text, where: str) -> int:
    """'8GiB', '512MB', '1.5g', '1000000' (bytes) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ConfigError(f"{where} {text!r}: expected a size such as 8GiB, 512MiB or 16GB")
    size = float(match.group(1)) * _UNITS[match.group(2)]
    if not 1 <= size < 1 << 62:
        raise ConfigError(f"{where} {text!r}: must be at least 1 byte and finite")
    return int(size)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"      # not reached
