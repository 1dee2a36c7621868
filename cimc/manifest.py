"""The deployment manifest: a directory that holds everything the executor (or a chip runtime) needs.

    manifest.json   schema-versioned description (cimc/schema/manifest.schema.json): target, ops in execution
                    order with quantisation, tiles and placements, provenance, summary
    arrays.npz      `levels`: uint8 [arrays, rows, cols], the device level programmed into every cell (cimc.layout)
    params.npz      float32 arrays named in manifest.json: per-op float matrix (for the float backend; K x N, or a
                    grouped conv's diagonal blocks [groups, K/groups, N/groups], cimc.ir; a K x N one also loads),
                    weight scales, bias
    digital.onnx    the whole graph as ONNX: every digital op the node it was in the source model (attributes,
                    constants as initializers, the model's opsets), every crossbar op a `cimc.Crossbar` placeholder;
                    onnxruntime runs the digital ops from it (cimc.onnx_segments)

Saving follows cimc.output_dir (replaces only a folder cimc wrote; atomic swap; a lock against concurrent
writers); loading validates and names the bad field.
"""
from __future__ import annotations

import datetime
import json
import re
import uuid
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from cimc.version import __version__
from cimc import output_dir
from cimc.errors import ManifestError
from cimc.ir import ActQuant, ConvGeometry, DigitalOp, Graph, Placement, TensorInfo, Tile, XbarOp, compact
from cimc.layer_table import layer_table
from cimc.layout import program_arrays, read_levels
from cimc.manifest_checks import (ArrayOccupancy, check_average, check_blocks, check_conv_geometry,
                                  check_float_array, check_group_blocks, check_levels_match, check_off_block_cells, check_tile_cover,
                                  parse_json, probe_shapes, read_digital_model)
from cimc.onnx_segments import graph_model, reads
from cimc.passes.replicate import replication_document
from cimc.targets.spec import Target

SCHEMA_VERSION = 2      # 2: digital ops in digital.onnx (1 held them as JSON attributes)
_FILES = ("manifest.json", "arrays.npz", "params.npz", "digital.onnx")


def schema() -> dict:
    return json.loads((resources.files("cimc") / "schema" / "manifest.schema.json").read_text())


class Manifest:
    def __init__(self, graph: Graph, target: Target, arrays: np.ndarray, provenance: dict,
                 replication: dict | None = None, estimates: dict | None = None):
        self.graph, self.target, self.arrays, self.provenance = graph, target, arrays, provenance
        self.replication, self.estimates = replication, estimates
        # hybrid training: {"arrays", "programmed_us", "target_us"} of the tuned arrays (conductances.npz)
        self.conductances: dict[str, np.ndarray] | None = None
        self.compile_seconds: float | None = None
        self.pass_seconds: dict[str, float] = {}
        self.path: Path | None = None

    @classmethod
    def build(cls, graph, target, model_info, calibration: dict | None, arrays=None) -> "Manifest":
        """`arrays`: the graph's programmed levels where the caller has them (program_arrays), else made here."""
        provenance = {
            "source_model": {"path": None if model_info.path is None else str(Path(model_info.path).resolve()),
                             "sha256": model_info.sha256, "opset": model_info.opset,
                             "ir_version": model_info.ir_version, "producer": model_info.producer},
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "calibration": calibration,
            "seeds": {},
        }
        return cls(graph, target, program_arrays(graph, target) if arrays is None else arrays, provenance)

    @property
    def total_arrays(self) -> int:
        return int(self.arrays.shape[0])

    def summary(self) -> dict:
        return layer_table(self.graph, self.target)

    # -- save -------------------------------------------------------------------------------------------
    def to_json(self) -> tuple[dict, dict[str, np.ndarray]]:
        params: dict[str, np.ndarray] = {}
        index_of = {op.name: i for i, op in enumerate(self.graph.ops)}
        ops = [_xbar_to_json(op, i, params, self.target, index_of) if isinstance(op, XbarOp) else
               _digital_to_json(op) for i, op in enumerate(self.graph.ops)]
        table = self.summary()
        doc = {
            "format": "cimc-manifest", "schema_version": SCHEMA_VERSION, "cimc_version": __version__,
            "provenance": self.provenance, "target": self.target.to_dict(),
            "inputs": [_tensor_json(t) for t in self.graph.inputs],
            "outputs": [_tensor_json(t) for t in self.graph.outputs],
            "ops": ops,
            "arrays": {"count": self.total_arrays, "rows": self.target.array.rows, "cols": self.target.array.cols,
                       "file": "arrays.npz"},
            "params_file": "params.npz",
            "digital_file": "digital.onnx",
            "summary": {"total_arrays": table["total_arrays"], "layers": table["layers"]},
            "replication": self.replication, "estimates": self.estimates,
        }
        return doc, params

    def save(self, directory) -> Path:
        """Write the manifest folder by the rules of cimc.output_dir: only a new, empty or cimc-written folder
        holding nothing but cimc's files is replaced (otherwise ManifestError naming the foreign files); a symlink
        is written through to its target and kept; the swap is atomic, so DIR always holds the old complete
        manifest or the new one; concurrent writers serialise on a lock. Returns `directory`."""
        doc, params = self.to_json()

        def write(tmp: Path) -> None:
            (tmp / "manifest.json").write_text(_json_text(doc) + "\n")
            _write_npz(tmp / "arrays.npz", {"levels": self.arrays}, compresslevel=1)  # mostly zeros: shrinks well
            _write_npz(tmp / "params.npz", params, compresslevel=None)             # float32: barely compresses
            (tmp / "digital.onnx").write_bytes(graph_model(self.graph).SerializeToString())
            if self.conductances is not None:
                _write_npz(tmp / "conductances.npz", self.conductances, compresslevel=1)
            if self.replication:
                (tmp / "replication.json").write_text(json.dumps(replication_document(self.replication), indent=1)
                                                      + "\n")

        directory = output_dir.replace_dir(directory, write)
        self.path = directory
        return directory


def load(directory) -> Manifest:
    directory = Path(directory)
    where = str(directory / "manifest.json")
    if not (directory / "manifest.json").is_file():
        raise ManifestError(f"{directory}: not a manifest directory (no manifest.json); create one with "
                            "`cimc compile`")
    try:
        doc = parse_json((directory / "manifest.json").read_text(), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and doc.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ManifestError(f"{where}: schema_version {doc.get('schema_version')!r} is not supported by cimc "
                            f"{__version__} (expects {SCHEMA_VERSION}); compile the model again with this cimc")
    _validate_schema(doc, where)
    arrays_file = _read_npz(directory / "arrays.npz")
    params = _read_npz(directory / "params.npz")
    if "levels" not in arrays_file:
        raise ManifestError(f"{directory / 'arrays.npz'}: missing array 'levels'")
    arrays = arrays_file["levels"]
    meta = doc["arrays"]
    if arrays.dtype != np.uint8 or arrays.shape != (meta["count"], meta["rows"], meta["cols"]):
        raise ManifestError(f"{directory / 'arrays.npz'}: 'levels' is {arrays.dtype} {list(arrays.shape)}, "
                            f"manifest.json field 'arrays' says uint8 {[meta['count'], meta['rows'], meta['cols']]}")
    try:
        target = Target.from_dict(doc["target"], f"{where}: field 'target'")
    except Exception as exc:
        raise ManifestError(str(exc)) from None
    if (target.array.rows, target.array.cols) != (meta["rows"], meta["cols"]):
        raise ManifestError(f"{where}: field 'arrays' geometry {meta['rows']}x{meta['cols']} differs from the "
                            f"target's {target.array.rows}x{target.array.cols}")
    if arrays.max(initial=0) > target.device.max_level:
        index = [int(i) for i in np.argwhere(arrays > target.device.max_level)[0]]
        raise ManifestError(f"{directory / 'arrays.npz'}: 'levels'{index} = {arrays[tuple(index)]} exceeds the "
                            f"target's largest device level {target.device.max_level} (device.levels = "
                            f"{target.device.levels})")
    occupancy = ArrayOccupancy(meta["count"], target)
    digital = read_digital_model(directory / "digital.onnx", doc)
    owners: dict[str, tuple[int, XbarOp]] = {}     # crossbar ops that own arrays, by name, as they are read
    ops = []
    for i, o in enumerate(doc["ops"]):
        ops.append(_op_from_json(o, i, params, target, occupancy, where, digital.nodes, owners))
        if isinstance(ops[-1], XbarOp) and ops[-1].weights_of is None:
            owners[ops[-1].name] = (i, ops[-1])
    graph = Graph([_tensor_from_json(t) for t in doc["inputs"]], [_tensor_from_json(t) for t in doc["outputs"]], ops,
                  constants=digital.constants, opsets=digital.opsets)
    _check_dataflow(graph, where)
    probe_shapes(graph, where)
    tuned = bool(doc["provenance"].get("tuning"))       # tuning moves levels away from the quantised weights
    for index, op in enumerate(graph.ops):
        if isinstance(op, XbarOp) and op.weights_of is None:
            op.levels = read_levels(op, arrays, target)     # int16: up to 256-level devices
            for copy in range(op.replicas if not tuned else 0):
                copy_levels = op.levels if copy == 0 else read_levels(op, arrays, target, copy)
                check_off_block_cells(op, arrays, target, index, copy, str(directory / "arrays.npz"))
                check_levels_match(op, copy_levels, index, copy, target.max_weight_level,
                                   str(directory / "arrays.npz"))
    graph.share_weights()            # a shared-weight reader's levels are its owner's, read from the same cells
    m = Manifest(graph, target, arrays, doc["provenance"], doc.get("replication"), doc.get("estimates"))
    m.conductances = _read_conductances(directory, doc, arrays)
    m.path = directory
    return m


# -- helpers ---------------------------------------------------------------------------------------------------
def _json_text(doc: dict) -> str:
    """manifest.json indented, except each op's tile list, one line per op: Python's indenting encoder is pure
    Python (0.6 s for efficientnet_b0's 8,000 tiles), the compact one C. Same JSON values either way."""
    mark = f"cimc-tiles-{uuid.uuid4().hex}-"       # a placeholder no name in the document can equal
    tiles, ops = [], []
    for op in doc["ops"]:
        if op.get("tiles"):
            tiles.append(json.dumps(op["tiles"]))
            op = {**op, "tiles": f"{mark}{len(tiles) - 1}"}
        ops.append(op)
    text = json.dumps({**doc, "ops": ops}, indent=1)
    return re.sub(f'"{mark}(\\d+)"', lambda m: tiles[int(m.group(1))], text)


def _write_npz(path: Path, arrays: dict[str, np.ndarray], compresslevel: int | None) -> None:
    """np.savez with a choice of zlib level (np.savez_compressed's default level 6 takes seconds per 100 MB)."""
    mode = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=mode, compresslevel=compresslevel, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _validate_schema(doc, where):
    import jsonschema                 # only loading validates: compile does not pay for the import
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".") or "(top)"
        if e.context:  # oneOf: report the branch that matched best
            e = min(e.context, key=lambda c: len(c.absolute_path) * -1)
            field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
        raise ManifestError(f"{where}: field '{field}': {e.message}")


def _read_conductances(directory: Path, doc: dict, arrays: np.ndarray) -> dict | None:
    """conductances.npz of a tuned manifest (absent otherwise), checked against arrays.npz."""
    path = directory / "conductances.npz"
    tuned = doc["provenance"].get("tuning")
    if not path.exists():
        if tuned:
            raise ManifestError(f"{directory}: provenance.tuning is set but conductances.npz is missing")
        return None
    c = _read_npz(path)
    for key in ("arrays", "programmed_us", "target_us"):
        if key not in c:
            raise ManifestError(f"{path}: missing array {key!r}")
    ids = c["arrays"]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ManifestError(f"{path}: 'arrays' must be a 1-D integer array of array ids, got {ids.dtype} "
                            f"{list(ids.shape)}")
    shape = (len(ids),) + arrays.shape[1:]
    for key in ("programmed_us", "target_us"):
        g = c[key]
        if g.shape != shape or not np.issubdtype(g.dtype, np.floating):
            raise ManifestError(f"{path}: {key!r} is {g.dtype} {list(g.shape)}, must be float {list(shape)} "
                                "(arrays x rows x cols)")
        bad = ~(np.isfinite(g) & (g >= 0))
        if bad.any():
            index = [int(i) for i in np.argwhere(bad)[0]]
            raise ManifestError(f"{path}: {key!r}{index} = {g[tuple(index)]!r}; conductances must be finite and "
                                ">= 0 uS")
    if len(ids) and (ids.min() < 0 or ids.max() >= len(arrays)):
        raise ManifestError(f"{path}: 'arrays' names an array outside 0..{len(arrays) - 1}")
    if len(np.unique(ids)) != len(ids):
        raise ManifestError(f"{path}: 'arrays' names an array twice")
    return c


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ManifestError(f"{path}: missing (a manifest directory holds {', '.join(_FILES)})")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None


def _tensor_json(t: TensorInfo) -> dict:
    return {"name": t.name, "shape": [None if d is None else int(d) for d in t.shape], "dtype": t.dtype}


def _tensor_from_json(d: dict) -> TensorInfo:
    return TensorInfo(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))


def _put(params: dict, key: str, value: np.ndarray) -> str:
    """Store `value` in params.npz under `key`: the path of the manifest.json field that names it (`ops[3].bias`),
    not the op's name, which is the ONNX node's and may hold anything (`/`, `..`, a NUL) that a zip member name
    must not."""
    params[key] = np.asarray(value)
    return key


def _xbar_to_json(op: XbarOp, index: int, params: dict, target: Target, index_of: dict) -> dict:
    at = f"ops[{index}]"
    if op.weights_of is not None:   # a shared-weight reader names its owner's matrix and scales; no tiles of its own
        owner = f"ops[{index_of[op.weights_of]}]"
        return {"name": op.name, "kind": "crossbar", "op_type": op.op_type, "inputs": op.inputs,
                "outputs": op.outputs, "source_nodes": op.source_nodes, "rows": op.rows, "cols": op.cols,
                "positions": int(op.positions), "conv": None, "weights_of": op.weights_of,
                "input_quant": {"scale": op.input_quant.scale, "signed": op.input_quant.signed,
                                "bits": op.input_quant.bits},
                "weights": {"max_level": target.max_weight_level, "granularity": target.quant.weights,
                            "scales": f"{owner}.weights.scales", "float_matrix": f"{owner}.weights.float_matrix"},
                "bias": None if op.bias is None else _put(params, f"{at}.bias", op.bias.astype(np.float32)),
                "replicas": op.replicas, "adc_full_scale_ua": op.adc_full_scale_ua, "tiles": [],
                **({"average": op.average} if op.average > 1 else {}), **_slice_scales_json(op)}
    return {
        "name": op.name, "kind": "crossbar", "op_type": op.op_type, "inputs": op.inputs, "outputs": op.outputs,
        "source_nodes": op.source_nodes, "rows": op.rows, "cols": op.cols, "positions": int(op.positions),
        "conv": None if op.conv is None else _conv_to_json(op.conv),
        "input_quant": {"scale": op.input_quant.scale, "signed": op.input_quant.signed, "bits": op.input_quant.bits},
        "weights": {"max_level": target.max_weight_level, "granularity": target.quant.weights,
                    "scales": _put(params, f"{at}.weights.scales", op.weight_scales.astype(np.float32)),
                    "float_matrix": _put(params, f"{at}.weights.float_matrix", op.matrix.astype(np.float32))},
        "bias": None if op.bias is None else _put(params, f"{at}.bias", op.bias.astype(np.float32)),
        "replicas": op.replicas,
        "adc_full_scale_ua": op.adc_full_scale_ua, **_slice_scales_json(op),
        "tiles": [{"row_start": t.row_start, "row_count": t.row_count, "col_start": t.col_start,
                   "col_count": t.col_count,
                   "placements": [_placement_to_json(p, target) for p in t.placements]}
                  for t in op.tiles],
        **({"average": op.average} if op.average > 1 else {}),     # absent: every copy pipelines (as before)
        **({"blocks": op.groups} if op.conv is None and op.groups > 1 else {}),   # per-head weights (cimc.ir)
    }


def _slice_scales_json(op: XbarOp) -> dict:
    """The op's per-slice full scales, where recorded (bit-sliced weights): absent otherwise, so that other
    manifests read as before they existed."""
    scales = getattr(op, "adc_slice_full_scale_ua", None)
    return {} if scales is None else {"adc_slice_full_scale_ua": [None if v is None else float(v) for v in scales]}


def _placement_to_json(p, target) -> dict:
    d = {"array": p.array, "row_offset": p.row_offset, "col_offset": p.col_offset,
         "pe": p.array // target.chip.arrays_per_pe, "chip": p.array // target.chip.arrays_per_chip}
    if p.row_order is not None:     # defect-aware placement only: manifests without it read as before
        d["row_order"] = [int(r) for r in p.row_order]
    return d


def _conv_to_json(g) -> dict:
    d = {"kernel": list(g.kernel), "strides": list(g.strides), "pads": list(g.pads), "dilations": list(g.dilations),
         "groups": g.groups, "in_channels": g.in_channels, "out_channels": g.out_channels,
         "spatial_rank": g.spatial_rank}
    if g.transposed:    # written only for a ConvTranspose: a Conv's entry is what it was before they existed
        d.update(transposed=True, output_padding=list(g.output_padding))
    return d


def _digital_to_json(op: DigitalOp) -> dict:
    """The op's summary; its attributes and constants are in digital.onnx (the node of the same index)."""
    row = {"name": op.name, "kind": "digital", "op_type": op.op_type, "inputs": op.inputs, "outputs": op.outputs,
           "source_nodes": op.source_nodes}
    if op.domain:
        row["domain"] = op.domain
    return row


def _param(params, key, where, field, shape=None):
    if key not in params:
        raise ManifestError(f"{where}: field '{field}' names {key!r}, which params.npz does not hold")
    value = params[key]
    if shape is not None and value.shape != tuple(shape):
        raise ManifestError(f"{where}: field '{field}': params.npz[{key!r}] has shape {list(value.shape)}, "
                            f"expected {list(shape)}")
    return value


def _op_from_json(d: dict, index: int, params, target: Target, occupancy: ArrayOccupancy, where: str, nodes,
                  owners: dict):
    at = f"ops[{index}]"
    n_arrays = occupancy.n_arrays
    if d["kind"] == "digital":      # digital.onnx's node `index` (read_digital_model checked they agree)
        return DigitalOp(d["name"], d["op_type"], list(d["inputs"]), list(d["outputs"]),
                         list(nodes[index].attribute), d.get("domain", ""), d.get("source_nodes", []))
    rows, cols = d["rows"], d["cols"]
    check_conv_geometry(d, at, where)
    blocks = check_blocks(d, at, where)
    _check_quant(d, at, target, where)
    slice_scales = _slice_full_scales(d, at, target, where)
    if d.get("weights_of") is not None:
        op = _reader_from_json(d, at, params, owners, where)
        op.adc_slice_full_scale_ua = slice_scales
        return op
    conv = None if d["conv"] is None else ConvGeometry(
        tuple(d["conv"]["kernel"]), tuple(d["conv"]["strides"]), tuple(d["conv"]["pads"]),
        tuple(d["conv"]["dilations"]), d["conv"]["groups"], d["conv"]["in_channels"], d["conv"]["out_channels"],
        d["conv"]["spatial_rank"], d["conv"].get("transposed", False), tuple(d["conv"].get("output_padding", ())))
    tiles = []
    for ti, t in enumerate(d["tiles"]):
        if t["row_start"] + t["row_count"] > rows or t["col_start"] + t["col_count"] > cols:
            raise ManifestError(f"{where}: field '{at}.tiles[{ti}]' lies outside the {rows}x{cols} matrix")
        if len(t["placements"]) != d["replicas"]:
            raise ManifestError(f"{where}: field '{at}.tiles[{ti}].placements' has {len(t['placements'])} entries "
                                f"for {d['replicas']} replicas")
        tile = Tile(t["row_start"], t["row_count"], t["col_start"], t["col_count"],
                    [Placement(p["array"], p["row_offset"], p["col_offset"], p.get("row_order"))
                     for p in t["placements"]])
        for pi, p in enumerate(t["placements"]):
            field = f"{at}.tiles[{ti}].placements[{pi}]"
            if p["array"] >= n_arrays:
                raise ManifestError(f"{where}: field '{field}.array' = {p['array']} but arrays.npz holds {n_arrays} "
                                    "arrays")
            occupancy.place(t, p, field, where)
        tiles.append(tile)
    if not d["tiles"]:
        raise ManifestError(f"{where}: field '{at}.tiles' is empty; a crossbar op without 'weights_of' needs tiles "
                            "that cover its matrix")
    check_tile_cover(d, at, where)
    q = d["input_quant"]
    groups = conv.groups if conv is not None else blocks
    matrix = _param(params, d["weights"]["float_matrix"], where, f"{at}.weights.float_matrix",
                    None if groups > 1 else (rows, cols))
    if groups > 1 and matrix.shape != (groups, rows // groups, cols // groups):   # compact blocks (cimc.ir) ...
        matrix = _param(params, d["weights"]["float_matrix"], where, f"{at}.weights.float_matrix", (rows, cols))
        check_group_blocks(matrix, d, at, where)        # ... or, as manifests before them, K x N block-diagonal
        matrix = compact(matrix, groups)
    check_float_array(matrix, where, f"{at}.weights.float_matrix", d["weights"]["float_matrix"])
    scales = _param(params, d["weights"]["scales"], where, f"{at}.weights.scales", (cols,))
    check_float_array(scales, where, f"{at}.weights.scales", d["weights"]["scales"], positive=True)
    channels = cols if conv is None else conv.out_channels       # a ConvTranspose's bias is per output channel
    bias = None if d["bias"] is None else _param(params, d["bias"], where, f"{at}.bias", (channels,))
    if bias is not None:
        check_float_array(bias, where, f"{at}.bias", d["bias"])
    op = XbarOp(d["name"], d["op_type"], d["inputs"], d["outputs"], matrix, bias,
                conv, d.get("source_nodes", []), ActQuant(float(q["scale"]), q["signed"], q["bits"]), None,
                scales, tiles, d["replicas"], d["positions"], d.get("adc_full_scale_ua"))
    op.average = check_average(d, at, where)
    op.adc_slice_full_scale_ua = slice_scales
    return op


def _slice_full_scales(d: dict, at: str, target: Target, where: str) -> list | None:
    """A bit-sliced op's calibrated full scale per slice (absent in manifests written before they were recorded,
    and for other encodings): one entry per slice of the target's weights."""
    scales = d.get("adc_slice_full_scale_ua")
    if scales is not None and (target.weights.encoding != "bit-sliced" or len(scales) != target.weights.slices):
        raise ManifestError(f"{where}: field '{at}.adc_slice_full_scale_ua' holds {len(scales)} full scale(s); the "
                            f"target's weights (encoding {target.weights.encoding!r}, {target.weights.slices} "
                            "slice(s)) need one per slice of a bit-sliced encoding, or none")
    return None if scales is None else list(scales)


def _reader_from_json(d: dict, at: str, params, owners: dict, where: str) -> XbarOp:
    """A shared-weight reader: it must name an earlier crossbar op that owns arrays, have its shape and copies, no
    tiles, and name the owner's matrix and scales; it then shares them (and the owner's levels, share_weights)."""
    name = d["weights_of"]
    if name not in owners:
        raise ManifestError(f"{where}: field '{at}.weights_of' = {name!r} names no earlier crossbar op that holds "
                            "arrays (the owner comes first, and is not itself a reader)")
    index, owner = owners[name]
    oat = f"ops[{index}]"
    for field, got, want in (("rows", d["rows"], owner.rows), ("cols", d["cols"], owner.cols),
                             ("replicas", d["replicas"], owner.replicas), ("tiles", d["tiles"], []),
                             ("conv", d["conv"], None),
                             ("weights.float_matrix", d["weights"]["float_matrix"], f"{oat}.weights.float_matrix"),
                             ("weights.scales", d["weights"]["scales"], f"{oat}.weights.scales")):
        if got != want:
            raise ManifestError(f"{where}: field '{at}.{field}' = {got!r}; a reader of {name!r}'s arrays "
                                f"('{oat}') needs {want!r}")
    bias = None if d["bias"] is None else _param(params, d["bias"], where, f"{at}.bias", (owner.cols,))
    if bias is not None:
        check_float_array(bias, where, f"{at}.bias", d["bias"])
    q = d["input_quant"]
    if d.get("average", 1) != owner.average:
        raise ManifestError(f"{where}: field '{at}.average' = {d.get('average', 1)!r}; a reader of {name!r}'s arrays "
                            f"('{oat}') needs {owner.average!r}")
    return XbarOp(d["name"], d["op_type"], d["inputs"], d["outputs"], owner.matrix, bias, None,
                  d.get("source_nodes", []), ActQuant(float(q["scale"]), q["signed"], q["bits"]), None,
                  owner.weight_scales, [], owner.replicas, d["positions"], d.get("adc_full_scale_ua"), name,
                  owner.average)


def _check_quant(d: dict, at: str, target: Target, where: str) -> None:
    """The op's quantisers were made for the manifest's target: a mismatch would silently change the arithmetic."""
    for field, value, expected in ((f"{at}.input_quant.bits", d["input_quant"]["bits"], target.input.bits),
                                   (f"{at}.weights.max_level", d["weights"]["max_level"], target.max_weight_level),
                                   (f"{at}.weights.granularity", d["weights"]["granularity"], target.quant.weights)):
        if value != expected:
            raise ManifestError(f"{where}: field '{field}' = {value!r}, but the manifest's target says {expected!r}")


def _check_dataflow(graph: Graph, where: str):
    known = {t.name for t in graph.inputs} | set(graph.constants)
    names = set()
    for i, op in enumerate(graph.ops):
        if op.name in names:
            raise ManifestError(f"{where}: field 'ops[{i}].name': duplicate op name {op.name!r}")
        names.add(op.name)
        for t in reads(op):
            if t not in known:
                raise ManifestError(f"{where}: field 'ops[{i}].inputs': tensor {t!r} of op {op.name!r} is neither a "
                                    "model input nor produced by an earlier op")
        for t in filter(None, op.outputs):
            if t in known:      # a second writer would silently replace the tensor for the ops after it
                raise ManifestError(f"{where}: field 'ops[{i}].outputs': tensor {t!r} of op {op.name!r} is already "
                                    "a model input or the output of an earlier op")
        known.update(op.outputs)
    for t in graph.outputs:
        if t.name not in known:
            raise ManifestError(f"{where}: field 'outputs': {t.name!r} is produced by no op")
