"""Yao et al. (Nature 2020) end to end: the five-layer mCNN on the 8-array yao2020-mcnn chip.

    python examples/mcnn_mnist/run_example.py                       # the shipped model and data (500 test images)
    python examples/mcnn_mnist/run_example.py --mnist /path/to/mnist  # full MNIST: 10k test, 55k tuning images

Steps: compile (CP-SAT replication under the chip's 8-array budget), then on the test images the float backend
(the trained model), the integer backend (15-level weights, 8-bit activations: the ideal chip) and the crossbar
backend (chip instances with Yao's programming error, 8-bit ADCs), then hybrid training of the FC layer in situ on
chip instance --seed, and the tuned chip on the test images. Writes results.json, the manifest, the tuned manifest
and an HTML report into --out (a new or empty folder; default: a fresh temporary folder), and prints where.
--mnist takes a directory with the four IDX files or mnist_{train,test}.npz, or an npz.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cimc
from cimc.data import Dataset, load_npz
from cimc.evaluate import evaluate
from cimc.html_report import write_report
from cimc.training import DEFAULT_LR, tune

HERE = Path(__file__).resolve().parent
ART = HERE / "artifacts"
sys.path.insert(0, str(HERE.parent))
from example_output import output_folder  # noqa: E402
PAPER = {"software": 97.99, "quantised": 96.92, "transferred": 95.07, "hybrid_trained": 96.19}


def _mnist(path: str, split: str, start: int = 0) -> Dataset:
    from cimc.mnist import load_mnist, to_model_input
    x, y = load_mnist(path, split)
    return Dataset({"input": to_model_input(x[start:])}, y[start:], f"{path} ({split})", None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", help="full MNIST (IDX directory, or npz); default: the shipped 500 test / 2,000 "
                   "tuning images")
    p.add_argument("--seed", type=int, default=0, help="chip instance for the crossbar runs and the tuning")
    p.add_argument("--trials", type=int, default=3, help="chip instances for the transfer accuracy")
    p.add_argument("--sigma", default="0.54", help="programming error in uS (Yao: 0.54)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help=f"tuning learning rate in device levels (default {DEFAULT_LR}; see `cimc tune --help`)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", help="a new or empty folder for the outputs (default: a fresh temporary folder)")
    args = p.parse_args(argv)
    out = output_folder(args.out, "mcnn-example")
    print(f"writing into {out}")
    chip = [f"nonideal.program_sigma_us={float(args.sigma)}"]

    if args.mnist:
        test, tune_data = _mnist(args.mnist, "test"), _mnist(args.mnist, "train", start=5000)  # 55,000 as the paper
    else:
        test = load_npz(ART / "test_500.npz", ["input"])
        tune_data = load_npz(ART / "train_2000.npz", ["input"])
    print(f"test images: {len(test)}, tuning images: {len(tune_data)}")

    start = time.perf_counter()
    manifest = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    manifest.save(out / "manifest")
    rep = manifest.replication
    print(f"compiled in {time.perf_counter() - start:.2f} s: {manifest.total_arrays} arrays, copies {rep['copies']}, "
          f"bottleneck {rep['bottleneck_cycles']} cycles ({rep['status']}, {rep['speedup']:.2f}x over no copies)")
    packed = cimc.count(ART / "mcnn.onnx", "yao2020-mcnn", pack=True)["replication"]
    print(f"with --pack: copies {packed['copies']}, period {packed['bottleneck_cycles']} cycles "
          f"({packed['speedup']:.2f}x)")

    results = {"test_images": len(test), "tuning_images": len(tune_data), "seed": args.seed, "chip": chip}
    float_r = evaluate(manifest, test, backend="float")
    integer_r = evaluate(manifest, test, backend="integer")
    crossbar_r = evaluate(manifest, test, backend="crossbar", seed=args.seed, trials=args.trials,
                          backend_options={"overrides": chip})
    results.update(software=float_r["accuracy"], quantised=integer_r["accuracy"],
                   transferred=crossbar_r["accuracy_mean"], transferred_trials=crossbar_r["trials"])
    print(f"float {float_r['accuracy']:.4f}  integer {integer_r['accuracy']:.4f}  "
          f"crossbar (seeds {args.seed}..{args.seed + args.trials - 1}) {crossbar_r['trials']}")

    start = time.perf_counter()
    tuned, result = tune(manifest, tune_data, seed=args.seed, overrides=chip, lr=args.lr, epochs=args.epochs,
                         progress=True)
    tuned.save(out / "tuned")
    after = evaluate(tuned, test, backend="crossbar", seed=args.seed, backend_options={"overrides": chip})
    before = evaluate(manifest, test, backend="crossbar", seed=args.seed, backend_options={"overrides": chip})
    results.update(hybrid_trained=after["accuracy"], chip_before_tuning=before["accuracy"],
                   tuning=result.to_dict(), tuning_seconds=time.perf_counter() - start)
    held = result.holdout
    print(f"hybrid training on chip {args.seed}: {result.writes} writes; held-out tuning images ({held['samples']}) "
          f"{held['accuracy_before']:.4f} -> {held['accuracy_after']:.4f} (kept: {result.kept}); test accuracy "
          f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}")
    for row in result.per_copy:
        print(f"  copy {row['copy']} of {len(result.per_copy)} (tuning data): error "
              f"{1 - row['accuracy_before']:.2%} -> {1 - row['accuracy_after']:.2%}")

    write_report(tuned, out / "report.html")
    print("\n                      paper    cimc")
    for key, label in (("software", "software (float)"), ("quantised", "15-level quantised"),
                       ("transferred", "transferred to chip"), ("hybrid_trained", "after hybrid training")):
        print(f"{label:22s} {PAPER[key]:6.2f}%  {100 * results[key]:6.2f}%")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out / 'results.json'}, {out / 'report.html'}, {out / 'tuned'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
