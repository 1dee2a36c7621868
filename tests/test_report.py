"""`cimc report`: the self-contained HTML page (summary, layer table, array map, cycles chart) and its CLI."""
from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

import cimc
from cimc import html_report, zoo
from cimc.cli import main

CALIB = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def mcnn_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "mcnn"
    cimc.compile(zoo.mcnn(), "yao2020-mcnn", calibration=CALIB, replicate={"C1": 2}).save(path)
    return path


@pytest.fixture(scope="module")
def manifest(mcnn_dir):
    return cimc.load(mcnn_dir)


@pytest.fixture(scope="module")
def html(manifest):
    return html_report.render_report(manifest)


class _Collector(HTMLParser):
    """Checks that tags nest and close, and collects the attributes of every element by tag."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.elements = [], [], []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()


def _parse(html: str) -> _Collector:
    p = _Collector()
    p.feed(html)
    p.close()
    return p


def test_page_is_well_formed_and_self_contained(html):
    p = _parse(html)
    assert p.errors == [] and p.stack == []
    tags = [tag for tag, _ in p.elements]
    assert tags.count("svg") >= 2 and tags.count("table") == 1
    assert html.lstrip().startswith("<!DOCTYPE html>")
    # nothing fetched from elsewhere: no scripts, stylesheets, images or URLs; url() only for in-page patterns
    assert not {"script", "link", "img", "iframe", "object"} & set(tags)
    assert "http://" not in html and "https://" not in html and "@import" not in html
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))


def test_summary_and_estimate(html, manifest):
    src = manifest.provenance["source_model"]
    assert src["sha256"][:12] in html
    assert "yao2020-mcnn" in html and "128 × 16 cells" in html and "8 levels" in html and "8-bit, 4 column" in html
    assert "calibration samples" in html and ">16<" in html
    assert "pipelined throughput" in html and "inferences/s" in html
    # the mcnn target gives no driver/digital energy or area: say what is needed, never a silent zero
    assert "unknown (needs energy.driver_pj_per_slot" in html
    assert "unknown (needs energy.array_area_um2" in html


def test_layer_table_has_every_layer_with_estimate_cycles(html, manifest):
    p = _parse(html)
    rows = [a["data-layer"] for tag, a in p.elements if tag == "tr" and "data-layer" in a]
    names = [op.name for op in manifest.graph.xbar_ops()]
    assert rows == names
    from cimc.passes.estimate import estimate_graph
    est = estimate_graph(manifest.graph, manifest.target)
    ctx = html_report.report_context(manifest)
    assert [layer["cycles"] for layer in ctx["layers"]] == [layer["cycles"] for layer in est["layers"]]
    c1 = ctx["layers"][0]
    assert (c1["name"], c1["copies"], c1["cycles"]) == ("C1", 2, math.ceil(676 / 2) * 8)
    assert c1["bottleneck"] and c1["share_text"] == "100.0%"


def test_one_square_per_physical_array(html, manifest):
    p = _parse(html)
    squares = [a for tag, a in p.elements if tag == "rect" and "data-array" in a]
    assert sorted(int(a["data-array"]) for a in squares) == list(range(manifest.total_arrays))
    assert manifest.total_arrays == 8                       # C1 x 2 copies + C3 2 tiles + FC 4 tiles
    by_array = {int(a["data-array"]): a for a in squares}
    for op in manifest.graph.xbar_ops():
        for tile in op.tiles:
            for copy, placement in enumerate(tile.placements):
                a = by_array[placement.array]
                assert a["data-layer"] == op.name and int(a["data-copy"]) == copy
                rows, cols = tile.row_count, 2 * tile.col_count            # differential columns
                used = rows * cols / (manifest.target.array.rows * manifest.target.array.cols)
                assert float(a["fill-opacity"]) == pytest.approx(used, abs=1e-3)
    # the second copy of C1 is hatched; colours come from a fixed palette by layer index
    assert html.count('fill="url(#hatch)"') == 1
    assert by_array[0]["fill"] == html_report.layer_colour(0) and by_array[2]["fill"] == html_report.layer_colour(1)


def test_cycles_chart_before_and_after_replication(html, manifest):
    p = _parse(html)
    bars = [a for tag, a in p.elements if tag == "rect" and "data-bar" in a]
    names = [op.name for op in manifest.graph.xbar_ops()]
    assert [a["data-layer"] for a in bars if a["data-bar"] == "before"] == names
    assert [a["data-layer"] for a in bars if a["data-bar"] == "after"] == names
    height = {(a["data-layer"], a["data-bar"]): float(a["height"]) for a in bars}
    assert height["C1", "after"] < height["C1", "before"]          # 2 copies halve C1's cycles
    assert height["FC", "after"] == height["FC", "before"]
    chart = html_report.report_context(manifest)["chart"]
    assert chart["log"]                                             # 8 .. 5408 cycles
    assert "cycles per inference" in html and "crossbar layer, in execution order" in html


def test_large_models_aggregate_the_array_map(manifest, monkeypatch):
    monkeypatch.setattr(html_report, "MAX_SQUARES", 4)
    html = html_report.render_report(manifest)
    p = _parse(html)
    assert p.errors == [] and p.stack == []
    assert not [a for tag, a in p.elements if tag == "rect" and "data-array" in a]
    groups = [a for tag, a in p.elements if tag == "rect" and "data-group" in a]
    assert 0 < len(groups) <= 4
    assert "Aggregated view" in html


def test_names_are_escaped(manifest):
    op = manifest.graph.xbar_ops()[0]
    old = op.name
    op.name = 'C1<script>&"'
    try:
        html = html_report.render_report(manifest)
    finally:
        op.name = old
    assert "<script>" not in html and "C1&lt;script&gt;&amp;" in html


def test_cli_writes_the_report(mcnn_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(mcnn_dir), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8").lstrip().startswith("<!DOCTYPE html>")
    assert "wrote" in capsys.readouterr().out
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.html"]     # no temporary file left behind


def test_cli_errors_exit_2_and_write_nothing(mcnn_dir, tmp_path, capsys):
    not_manifest = tmp_path / "plain"
    not_manifest.mkdir()
    out = tmp_path / "report.html"
    assert main(["report", str(not_manifest), "-o", str(out)]) == 2
    assert "not a manifest directory" in capsys.readouterr().err
    assert not out.exists()
    missing = tmp_path / "no" / "such" / "report.html"
    assert main(["report", str(mcnn_dir), "-o", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_packed_arrays_show_every_tile(tmp_path):
    """--pack puts tiles of several layers on one array: the map names all of them and sums their cells."""
    import numpy as np
    import onnx

    import cimc
    from cimc import zoo
    from cimc.html_report import render_report
    onnx.save(zoo.mcnn(), tmp_path / "m.onnx")
    manifest = cimc.compile(tmp_path / "m.onnx", "yao2020-mcnn", pack=True,
                            calibration=np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    html = render_report(manifest)
    shared = [a for op in manifest.graph.xbar_ops() for t in op.tiles for p in t.placements for a in [p.array]]
    assert len(shared) > len(set(shared))                          # some arrays hold several tiles
    assert html.count("shared, time-multiplexed, by") == sum(1 for a in set(shared) if shared.count(a) > 1)
