"""Pieces shared by the `cimc` subcommands."""
from __future__ import annotations

import json

from cimc.errors import ConfigError


def parse_replicate(items: list[str] | None) -> dict[str, int]:
    copies = {}
    for item in items or []:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ConfigError(f"--replicate {item!r}: expected NODE=COPIES, e.g. conv1=4")
        try:
            copies[name] = int(value)
        except ValueError:
            raise ConfigError(f"--replicate {item!r}: COPIES must be an integer") from None
    return copies


def emit(obj: dict) -> None:
    print(json.dumps(obj, indent=1))


def add_target_options(sp) -> None:
    sp.add_argument("--target", default="yao2020-resnet",
                    help="preset name (see `cimc targets`) or path to a target TOML (default yao2020-resnet)")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="override one target field, e.g. --set adc.bits=6 (repeatable)")
    sp.add_argument("--replicate", action="append", metavar="NODE=N",
                    help="copies of a crossbar layer's weights, e.g. --replicate conv1=4 (repeatable)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
