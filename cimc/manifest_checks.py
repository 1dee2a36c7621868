"""Consistency checks that loading a manifest runs before any computation (cimc.manifest.load).

JSON Schema checks each field on its own; these checks relate fields to each other and to the npz arrays, so that an
edited manifest either loads and means what it says or is refused with a ManifestError naming the file, the field
path (`ops[3].tiles[2].placements[0]`) and the value:

* numbers: no NaN/Infinity literal anywhere in manifest.json (Python's json would accept them); weight scales
  float32, finite and > 0; float matrices, biases and digital op arrays finite;
* conv geometry: kernel x in_channels == rows (the block-diagonal matrix of a grouped conv spans all input channels),
  out_channels == cols, groups dividing both channel counts, a Conv1d's height axis trivial;
* tiles: their row ranges and column ranges each cut the matrix into bands, every (row band, column band) cell that
  can hold a weight (inside a group's diagonal block) is covered by exactly one tile and no cell twice;
* placements: inside the array, on the PE and chip the array id implies, and no two placements (of any layer or
  copy) on the same cells of a physical array. `--pack` manifests share arrays between layers, but never cells;
* digital ops (digital.onnx): a valid ONNX model (onnx.checker and strict shape inference, in a child process),
  its nodes one for one the ops of manifest.json (names, op types, tensors; `cimc.Crossbar` placeholders for the
  crossbar ops), no external data, finite constants (a Clip bound may be infinite), and a one-batch run in
  onnxruntime (probe_shapes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.errors import CimcError, ManifestError
from cimc.ir import block_slice, per_column
from cimc.weight_encoding import decode, tile_planes


# -- JSON ----------------------------------------------------------------------------------------------------------
def parse_json(text: str, where: str):
    """json.loads that refuses NaN, Infinity and numbers that overflow to infinity (e.g. 1e400)."""
    def constant(name):
        raise ManifestError(f"{where}: holds the literal {name}, which is not a number JSON allows; every number "
                            "in a manifest must be finite (recompile, or fix the value)")

    def number(text):
        value = float(text)
        if not math.isfinite(value):
            raise ManifestError(f"{where}: the number {text} overflows to infinity; every number in a manifest "
                                "must be finite")
        return value
    return json.loads(text, parse_constant=constant, parse_float=number)


# -- arrays of params.npz ------------------------------------------------------------------------------------------
def check_float_array(value: np.ndarray, where: str, field: str, key: str, positive: bool = False,
                      dtype=np.float32) -> None:
    """params.npz[key] is `dtype`, finite (and > 0 if `positive`); the error names the first bad index."""
    if dtype is not None and value.dtype != dtype:
        raise ManifestError(f"{where}: field '{field}': params.npz[{key!r}] is {value.dtype}, expected "
                            f"{np.dtype(dtype).name}")
    if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
        raise ManifestError(f"{where}: field '{field}': params.npz[{key!r}] is {value.dtype}, expected real numbers")
    bad = ~np.isfinite(value) if np.issubdtype(value.dtype, np.floating) else np.zeros(value.shape, bool)
    what = "finite"
    if positive:
        bad |= ~(value > 0)
        what = "finite and > 0"
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ManifestError(f"{where}: field '{field}': params.npz[{key!r}]{list(index)} = {value[index]!r}; every "
                            f"entry must be {what}")


# -- crossbar ops --------------------------------------------------------------------------------------------------
def check_conv_geometry(d: dict, at: str, where: str) -> None:
    conv, rows, cols = d["conv"], d["rows"], d["cols"]
    if conv is None:
        if d["op_type"] in ("Conv", "ConvTranspose"):
            raise ManifestError(f"{where}: field '{at}.conv' is null, but a {d['op_type']} needs its geometry")
        return
    kernel = conv["kernel"]
    n, size = len(kernel), math.prod(kernel)
    cin, cout, groups = conv["in_channels"], conv["out_channels"], conv["groups"]
    transposed = conv.get("transposed", False)

    def bad(field, why):
        raise ManifestError(f"{where}: field '{at}.conv.{field}' = {conv.get(field)!r}: {why}")
    if n != max(2, conv["spatial_rank"]):
        bad("kernel", f"spatial_rank {conv['spatial_rank']} runs on {max(2, conv['spatial_rank'])} axes (a 1-D conv "
                      "as a height-1 2-D conv), one kernel entry each")
    for field, count in (("strides", n), ("dilations", n), ("pads", 2 * n)):
        if len(conv[field]) != count:
            bad(field, f"needs {count} entries for a {n}-axis kernel")
    if transposed != (d["op_type"] == "ConvTranspose"):
        bad("transposed", f"op_type {d['op_type']!r}: only a ConvTranspose is transposed")
    if transposed and len(conv.get("output_padding", ())) != n:
        bad("output_padding", f"a ConvTranspose needs {n} entries, one per run axis")
    if not transposed and "output_padding" in conv:
        bad("output_padding", "only a ConvTranspose has one")
    if cin % groups:
        bad("groups", f"does not divide in_channels {cin}")
    if cout % groups:
        bad("groups", f"does not divide out_channels {cout}")
    want_rows, want_cols = (cin, cout * size) if transposed else (size * cin, cout)
    if want_rows != rows:
        bad("in_channels", f"kernel {'x'.join(map(str, kernel))} and in_channels {cin} make {want_rows} rows, but the "
                           f"matrix has {rows}")
    if want_cols != cols:
        bad("out_channels", f"kernel {'x'.join(map(str, kernel))} and out_channels {cout} make {want_cols} columns, "
                            f"but the matrix has {cols}")
    if conv["spatial_rank"] == 1 and (kernel[0] != 1 or conv["strides"][0] != 1 or conv["dilations"][0] != 1
                                      or conv["pads"][0] or conv["pads"][2]
                                      or (transposed and conv["output_padding"][0])):
        bad("spatial_rank", "a 1-D conv runs as a height-1 2-D conv: kernel, stride, dilation 1 and no pads on "
                            "the first axis")


def check_group_blocks(matrix: np.ndarray, d: dict, at: str, where: str) -> None:
    """A grouped conv's (or a matmul's `blocks`) matrix is block-diagonal (cimc.ir): a weight outside the blocks
    would be ignored by the backends that read the blocks only."""
    groups = d["conv"]["groups"] if d["conv"] else d.get("blocks", 1)
    field = f"'{at}.conv.groups'" if d["conv"] else f"'{at}.blocks'"
    if groups == 1:
        return
    rows, cols = matrix.shape
    kg, ng = rows // groups, cols // groups
    inside = np.zeros(matrix.shape, bool)
    for g in range(groups):
        inside[g * kg:(g + 1) * kg, g * ng:(g + 1) * ng] = True
    outside = (matrix != 0) & ~inside
    if outside.any():
        r, c = (int(i) for i in np.argwhere(outside)[0])
        raise ManifestError(f"{where}: field {field} = {groups}: the float matrix holds a weight at row {r}, "
                            f"column {c}, outside its {groups} diagonal blocks")


def _bands(spans: set, total: int, at: str, what: str, where: str) -> list[tuple[int, int]]:
    """The tiles' distinct (start, count) spans must cut 0..total into consecutive bands."""
    bands = sorted(spans)
    end = 0
    for start, count in bands:
        if start != end:
            gap = "overlaps the band before" if start < end else f"leaves {what} {end}..{start - 1} uncovered"
            raise ManifestError(f"{where}: field '{at}.tiles': the tile {what} range {start}..{start + count - 1} "
                                f"{gap}; tiles must cut the {total} {what}s into consecutive bands")
        end = start + count
    if end != total:
        raise ManifestError(f"{where}: field '{at}.tiles': no tile covers {what}s {end}..{total - 1} of the "
                            f"{total}")
    return bands


def check_tile_cover(d: dict, at: str, where: str) -> None:
    """Every cell of the tile grid that can hold a weight is covered exactly once."""
    rows, cols, tiles = d["rows"], d["cols"], d["tiles"]
    row_bands = _bands({(t["row_start"], t["row_count"]) for t in tiles}, rows, at, "row", where)
    col_bands = _bands({(t["col_start"], t["col_count"]) for t in tiles}, cols, at, "column", where)
    seen: dict[tuple, int] = {}
    for ti, t in enumerate(tiles):
        key = (t["row_start"], t["col_start"])
        if key in seen:
            raise ManifestError(f"{where}: field '{at}.tiles[{ti}]' covers rows {t['row_start']}.. and columns "
                                f"{t['col_start']}.. like '{at}.tiles[{seen[key]}]': each part of the matrix "
                                "belongs to exactly one tile")
        seen[key] = ti
    groups = d["conv"]["groups"] if d["conv"] else d.get("blocks", 1)
    kg, ng = rows // groups, cols // groups
    for r0, rc in row_bands:
        for c0, cc in col_bands:
            holds_weights = any(g * kg < r0 + rc and r0 < (g + 1) * kg and g * ng < c0 + cc and c0 < (g + 1) * ng
                                for g in range(groups))
            if holds_weights and (r0, c0) not in seen:
                raise ManifestError(f"{where}: field '{at}.tiles': no tile covers rows {r0}..{r0 + rc - 1}, "
                                    f"columns {c0}..{c0 + cc - 1} of the {rows}x{cols} matrix (a tile was deleted?)")


class ArrayOccupancy:
    """The rectangles the placements take on each physical array (in the packing frame of cimc.passes.pack: rows x
    device columns; for differential "rows" the first row block, which the g- block mirrors): none may overlap."""

    def __init__(self, n_arrays: int, target):
        self.n_arrays, self.spec, self.chip = n_arrays, target.array, target.chip
        self.taken: dict[int, list[tuple[int, int, int, int, str]]] = {}

    def place(self, tile: dict, p: dict, field: str, where: str) -> None:
        spec = self.spec
        height = spec.frame[0]
        width = spec.tile_rectangle(tile["row_count"], tile["col_count"])[1]
        r0, c0 = p["row_offset"], p["col_offset"]
        r1, c1 = r0 + _row_span(tile, p, height - r0, field, where), c0 + width
        if r1 > height or c1 > spec.frame[1]:
            raise ManifestError(
                f"{where}: field '{field}': row_offset {r0} + {tile['row_count']} rows, col_offset {c0} + {width} "
                f"device columns lies outside the {spec.rows}x{spec.cols} array ({height} rows x {spec.cols} "
                f"columns for a tile with differential = {spec.differential!r}, {spec.columns_per_output} device "
                f"columns per output)")
        for key, per in (("pe", self.chip.arrays_per_pe), ("chip", self.chip.arrays_per_chip)):
            if key in p and p[key] != p["array"] // per:
                raise ManifestError(f"{where}: field '{field}.{key}' = {p[key]}, but array {p['array']} sits on "
                                    f"{key} {p['array'] // per}")
        rects = self.taken.setdefault(p["array"], [])
        for q0, q1, d0, d1, other in rects:
            if r0 < q1 and q0 < r1 and c0 < d1 and d0 < c1:
                raise ManifestError(f"{where}: field '{field}' puts the tile on rows {r0}..{r1 - 1}, columns "
                                    f"{c0}..{c1 - 1} of array {p['array']}, cells that '{other}' already holds; "
                                    "tiles may share an array but never its cells")
        rects.append((r0, r1, c0, c1, field))


def _row_span(tile: dict, p: dict, usable: int, field: str, where: str) -> int:
    """The rows a placement spans from its row_offset: row_count, or with a row_order (defect-aware placement) one
    past its largest entry; the order must be row_count distinct rows >= 0."""
    order = p.get("row_order")
    if order is None:
        return tile["row_count"]
    if len(order) != tile["row_count"] or len(set(order)) != len(order) or min(order, default=0) < 0:
        raise ManifestError(f"{where}: field '{field}.row_order' must list {tile['row_count']} distinct physical rows "
                            f">= 0 (one per row of the tile), got {len(order)} entries")
    return max(order, default=-1) + 1


def check_blocks(d: dict, at: str, where: str) -> int:
    """A matmul's diagonal blocks (`blocks`, absent = 1) split its rows and columns evenly; a conv says its groups
    in `conv.groups` instead."""
    blocks = d.get("blocks", 1)
    if blocks > 1 and d["conv"] is not None:
        raise ManifestError(f"{where}: field '{at}.blocks' is for a matmul; a conv gives its groups in "
                            f"'{at}.conv.groups'")
    if d["rows"] % blocks or d["cols"] % blocks:
        raise ManifestError(f"{where}: field '{at}.blocks' = {blocks} does not divide '{at}.rows' = {d['rows']} "
                            f"and '{at}.cols' = {d['cols']}")
    return blocks


def check_average(d: dict, at: str, where: str) -> int:
    """A layer's averaged copies (`average`, absent = 1) divide its replicas into equal pipeline groups."""
    average = d.get("average", 1)
    if d["replicas"] % average:
        raise ManifestError(f"{where}: field '{at}.average' = {average} does not divide '{at}.replicas' = "
                            f"{d['replicas']}; the copies form replicas / average groups of `average` copies")
    return average


# -- digital ops ---------------------------------------------------------------------------------------------------
@dataclass
class DigitalModel:
    nodes: list            # onnx.NodeProto, one per manifest op, in order
    constants: dict        # initializers: the digital ops' constant inputs
    opsets: dict           # domain ("" = ai.onnx) -> version, without the placeholders' domain


def read_digital_model(path: Path, doc: dict) -> DigitalModel:
    """digital.onnx, checked against manifest.json's ops (see the module docstring)."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    from cimc import onnx_checks
    from cimc.npz import data_limit_bytes
    from cimc.onnx_segments import CROSSBAR_DOMAIN, CROSSBAR_OP
    where = str(path)
    if not path.is_file():
        raise ManifestError(f"{where}: missing (a manifest of schema 2 holds its digital ops there); compile the "
                            "model again")
    if path.stat().st_size > data_limit_bytes():
        raise ManifestError(f"{where}: {path.stat().st_size} bytes, above the data limit (CIMC_MAX_DATA)")
    try:
        model = onnx.load_from_string(path.read_bytes())
    except Exception as exc:
        raise ManifestError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ManifestError(f"{where}: holds tensors with external data; a manifest's digital.onnx holds its "
                            "constants itself")
    try:
        onnx_checks.check_valid(model, where)
    except CimcError as exc:
        raise ManifestError(str(exc)) from None
    ops, nodes = doc["ops"], list(model.graph.node)
    if len(nodes) != len(ops):
        raise ManifestError(f"{where}: holds {len(nodes)} nodes, manifest.json field 'ops' {len(ops)} ops")
    for index, (node, d) in enumerate(zip(nodes, ops)):
        crossbar = d["kind"] == "crossbar"
        expected = ((CROSSBAR_DOMAIN, CROSSBAR_OP) if crossbar else (d.get("domain", ""), d["op_type"]),
                    d["name"], list(d["inputs"]), list(d["outputs"]))
        got = (("" if node.domain == "ai.onnx" else node.domain, node.op_type), node.name, list(node.input),
               list(node.output))
        if got != expected:
            what = next(w for w, g, e in zip(("op type", "name", "inputs", "outputs"), got, expected) if g != e)
            shown = {w: (g, e) for w, g, e in zip(("op type", "name", "inputs", "outputs"), got, expected)}[what]
            raise ManifestError(f"{where}: node {index} ({node.op_type} {node.name!r}) differs from manifest.json "
                                f"field 'ops[{index}]': {what} {shown[0]!r} here, {shown[1]!r} in manifest.json; "
                                "the two files must agree node for node (compile the model again)")
    for what, declared, infos in (("inputs", doc["inputs"], model.graph.input),
                                  ("outputs", doc["outputs"], model.graph.output)):
        if [t["name"] for t in declared] != [vi.name for vi in infos]:
            raise ManifestError(f"{where}: graph {what} {[vi.name for vi in infos]} differ from manifest.json "
                                f"field '{what}' {[t['name'] for t in declared]}")
    constants = {}
    bounds = onnx_checks.clip_bounds_only(nodes)
    for init in model.graph.initializer:
        try:
            value = numpy_helper.to_array(init)
        except Exception as exc:
            raise ManifestError(f"{where}: initializer {init.name!r} cannot be read ({exc})") from None
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            infinite_bound = init.name in bounds and not np.isnan(value).any()
            if not infinite_bound:
                raise ManifestError(f"{where}: initializer {init.name!r} holds NaN or Inf; every number in a "
                                    "manifest must be finite (a Clip bound may be infinite)")
        constants[init.name] = value
    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import
              if o.domain != CROSSBAR_DOMAIN}
    return DigitalModel(nodes, constants, opsets)


# -- levels against weights ----------------------------------------------------------------------------------------
def check_levels_match(op, levels: np.ndarray, index: int, copy: int, max_level: int, arrays_file: str) -> None:
    """An untuned manifest's arrays hold exactly the quantised weights (cimc.passes.quantize: level = clip(rint(W /
    scale), -L, L), recomputed here from the float32 matrix and scales of params.npz), so a tile moved to cells that
    hold other levels, or an edited arrays.npz, is caught before it computes wrong numbers."""
    expected = np.clip(np.rint(op.matrix.astype(np.float64) / per_column(op.weight_scales.astype(np.float64),
                                                                          op.matrix)), -max_level, max_level)
    bad = levels != expected
    if bad.any():
        r, c = _logical(np.argwhere(bad)[0], op.matrix)
        got, want = int(levels[tuple(np.argwhere(bad)[0])]), int(expected[tuple(np.argwhere(bad)[0])])
        ti = next((i for i, t in enumerate(op.tiles) if t.row_start <= r < t.row_start + t.row_count
                   and t.col_start <= c < t.col_start + t.col_count), None)
        where = f"ops[{index}].tiles[{ti}].placements[{copy}]" if ti is not None else f"ops[{index}]"
        raise ManifestError(f"{arrays_file}: the levels that field '{where}' (op {op.name!r}) places on the arrays "
                            f"differ from its quantised weights: weight row {r}, column {c} reads level "
                            f"{got}, the weight says {want} (a tile moved, or "
                            "arrays.npz or params.npz edited); recompile the manifest")


def _logical(index, matrix: np.ndarray) -> tuple[int, int]:
    """(row, column) of the logical K x N matrix for an index into `matrix` (either form, cimc.ir)."""
    if matrix.ndim == 2:
        return int(index[0]), int(index[1])
    g, r, c = (int(i) for i in index)
    return g * matrix.shape[1] + r, g * matrix.shape[2] + c


def check_off_block_cells(op, arrays: np.ndarray, target, index: int, copy: int, arrays_file: str) -> None:
    """A grouped op's tiles may span cells outside its diagonal blocks; those hold no weight and must read level 0
    (its compact levels, cimc.ir, have no place for anything else)."""
    if op.matrix.ndim != 3:
        return
    inside = np.ones(op.matrix.shape, bool)
    for ti, tile in enumerate(op.tiles):
        a = arrays[tile.placements[copy].array]
        levels = decode([a[p] for p in tile_planes(tile, tile.placements[copy], target)], target)
        outside = (levels != 0) & ~block_slice(inside, tile.row_start, tile.row_start + tile.row_count,
                                               tile.col_start, tile.col_start + tile.col_count)
        if outside.any():
            r, c = (int(i) for i in np.argwhere(outside)[0])
            raise ManifestError(f"{arrays_file}: the levels that field 'ops[{index}].tiles[{ti}].placements[{copy}]' "
                                f"(op {op.name!r}) places on the arrays hold level {int(levels[r, c])} at weight row "
                                f"{tile.row_start + r}, column {tile.col_start + c}, outside the diagonal blocks of "
                                "its grouped conv, where no weight is (arrays.npz edited); recompile the manifest")


# -- shapes --------------------------------------------------------------------------------------------------------
PROBE_ELEMENTS = 1 << 26      # values per sample per tensor; far above any model a crossbar chip holds


def probe_shapes(graph, where: str) -> None:
    """Follow one sample of zeros (a fixed-batch model: one batch) through the graph: every crossbar op must get an
    input its matrix and conv geometry fit, every digital op inputs onnxruntime accepts, and the outputs the shapes
    the manifest declares. Digital ops run for real (onnxruntime, on zeros); crossbar ops only by shape. Skipped
    where a non-batch input dimension is unknown."""
    from cimc.batching import fixed_batch
    from cimc.onnx_segments import Segment, plan, run_segment
    batch = fixed_batch([t.shape for t in graph.inputs]) or 1    # a fixed batch runs in chunks of exactly that
    if any(d is None for t in graph.inputs for d in t.shape[1:]) or \
            any(batch * math.prod(t.shape[1:]) > PROBE_ELEMENTS for t in graph.inputs):
        return          # unknown or huge inputs: the data check at run time (executor.check_feeds) decides
    env = {t.name: np.zeros((batch,) + tuple(t.shape[1:]), np.float32) for t in graph.inputs}
    index_of = {id(op): i for i, op in enumerate(graph.ops)}
    for item in plan(graph).items:
        if not isinstance(item, Segment):
            at = f"{where}: field 'ops[{index_of[id(item)]}]' ({item.op_type} {item.name!r})"
            env[item.outputs[0]] = _crossbar_output(item, env[item.inputs[0]], at)
            continue
        try:
            made = run_segment(graph, item, env)
        except CimcError as exc:
            first = index_of[id(item.ops[0])]
            raise ManifestError(f"{where}: field 'ops[{first}..{first + len(item.ops) - 1}]' (nodes of "
                                f"digital.onnx): cannot run on zeros (one batch): {exc}") from None
        for t, value in made.items():
            if np.asarray(value).size > PROBE_ELEMENTS:
                raise ManifestError(f"{where}: tensor {t!r} has shape {list(np.shape(value))} from one batch")
        env.update(made)
    for i, t in enumerate(graph.outputs):
        got = env[t.name].shape
        if len(got) != len(t.shape) or any(d is not None and d != g for d, g in zip(t.shape[1:], got[1:])):
            raise ManifestError(f"{where}: field 'outputs[{i}].shape' = {list(t.shape)}, but the ops make "
                                f"{list(got)} (batch {batch})")


def _crossbar_output(op, x: np.ndarray, at: str) -> np.ndarray:
    if op.conv is None:
        if x.ndim < 1 or x.shape[-1] != op.rows:
            raise ManifestError(f"{at}: its input {op.inputs[0]!r} has shape {list(x.shape)}, the matrix has "
                                f"{op.rows} rows (the last axis must match)")
        return np.zeros(x.shape[:-1] + (op.cols,), np.float32)
    g = op.conv
    rank = g.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != g.in_channels:
        raise ManifestError(f"{at}: its input {op.inputs[0]!r} has shape {list(x.shape)}, conv expects [batch, "
                            f"{g.in_channels}, {', '.join('DHW'[3 - rank:])}]")
    sizes = ((1,) if rank == 1 else ()) + x.shape[2:]
    out = g.output_size(sizes)
    if min(out) < 1:
        raise ManifestError(f"{at}: kernel {list(g.kernel)} does not fit its input {list(x.shape)} with pads "
                            f"{list(g.pads)}")
    if op.output_channels * math.prod(out) > PROBE_ELEMENTS:    # strides or pads that blow the output up
        raise ManifestError(f"{at}: makes an output of {op.output_channels} x {'x'.join(map(str, out))} values per "
                            f"sample from its input {list(x.shape)}, more than {PROBE_ELEMENTS}; check its "
                            "'conv.strides' and 'conv.pads'")
    reads = math.prod(sizes if g.transposed else out)      # a ConvTranspose reads once per input position
    if reads != op.positions:
        raise ManifestError(f"{at}: field 'positions' = {op.positions}, but its input {list(x.shape)} gives "
                            f"{'x'.join(map(str, sizes if g.transposed else out))} = {reads} positions")
    return np.zeros((x.shape[0], op.output_channels) + out[len(out) - rank:], np.float32)
