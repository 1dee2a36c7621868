"""Replicate: set each crossbar op's number of weight copies (from user overrides; default 1)."""
from __future__ import annotations

from cimc.errors import ConfigError
from cimc.ir import Graph

NAME = "replicate"


def run(graph: Graph, target, config) -> Graph:
    copies = dict(config.replicate or {})
    names = [op.name for op in graph.xbar_ops()]
    unknown = sorted(set(copies) - set(names))
    if unknown:
        raise ConfigError(f"--replicate names {', '.join(map(repr, unknown))} match no crossbar layer; "
                          f"layers are: {', '.join(names)}")
    for op in graph.xbar_ops():
        n = copies.get(op.name, 1)
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"--replicate {op.name}={n!r}: the number of copies must be a positive integer")
        op.replicas = n
    return graph
