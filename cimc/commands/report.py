"""`cimc report`: a self-contained HTML page about a compiled manifest (summary, layers, array map, cycles)."""
from __future__ import annotations


def add_parser(sub) -> None:
    sp = sub.add_parser("report", help="write a self-contained HTML report of a manifest",
                        description="Render one HTML file (inline CSS and SVG, nothing fetched from elsewhere) with "
                        "the manifest's summary and estimate, a per-layer table, a map of the physical arrays "
                        "coloured by layer, and the per-layer cycles before and after replication.")
    sp.add_argument("manifest", metavar="DIR", help="manifest directory written by `cimc compile`")
    sp.add_argument("-o", "--output", default="report.html", metavar="HTML",
                    help="HTML file to write (default report.html); its folder must exist")
    sp.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from cimc.html_report import ReportError, write_report
    from cimc.manifest import load
    out = Path(args.output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():          # before loading, so a typo costs nothing
        raise ReportError(f"-o {args.output}: the folder {parent} does not exist (create it first)")
    manifest = load(args.manifest)
    path = write_report(manifest, out)
    print(f"wrote {path} ({manifest.total_arrays} arrays, {len(manifest.graph.xbar_ops())} crossbar layers)")
    return 0
