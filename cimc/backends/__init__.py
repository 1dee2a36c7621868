"""Execution backends by name."""
from __future__ import annotations

from cimc.backends.base import Backend
from cimc.backends.crossbar import CrossbarBackend
from cimc.backends.reference import FloatBackend, IntegerBackend
from cimc.errors import ConfigError

BACKENDS = {"float": FloatBackend, "integer": IntegerBackend, "crossbar": CrossbarBackend}


def make_backend(name: str, **options) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](**options)
