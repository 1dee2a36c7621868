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
* digital ops: an op type the executor implements (cimc.digital), only attributes it reads, of the right kind.
"""
from __future__ import annotations

import json
import math

import numpy as np

from cimc.digital import SUPPORTED
from cimc.errors import ManifestError


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
    """A grouped conv's matrix is block-diagonal (cimc.ir): a weight outside the blocks would be ignored by the
    backends that run the convolution per group."""
    groups = d["conv"]["groups"] if d["conv"] else 1
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
        raise ManifestError(f"{where}: field '{at}.conv.groups' = {groups}: the float matrix holds a weight at row "
                            f"{r}, column {c}, outside the {groups} diagonal blocks of a grouped conv")


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
    groups = d["conv"]["groups"] if d["conv"] else 1
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
        height = spec.rows if spec.differential == "columns" else spec.rows // 2
        width = tile["col_count"] * (2 if spec.differential == "columns" else 1)
        r0, c0 = p["row_offset"], p["col_offset"]
        r1, c1 = r0 + tile["row_count"], c0 + width
        if r1 > height or c1 > spec.cols:
            raise ManifestError(
                f"{where}: field '{field}': row_offset {r0} + {tile['row_count']} rows, col_offset {c0} + {width} "
                f"device columns lies outside the {spec.rows}x{spec.cols} array ({height} rows x {spec.cols} "
                f"columns for a tile with differential = {spec.differential!r})")
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


# -- digital ops ---------------------------------------------------------------------------------------------------
# The attributes each op of cimc.digital reads (kind, required). Kinds: int, ints (list of ints), float, bool, str,
# array (a $param of params.npz); "?" allows null.
_POOL = {"kernel_shape": ("ints", True), "strides": ("ints?", False), "pads": ("ints?", False),
         "dilations": ("ints?", False), "ceil_mode": ("int", False)}
_BINARY = {"constant": ("array?", False), "constant_index": ("int", False)}
DIGITAL_ATTRS: dict[str, dict[str, tuple[str, bool]]] = {
    "Relu": {}, "Sigmoid": {}, "Identity": {}, "GlobalAveragePool": {}, "GlobalMaxPool": {},
    "LeakyRelu": {"alpha": ("float", False)},
    "Clip": {"min": ("float?", False), "max": ("float?", False)},
    "MaxPool": _POOL, "AveragePool": {**_POOL, "count_include_pad": ("int", False)},
    "Add": _BINARY, "Sub": _BINARY, "Mul": _BINARY, "Div": _BINARY,
    "Concat": {"axis": ("int", True)},
    "Flatten": {"axis": ("int", False)},
    "Reshape": {"shape": ("ints", True), "allowzero": ("int", False)},
    "Transpose": {"perm": ("ints?", False)},
    "Pad": {"pads": ("ints", True), "mode": ("str", False), "value": ("float?", False), "axes": ("ints?", False)},
    "Slice": {"starts": ("ints", True), "ends": ("ints", True), "axes": ("ints?", False), "steps": ("ints?", False)},
    "Squeeze": {"axes": ("ints?", False)},
    "Unsqueeze": {"axes": ("ints", True)},
    "Softmax": {"axis": ("int", False), "legacy": ("bool", False)},
    "BatchNormalization": {"scale": ("array", True), "bias": ("array", True), "mean": ("array", True),
                           "var": ("array", True), "epsilon": ("float", False)},
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS = {
    "int": _is_int,
    "ints": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, np.ndarray),
}


def check_digital(d: dict, attrs: dict, at: str, where: str) -> None:
    """`attrs`: the op's attributes with $param references already replaced by their arrays."""
    op_type = d["op_type"]
    known = DIGITAL_ATTRS.get(op_type)
    if known is None or op_type not in SUPPORTED:
        raise ManifestError(f"{where}: field '{at}.op_type' = {op_type!r}: not a digital op the executor runs "
                            f"(supported: {', '.join(sorted(DIGITAL_ATTRS))})")
    for name, value in attrs.items():
        if name not in known:
            raise ManifestError(f"{where}: field '{at}.attrs.{name}': {op_type} has no attribute {name!r} "
                                f"(known: {', '.join(known) or 'none'})")
        kind, _ = known[name]
        nullable = kind.endswith("?")
        if value is None and nullable:
            continue
        if not _KINDS[kind.rstrip("?")](value):
            raise ManifestError(f"{where}: field '{at}.attrs.{name}' = {value!r}: expected {kind.rstrip('?')}"
                                f"{' or null' if nullable else ''}")
        if isinstance(value, np.ndarray):
            check_float_array(value, where, f"{at}.attrs.{name}", d["attrs"][name]["$param"], dtype=None)
    for name, (_, required) in known.items():
        if required and attrs.get(name) is None:
            raise ManifestError(f"{where}: field '{at}.attrs': {op_type} needs attribute {name!r}")


# -- levels against weights ----------------------------------------------------------------------------------------
def check_levels_match(op, levels: np.ndarray, index: int, copy: int, max_level: int, arrays_file: str) -> None:
    """An untuned manifest's arrays hold exactly the quantised weights (cimc.passes.quantize: level = clip(rint(W /
    scale), -L, L), recomputed here from the float32 matrix and scales of params.npz), so a tile moved to cells that
    hold other levels, or an edited arrays.npz, is caught before it computes wrong numbers."""
    expected = np.clip(np.rint(op.matrix.astype(np.float64) / op.weight_scales.astype(np.float64)[None, :]),
                       -max_level, max_level)
    bad = levels != expected
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        ti = next((i for i, t in enumerate(op.tiles) if t.row_start <= r < t.row_start + t.row_count
                   and t.col_start <= c < t.col_start + t.col_count), None)
        where = f"ops[{index}].tiles[{ti}].placements[{copy}]" if ti is not None else f"ops[{index}]"
        raise ManifestError(f"{arrays_file}: the levels that field '{where}' (op {op.name!r}) places on the arrays "
                            f"differ from its quantised weights: weight row {r}, column {c} reads level "
                            f"{int(levels[r, c])}, the weight says {int(expected[r, c])} (a tile moved, or "
                            "arrays.npz or params.npz edited); recompile the manifest")


# -- shapes --------------------------------------------------------------------------------------------------------
PROBE_ELEMENTS = 1 << 26      # values per sample per tensor; far above any model a crossbar chip holds


def probe_shapes(graph, where: str) -> None:
    """Follow one sample of zeros (a fixed-batch model: one batch) through the graph: every crossbar op must get an
    input its matrix and conv geometry fit, every digital op inputs it accepts, and the outputs the shapes the
    manifest declares. Digital ops run for real (cimc.digital, on zeros); crossbar ops only by shape. Skipped where
    a non-batch input dimension is unknown."""
    from cimc.batching import fixed_batch
    from cimc.digital import run_digital
    batch = fixed_batch([t.shape for t in graph.inputs]) or 1    # a fixed batch runs in chunks of exactly that
    if any(d is None for t in graph.inputs for d in t.shape[1:]) or \
            any(batch * math.prod(t.shape[1:]) > PROBE_ELEMENTS for t in graph.inputs):
        return          # unknown or huge inputs: the data check at run time (executor.check_feeds) decides
    env = {t.name: np.zeros((batch,) + tuple(t.shape[1:]), np.float32) for t in graph.inputs}
    for index, op in enumerate(graph.ops):
        at = f"{where}: field 'ops[{index}]' ({op.op_type} {op.name!r})"
        xs = [env[t] for t in op.inputs]
        if op.kind == "crossbar":
            env[op.outputs[0]] = _crossbar_output(op, xs[0], at)
            continue
        _check_padded_size(op, xs, at)
        try:
            with np.errstate(all="ignore"):
                out = np.asarray(run_digital(op.op_type, xs, op.attrs))
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
            shapes = ", ".join(str(list(x.shape)) for x in xs)
            raise ManifestError(f"{at}: cannot run on inputs of shape {shapes} (one batch): {exc}") from None
        if out.size > PROBE_ELEMENTS:
            raise ManifestError(f"{at}: makes a tensor of shape {list(out.shape)} from one batch")
        env[op.outputs[0]] = out
    for i, t in enumerate(graph.outputs):
        got = env[t.name].shape
        if len(got) != len(t.shape) or any(d is not None and d != g for d, g in zip(t.shape[1:], got[1:])):
            raise ManifestError(f"{where}: field 'outputs[{i}].shape' = {list(t.shape)}, but the ops make "
                                f"{list(got)} (batch {batch})")


def _check_padded_size(op, xs, at: str) -> None:
    """Pad and the pools pad their input first: refuse pads that would make a huge tensor before numpy tries."""
    pads = op.attrs.get("pads")
    if not xs or not isinstance(pads, list) or not all(_is_int(p) for p in pads):
        return
    shape = list(xs[0].shape)
    spatial = shape[2:] if op.op_type != "Pad" else shape
    if len(pads) == 2 * len(spatial) and math.prod(shape[:len(shape) - len(spatial)]) * math.prod(
            n + max(b, 0) + max(e, 0) for n, b, e in zip(spatial, pads[:len(spatial)], pads[len(spatial):])) \
            > PROBE_ELEMENTS:
        raise ManifestError(f"{at}: field 'attrs.pads' = {pads} pads its input {shape} to more than "
                            f"{PROBE_ELEMENTS} values per sample")


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
