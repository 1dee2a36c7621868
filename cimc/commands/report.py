"""`cimc report`: a self-contained HTML page about a compiled manifest (summary, layers, array map, cycles, and the
run/tune results given to it)."""
from __future__ import annotations


def add_parser(sub) -> None:
    sp = sub.add_parser("report", help="write a self-contained HTML report of a manifest",
                        description="Render one HTML file (inline CSS and SVG, nothing fetched from elsewhere) with "
                        "the manifest's summary and estimate, a per-layer table, a map of the physical arrays "
                        "coloured by layer, the per-layer cycles before and after replication, a tuned manifest's "
                        "hybrid-training record, and any run/tune results given with --results.")
    sp.add_argument("manifest", metavar="DIR", help="manifest directory written by `cimc compile`")
    sp.add_argument("-o", "--output", default="report.html", metavar="HTML",
                    help="HTML file to write (default report.html); its folder must exist")
    sp.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                    help="override one of the target's cost numbers for the estimate, as `cimc estimate --set`, "
                         "e.g. --set energy.driver_pj_per_slot=22.8 (repeatable)")
    sp.add_argument("--results", action="append", metavar="JSON",
                    help="a JSON file printed by `cimc run --json` or `cimc tune --json` (e.g. cimc run DIR ... "
                         "--json > run.json): shown in a results section (repeatable)")
    sp.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from cimc.html_report import ReportError, write_report
    from cimc.manifest import load
    from cimc.results_view import load_results
    out = Path(args.output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():          # before loading, so a typo costs nothing
        raise ReportError(f"-o {args.output}: the folder {parent} does not exist (create it first)")
    results = load_results(args.results)
    manifest = load(args.manifest)
    target = _target(manifest, args.set)
    path = write_report(manifest, out, target, results)
    print(f"wrote {path} ({manifest.total_arrays} arrays, {len(manifest.graph.xbar_ops())} crossbar layers"
          + (f", {len(results)} result file(s)" if results else "") + ")")
    return 0


def _target(manifest, overrides):
    """The manifest's target with --set applied, by `cimc estimate --set`'s rule: only cost numbers may change."""
    from cimc.commands.estimate import _MANIFEST_OVERRIDABLE
    from cimc.errors import ConfigError
    from cimc.targets.registry import load_target
    if not overrides:
        return manifest.target
    fixed = [item for item in overrides if not item.strip().startswith(_MANIFEST_OVERRIDABLE)]
    if fixed:
        raise ConfigError(f"--set {fixed[0]!r}: a manifest is compiled for its target's geometry; with a manifest "
                          f"only {', '.join(_MANIFEST_OVERRIDABLE)} numbers can be changed (recompile for others)")
    return load_target(manifest.target, overrides)
