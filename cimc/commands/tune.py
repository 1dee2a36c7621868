"""`cimc tune`: recover accuracy on one chip instance and write a new manifest. --method fc: hybrid training of the
last FC layer, or of the --layers, in situ (cimc.training, cimc.backprop); affine: column calibration without labels
(cimc.column_calibration)."""
from __future__ import annotations

import sys
import warnings

from cimc.commands.common import emit
from cimc.commands.run import add_chip_options, crossbar_options
from cimc.tune_defaults import AFFINE_TARGETS, DEFAULT_AFFINE_TARGET, DEFAULT_HOLDOUT, DEFAULT_LR


def add_parser(sub) -> None:
    sp = sub.add_parser("tune", help="recover accuracy on a chip instance: hybrid training of the last FC layer, or column "
                        "calibration (--method)",
                        description="Program the manifest onto chip instance --seed (the same device options as "
                        "`cimc run --backend crossbar`), run the network on it, and retrain the last fully connected "
                        "layer in situ with thresholded conductance updates (Yao et al. 2020). Writes a new manifest "
                        "holding the conductances programmed on that chip: `cimc run OUT --backend crossbar --seed S` "
                        "with the same device options reproduces the tuned chip exactly.")
    sp.add_argument("manifest", help="manifest directory written by `cimc compile`")
    sp.add_argument("--data", required=True, metavar="NPZ",
                    help="tuning data: npz with 'x' and labels 'y' ('y' only scores the chip with --method affine)")
    sp.add_argument("--method", default="fc", metavar="M",
                    help="fc (default): hybrid training of the last FC layer, or of the --layers (needs labels, writes "
                    "devices); affine: column calibration, a gain and offset per output column of every layer "
                    "fitted on the chip's reads against the float network's outputs (--affine-target) and folded into "
                    "the digital periphery (no labels, no device writes); affine+fc: affine, then fc")
    sp.add_argument("--affine-target", choices=AFFINE_TARGETS, metavar="T",
                    help="what --method affine fits each column to: float (default; the manifest's float network, so "
                    "the fit also absorbs what it can of the quantisation error) or ideal (the ideal quantised "
                    "chip, the integer backend)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR",
                    help="tuned manifest directory to write (the same rules as compile -o; it may be the input "
                    "manifest, which is then replaced by the tuned one)")
    sp.add_argument("--epochs", type=int, default=1, metavar="N",
                    help="passes over the training part of --data (default 1); the chip is scored on the held-out "
                    "part after each")
    sp.add_argument("--batch", type=int, default=100, help="mini-batch size (default 100, as in the paper)")
    sp.add_argument("--lr", type=float, default=DEFAULT_LR,
                    help="learning rate, in device levels: the change of a weight, in units of the layer's mean "
                    "weight step, that one sample with a full-scale input and an output error of 1 asks for; "
                    "updates sum over the mini-batch (dW = -eta * sum_i V_i delta_i with eta = lr * mean weight "
                    f"scale / input full scale), so it means the same on any network (default {DEFAULT_LR})")
    sp.add_argument("--layer-lr", action="append", metavar="NAME=LR",
                    help="a learning rate for one tuned layer instead of --lr (repeatable), e.g. C3=5: a conv's "
                    "gradient is divided by its output positions, so it may want another rate than the FC layer")
    sp.add_argument("--threshold", default="1.5uS", metavar="G",
                    help="write a device only where its change is at least this (default 1.5uS, as in the paper)")
    sp.add_argument("--layer", metavar="NODE", help="the layer to tune, by its ONNX node name (default: the last crossbar layer)")
    sp.add_argument("--layers", metavar="NAME[,NAME...]",
                    help="the crossbar layers to tune, by their ONNX node names as `cimc count` shows them (default: "
                    "the last crossbar layer); the gradient runs back from the logits through the ops between them "
                    "(the chip's forward pass, a float backward pass on the weights the chip holds)")
    sp.add_argument("--write-verify", type=int, default=0, metavar="N",
                    help="re-program a write up to N more times while it misses its target by more than "
                    "--verify-tolerance (default 0: open-loop writes)")
    sp.add_argument("--verify-tolerance", metavar="G", help="write-verify tolerance (default: the programming sigma)")
    sp.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT, metavar="F",
                    help="fraction of --data held out from training: the last F of the samples, in file order "
                    f"(default {DEFAULT_HOLDOUT}); the chip is scored on it before tuning and after every epoch")
    sp.add_argument("--keep", choices=["best", "final"], default="best",
                    help="which chip state the manifest records: the one that scored best on the held-out part "
                    "(default; never worse than before tuning) or the final one")
    sp.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    g = sp.add_argument_group("chip instance")
    add_chip_options(g)
    sp.set_defaults(func=run)


METHODS = ("fc", "affine", "affine+fc")


def run(args) -> int:
    from cimc.data import load_npz
    from cimc.errors import ConfigError, DataError
    from cimc.manifest import load
    from cimc.output_dir import check_output
    from cimc.targets.devices import parse_conductance
    from cimc.training import check_options, tune
    threshold = parse_conductance(args.threshold, "--threshold")
    tolerance = None if args.verify_tolerance is None else parse_conductance(args.verify_tolerance,
                                                                             "--verify-tolerance")
    if args.method not in METHODS:
        raise ConfigError(f"--method {args.method!r}: unknown method; choose one of {', '.join(METHODS)} (fc: "
                          "hybrid training of the last FC layer, affine: column calibration without labels)")
    check_options(args.epochs, args.batch, args.lr, threshold, args.write_verify, tolerance, args.holdout, args.keep)
    options = crossbar_options(args)
    check_output(args.output)        # before tuning; -o may be the input manifest itself (it is read whole first)
    manifest = load(args.manifest)
    data = load_npz(args.data, [t.name for t in manifest.graph.inputs])
    seed = 0 if args.seed is None else args.seed
    layers = None if args.layers is None else [n.strip() for n in args.layers.split(",")]
    if layers is not None and (not all(layers) or args.layer is not None):
        raise ConfigError(f"--layers {args.layers!r}: give one or more crossbar layer names separated by commas, "
                          "and not together with --layer")
    if args.affine_target is not None and not args.method.startswith("affine"):
        raise ConfigError(f"--affine-target: --method {args.method} fits no column; use it with --method affine or "
                          "affine+fc")
    if layers is not None and args.method == "affine":
        raise ConfigError("--layers: --method affine trains no layer; use --method fc or affine+fc with --layers")
    layer_lr = {}
    for item in args.layer_lr or []:
        name, _, value = item.partition("=")
        try:
            layer_lr[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--layer-lr {item!r}: expected NAME=LR, e.g. C3=5 (a number > 0)") from None
    if "fc" in args.method and data.labels is None:
        raise DataError(f"{args.data}: --method {args.method} trains the last layer and needs labels ('y'); "
                        "--method affine needs none")
    affine = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.method.startswith("affine"):
            from cimc.column_calibration import calibrate
            manifest, affine = calibrate(manifest, data, seed=seed, overrides=options["overrides"],
                                         defect_map=options.get("defect_map"), ideal=options["ideal"],
                                         batch=args.batch, gemm=options["gemm"],
                                         target=args.affine_target or DEFAULT_AFFINE_TARGET)
        if args.method.endswith("fc"):
            tuned, result = tune(manifest, data, seed=seed, overrides=options["overrides"],
                                 defect_map=options.get("defect_map"), ideal=options["ideal"],
                                 epochs=args.epochs, batch=args.batch, lr=args.lr, threshold_us=threshold,
                                 layer=args.layer, layers=layers, layer_lr=layer_lr or None, write_verify=args.write_verify, verify_tolerance_us=tolerance,
                                 progress=not args.json, holdout=args.holdout, keep=args.keep,
                                 gemm=options["gemm"])
        else:
            tuned, result = manifest, None
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"cimc: warning: {message}", file=sys.stderr)
    path = tuned.save(args.output)
    if args.method != "fc":
        _report_affine(path, seed, affine, result, args.json)
        return 0
    if args.json:
        emit({"manifest": str(path), "seed": seed, **result.to_dict()})
    else:
        held = result.holdout
        print(f"tuned {result.layer} on chip instance {seed}: accuracy on the tuning data "
              f"{result.accuracy_before:.4f} -> {result.accuracy_after:.4f}, on its held-out part ({held['samples']} "
              f"samples) {held['accuracy_before']:.4f} -> {held['accuracy_after']:.4f}; {result.writes} device writes "
              f"({result.write_attempts_on_stuck} on stuck devices ignored; per epoch "
              f"{', '.join(map(str, result.writes_per_epoch))}) in {result.iterations} iterations, "
              f"{result.seconds:.1f} s")
        if result.pulse_model:
            p = result.pulse_model
            print(f"{p['total']:,} {p['model']} pulses ({p['set']:,} SET, {p['reset']:,} RESET)")
        _per_layer(result)
        print(f"kept {result.kept_reason}")
        copies = len(result.per_copy)
        for row in result.per_copy:
            print(f"  copy {row['copy']} of {copies}: error {1 - row['accuracy_before']:.2%} -> "
                  f"{1 - row['accuracy_after']:.2%}")
        print(f"wrote {path}")
    return 0


def _report_affine(path, seed: int, affine, fc, as_json: bool) -> None:
    """--method affine / affine+fc: the calibration per layer (and the FC training's result after it)."""
    summary = [{k: v for k, v in row.items() if k not in ("gain", "offset_acc")} for row in affine.layers]
    if as_json:
        doc = {"manifest": str(path), "seed": seed, "method": "affine" if fc is None else "affine+fc",
               "affine": {**affine.to_dict(), "layers": summary}}
        if fc is not None:
            doc["fc"] = fc.to_dict()
        emit(doc)
        return
    scored = (f"accuracy on --data {affine.accuracy_before:.4f} -> {affine.accuracy_after:.4f}"
              if affine.accuracy_before is not None else "no labels: accuracy not scored")
    print(f"column calibration on chip instance {seed} (fitted to the {affine.target} network): {affine.inputs} "
          f"inputs, {scored}; no device written, "
          f"{affine.seconds:.1f} s")
    for row in summary:
        print(f"  {row['layer']}: {row['columns']} columns, mean |a-1| {row['mean_abs_gain_error']:.4g}, "
              f"mean |b| {row['mean_abs_offset_acc']:.4g} (accumulator units)"
              + (f", {row['flat_columns']} constant column(s): offset only" if row["flat_columns"] else ""))
    if fc is not None:
        print(f"then tuned {fc.layer}: accuracy {fc.accuracy_before:.4f} -> {fc.accuracy_after:.4f}, {fc.writes} "
              f"device writes in {fc.iterations} iterations; kept {fc.kept_reason}")
        _per_layer(fc)
    print(f"wrote {path}")


def _per_layer(result) -> None:
    """Writes and programming pulses per tuned layer (pulses: one per write and per write-verify retry)."""
    if len(result.layers) > 1 or result.pulses != result.writes:
        for name in result.layers:
            print(f"  {name}: {result.writes_per_layer[name]} device writes, {result.pulses_per_layer[name]} "
                  "programming pulses")
