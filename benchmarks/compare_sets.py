"""Compare two agents (or two acting settings) set by set over the object sets both were evaluated on.

Why: an object set's 102 attempts vary by several points from set to set, for every agent alike, so two
figures pooled over different sets (or over the same sets, side by side) hide most of what a lever does.
Pairing by set removes the set's difficulty: this prints, over the sets both runs hold
(``eval-s*/result.json`` from ``benchmarks/eval_object_sets.py``), each run's pooled rate with its Wilson
interval, the mean per-set difference B - A with a 95% t-interval, on how many sets B did better, worse or
the same, and a two-sided sign test. Several pairs (one per training seed, say) pool their per-set
differences. No simulation. A run may also be given as a JSON file with the per-set figures, so that an
agent evaluated once need not be evaluated again: an ``eval-sets.json`` that ``eval_object_sets.py``
wrote, or a file kept in ``docs/results`` (``docs/results/shipped/sets.json`` holds the shipped agent's).

    .venv/bin/python benchmarks/compare_sets.py runs/baseline runs/lever [BASE2 LEVER2 ...] [--first 0 --sets 15]
    .venv/bin/python benchmarks/compare_sets.py docs/results/shipped/sets.json runs/lever
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, t

from rcan.qtopt.evaluate import wilson_interval


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test p-value (ties dropped)."""
    return binomtest(better, better + worse).pvalue if better + worse else 1.0


def per_set_file(path: Path) -> dict[int, tuple[int, int]]:
    """Object set -> (successes, attempts) from a JSON file: ``per_set_counts`` ({set: [k, n]}), or
    ``per_set`` as [k, n] pairs, or (older ``eval-sets.json``) as rates with the pooled ``attempts`` split
    evenly over the sets."""
    try:
        d = json.loads(path.read_text())
        table = d.get("per_set_counts") or d["per_set"]
        if all(isinstance(v, list) for v in table.values()):
            return {int(s): (int(k), int(n)) for s, (k, n) in table.items()}
        each = int(d["attempts"]) // len(table)
        if each * len(table) != int(d["attempts"]):
            raise ValueError(f"{d['attempts']} attempts do not split evenly over {len(table)} sets")
        return {int(s): (round(float(r) * each), each) for s, r in table.items()}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise SystemExit(f"{path}: not a per-set results file ({type(e).__name__}: {e})") from None


def per_set(run: Path) -> dict[int, tuple[int, int]]:
    """Object set -> (successes, attempts) from a run's ``eval-s<N>/result.json`` (test objects), or from
    a per-set JSON file (``per_set_file``)."""
    if run.is_file():
        return per_set_file(run)
    out: dict[int, tuple[int, int]] = {}
    for f in run.glob("eval-s*/result.json"):
        m = re.fullmatch(r"eval-s(\d+)", f.parent.name)
        if m:
            r = json.loads(f.read_text())
            out[int(m.group(1))] = (int(r["successes"]), int(r["attempts"]))
    if not out:
        raise SystemExit(f"{run}: no eval-s*/result.json (run benchmarks/eval_object_sets.py {run} first)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="pairs of runs with eval-s* folders (or per-set JSON files): a baseline, then the run "
                   "compared with it")
    p.add_argument("--first", type=int, default=None, help="only sets >= FIRST")
    p.add_argument("--sets", type=int, default=None, help="only sets first..first+SETS-1")
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        p.error("give the runs in pairs: BASELINE COMPARED [BASELINE2 COMPARED2 ...]")
    diffs: list[np.ndarray] = []
    for base, other in zip(args.runs[::2], args.runs[1::2], strict=True):
        d = compare(base, other, args.first, args.sets)
        if d is None:
            return 1
        diffs.append(d)
    if len(diffs) > 1:
        print(f"all {len(diffs)} pairs:")
        report(np.concatenate(diffs))
    return 0


def report(diff: np.ndarray) -> None:
    """Mean per-set difference with its t-interval, better/worse/equal counts and the sign test."""
    better, worse = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
    mean = float(diff.mean())
    if len(diff) > 1:
        half = float(t.ppf(0.975, len(diff) - 1)) * float(diff.std(ddof=1)) / math.sqrt(len(diff))
        ci = f" [{mean - half:+.1f}, {mean + half:+.1f}] (95% t-interval over sets)"
    else:
        ci = ""
    print(f"  B - A: {mean:+.2f} points per set{ci}; better on {better}, worse on {worse}, "
          f"equal on {len(diff) - better - worse}; sign test p = {sign_test(better, worse):.2f}")


def compare(run_a: Path, run_b: Path, first: int | None, sets: int | None) -> np.ndarray | None:
    """Print both runs' figures over their common sets and B - A per set; returns those differences."""
    a, b = per_set(run_a), per_set(run_b)
    common = sorted(set(a) & set(b))
    if first is not None or sets is not None:
        lo = first or 0
        hi = lo + sets if sets is not None else math.inf
        common = [s for s in common if lo <= s < hi]
    if not common:
        print(f"no object set evaluated in both {run_a} and {run_b}", file=sys.stderr)
        return None
    if any(a[s][1] != b[s][1] for s in common):
        print("warning: the runs used different numbers of attempts on some sets", file=sys.stderr)
    print(f"{len(common)} common object sets: {common[0]}..{common[-1]}" if common == list(
        range(common[0], common[-1] + 1)) else f"{len(common)} common object sets: {common}")
    for name, d in ((run_a, a), (run_b, b)):
        k, n = sum(d[s][0] for s in common), sum(d[s][1] for s in common)
        lo_, hi_ = wilson_interval(k, n)
        print(f"  {name}: {100 * k / n:.1f}% [{100 * lo_:.1f}, {100 * hi_:.1f}] ({k}/{n})")
    diff = np.array([b[s][0] / b[s][1] - a[s][0] / a[s][1] for s in common]) * 100
    report(diff)
    return diff


if __name__ == "__main__":
    raise SystemExit(main())
