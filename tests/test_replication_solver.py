"""Tests for cimc.passes.replication_solver (kernel replication under an array budget).

Oracles used here are independent of the module:

* ``brute_force``: ``itertools.product`` over every layer's candidate copy counts
  (for each distinct ``ceil(P/r)``, the smallest ``r``; computed here by a plain
  scan of ``r = 1..limit``), lexicographic min of (bottleneck, arrays).
* ``brute_force_all_r``: ``itertools.product`` over *every* copy count
  ``1..limit``, which checks that the candidate reduction loses nothing.
* ``threshold_sweep``: for instances too big to enumerate.  The problem is
  separable once the bottleneck T is fixed: every layer independently takes the
  smallest r with ceil(P/r) <= T, so f(T) = sum_l a_l * rmin_l(T) is the fewest
  arrays for bottleneck <= T, f is non-increasing in T, and the lexicographic
  optimum is (T*, f(T*)) with T* the smallest candidate value where f(T) <= budget.
"""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from cimc.passes.replication_solver import (
    InfeasibleBudget,
    LayerDemand,
    ReplicationPlan,
    candidate_copies,
    greedy_replication,
    minimum_arrays,
    solve_replication,
)

BITS = 8


# ----------------------------------------------------------------- oracles


def _limit(l: LayerDemand) -> int:
    return min(l.max_copies or l.positions, l.positions)


def _cands(l: LayerDemand) -> list[int]:
    """Candidate copy counts: smallest r for each distinct ceil(P/r)."""
    if l.fixed_copies is not None:
        return [l.fixed_copies]
    best: dict[int, int] = {}
    for r in range(1, _limit(l) + 1):
        best.setdefault(math.ceil(l.positions / r), r)
    return sorted(best.values())


def _evaluate(layers, copies, bits=BITS):
    cyc = [math.ceil(l.positions / r) * bits for l, r in zip(layers, copies)]
    return max(cyc), sum(r * l.arrays_per_copy for l, r in zip(layers, copies))


def brute_force(layers, budget, bits=BITS, all_r=False):
    """Lexicographic (bottleneck, arrays) optimum, or None if nothing fits."""
    if all_r:
        spaces = [[l.fixed_copies] if l.fixed_copies else range(1, _limit(l) + 1) for l in layers]
    else:
        spaces = [_cands(l) for l in layers]
    best = None
    for combo in itertools.product(*spaces):
        b, a = _evaluate(layers, combo, bits)
        if a <= budget and (best is None or (b, a) < best[:2]):
            best = (b, a, combo)
    return best


def brute_force_target(layers, target, bits=BITS):
    """Fewest arrays with every layer's cycles <= target, or None."""
    best = None
    for combo in itertools.product(*[_cands(l) for l in layers]):
        cyc = [math.ceil(l.positions / r) * bits for l, r in zip(layers, combo)]
        if max(cyc) <= target:
            a = sum(r * l.arrays_per_copy for l, r in zip(layers, combo))
            if best is None or a < best[0]:
                best = (a, combo)
    return best


def threshold_sweep(layers, budget, bits=BITS):
    """Exact (bottleneck_cycles, arrays) by sweeping the bottleneck (see module doc)."""
    values = sorted({math.ceil(l.positions / r) for l in layers for r in _cands(l)})

    def rmin(l, t):  # fewest copies with ceil(P/r) <= t, or None
        if l.fixed_copies is not None:
            return l.fixed_copies if math.ceil(l.positions / l.fixed_copies) <= t else None
        r = math.ceil(l.positions / t)
        return r if r <= _limit(l) else None

    for t in values:
        rs = [rmin(l, t) for l in layers]
        if None not in rs:
            total = sum(r * l.arrays_per_copy for r, l in zip(rs, layers))
            if total <= budget:
                return t * bits, total
    return None


def random_layers(rng, n_lo=2, n_hi=4, p_hi=30, a_hi=4, extras=False):
    layers = []
    for i in range(rng.randint(n_lo, n_hi)):
        p = rng.randint(1, p_hi)
        a = rng.randint(1, a_hi)
        mx = fx = None
        if extras:
            roll = rng.random()
            if roll < 0.15:
                mx = rng.randint(1, max(1, p))
            elif roll < 0.3:
                fx = rng.randint(1, 3)
        layers.append(LayerDemand(f"L{i}", a, p, max_copies=mx, fixed_copies=fx))
    return layers


def check_plan(plan: ReplicationPlan, layers, budget=None, bits=BITS):
    """Internal consistency of a plan."""
    assert set(plan.copies) == {l.name for l in layers}
    b, a = _evaluate(layers, [plan.copies[l.name] for l in layers], bits)
    assert plan.bottleneck_cycles == b
    assert plan.arrays == a
    assert plan.latency_cycles == sum(plan.cycles(l) for l in layers)
    for l in layers:
        r = plan.copies[l.name]
        assert plan.cycles(l) == plan.cycles(l.name) == math.ceil(l.positions / r) * bits
        if l.fixed_copies is not None:
            assert r == l.fixed_copies
        else:
            assert 1 <= r <= _limit(l)
    if budget is not None:
        assert plan.arrays <= budget


# ---------------------------------------------------------- candidate set


def test_candidates_are_distinct_cycle_counts_with_smallest_copies():
    for p in list(range(1, 300)) + [1024, 3136, 12544]:
        for mx in (None, 1, 3, 17, p // 2 or 1):
            got = candidate_copies(p, mx)
            limit = p if mx is None else min(mx, p)
            best: dict[int, int] = {}
            for r in range(1, limit + 1):
                best.setdefault(math.ceil(p / r), r)
            assert got == sorted(((r, c) for c, r in best.items()), key=lambda t: t[0]), (p, mx)
            assert len(got) <= 2 * math.isqrt(p) + 1
    assert len(candidate_copies(12544)) <= 224


# --------------------------------------------------------- budget mode


def test_matches_brute_force_on_random_small_instances():
    rng = random.Random(20240601)
    for _ in range(140):
        layers = random_layers(rng, extras=True)
        lo = minimum_arrays(layers)
        hi = sum(_limit(l) * l.arrays_per_copy for l in layers if l.fixed_copies is None) + lo
        budget = rng.choice([lo, lo + 1, lo + rng.randint(0, 10), rng.randint(lo, max(lo, hi)), hi + 5])
        plan = solve_replication(layers, input_bits=BITS, budget=budget)
        ref = brute_force(layers, budget)
        assert ref is not None
        check_plan(plan, layers, budget)
        assert plan.status in ("OPTIMAL", "FIXED")
        assert plan.gap == 0.0
        assert (plan.bottleneck_cycles, plan.arrays) == ref[:2], (layers, budget)
        # the min-array plan for the optimal bottleneck is unique
        assert tuple(plan.copies[l.name] for l in layers) == ref[2]


def test_candidate_reduction_is_lossless_against_every_copy_count():
    rng = random.Random(7)
    for _ in range(40):
        layers = random_layers(rng, 2, 3, p_hi=12, a_hi=3, extras=True)
        lo = minimum_arrays(layers)
        budget = lo + rng.randint(0, 20)
        plan = solve_replication(layers, budget=budget)
        ref = brute_force(layers, budget, all_r=True)
        assert (plan.bottleneck_cycles, plan.arrays) == ref[:2]


def test_other_input_bits():
    rng = random.Random(3)
    for bits in (1, 4, 6):
        for _ in range(10):
            layers = random_layers(rng)
            budget = minimum_arrays(layers) + rng.randint(0, 12)
            plan = solve_replication(layers, input_bits=bits, budget=budget)
            check_plan(plan, layers, budget, bits)
            assert (plan.bottleneck_cycles, plan.arrays) == brute_force(layers, budget, bits)[:2]


def test_never_worse_than_greedy():
    rng = random.Random(11)
    for i in range(60):
        if i < 40:
            layers = random_layers(rng, extras=True)
        else:  # larger: conv-net sized position counts
            layers = [
                LayerDemand(f"L{j}", rng.randint(1, 16), rng.choice([1, 49, 196, 784, 3136, 12544]))
                for j in range(rng.randint(5, 25))
            ]
        lo = minimum_arrays(layers)
        budget = lo + rng.choice([0, 3, 20, 200, 2000])
        plan = solve_replication(layers, budget=budget)
        greedy = greedy_replication(layers, budget=budget)
        check_plan(greedy, layers, budget)
        assert greedy.status == "GREEDY"
        assert plan.bottleneck_cycles <= greedy.bottleneck_cycles
        if plan.bottleneck_cycles == greedy.bottleneck_cycles:
            assert plan.arrays <= greedy.arrays
        assert (plan.bottleneck_cycles, plan.arrays) == threshold_sweep(layers, budget)


def test_greedy_can_spend_more_arrays_than_needed():
    # three layers tie at the bottleneck; greedy speeds up two of them, then cannot
    # afford the third, so those arrays buy nothing; the solver leaves them unspent
    layers = [LayerDemand(n, 2, 10) for n in "xyz"]
    greedy = greedy_replication(layers, budget=11)
    plan = solve_replication(layers, budget=11)
    assert plan.bottleneck_cycles == greedy.bottleneck_cycles == 80
    assert plan.copies == {"x": 1, "y": 1, "z": 1} and plan.arrays == 6
    assert greedy.arrays == 10 and sorted(greedy.copies.values()) == [1, 2, 2]


def resnet56_like(seed=56):
    """57 crossbar layers: 19 at 32x32, 19 at 16x16, 18 at 8x8 positions, and the FC."""
    rng = random.Random(seed)
    positions = [1024] * 19 + [256] * 19 + [64] * 18 + [1]
    return [LayerDemand(f"layer{i}", rng.randint(2, 32), p) for i, p in enumerate(positions)]


def resnet56_staged():
    """Same shape, arrays per copy growing with the channel count (2 / 8 / 32, FC 2)."""
    a = {1024: 2, 256: 8, 64: 32, 1: 2}
    positions = [1024] * 19 + [256] * 19 + [64] * 18 + [1]
    return [LayerDemand(f"layer{i}", a[p], p) for i, p in enumerate(positions)]


def test_resnet56_sized_instance_is_fast_and_optimal():
    layers = resnet56_staged()
    assert len(layers) == 57 and minimum_arrays(layers) == 768
    t0 = time.perf_counter()
    plan = solve_replication(layers, budget=1000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"57-layer solve took {elapsed:.2f}s"
    assert plan.status == "OPTIMAL" and plan.gap == 0.0
    check_plan(plan, layers, 1000)
    assert (plan.bottleneck_cycles, plan.arrays) == threshold_sweep(layers, 1000) == (2048, 882)
    greedy = greedy_replication(layers, budget=1000)
    assert plan.bottleneck_cycles == greedy.bottleneck_cycles and plan.arrays <= greedy.arrays
    # every 32x32 layer has 4 copies (256 positions each), the rest are not replicated
    assert all(plan.copies[l.name] == (4 if l.positions == 1024 else 1) for l in layers)
    assert 1024 * BITS / plan.bottleneck_cycles == 4.0


def test_resnet56_random_arrays_per_copy():
    layers = resnet56_like()
    lo = minimum_arrays(layers)
    for budget in (lo, lo + 50, lo + 1000, 20000):
        t0 = time.perf_counter()
        plan = solve_replication(layers, budget=budget)
        assert time.perf_counter() - t0 < 2.0
        assert plan.status == "OPTIMAL"
        check_plan(plan, layers, budget)
        assert (plan.bottleneck_cycles, plan.arrays) == threshold_sweep(layers, budget)
        greedy = greedy_replication(layers, budget=budget)
        assert plan.bottleneck_cycles <= greedy.bottleneck_cycles


def test_budget_exactly_minimum_and_one_below():
    layers = [LayerDemand("c1", 1, 676), LayerDemand("c3", 2, 49), LayerDemand("fc", 4, 1)]
    assert minimum_arrays(layers) == 7
    plan = solve_replication(layers, budget=7)
    assert plan.copies == {"c1": 1, "c3": 1, "fc": 1} and plan.arrays == 7
    with pytest.raises(InfeasibleBudget) as exc:
        solve_replication(layers, budget=6)
    err = exc.value
    assert isinstance(err, ValueError)
    assert err.minimum_arrays == 7
    assert str(err).startswith(
        "budget of 6 arrays is below the 7 arrays needed for one copy of every layer ("
    )
    assert "c1" in str(err) and "fc" in str(err)
    with pytest.raises(InfeasibleBudget):
        greedy_replication(layers, budget=6)


def test_minimum_counts_fixed_copies():
    layers = [LayerDemand("a", 2, 50, fixed_copies=3), LayerDemand("b", 5, 10)]
    assert minimum_arrays(layers) == 11
    assert solve_replication(layers, budget=11).copies == {"a": 3, "b": 1}
    with pytest.raises(InfeasibleBudget) as exc:
        solve_replication(layers, budget=10)
    assert exc.value.minimum_arrays == 11


# --------------------------------------------------------------- mCNN


def mcnn_layers():
    # 128x16 arrays, differential pairs (2 columns per weight):
    #   C1: 3x3x1 = 9 rows, 8 kernels -> 16 columns  -> 1 array,  26x26 = 676 positions
    #   C3: 3x3x8 = 72 rows, 12 kernels -> 24 columns -> 2 arrays, 7x7 = 49 positions
    #   FC: 192 rows (2 row tiles) x 10 outputs -> 20 columns (2 column tiles) -> 4 arrays, 1 position
    return [LayerDemand("C1", 1, 676), LayerDemand("C3", 2, 49), LayerDemand("FC", 4, 1)]


def test_mcnn_on_eight_arrays():
    layers = mcnn_layers()
    plan = solve_replication(layers, budget=8)
    ref = brute_force(layers, 8)
    assert (plan.bottleneck_cycles, plan.arrays) == ref[:2]
    # one copy of everything costs 7 arrays, so the 8th array is a second copy of C1
    assert plan.copies == {"C1": 2, "C3": 1, "FC": 1}
    assert plan.arrays == 8
    assert plan.bottleneck_cycles == 338 * 8 == 2704 and plan.bottleneck_layers == ["C1"]
    assert plan.latency_cycles == 2704 + 392 + 8

    base = solve_replication(layers, budget=7)  # no replication possible
    assert base.copies == {"C1": 1, "C3": 1, "FC": 1}
    assert base.bottleneck_cycles == 5408 and base.latency_cycles == 5808
    assert base.bottleneck_cycles / plan.bottleneck_cycles == 2.0  # throughput speedup
    assert base.latency_cycles / plan.latency_cycles == pytest.approx(5808 / 3104)


@pytest.mark.parametrize("budget", [9, 10, 12, 16, 24, 40])
def test_mcnn_larger_budgets_match_brute_force(budget):
    layers = mcnn_layers()
    plan = solve_replication(layers, budget=budget)
    assert (plan.bottleneck_cycles, plan.arrays) == brute_force(layers, budget)[:2]


# --------------------------------------------------------- target mode


def test_target_mode_matches_brute_force():
    rng = random.Random(99)
    checked = 0
    for _ in range(80):
        layers = random_layers(rng, extras=True)
        target = rng.randint(1, 31) * BITS + rng.choice([0, 0, 3])
        ref = brute_force_target(layers, target)
        if ref is None:
            with pytest.raises(ValueError):
                solve_replication(layers, target_cycles=target)
            continue
        plan = solve_replication(layers, target_cycles=target)
        check_plan(plan, layers)
        assert plan.arrays == ref[0]
        assert all(plan.cycles(l) <= target for l in layers)
        assert plan.bottleneck_cycles <= target
        checked += 1
    assert checked > 30


def test_target_mode_mcnn():
    plan = solve_replication(mcnn_layers(), target_cycles=1000)
    # C1 needs ceil(676/r) <= 125 -> r = 6; C3 at 392 and FC at 8 already fit
    assert plan.copies == {"C1": 6, "C3": 1, "FC": 1}
    assert plan.arrays == 12 and plan.bottleneck_cycles == 113 * 8


def test_infeasible_target_names_the_layer():
    layers = [LayerDemand("fast", 1, 4), LayerDemand("capped", 2, 100, max_copies=5)]
    with pytest.raises(ValueError, match="capped"):
        solve_replication(layers, target_cycles=100)  # capped: ceil(100/5)*8 = 160 > 100
    plan = solve_replication(layers, target_cycles=160)
    assert plan.copies == {"fast": 1, "capped": 5}
    with pytest.raises(ValueError, match="'fast'"):
        solve_replication(layers, target_cycles=7)  # below one bit-serial pass
    with pytest.raises(ValueError, match="pinned"):
        solve_replication([LayerDemand("pinned", 1, 64, fixed_copies=2)], target_cycles=64)


# --------------------------------------------------- overrides & options


def test_fixed_copies_respected():
    layers = [
        LayerDemand("big", 1, 400, fixed_copies=2),  # pinned even though it is the bottleneck
        LayerDemand("mid", 1, 100),
        LayerDemand("small", 3, 9, fixed_copies=3),  # pinned above what it needs
    ]
    for budget in (minimum_arrays(layers), 20, 100, 1000):
        plan = solve_replication(layers, budget=budget)
        assert plan.copies["big"] == 2 and plan.copies["small"] == 3
        check_plan(plan, layers, budget)
        assert (plan.bottleneck_cycles, plan.arrays) == brute_force(layers, budget)[:2]
        assert greedy_replication(layers, budget=budget).copies["big"] == 2
    # the pinned layer sets the bottleneck at 200 positions; "mid" only needs 1 copy
    assert solve_replication(layers, budget=1000).copies["mid"] == 1
    all_fixed = [LayerDemand("x", 1, 10, fixed_copies=2), LayerDemand("y", 2, 5, fixed_copies=1)]
    plan = solve_replication(all_fixed, budget=10)
    assert plan.status == "FIXED" and plan.copies == {"x": 2, "y": 1}


def test_max_copies_respected():
    layers = [LayerDemand("a", 1, 1000, max_copies=3), LayerDemand("b", 1, 500)]
    plan = solve_replication(layers, budget=100)
    assert plan.copies["a"] == 3
    assert plan.bottleneck_cycles == math.ceil(1000 / 3) * BITS
    assert plan.copies["b"] == 2  # just enough to stay under layer a, no more


def test_no_more_copies_than_positions():
    plan = solve_replication([LayerDemand("a", 1, 5), LayerDemand("b", 1, 1)], budget=1000)
    assert plan.copies == {"a": 5, "b": 1} and plan.bottleneck_cycles == BITS


def test_deterministic():
    layers = resnet56_like(seed=3)
    budget = minimum_arrays(layers) + 700
    plans = [solve_replication(layers, budget=budget) for _ in range(2)]
    plans.append(solve_replication(layers, budget=budget, workers=2, seed=5))
    assert plans[0].copies == plans[1].copies == plans[2].copies


def test_tiny_time_limit_still_returns_a_valid_plan():
    layers = resnet56_like(seed=4)
    budget = minimum_arrays(layers) + 500
    plan = solve_replication(layers, budget=budget, time_limit=0.001)
    check_plan(plan, layers, budget)
    assert plan.status in ("OPTIMAL", "FEASIBLE", "GREEDY")
    assert 0.0 <= plan.gap <= 1.0


def test_argument_validation():
    layers = mcnn_layers()
    with pytest.raises(ValueError, match="exactly one"):
        solve_replication(layers)
    with pytest.raises(ValueError, match="exactly one"):
        solve_replication(layers, budget=10, target_cycles=100)
    with pytest.raises(ValueError):
        solve_replication([], budget=10)
    with pytest.raises(ValueError, match="duplicate"):
        solve_replication([LayerDemand("a", 1, 1), LayerDemand("a", 1, 2)], budget=10)
    with pytest.raises(ValueError):
        LayerDemand("a", 0, 10)
    with pytest.raises(ValueError):
        LayerDemand("a", 1, 0)
    with pytest.raises(ValueError):
        LayerDemand("a", 1, 10, max_copies=2, fixed_copies=3)
    with pytest.raises(ValueError):
        solve_replication(layers, input_bits=0, budget=10)
