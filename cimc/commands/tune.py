"""`cimc tune`: hybrid training — retrain the last FC layer in situ on one chip instance, write a new manifest."""
from __future__ import annotations

from cimc.commands.common import emit
from cimc.commands.run import add_chip_options, crossbar_options


def add_parser(sub) -> None:
    sp = sub.add_parser("tune", help="hybrid training: retrain the last FC layer in situ on a chip instance",
                        description="Program the manifest onto chip instance --seed (the same device options as "
                        "`cimc run --backend crossbar`), run the network on it, and retrain the last fully connected "
                        "layer in situ with thresholded conductance updates (Yao et al. 2020). Writes a new manifest "
                        "holding the conductances programmed on that chip: `cimc run OUT --backend crossbar --seed S` "
                        "with the same device options reproduces the tuned chip exactly.")
    sp.add_argument("manifest", help="manifest directory written by `cimc compile`")
    sp.add_argument("--data", required=True, metavar="NPZ", help="tuning data: npz with 'x' and labels 'y'")
    sp.add_argument("-o", "--output", required=True, metavar="DIR",
                    help="tuned manifest directory to write (the same rules as compile -o; it may be the input "
                    "manifest, which is then replaced by the tuned one)")
    sp.add_argument("--epochs", type=int, default=1)
    sp.add_argument("--batch", type=int, default=100, help="mini-batch size (default 100, as in the paper)")
    sp.add_argument("--lr", type=float, default=0.004,
                    help="learning rate of dW = -lr * sum_i V_i delta_i over a mini-batch (default 0.004)")
    sp.add_argument("--threshold", default="1.5uS", metavar="G",
                    help="write a device only where its change is at least this (default 1.5uS, as in the paper)")
    sp.add_argument("--layer", metavar="NODE", help="the layer to tune (default: the last crossbar layer)")
    sp.add_argument("--write-verify", type=int, default=0, metavar="N",
                    help="re-program a write up to N more times while it misses its target by more than "
                    "--verify-tolerance (default 0: open-loop writes)")
    sp.add_argument("--verify-tolerance", metavar="G", help="write-verify tolerance (default: the programming sigma)")
    sp.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    g = sp.add_argument_group("chip instance")
    add_chip_options(g)
    sp.set_defaults(func=run)


def run(args) -> int:
    from cimc.data import load_npz
    from cimc.manifest import load
    from cimc.output_dir import check_output
    from cimc.targets.devices import parse_conductance
    from cimc.training import tune
    options = crossbar_options(args)
    check_output(args.output)        # before tuning; -o may be the input manifest itself (it is read whole first)
    manifest = load(args.manifest)
    data = load_npz(args.data, [t.name for t in manifest.graph.inputs])
    threshold = parse_conductance(args.threshold, "--threshold")
    tolerance = None if args.verify_tolerance is None else parse_conductance(args.verify_tolerance,
                                                                             "--verify-tolerance")
    seed = 0 if args.seed is None else args.seed
    tuned, result = tune(manifest, data, seed=seed, overrides=options["overrides"],
                         defect_map=options.get("defect_map"), ideal=options["ideal"], epochs=args.epochs,
                         batch=args.batch, lr=args.lr, threshold_us=threshold, layer=args.layer,
                         write_verify=args.write_verify, verify_tolerance_us=tolerance, progress=not args.json)
    path = tuned.save(args.output)
    if args.json:
        emit({"manifest": str(path), "seed": seed, **result.to_dict()})
    else:
        print(f"tuned {result.layer} on chip instance {seed}: accuracy on the tuning data "
              f"{result.accuracy_before:.4f} -> {result.accuracy_after:.4f}; {result.writes} device writes "
              f"({result.write_attempts_on_stuck} on stuck devices ignored) in {result.iterations} iterations, "
              f"{result.seconds:.1f} s")
        for row in result.per_copy:
            print(f"  copy {row['copy']}: error {1 - row['accuracy_before']:.2%} -> {1 - row['accuracy_after']:.2%}")
        print(f"wrote {path}")
    return 0
