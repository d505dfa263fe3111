"""Probe: how far a better grasp check could take an agent: the same acting procedure with a perfect check.

Why: with its fitted check (validation AUC ~0.94-0.96) an agent's checked attempts succeed 84.7-90.0% over
five object sets. Most failures then either ran out of steps after rejected grasps or were accepted by the
check and lost. A check that is never wrong bounds what more check data, a larger check network or other
check inputs could gain. Here the check is the simulator itself: at the lifted state it judges "terminate
here" counterfactually (``GraspEnv.try_grasps``: lift, test, put the world back) and accepts exactly the
grasps that would succeed. Everything else is ``rcan evaluate``'s protocol with the agent's own
``CheckedPolicy`` settings (lift, threshold, steps left), so the figure compares with the agent's
``benchmarks/eval_object_sets.py`` result. Privileged; a probe, never a product path.

    .venv/bin/python benchmarks/probe_oracle_check.py [RUN] [--sets 5] [--out RUN/oracle-check.json] \\
        [--lift L] [--min-steps-left K]

``--lift`` / ``--min-steps-left`` act with other settings than the check's own: a never-wrong check needs
no evidence from a lift, so a shorter lift bounds what a faster (as good) check would gain: more grasps.

Writes the summary and every attempt to OUT, and the checked states (prepared images and states, the
outcome, the gripper's opening) to OUT with ``.npz``, on which other checks can be scored offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import rcan.qtopt.evaluate as evaluate
from rcan.qtopt.agent import load_agent, resolve_agent_path
from rcan.qtopt.grasp_check import TERMINATE_HERE, CheckedPolicy, auc, check_path, load_check, with_check


class OracleCheck(nn.Module):
    """Stands in for the check network: a logit of +-20 from the simulator's own judgement of
    terminating at the current state (``env`` is set once the protocol has built its environment). Logs,
    at every check, the agent's own (learned) check estimate, the gripper's opening and the outcome, so one
    run also measures the learned check on test objects."""

    def __init__(self, learned: nn.Module) -> None:
        super().__init__()
        self.env: Any = None
        self.learned = learned
        self.log: list[dict[str, Any]] = []
        self.states: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        rewards, _ = self.env.try_grasps(TERMINATE_HERE[None])
        success = bool(rewards[0] > 0)
        p = float(torch.sigmoid(self.learned(images, states, actions))[0])
        self.states.append((images[0].numpy().copy(), states[0].numpy().copy()))
        self.log.append(
            {"learned": round(p, 4), "opening": self.env.cell.gripper.opening(), "success": success}
        )
        return torch.full((len(images),), 20.0 if success else -20.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=str(evaluate.ASSET_AGENT), help="an agent with a check")
    p.add_argument("--sets", type=int, default=5)
    p.add_argument("--attempts", type=int, default=102)
    p.add_argument("--out", type=Path, default=None, help="default: RUN/oracle-check.json")
    p.add_argument(
        "--lift", type=int, default=None, help="4 cm steps up before the check (default: the check's)"
    )
    p.add_argument(
        "--min-steps-left",
        type=int,
        default=None,
        help="reopen only with this many steps left (default: the check's)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    path = resolve_agent_path(a.run)
    oracle = OracleCheck(load_check(check_path(path))[0])
    make_env = evaluate.make_eval_env

    def make_and_bind(*args: Any, **kwargs: Any) -> Any:
        oracle.env = make_env(*args, **kwargs)
        return oracle.env

    evaluate.make_eval_env = make_and_bind  # the protocol builds its env inside; the oracle needs it
    per_set, rows = [], []
    for seed in range(a.sets):
        policy = with_check(load_agent(path, seed=seed), path, lift=a.lift, min_steps_left=a.min_steps_left)
        if not isinstance(policy, CheckedPolicy):
            p.error(f"{a.run} has no grasp check (check.safetensors)")
        policy.check = oracle
        r = evaluate.evaluate_policy(
            policy,
            "canonical",
            a.attempts,
            seed,
            image_size=policy.network.config.image_size,
            strip_attempts=0,
            camera=policy.camera,
        )
        per_set.append(r["successes"] / r["attempts"])
        rows += r["per_attempt"]
        print(f"set {seed}: {r['successes']}/{r['attempts']}", flush=True)
    k, n = sum(x["success"] for x in rows), len(rows)
    summary = {
        "agent": str(path),
        "check": "oracle (simulator's counterfactual judgement at the lifted state)",
        "config": dataclasses.asdict(policy.config),
        "successes": k,
        "attempts": n,
        "success_rate": k / n,
        "wilson95": list(evaluate.wilson_interval(k, n)),
        "per_set": per_set,
        "mean_steps": float(np.mean([x["steps"] for x in rows])),
        "mean_grasps": float(np.mean([x["grasps"] for x in rows])),
        "failed_after_last_check_rejected": sum(
            (not x["success"]) and bool(x["checks"]) and x["checks"][-1] < 0.5 for x in rows
        ),
        "failed_without_a_check": sum((not x["success"]) and not x["checks"] for x in rows),
        "checks": len(oracle.log),
        "checks_success": sum(c["success"] for c in oracle.log),
        "learned_auc": auc(
            np.array([c["learned"] for c in oracle.log]), np.array([c["success"] for c in oracle.log])
        ),
    }
    if not np.isfinite(summary["learned_auc"]):
        summary["learned_auc"] = None  # no failed (or no successful) check: undefined
    out = a.out or path.parent / "oracle-check.json"
    out.write_text(json.dumps({"summary": summary, "per_attempt": rows, "checks": oracle.log}) + "\n")
    if oracle.states:  # the checked states themselves, to score other checks on them offline
        np.savez_compressed(
            out.with_suffix(".npz"),
            images=np.stack([im for im, _ in oracle.states]),
            states=np.stack([st for _, st in oracle.states]),
            success=np.array([c["success"] for c in oracle.log]),
            opening=np.array([c["opening"] for c in oracle.log], np.float32),
        )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
