"""Hybrid training's writes under the offset and bit-sliced weight encodings (cimc.weight_encoding; `cimc tune
--method fc`, `--layers`). The pair's rule (+dG/2 on g+, -dG/2 on g-) is cimc.training's; here, for a change of
the signed level matrix `dlevel` (weight-level units: one level is one device step of the lowest slice), each
device gets a new goal, and only devices whose goal changes are written:

* offset: the weight's one unipolar device takes the whole change (a reference column, where the target has one,
  is left as programmed: it is every column's zero), dG = dlevel * step, where |dG| reaches the
  threshold; its goal (continuous, as the pair's) is clipped to the levels that hold the encoding's weights,
  w + (L-1)//2 in [0, 2 (L-1)//2] (= [0, L-1] for odd L; for even L the top level stays unused, as at compile, so
  that every tuned weight stays within +-(L-1)//2, the range the readers' exactness bounds assume).
* bit-sliced: carry-aware. Where |dlevel| * step reaches the threshold, the integer change rint(dlevel) is added to
  the whole weight that the devices' goals hold (sum_s L^s (g+_s - g-_s), goals on the level grid), the sum is
  clipped to +-(L^S - 1), split into slices again (cimc.weight_encoding.encode), and every device whose level
  differs gets the new level as its goal. A carry writes several slices (2-bit cells x 4: 63 -> 64 rewrites
  digits (3, 3, 3, 0) to (0, 0, 0, 1), four devices); a sign change moves digits from g+ to g-. Changes below
  half a level round to none, so the threshold in effect is max(threshold, step / 2).
The goals then go to the chip as any write does (cimc.training._Writer: programming error, write-verify, or the
target's pulse model), and writes and pulses are counted per device written."""
from __future__ import annotations

import numpy as np

from cimc.weight_encoding import encode, offset_level, tile_planes


def layer_devices(op, target) -> int:
    """Devices of the op's weights on every placement: one per weight (offset) or 2 per slice (bit-sliced)."""
    planes = 1 if target.weights.encoding == "offset" else 2 * target.weights.slices
    return sum(planes * t.row_count * t.col_count * len(t.placements) for t in op.tiles)


def least_change_us(target) -> float:
    """The least weight change (conductance units) that writes anything besides the threshold: half a level for
    bit slices (rint rounds less to none), 0 for the pair and offset (continuous goals)."""
    return target.device.step_us / 2 if target.weights.encoding == "bit-sliced" else 0.0


def new_goals(op, dlevel: np.ndarray, target, array_ids: list[int], goals_us: np.ndarray,
              threshold_us: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, goals): the devices of the op's arrays that get a new goal, and the goals (uS, [len(ids), rows,
    cols], equal to `goals_us` elsewhere) for the change `dlevel` (K x N) of its signed levels (module doc)."""
    dev = target.device
    step, g_min = dev.step_us, dev.g_min_us
    index = {a: i for i, a in enumerate(array_ids)}
    goals = goals_us.copy()
    mask = np.zeros(goals.shape, bool)
    offset = target.weights.encoding == "offset"
    for tile in op.tiles:
        block = dlevel[tile.row_start:tile.row_start + tile.row_count,
                       tile.col_start:tile.col_start + tile.col_count]
        asked = np.abs(block) * step >= threshold_us
        for placement in tile.placements:
            i = index[placement.array]
            planes = tile_planes(tile, placement, target)
            if offset:
                (rows, cols) = planes[0]         # a reference column's devices (planes[1]) are never tuned
                now = goals[i][rows, cols]
                top = g_min + 2 * offset_level(target) * step
                new = np.where(asked, np.clip(now + block * step, g_min, top), now)
                _put(goals, mask, i, rows, cols, new, new != now)
                continue
            levels = [_levels(goals[i][rows, cols], dev) for rows, cols in planes]
            weight = _weight(levels, dev.levels)
            change = np.where(asked, np.rint(block), 0).astype(np.int64)
            top = target.max_weight_level
            wanted = encode(np.clip(weight + change, -top, top), target)
            for (rows, cols), old, new in zip(planes, levels, wanted):
                _put(goals, mask, i, rows, cols, g_min + new.astype(np.float64) * step, new != old)
    return mask, goals


def _levels(goal_us: np.ndarray, dev) -> np.ndarray:
    """The device levels that goals on the level grid stand for."""
    return np.clip(np.rint((goal_us - dev.g_min_us) / dev.step_us), 0, dev.max_level).astype(np.uint8)


def _weight(planes: list[np.ndarray], base: int) -> np.ndarray:
    """The signed integer weight (int64) the slice pairs' levels hold: sum_s L^s (g+_s - g-_s)."""
    total = np.zeros(planes[0].shape, np.int64)
    for s in range(len(planes) // 2):
        total += base ** s * (planes[2 * s].astype(np.int64) - planes[2 * s + 1].astype(np.int64))
    return total


def _put(goals, mask, i, rows, cols, new, changed) -> None:
    """Set the changed devices' goals (rows may be a permutation: defect-aware placement's row_order)."""
    view = goals[i][rows, cols]
    goals[i][rows, cols] = np.where(changed, new, view)
    m = mask[i][rows, cols]
    mask[i][rows, cols] = m | changed
