"""Probe: where an attempt's 20 steps go when an agent acts with its grasp check.

Why: with the check (``rcan/qtopt/grasp_check.py``) most failures are attempts whose grasps the check
rejected until no room was left for another checked grasp. This runs ``rcan evaluate``'s protocol on one
object set with a recorder around the checked policy (it only reads what the policy sees and does) and
reports: the step of the first checked closing, the descent speed before it, the step of each check, how
often a rejected first grasp still ends in a success, and how far (dead-reckoned from the commanded
moves, 4 cm and 15 degrees per unit, ignoring the workspace clip) the next closing lies from the rejected
one. Writes every attempt's trace (phase, gripper height, action per step) to ``OUT``.

    .venv/bin/python benchmarks/probe_attempt_trace.py runs/my-agent [--seed 0] [--attempts 102] \\
        [--out runs/my-agent/trace-s0.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcan.qtopt.agent import load_agent, resolve_agent_path
from rcan.qtopt.evaluate import evaluate_policy
from rcan.qtopt.grasp_check import CheckedPolicy, with_check

MAX_TRANSLATION_CM, MAX_ROTATION_DEG = 4.0, 15.0


class Recorder:
    """Forwards to a ``CheckedPolicy`` and records, per step, its phase, the gripper height and the action."""

    def __init__(self, policy: CheckedPolicy) -> None:
        self.policy, self.traces = policy, []

    def __getattr__(self, name: str) -> Any:
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def reset(self, info: Any = None) -> None:
        self.traces.append([])
        self.policy.reset(info)

    def act(self, obs: Any, info: Any = None) -> np.ndarray:
        phase = self.policy._phase  # before acting: what this step's action is part of
        a = self.policy.act(obs, info)
        row = {
            "phase": phase,
            "z": round(float(obs["gripper_height"][0]), 4),
            "a": [round(float(x), 3) for x in a],
        }
        self.traces[-1].append(row)
        return a


def checked_closings(trace: list[dict[str, Any]]) -> list[int]:
    """Steps (0-based) whose action closed the gripper and started a lift-and-check."""
    return [
        k for k in range(len(trace) - 1) if trace[k]["phase"] == "act" and trace[k + 1]["phase"] == "lift"
    ]


def check_decisions(trace: list[dict[str, Any]]) -> list[int]:
    """Steps (0-based) at which a check decided (end or reopen): the last step of each lift phase."""
    return [
        k
        for k in range(len(trace))
        if trace[k]["phase"] == "lift" and (k + 1 == len(trace) or trace[k + 1]["phase"] != "lift")
    ]


def next_closing(trace: list[dict[str, Any]], after: int) -> int | None:
    """The first step after a reopening (the check's step ``after``) whose action closes the gripper."""
    for k in range(after + 1, len(trace)):
        if trace[k]["phase"] == "act" and trace[k]["a"][4] > 0:
            return k
    return None


def summarize(per_attempt: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    first, checks, dz, shifts = Counter(), Counter(), [], []
    rejected_first = rejected_first_success = 0
    for row in per_attempt:
        tr = row["trace"]
        closings = checked_closings(tr)
        if not closings:
            continue
        first[closings[0]] += 1
        dz += [t["a"][2] for t in tr[: closings[0]] if t["z"] > 0.06]
        decisions = check_decisions(tr)
        checks.update(decisions)
        if row["checks"] and row["checks"][0] < threshold:
            rejected_first += 1
            rejected_first_success += int(row["success"])
            decision = next(k for k in decisions if k > closings[0])
            nxt = next_closing(tr, decision)
            if nxt is not None:
                moves = tr[closings[0] + 1 : nxt + 1]
                dx = sum(t["a"][0] for t in moves) * MAX_TRANSLATION_CM
                dy = sum(t["a"][1] for t in moves) * MAX_TRANSLATION_CM
                dyaw = sum(t["a"][3] for t in moves) * MAX_ROTATION_DEG
                shifts.append(
                    {
                        "lateral_cm": round(math.hypot(dx, dy), 2),
                        "yaw_deg": round(dyaw, 1),
                        "success": bool(row["success"]),
                    }
                )
    return {
        "first_checked_closing_step": dict(sorted(first.items())),
        "check_decision_step": dict(sorted(checks.items())),
        "mean_dz_above_6cm": round(float(np.mean(dz)), 3) if dz else None,
        "share_full_speed_descent": round(float(np.mean([d < -0.9 for d in dz])), 3) if dz else None,
        "first_check_rejected": rejected_first,
        "rejected_first_then_success": rejected_first_success,
        "retry_shift": shifts,
        "retry_within_1_5cm": sum(s["lateral_cm"] < 1.5 for s in shifts),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="an agent run directory with a check (from rcan train-agent)")
    p.add_argument("--seed", type=int, default=0, help="the object set (rcan evaluate --seed)")
    p.add_argument("--attempts", type=int, default=102)
    p.add_argument("--out", type=Path, default=None, help="default: RUN/trace-sSEED.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    path = resolve_agent_path(str(a.run))
    policy = with_check(load_agent(path, seed=a.seed), path)
    if not isinstance(policy, CheckedPolicy):
        p.error(f"{a.run} has no grasp check (check.safetensors)")
    rec = Recorder(policy)
    r = evaluate_policy(
        rec,
        "canonical",
        a.attempts,
        a.seed,
        image_size=policy.network.config.image_size,
        camera=policy.camera,
    )
    for row, trace in zip(r["per_attempt"], rec.traces, strict=True):
        row["trace"] = trace
    summary = {
        "success_rate": r["success_rate"],
        "seed": a.seed,
        **summarize(r["per_attempt"], policy.config.threshold),
    }
    out = a.out or a.run / f"trace-s{a.seed}.json"
    out.write_text(json.dumps({"summary": summary, "per_attempt": r["per_attempt"]}) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "retry_shift"}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
