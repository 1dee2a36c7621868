"""The user-facing layer names: the ONNX node names, exactly as the file spells them (`/layer1/layer1.0/conv1/Conv`,
what Netron and `onnx` show), in count, --replicate, replication.json, run --layers, tune --layer, the report and
the manifest.

A node without a name gets `OPTYPE_INDEX` (INDEX: its 0-based position among the graph's nodes, in execution
order, which is the file's order for a well-formed file); a node whose name an earlier node already has keeps it
with `_1`, `_2`, ... appended. A generated name never takes the name of another node of the file.
"""
from __future__ import annotations

import difflib

_LISTED = 20          # layers listed when a wrong name has no close match


def layer_names(nodes) -> list[str]:
    """One name per node of `nodes` (ONNX NodeProtos), all distinct and stable for the same file."""
    real = {node.name for node in nodes if node.name}
    given: set[str] = set()
    names = []
    for index, node in enumerate(nodes):
        if node.name and node.name not in given:
            name = node.name
        else:
            base = node.name or f"{node.op_type}_{index}"
            name, k = base, 1
            while name in given or (name != node.name and name in real):
                name, k = f"{base}_{k}", k + 1
        given.add(name)
        names.append(name)
    return names


def sanitised(name: str) -> str:
    """The spelling cimc used before layer names were exact (`/conv1/Conv` -> `_conv1_Conv`)."""
    return name.replace("/", "_")


def unknown_layer(what: str, name: str, names: list[str]) -> str:
    """The message for a layer name that names no layer: the close matches (difflib), else the layers."""
    close = [n for n in names if sanitised(n) == name and n != name]
    close += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if n not in close]
    if close:
        hint = f"did you mean {' or '.join(map(repr, close[:3]))}?"
    else:
        shown = ", ".join(map(repr, names[:_LISTED]))
        hint = f"the crossbar layers are {shown}" + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED
                                                      else "")
    return (f"{what} {name!r} matches no crossbar layer; {hint} (layer names are the ONNX node names, exactly; "
            "`cimc count MODEL` lists them)")
