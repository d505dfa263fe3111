"""Score grasp checks offline on stored check states (from ``probe_oracle_check.py``'s ``.npz``).

Why: a check's validation AUC is measured on lifted grasps of *training* objects, the only ones it may be
fitted on; what matters is how it judges the states it meets in ``rcan evaluate`` (test objects, after the
agent's own first and second closings). The oracle probe stores those states with their true outcome, so
any check file (refitted, with more data, averaged over shifted views) can be compared on the same states
without running episodes. Prints, per check and number of views: AUC, and at the threshold the failures
it would accept and the successes it would reject.

    .venv/bin/python benchmarks/score_check.py runs/oracle/shipped.npz CHECK.safetensors [...] \\
        [--view-shifts 1 5 9] [--threshold 0.6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rcan.qtopt.agent import VIEW_SHIFTS
from rcan.qtopt.grasp_check import auc, check_probability, load_check


def estimates(check: torch.nn.Module, images: np.ndarray, states: np.ndarray, views: int) -> np.ndarray:
    """The check's success estimate per state, exactly as ``CheckedPolicy`` computes it when acting."""
    return np.array([check_probability(check, im, st, views) for im, st in zip(images, states, strict=True)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("states", type=Path, help="an .npz from probe_oracle_check.py")
    p.add_argument("checks", type=Path, nargs="+", help="check files (check.safetensors)")
    p.add_argument("--view-shifts", type=int, nargs="+", default=[1], choices=range(1, len(VIEW_SHIFTS) + 1))
    p.add_argument("--threshold", type=float, default=0.6)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    d = np.load(a.states)
    images, states, success = d["images"], d["states"], d["success"].astype(bool)
    print(f"{len(success)} checked states, {success.sum()} would succeed")
    rows = []
    for path in a.checks:
        check = load_check(path)[0]
        for views in a.view_shifts:
            est = estimates(check, images, states, views)
            accept = est >= a.threshold
            row = {
                "check": str(path),
                "views": views,
                "auc": round(auc(est, success), 4),
                "accepted_failures": int((accept & ~success).sum()),
                "rejected_successes": int((~accept & success).sum()),
            }
            rows.append(row)
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
