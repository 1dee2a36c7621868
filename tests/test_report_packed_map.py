"""The report's array map draws every tile copy on its array, packed (--pack: several tiles per array) or not; copies
count from 0 as `cimc run --copy K` counts; the layer table lists a layer's array ids exactly."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings, strategies as st

import cimc
from cimc import html_report


class _Page(HTMLParser):
    """Attributes and <title> text of every SVG rect, and the cell texts of every <tr data-layer> row."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rects, self.rows = [], {}
        self._rect = self._row = self._cell = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "rect":
            self._rect = dict(attrs, title="")
            self.rects.append(self._rect)
        elif tag == "title" and self._rect is not None:
            self._in_title = True
        elif tag == "tr" and "data-layer" in attrs:
            self._row = self.rows.setdefault(attrs["data-layer"], [])
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        if tag == "rect":
            self.rects.append(dict(attrs, title=""))

    def handle_endtag(self, tag):
        if tag == "rect":
            self._rect = None
        elif tag == "title":
            self._in_title = False
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._in_title and self._rect is not None:
            self._rect["title"] += data
        if self._cell is not None:
            self._cell.append(data)


def _page(manifest) -> _Page:
    p = _Page()
    p.feed(html_report.render_report(manifest))
    return p


def _expected(manifest) -> list[tuple]:
    """(array, layer, copy, tile) of every tile copy, from the manifest itself."""
    return sorted((p.array, op.name, copy, ti) for op in manifest.graph.xbar_ops()
                  for ti, tile in enumerate(op.tiles) for copy, p in enumerate(tile.placements))


def _drawn(page: _Page) -> list[tuple]:
    """(array, layer, copy, tile) of every rect that draws one tile copy (a whole square, or a stripe of one)."""
    return sorted((int(r.get("data-array", r.get("data-stripe-of"))), r["data-layer"], int(r["data-copy"]),
                   int(r["data-tile"])) for r in page.rects if "data-tile" in r)


def _expand(text: str) -> list[int]:
    """'0, 2–3' -> [0, 2, 3]: the ids a range list names."""
    ids = []
    for run in text.split(", "):
        lo, _, hi = run.partition("–")
        ids += range(int(lo), int(hi or lo) + 1)
    return ids


@pytest.fixture(scope="module")
def packed(mcnn_dir):
    return cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz", pack=True)


@pytest.fixture(scope="module")
def replicated(mcnn_dir):
    return cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz",
                        replicate={"C1": 2}, optimize=False)


@pytest.fixture(params=["packed", "replicated"])
def manifest(request):
    return request.getfixturevalue(request.param)


def test_packed_manifest_shares_arrays(packed):
    arrays = [a for a, *_ in _expected(packed)]
    assert len(arrays) > len(set(arrays))
    assert packed.replication["copies"]["C1"] > 2          # more copies than arrays of their own


def test_every_tile_copy_is_drawn_once_on_its_array(manifest):
    assert _drawn(_page(manifest)) == _expected(manifest)


def test_shared_array_stripes_split_the_square(packed):
    page = _page(packed)
    squares = {int(r["data-array"]): r for r in page.rects if "data-array" in r}
    assert sorted(squares) == list(range(packed.total_arrays))
    stripes: dict[int, list] = {}
    for r in page.rects:
        if "data-stripe-of" in r:
            stripes.setdefault(int(r["data-stripe-of"]), []).append(r)
    sharing = {a for a in squares if [e[0] for e in _expected(packed)].count(a) > 1}
    assert set(stripes) == sharing and sharing
    for a, parts in stripes.items():
        sq = squares[a]
        assert sum(float(p["width"]) for p in parts) == pytest.approx(float(sq["width"]), abs=0.05)
        assert {p["data-layer"] for p in parts} <= {op.name for op in packed.graph.xbar_ops()}
        assert all(p["fill"] == html_report.layer_colour([op.name for op in packed.graph.xbar_ops()]
                                                         .index(p["data-layer"])) for p in parts)


def test_tooltips_count_copies_from_0(manifest):
    page = _page(manifest)
    copies = {op.name: op.replicas for op in manifest.graph.xbar_ops()}
    tiles = [r for r in page.rects if "data-tile" in r]
    assert any(int(r["data-copy"]) > 0 for r in tiles)
    for r in tiles:
        k, n = int(r["data-copy"]), copies[r["data-layer"]]
        assert f"copy {k} (copies 0–{n - 1})" in r["title"], r["title"]
    for r in page.rects:
        for k in re.findall(r"copy (\d+)", r["title"]):
            assert int(k) < max(copies.values())                # never "copy 2 of 2"


def test_square_labels_are_the_0_based_copy(replicated):
    html = html_report.render_report(replicated)
    labels = re.findall(r'font-weight="600" text-anchor="middle"[^>]*>(\d+)</text>', html)
    assert sorted(labels) == ["0", "1"]                     # C1's two copies


def test_layer_table_lists_array_ids_exactly(manifest):
    page = _page(manifest)
    header = ["layer", "op", "rows × cols", "tiles", "copies", "arrays", "array ids"]
    for op in manifest.graph.xbar_ops():
        cell = page.rows[op.name][header.index("array ids")]
        ids = sorted({p.array for t in op.tiles for p in t.placements})
        assert _expand(cell) == ids, (op.name, cell)
        assert cell == html_report.id_ranges(ids)


@pytest.mark.parametrize("ids, text", [([0, 2, 3], "0, 2–3"), ([5], "5"), ([], "–"), ([3, 1, 2], "1–3"),
                                       ([0, 1, 4, 5, 9], "0–1, 4–5, 9"), ([7, 7, 8], "7–8"), ([0, 2], "0, 2")])
def test_id_ranges(ids, text):
    assert html_report.id_ranges(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.sets(st.integers(0, 200), min_size=1, max_size=40))
def test_id_ranges_names_exactly_the_ids_in_maximal_runs(ids):
    text = html_report.id_ranges(ids)
    assert _expand(text) == sorted(ids)
    runs = [_expand(r) for r in text.split(", ")]
    assert all(b[0] > a[-1] + 1 for a, b in zip(runs, runs[1:]))     # no two runs could merge
