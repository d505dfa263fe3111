"""Probe: would the grasp check judge better with more lifted grasps than the 4,000 it is fitted on?

Why: the checks fitted so far validate at AUC 0.925-0.971 on their agents' grasps, and the agents that lose
the most accepted grasps have the weakest checks (seed 5: AUC 0.933, 111 accepted grasps lost over 30 object
sets against the shipped agent's 76). An unloaded training run reaches its step cap with 10-20 of its 120
minutes to spare, which could buy more grasps for the check. This reads a run's stored ``check_data.h5``,
holds out a fifth of its grasps as ``fit_check`` does (the same fifth when ``--seed`` is the seed the check
was fitted with: the run's seed for ``rcan train-agent``, 0 for ``rcan train-check``), fits fresh copies of
the critic on growing fractions of the remaining grasps with ``fit_check``'s own training loop, and prints
the validation AUC of each. If it still climbs from half to all of the grasps, more grasps would help.

    .venv/bin/python benchmarks/probe_check_data_size.py RUN [--fractions 0.25 0.5 1] [--lift 3] [--confirm 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from rcan.common.atomic import write_json_atomic
from rcan.qtopt.agent import load_network, resolve_agent_path
from rcan.qtopt.grasp_check import CHECK_DATA_FILE, load_check_data, split_check_rows, train_check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory with agent.safetensors and check_data.h5")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--lift", type=int, default=3, help="the check's first look (4 cm steps up)")
    p.add_argument("--confirm", type=int, default=1, help="the second look's extra steps, as collected")
    p.add_argument("--seed", type=int, default=0, help="the held-out fifth's seed (as fit_check's)")
    p.add_argument("--out", help="JSON file for the figures (default RUN/check-data-size.json)")
    args = p.parse_args(argv)
    if not all(0 < f <= 1 for f in args.fractions):
        p.error("--fractions must be in (0, 1]")
    try:
        agent = resolve_agent_path(args.run)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    data_path = agent.parent / CHECK_DATA_FILE
    if not data_path.is_file():
        p.error(f"{data_path} not found: fit the check first (rcan train-check --agent {args.run})")
    collect_lift = args.lift + args.confirm
    try:
        data = load_check_data(data_path, {"lift": collect_lift})
    except ValueError as err:
        p.error(str(err))
    if data is None:
        p.error(f"{data_path} does not hold grasps lifted --lift + --confirm = {collect_lift} steps")
    train, _, val, _ = split_check_rows(data, args.lift, collect_lift, False, args.seed)
    train_ids = np.unique(data["grasps"][train])
    order = np.random.default_rng(args.seed + 7).permutation(train_ids)
    rows = []
    for fraction in sorted(args.fractions):
        keep = order[: max(1, round(fraction * len(order)))]
        subset = train[np.isin(data["grasps"][train], keep)]
        net, _ = load_network(agent)  # a fresh copy of the critic each time, as fit_check starts
        t0 = time.time()
        best, history = train_check(net, data, subset, val, seed=args.seed)
        rows.append(
            {
                "fraction": fraction,
                "train_grasps": int(len(keep)),
                "val_grasps": int(len(np.unique(data["grasps"][val]))),
                "val_auc": best,
                "best_epoch": int(max(history, key=lambda h: h["val_auc"])["epoch"]),
                "minutes": (time.time() - t0) / 60,
            }
        )
        r = rows[-1]
        print(f"{r['train_grasps']:5d} training grasps: validation AUC {best:.4f} (epoch {r['best_epoch']})")
    out = Path(args.out) if args.out else agent.parent / "check-data-size.json"
    summary = {"run": str(args.run), "lift": args.lift, "confirm": args.confirm, "rows": rows}
    write_json_atomic(out, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
