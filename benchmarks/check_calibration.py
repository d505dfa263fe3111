"""How well a grasp check's estimate predicts the grasps it accepts: held rate per estimate bin.

Why: a third of a checked agent's failures are grasps the check accepted that were then lost in the final
lift. If those sat just above the threshold, a higher threshold would turn them into reopenings; if they
are spread over all estimates, no threshold helps and the loss is the grasp's, not the check's. This reads
the per-attempt records that ``rcan evaluate`` writes (``result.json``, the last check of each attempt
and its outcome), so it costs no simulation: point it at the ``eval-s*`` folders that
``benchmarks/eval_object_sets.py`` leaves in a run.

    .venv/bin/python benchmarks/check_calibration.py runs/dist-s0 runs/dist-s1 [--bins 0.6 0.7 0.8 0.9 0.95 0.98]

``--by-room`` (needs evaluations that record ``check_steps``, from 2026-12-07 on) asks whether the
threshold should depend on the steps left: a reopening with many steps left succeeds more often than one
with few, so the break-even estimate moves with the room. It tabulates what a reopening was worth at each
number of steps left, and what a grasp held at each estimate (accepted or ended anyway), and estimates, to
first order (each changed decision valued by those tables, what follows it otherwise unchanged), what a
threshold set per room would win over the run's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def accepted_checks(run: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(estimate, held) of every attempt whose last check accepted, over the run's ``eval-s*/result.json``,
    and how many attempts had their first grasp reopened and how many of those still succeeded."""
    files = sorted(run.glob("eval-s*/result.json"))
    if not files:
        raise SystemExit(f"{run}: no eval-s*/result.json (run benchmarks/eval_object_sets.py {run} first)")
    est, held, reopened, recovered = [], [], 0, 0
    for f in files:
        result = json.loads(f.read_text())
        checks = result.get("checks") or {}
        reopened += int(checks.get("first_reopened", 0))
        recovered += int(checks.get("succeeded_after_first_reopen", 0))
        for a in result.get("per_attempt", []):
            decisions = a.get("check_decisions") or []
            if decisions and decisions[-1] == "accept":
                est.append(float(a["checks"][-1]))
                held.append(bool(a["success"]))
    return np.asarray(est), np.asarray(held, dtype=bool), reopened, recovered


def decisions(run: Path) -> tuple[list[tuple[float, int, str, bool]], int]:
    """(estimate, steps left including the check's own, decision, attempt succeeded) of every final check
    (early checks left out) over the run's ``eval-s*/result.json``, and how many attempts those hold."""
    rows, max_steps, attempts = [], None, 0
    for f in sorted(run.glob("eval-s*/result.json")):
        result = json.loads(f.read_text())
        attempts += int(result["attempts"])
        max_steps = int((result.get("grasp_check") or {}).get("max_steps", 20))
        for a in result.get("per_attempt", []):
            if a.get("check_decisions") and "check_steps" not in a:
                raise SystemExit(f"{f}: no check_steps (evaluated before 2026-12-07); evaluate again for --by-room")
            for p, step, d in zip(a.get("checks", []), a.get("check_steps", []), a.get("check_decisions", []),
                                  strict=True):
                if not d.startswith("early"):
                    rows.append((float(p), max_steps - step + 1, d, bool(a["success"])))
    return rows, attempts


def by_room(rows: list[tuple[float, int, str, bool]], attempts: int, bins: list[float]) -> None:
    """Print the room tables and the first-order gain of the best threshold per room (see the docstring)."""
    est = np.array([r[0] for r in rows])
    left = np.array([r[1] for r in rows])
    dec = np.array([r[2] for r in rows])
    ok = np.array([r[3] for r in rows])
    reopen, kept = dec == "reopen", np.isin(dec, ["accept", "end"])
    rooms = sorted(set(left[reopen].tolist()))
    retry = {L: ok[reopen & (left == L)].mean() for L in rooms}
    print("\nsteps left at the check: reopenings and how many of those attempts still succeeded")
    for L in rooms:
        print(f"  {L:2d}: {int((reopen & (left == L)).sum()):5d} reopened, {100 * retry[L]:5.1f}% succeeded")
    edges = np.array([0.0, *[b for b in bins if b > 0], 1.0 + 1e-9])
    print("estimate: grasps kept (accepted or ended anyway) and held")
    hold = np.full(len(edges) - 1, np.nan)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        m = kept & (est >= lo) & (est < hi)
        if m.any():
            hold[i] = ok[m].mean()
        print(f"  [{lo:.2f}, {min(hi, 1.0):.2f}): {int(m.sum()):5d} kept, "
              + (f"{100 * hold[i]:5.1f}% held" if m.any() else "    -"))
    bin_of = np.clip(np.searchsorted(edges, est, side="right") - 1, 0, len(hold) - 1)
    print("per room, the threshold (of the bins' edges) that wins most against the run's own decisions:")
    total = 0.0
    for L in rooms:
        at = left == L
        best_t, best_gain = None, 0.0
        for t in edges[1:-1]:
            to_keep = at & reopen & (est >= t) & ~np.isnan(hold[bin_of])
            to_reopen = at & (dec == "accept") & (est < t)
            gain = float((hold[bin_of[to_keep]] - ok[to_keep]).sum() + (retry[L] - ok[to_reopen]).sum())
            if gain > best_gain:
                best_t, best_gain = t, gain
        total += best_gain
        if best_t is not None:
            print(f"  {L:2d} steps left: threshold {best_t:.2f}, {best_gain:+.1f} attempts")
    print(f"first-order gain of a threshold per room: {total:+.1f} attempts of {attempts} "
          f"({100 * total / attempts:+.2f} points; fitted on these attempts, so optimistic)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories holding eval-s*/result.json")
    p.add_argument("--bins", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 0.95, 0.98],
                   help="lower edges of the estimate bins (the last bin ends at 1)")
    p.add_argument("--by-room", action="store_true",
                   help="also tabulate by steps left at the check (needs check_steps in the evaluations)")
    args = p.parse_args(argv)
    if sorted(args.bins) != args.bins or not all(0.0 <= b < 1.0 for b in args.bins):
        p.error("--bins must be increasing values in [0, 1)")
    found = [accepted_checks(r) for r in args.runs]
    est = np.concatenate([f[0] for f in found])
    held = np.concatenate([f[1] for f in found])
    reopened, recovered = sum(f[2] for f in found), sum(f[3] for f in found)
    if est.size == 0:
        print("no accepted checks in these runs (agents without a grasp check?)", file=sys.stderr)
        return 1
    print(f"{est.size} accepted grasps, {int((~held).sum())} lost after acceptance "
          f"({100 * (~held).mean():.1f}%)")
    p_retry = recovered / reopened if reopened else float("nan")
    print(f"after a rejected first grasp {recovered} of {reopened} attempts still succeeded "
          f"({100 * p_retry:.1f}%): the chance a reopening is worth")
    print("estimate      accepted   held  lost | raising the threshold to the bin's top reopens: "
          "failures, held grasps, net attempts won (at that retry rate; optimistic, late retries have less room)")
    edges = [*args.bins, 1.0 + 1e-9]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (est >= lo) & (est < hi)
        n = int(m.sum())
        rate = f"{100 * held[m].mean():5.1f}%" if n else "    -"
        below = est < hi
        lost_below, held_below = int((~held[below]).sum()), int(held[below].sum())
        net = lost_below * p_retry - held_below * (1.0 - p_retry)
        print(f"[{lo:.2f}, {min(hi, 1.0):.2f})  {n:8d}  {rate}  {int((~held[m]).sum()):4d} | "
              f"{lost_below:5d} {held_below:5d} {net:+7.1f}")
    if args.by_room:
        found_rooms = [decisions(r) for r in args.runs]
        by_room([row for rows, _ in found_rooms for row in rows], sum(n for _, n in found_rooms),
                [0.2, 0.3, 0.4, 0.5, *args.bins])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
