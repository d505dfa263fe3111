"""Probe (acting): end the attempt whenever the critic's best closing beats the action its free search took.

Why: ``probe_end_vs_go.py`` found states where the critic, searched with close and terminate held on,
rates ending higher than the action its free CEM search (64 x 2 over all six dimensions) returns, yet
the policy goes on. This acting rule makes a second, held search at every step with the gripper open and
takes that closing when its Q is higher; the agent's grasp check then judges it as any other. Evaluated
on object sets ``first..first+sets-1`` (102 attempts each, two processes), written as a per-set JSON
file that ``compare_sets.py`` pairs with the plain agent (e.g. ``docs/results/shipped/sets.json``).

    .venv/bin/python benchmarks/probe_end_if_better.py rcan/assets/agent --out runs/end-if-better [--sets 10]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def evaluate_set(agent: str, object_set: int) -> dict[str, Any]:
    """One object set's 102 attempts with the rule; successes, attempts and how often the rule ended."""
    import torch

    from rcan.qtopt.agent import load_agent, resolve_agent_path
    from rcan.qtopt.evaluate import evaluate_policy
    from rcan.qtopt.grasp_check import with_check

    torch.set_num_threads(1)
    path = resolve_agent_path(agent)
    policy = load_agent(path, seed=object_set)
    extra = torch.Generator().manual_seed(10_000 + object_set)  # the held search's own random numbers
    stats = {"ends_taken": 0, "steps": 0}

    def act(obs: Any, info: Any = None) -> Any:
        image, state = policy.prepare(obs)
        a, q = policy.act_prepared(image, state)
        stats["steps"] += 1
        if state[0] <= 0.5 and not (a[4] > 0 and a[5] > 0):
            a_end, q_end = policy.act_prepared(image, state, fixed={4: 1.0, 5: 1.0}, generator=extra)
            if q_end > q:
                stats["ends_taken"] += 1
                return a_end
        return a

    policy.act = act  # the check wraps this policy and asks it for each action
    result = evaluate_policy(with_check(policy, path), "canonical", attempts=102, seed=object_set, strip_attempts=0)
    return {"successes": result["successes"], "attempts": result["attempts"], **stats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("agent", help="an agent run or file with its grasp check (rcan train-agent --out)")
    p.add_argument("--out", type=Path, required=True, help="folder for sets.json")
    p.add_argument("--sets", type=int, default=10, help="object sets first..first+sets-1")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    if a.sets < 1 or a.first < 0 or a.jobs < 1:
        p.error("--sets and --jobs must be >= 1, --first >= 0")
    sets = list(range(a.first, a.first + a.sets))
    with ProcessPoolExecutor(a.jobs) as pool:
        results = dict(zip(sets, pool.map(evaluate_set, [a.agent] * len(sets), sets), strict=True))
    k, n = sum(r["successes"] for r in results.values()), sum(r["attempts"] for r in results.values())
    ends, steps = sum(r["ends_taken"] for r in results.values()), sum(r["steps"] for r in results.values())
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {"agent": a.agent, "rule": "end when the held closing search beats the free search",
               "attempts": n, "successes": k, "ends_taken": ends, "steps": steps,
               "per_set_counts": {str(s): [r["successes"], r["attempts"]] for s, r in results.items()}}
    (a.out / "sets.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.agent}: {k}/{n} = {k / n:.1%} with the rule; it ended {ends} times in {steps} steps; "
          f"wrote {a.out / 'sets.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
