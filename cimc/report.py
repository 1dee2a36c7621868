"""Generated text (jinja2 templates shipped in cimc.targets/templates)."""
from __future__ import annotations

from importlib import resources

import jinja2

_env = jinja2.Environment(loader=jinja2.FunctionLoader(
    lambda name: (resources.files("cimc.targets") / "templates" / name).read_text()),
    keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def layer_table_text(table: dict, target) -> str:
    width = max([len("layer"), len("total")] + [len(layer["name"]) for layer in table["layers"]])
    return _env.get_template("layers.txt.j2").render(
        t=table, w=width, per_tile_in=target.array.inputs_per_tile, per_tile_out=target.array.outputs_per_tile)
