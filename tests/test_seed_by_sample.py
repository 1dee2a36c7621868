"""Same seed, same result, whatever the batching: the crossbar backend draws a sample's read noise, and picks the copy
of a replicated layer it reads, by the sample's global index alone (cimc.backends.base.Backend.number_samples), so a
sample's output is the same bit for bit across batch sizes, with or without `--copy 0`, and whatever other samples
share its batch and in which order."""
from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cimc
from cimc import Session
from cimc.errors import DataError
from refusal import run_cli

# what `cimc run --backend crossbar --read-noise 0.3uS --program-sigma 0.5uS --seed 3` sets
NOISY = ["nonideal.read_noise_sigma_us=0.3", "nonideal.program_sigma_us=0.5"]
SEED = 3
N = 20


@pytest.fixture(scope="module")
def models(mcnn_dir, tmp_path_factory):
    """The mCNN as compiled (C1 on 2 copies, to fill the chip), with one copy of every layer, and with C1 on 3
    copies; saved, with N test images."""
    calib = np.load(mcnn_dir / "calib.npz")["x"]
    d = tmp_path_factory.mktemp("seed_by_sample")
    compiled = {"mcnn": cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=calib),
                "single": cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=calib,
                                       replicate={"C1": 1, "C3": 1, "FC": 1}),
                "replicated": cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=calib,
                                           replicate={"C1": 3}, overrides=["chip.chips=0"])}
    assert [o.replicas for o in compiled["mcnn"].graph.xbar_ops()] == [2, 1, 1]
    assert [o.replicas for o in compiled["single"].graph.xbar_ops()] == [1, 1, 1]
    for name, manifest in compiled.items():
        manifest.save(d / name)
    x = np.random.default_rng(11).random((N, 1, 28, 28), dtype=np.float32)
    np.savez(d / "test.npz", x=x, y=np.random.default_rng(12).integers(0, 10, N))
    return {**compiled, "dir": d, "x": x}


def _run(manifest, x, batch_size, samples=None, **options):
    options.setdefault("overrides", NOISY)
    return Session(manifest, backend="crossbar", seed=SEED, batch_size=batch_size, **options).run(x, samples=samples)


# the read paths that draw read noise: bit-serial float32 GEMMs (also what gemm="lut" falls back to with read
# noise), int8 GEMMs, a lossless ADC (one product, the planes' noise summed) and the lossless planes one by one
PATHS = {"float32": {}, "int8": {"gemm": "int8"}, "lut": {"gemm": "lut"},
         "lossless": {"overrides": NOISY + ["adc.lossless=true"]},
         "lossless-planes": {"overrides": NOISY + ["adc.lossless=true"], "simulate_planes": True}}


@pytest.fixture(scope="module")
def reference(models):
    """Per (model, copy, path): the outputs of the N samples in batches of 5, the expectation every batching meets."""
    cache = {}

    def get(model, copy, path):
        key = (model, copy, path)
        if key not in cache:
            with pytest.warns(UserWarning, match="draws no per-read noise") if path == "lut" else nullcontext():
                cache[key] = _run(models[model], models["x"], 5, copy=copy, **PATHS[path])
        return cache[key]
    return get


@pytest.mark.filterwarnings("ignore:crossbar backend. gemm='lut' draws no per-read noise")
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_every_read_path_gives_the_same_outputs_at_any_batch_size(models, reference, path, batch_size):
    want = reference("mcnn", None, path)
    got = _run(models["mcnn"], models["x"], batch_size, **PATHS[path])
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("copy", [None, 0])
@pytest.mark.parametrize("model", ["mcnn", "single", "replicated"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_with_and_without_copy_0_the_same_outputs_at_any_batch_size(models, reference, model, copy, batch_size):
    want = reference(model, copy, "float32")
    got = _run(models[model], models["x"], batch_size, copy=copy)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("model", ["mcnn", "replicated"])
def test_read_noise_is_on_and_seeded(models, reference, model):
    """The invariance above is not vacuous: read noise changes the outputs, and another seed changes them."""
    noisy = reference(model, None, "float32")
    quiet = _run(models[model], models["x"], N, overrides=["nonideal.program_sigma_us=0.5"])
    other = Session(models[model], backend="crossbar", seed=SEED + 1, overrides=NOISY).run(models["x"])
    assert not np.array_equal(noisy, quiet) and not np.array_equal(noisy, other)
    # every sample's noise differs from every other's: no two samples share a stream
    diffs = (noisy - quiet).reshape(N, -1)
    assert len({d.tobytes() for d in diffs}) == N


def test_without_copy_0_equals_with_copy_0_on_an_unreplicated_model(models, reference):
    assert np.array_equal(reference("single", None, "float32"), reference("single", 0, "float32"))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_sample_i_reads_copy_i_mod_copies_by_its_global_index(models, batch_size):
    """Default replicas follow the global index: with batches of 7, sample 7 (the first of its batch) still reads
    copy 1. Sample i's output equals its output with every sample forced onto copy i % 3 (the same noise stream:
    layer, copy and sample), and differs from the other copies'."""
    m, x = models["replicated"], models["x"]
    default = _run(m, x, batch_size)
    forced = [_run(m, x, N, copy=k) for k in range(3)]
    for i in range(N):
        assert np.array_equal(default[i], forced[i % 3][i])
        assert not any(np.array_equal(default[i], forced[k][i]) for k in range(3) if k != i % 3)


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_a_subset_in_any_order_gives_each_sample_its_own_output(models, reference, data):
    """Run a subset of the samples, shuffled, with their global indices: each equals its output in the full run."""
    model = data.draw(st.sampled_from(["mcnn", "replicated"]), label="model")
    subset = data.draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=N, unique=True), label="subset")
    batch_size = data.draw(st.integers(1, 8), label="batch_size")
    idx = np.array(subset)
    got = _run(models[model], models["x"][idx], batch_size, samples=idx)
    assert np.array_equal(got, reference(model, None, "float32")[idx])


def test_a_session_numbers_consecutive_calls_on(models, reference):
    """Run in pieces through one session (as `cimc.evaluate` does batch by batch), the samples are numbered on:
    the same outputs as one call. Numbered explicitly, a piece anywhere gives the same outputs too."""
    m, x = models["replicated"], models["x"]
    session = Session(m, backend="crossbar", seed=SEED, overrides=NOISY, batch_size=4)
    pieces = np.concatenate([session.run(x[s:s + 6]) for s in range(0, N, 6)])
    want = reference("replicated", None, "float32")
    assert np.array_equal(pieces, want)
    fresh = Session(m, backend="crossbar", seed=SEED, overrides=NOISY)
    assert np.array_equal(fresh.run(x[9:15], samples=9), want[9:15])
    # after explicit indices 9..14, the default numbering goes on from 15
    assert np.array_equal(fresh.run(x[15:18]), want[15:18])


def test_no_read_noise_no_change_and_ideal_equals_integer(models):
    """Without read noise nothing is drawn per read: the ideal chip equals the integer backend bit for bit, in any
    batching; a non-ideal unreplicated chip gives the same outputs in any batching."""
    m, x = models["single"], models["x"]
    integer = Session(m, backend="integer").run(x)
    for batch_size in (1, 7, 64):
        ideal = Session(m, backend="crossbar", ideal=True, batch_size=batch_size).run(x)
        assert np.array_equal(ideal.view(np.uint32), integer.view(np.uint32))
    for lossless in ([], ["adc.lossless=true"]):
        chip = [_run(m, x, b, overrides=["nonideal.program_sigma_us=0.5"] + lossless) for b in (1, 7, 64)]
        assert all(np.array_equal(c, chip[0]) for c in chip)


@pytest.mark.parametrize("bad, culprit", [(-1, ">= 0"), (np.array([0, 1]), "expected 3"),
                                          (np.array([0.0, 1.0, 2.0]), "integer"), ([0, -2, 1], ">= 0"),
                                          (np.zeros((3, 1), np.int64), "expected 3")])
def test_bad_sample_indices_are_refused(models, bad, culprit):
    session = Session(models["single"], backend="crossbar", seed=SEED, overrides=NOISY)
    with pytest.raises(DataError, match=culprit):
        session.run(models["x"][:3], samples=bad)


def _cli(models, *extra):
    d = models["dir"]
    code, out, err = run_cli(["run", d / extra[0], "--data", d / "test.npz", "--backend", "crossbar", "--json",
                              "--read-noise", "0.3uS", "--program-sigma", "0.5uS", "--seed", str(SEED), *extra[1:]])
    assert code == 0, err
    result = json.loads(out)
    return {k: result[k] for k in ("accuracy", "agreement", "max_abs_error", "max_rel_error",
                                   "agreement_with_integer", "max_abs_diff_vs_integer")}


@pytest.mark.parametrize("model, copy", [("mcnn", []), ("mcnn", ["--copy", "0"]), ("replicated", [])])
def test_cli_run_reports_the_same_numbers_at_any_batch_size(models, model, copy):
    """`cimc run` end to end: the largest output differences (floats that any changed output would move) are the
    same at --batch-size 1, 7 and 64."""
    results = [_cli(models, model, "--batch-size", str(b), *copy) for b in (1, 7, 64)]
    assert results[0] == results[1] == results[2]
    assert results[0]["max_abs_diff_vs_integer"] > 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), layer=st.integers(0, 60), copy=st.integers(0, 7), sample=st.integers(0, 300))
def test_a_sample_stream_is_the_documented_child_of_the_read_stream(seed, layer, copy, sample):
    """read_generator(seed, layer, copy, i) is what numpy's own spawning gives: child 0 of SeedSequence(seed) (the
    read stream), then child `layer`, `copy`, `i` in turn (independent streams by SeedSequence's construction)."""
    from cimc.targets.devices import read_generator
    seq = np.random.SeedSequence(seed).spawn(1)[0]
    for k in (layer, copy, sample):
        seq = seq.spawn(k + 1)[k]
    assert np.array_equal(read_generator(seed, layer, copy, sample).standard_normal(6),
                          np.random.default_rng(seq).standard_normal(6))


def test_line_noise_per_sample_draws_each_entry_from_its_own_generator():
    """With a list of generators, entry j is generator j's draw alone, scaled: independent of the other entries."""
    from cimc.targets.devices import line_noise, sample_generators
    sq = np.random.default_rng(0).random((5, 3, 1)) * 9
    sq[3] = sq[0]
    z = line_noise(sample_generators(7, (2, 1), [4, 9, 0, 4, 30]), sq, 0.5, np.float64, shape=(5, 3, 8))
    for j, i in enumerate([4, 9, 0, 4, 30]):
        alone = sample_generators(7, (2, 1), [i])[0].standard_normal((3, 8))
        np.testing.assert_array_equal(z[j], alone * (np.sqrt(sq[j]) * 0.5))
    assert np.array_equal(z[0], z[3]) and not np.array_equal(z[0], z[1])       # same index, same draws


def test_tune_with_read_noise_is_reproducible_by_seed(models):
    """`cimc tune` reads with fresh noise numbered on from the reads before: the same seed, the same tuning."""
    from cimc.data import Dataset
    from cimc.training import tune
    name = models["single"].graph.inputs[0].name
    data = Dataset({name: models["x"][:12]}, np.random.default_rng(12).integers(0, 10, 12), None, None)
    (a, ra), (b, rb) = [tune(models["single"], data, seed=SEED, overrides=NOISY, batch=6, lr=0.05, threshold_us=0.0)
                        for _ in range(2)]
    assert ra.writes > 0
    assert (ra.accuracy_before, ra.accuracy_after, ra.writes) == (rb.accuracy_before, rb.accuracy_after, rb.writes)
    np.testing.assert_array_equal(a.conductances["programmed_us"], b.conductances["programmed_us"])
