"""Probe: how does a trained critic weigh "close and end here" against "go on", step by step?

Why: an agent trained with one-step targets (``n_step=1``, 2026-12-08) seldom ended an attempt itself:
it closed without terminating and reopened, and half its attempts never chose close-and-terminate before
the last step. This replays the protocol's scenes (object set ``--set``, the greedy policy as trained,
one view, no grasp check) and at every step asks the critic for two values by CEM with action
dimensions held: the best closing that ends the attempt (close and terminate held on) and the best action
that does not end it (terminate held off, anything else free). It prints their means by step and how
often the policy ended the attempt there. No training; a few seconds per attempt.

    .venv/bin/python benchmarks/probe_end_vs_go.py runs/A [runs/B ...] [--attempts 20] [--set 0]
"""

from __future__ import annotations

import argparse

import numpy as np

BINS = ((0, 5), (5, 10), (10, 15), (15, 20))


def probe(agent: str, attempts: int, object_set: int) -> None:
    """Print, for one agent, Q(end here) and Q(go on) by step of the attempt, and its success rate."""
    import torch

    from rcan.qtopt.agent import load_agent
    from rcan.qtopt.evaluate import protocol_scenes

    policy = load_agent(agent, view_shifts=1, rerank=0)
    extra = torch.Generator().manual_seed(1)  # the probes' own searches leave the policy's stream alone
    rows, successes = [], []
    for env, obs, info, _ in protocol_scenes(policy, object_set, attempts):
        for t in range(env.max_steps):
            image, state = policy.prepare(obs)
            q_end = policy.act_prepared(image, state, fixed={4: 1.0, 5: 1.0}, generator=extra)[1]
            q_go = policy.act_prepared(image, state, fixed={5: -1.0}, generator=extra)[1]
            a = policy.act(obs, info)
            rows.append((t, q_end, q_go, float(a[4] > 0 and a[5] > 0)))
            obs, _, done, _, info = env.step(a)
            if done:
                break
        successes.append(bool(info.get("is_success", False)))
    r = np.array(rows)
    print(f"{agent}: {len(successes)} attempts on object set {object_set}, success {np.mean(successes):.0%}, "
          f"{len(r)} steps; Q(end) {r[:, 1].mean():.3f}, Q(go on) {r[:, 2].mean():.3f}")
    for lo, hi in BINS:
        s = r[(r[:, 0] >= lo) & (r[:, 0] < hi)]
        if len(s):
            print(f"  steps {lo:2d}-{hi - 1:2d}: {len(s):4d} states, Q(end) {s[:, 1].mean():.3f}, Q(go on) "
                  f"{s[:, 2].mean():.3f}, go on - end {np.mean(s[:, 2] - s[:, 1]):+.3f}, "
                  f"Q(end) higher in {np.mean(s[:, 1] > s[:, 2]):.0%}, ended there {s[:, 3].mean():.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("agents", nargs="+", help="agent runs or files (rcan train-agent --out)")
    p.add_argument("--attempts", type=int, default=20, help="protocol attempts per agent")
    p.add_argument("--set", type=int, default=0, dest="object_set", help="the test-object set (evaluate --seed)")
    a = p.parse_args(argv)
    if a.attempts < 1 or a.object_set < 0:
        p.error("--attempts must be >= 1 and --set >= 0")
    import torch

    torch.set_num_threads(1)
    for agent in a.agents:
        probe(agent, a.attempts, a.object_set)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
