"""How well a grasp check's estimate predicts the grasps it accepts: held rate per estimate bin.

Why: a third of a checked agent's failures are grasps the check accepted that were then lost in the final
lift. If those sat just above the threshold, a higher threshold would turn them into reopenings; if they
are spread over all estimates, no threshold helps and the loss is the grasp's, not the check's. This reads
the per-attempt records that ``rcan evaluate`` writes (``result.json``, the last check of each attempt
and its outcome), so it costs no simulation: point it at the ``eval-s*`` folders that
``benchmarks/eval_object_sets.py`` leaves in a run.

    .venv/bin/python benchmarks/check_calibration.py runs/dist-s0 runs/dist-s1 [--bins 0.6 0.7 0.8 0.9 0.95 0.98]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories holding eval-s*/result.json")
    p.add_argument("--bins", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 0.95, 0.98],
                   help="lower edges of the estimate bins (the last bin ends at 1)")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
