"""ResNet-56 for CIFAR-10 on Yao et al.'s 144x16 arrays: array count, compile, estimates, report, and the accuracy
chain float -> 15-level integer -> chip (crossbar, programming error) -> hybrid training of the FC layer.

    python examples/resnet56_cifar10/run_example.py                     # random-weight ResNet-56 built here
    python examples/resnet56_cifar10/run_example.py --model trained.onnx --data cifar10_test.npz

Without --model the network is built with onnx.helper (cimc.zoo.resnet56: option-A shortcuts as Slice + Pad,
random weights), so accuracies are meaningless; the array counts and the agreement with onnxruntime are not.
--data is an npz with `x` float32 [N, 3, 32, 32] in the model's input normalisation and `y` int labels: the first
--calibration-samples images calibrate, the next --tune-samples tune the FC layer in situ, the rest are tested
(hybrid training needs labels, so it runs only with --data). Everything is written into --out (a new or empty
folder; default: a fresh temporary folder, printed): the manifest, report.html, summary.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import cimc
from cimc import zoo
from cimc.data import Dataset, load_npz
from cimc.evaluate import evaluate
from cimc.html_report import write_report
from cimc.report import layer_table_text
from cimc.training import tune

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from example_output import output_folder  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a trained ResNet-56 ONNX file (input [N,3,32,32]); default: random weights")
    p.add_argument("--data", help="npz with x [N,3,32,32] float32 and y labels; default: random inputs")
    p.add_argument("--calibration-samples", type=int, default=200)
    p.add_argument("--samples", type=int, default=200, help="test samples to run")
    p.add_argument("--chip-samples", type=int, default=50,
                   help="test samples for the (slower) crossbar backend with programming error")
    p.add_argument("--tune-samples", type=int, default=2000, help="with --data: images for hybrid training")
    p.add_argument("--seed", type=int, default=0, help="chip instance")
    p.add_argument("--target", default="yao2020-resnet")
    p.add_argument("--out", help="a new or empty folder for the outputs (default: a fresh temporary folder)")
    args = p.parse_args(argv)
    out = output_folder(args.out, "resnet56-example")
    print(f"writing into {out}")

    model_path = Path(args.model) if args.model else out / "resnet56.onnx"
    if not args.model:
        onnx.save(zoo.resnet56(seed=0), model_path)
        print(f"built {model_path} (random weights, option-A shortcuts)")

    plain = cimc.count(model_path, args.target)
    copied = cimc.count(model_path, args.target, replicate={"conv1": 4})
    target = cimc.load_target(args.target)
    print(layer_table_text(copied, target), end="")
    print(f"arrays: {plain['total_arrays']} without replication, {copied['total_arrays']} with conv1 copied 4x "
          "(the paper states 782; see README)")

    rng = np.random.default_rng(0)
    if args.data:
        data = load_npz(args.data, ["input"])
        x_all, labels = data.inputs["input"], data.labels
        c, t = args.calibration_samples, args.calibration_samples + (args.tune_samples if labels is not None else 0)
        calib, tune_x, test = x_all[:c], x_all[c:t], x_all[t:]
        tune_labels = None if labels is None else labels[c:t]
        test_labels = None if labels is None else labels[t:]
    else:
        calib = rng.standard_normal((args.calibration_samples, 3, 32, 32)).astype(np.float32)
        test, test_labels = rng.standard_normal((args.samples, 3, 32, 32)).astype(np.float32), None
        tune_labels = None
    test = test[:args.samples]
    test_labels = None if test_labels is None else test_labels[:args.samples]

    start = time.perf_counter()
    manifest = cimc.compile(model_path, args.target, calibration=calib, replicate={"conv1": 4})
    manifest.save(out / "manifest")
    print(f"compiled and saved {out / 'manifest'} in {time.perf_counter() - start:.2f} s")

    dataset = Dataset({"input": test}, test_labels, None, None)
    results = {}
    for backend in ("float", "integer"):
        r = evaluate(manifest, dataset, backend=backend, reference=str(model_path))
        results[backend] = r
        acc = "" if r["accuracy"] is None else f", accuracy {r['accuracy']:.4f} (onnxruntime {r['reference_accuracy']:.4f})"
        print(f"{backend:8s}: top-1 agreement with onnxruntime {r['agreement']:.3f}, max relative error "
              f"{r['max_rel_error']:.2e}{acc}")
    chip = {"overrides": ["nonideal.program_sigma_us=0.54"]}
    few = Dataset({"input": test[:args.chip_samples]},
                  None if test_labels is None else test_labels[:args.chip_samples], None, None)
    r = evaluate(manifest, few, backend="crossbar", seed=args.seed, reference=str(model_path), backend_options=chip)
    results["crossbar"] = r
    print(f"crossbar: {r['n']} samples on chip {args.seed} (0.54 uS programming error, 8-bit ADCs): top-1 agreement "
          f"with the integer backend {r['agreement_with_integer']:.3f}"
          + ("" if r["accuracy"] is None else f", accuracy {r['accuracy']:.4f}")
          + f"; {r['backend_seconds']:.1f} s vs onnxruntime {r['reference_seconds']:.2f} s")
    if tune_labels is not None and len(tune_labels):
        tuned, t = tune(manifest, Dataset({"input": tune_x}, tune_labels, None, None), seed=args.seed,
                        overrides=chip["overrides"])
        tuned.save(out / "tuned")
        r = evaluate(tuned, few, backend="crossbar", seed=args.seed, reference=str(model_path), backend_options=chip)
        results["hybrid_trained"] = {"tuning": t.to_dict(), "test": r}
        print(f"hybrid training: {t.writes} writes; chip accuracy {results['crossbar']['accuracy']:.4f} -> "
              f"{r['accuracy']:.4f}")
    totals = manifest.estimates["totals"]
    print(f"estimate: latency {totals['latency_cycles']} slots ({totals['latency_ns'] / 1e3:.1f} us), pipelined "
          f"{totals['throughput_per_s']:,.0f} inferences/s; energy needs {', '.join(manifest.estimates['missing'])} "
          "(unknown for this target; see README)")
    write_report(manifest, out / "report.html")
    summary = {"arrays_plain": plain["total_arrays"], "arrays_conv1_x4": copied["total_arrays"],
               "estimates": totals, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
