"""Probe: check each grasp before ending the attempt, and regrasp when it holds nothing.

Why: at gamma 0.9 with the step penalty, one closing per attempt is return-optimal
(``probe_retry_value.py``), so the agents close and terminate at once and an attempt succeeds only if
that one closing does (73-75% for the 2-hour agents). The protocol's success rate, however, does not
charge for steps: an attempt has 20, and the agents use ~9. This wraps a trained agent in an acting
procedure: when its greedy action closes and terminates, the gripper closes without terminating, rises
``lift`` steps of 4 cm, and then a *check* decides: held -> terminate; empty and at least ``min_left``
steps left -> reopen, move 4 cm down and hand control back to the agent (at most ``max_retries`` times).

Checks:
- ``holding``: privileged (``info["holding"]``, fingers touching an object): the ceiling of the procedure.
- ``learned:PATH:TAU``: a check fitted by ``probe_check_learned.py`` (a copy of the critic fitted to the
  outcome of terminating at the lifted state) >= TAU.
- ``critic:TAU``: the agent's own Q for "terminate here" at the lifted state >= TAU (not privileged: the
  critic has seen lifted closed states in the scripted episodes, which rise one step before terminating).

Every check logs the critic's Q there, ``holding`` and the attempt's outcome, so one privileged run also
measures how well the critic would check (AUC of its Q against ``holding``).

    .venv/bin/python benchmarks/probe_check_retry.py [--agent RUN] --check holding --lift 2 --sets 5 \\
        --out runs/checkprobe/holding-l2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcan.qtopt.agent import load_agent, load_network
from rcan.qtopt.evaluate import ASSET_AGENT, evaluate_policy, wilson_interval
from rcan.qtopt.grasp_check import load_check

TERMINATE_HERE = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)
MAX_STEPS = 20


class CheckRetry:
    """Wraps a greedy policy (``reset(info)``, ``act(obs, info)``) with a grasp check and regrasps."""

    def __init__(self, policy: Any, check: str, lift: int, min_left: int, max_retries: int) -> None:
        self.policy, self.check, self.lift = policy, check, lift
        self.min_left, self.max_retries = min_left, max_retries
        self.tau = float(check.rsplit(":", 1)[1]) if check != "holding" else None
        self.judge = policy.network
        if check.startswith("learned:"):
            path = check.split(":")[1]
            try:  # a check from rcan train-check, or a critic copy from probe_check_learned.py
                self.judge = load_check(path)[0]
            except ValueError:
                self.judge = load_network(path)[0]
        self.log: list[dict[str, Any]] = []
        self._attempt = -1

    def reset(self, info: Any = None) -> None:
        self.policy.reset(info)
        self.phase, self.lift_left, self.retries = "act", 0, 0
        self._attempt += 1

    @torch.no_grad()
    def critic_q(self, obs: Any) -> float:
        """The agent's Q for terminating at once from this state (mean over its views, as it acts)."""
        image, state = self.policy.prepare(obs)
        net = self.judge
        feats = net.features(torch.from_numpy(image)[None])
        logit = net.head(feats, torch.from_numpy(state)[None], torch.from_numpy(TERMINATE_HERE)[None, None])
        return float(torch.sigmoid(logit[0, 0]))

    def act(self, obs: Any, info: Any) -> np.ndarray:
        step = int(info.get("step", 0))
        if self.phase == "lift":
            if self.lift_left > 0:
                self.lift_left -= 1
                return np.array([0, 0, 1, 0, 1, -1], dtype=np.float32)
            q = self.critic_q(obs)
            held = bool(info["holding"]) if self.tau is None else q >= self.tau
            left = MAX_STEPS - step
            self.log.append(
                {
                    "attempt": self._attempt,
                    "q": q,
                    "holding": bool(info["holding"]),
                    "step": step,
                    "retry": self.retries,
                }
            )
            if held or left < self.min_left or self.retries >= self.max_retries:
                self.phase = "done"
                return TERMINATE_HERE.copy()
            self.phase, self.retries = "act", self.retries + 1
            return np.array([0, 0, -1, 0, -1, -1], dtype=np.float32)  # reopen and go back down
        if self.phase == "done":
            return TERMINATE_HERE.copy()
        a = np.asarray(self.policy.act(obs, info), dtype=np.float32).copy()
        if a[5] > 0 and a[4] > 0 and self.retries < self.max_retries and MAX_STEPS - step > self.lift + 1:
            a[5] = -1.0  # close, but do not end the attempt yet
            self.phase, self.lift_left = "lift", self.lift
        return a


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", default=str(ASSET_AGENT))
    p.add_argument("--check", default="holding", help="holding | critic:TAU | learned:PATH:TAU")
    p.add_argument("--lift", type=int, default=2, help="4 cm steps the closed gripper rises before the check")
    p.add_argument("--min-left", type=int, default=5, help="steps that must remain to reopen and regrasp")
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--sets", type=int, default=5)
    p.add_argument("--first-set", type=int, default=0)
    p.add_argument("--attempts", type=int, default=102)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not (a.check == "holding" or a.check.startswith(("critic:", "learned:"))):
        p.error("--check must be holding, critic:TAU or learned:PATH:TAU")
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    results, logs = [], []
    for seed in range(a.first_set, a.first_set + a.sets):
        wrapped = CheckRetry(load_agent(a.agent, seed=seed), a.check, a.lift, a.min_left, a.max_retries)
        r = evaluate_policy(wrapped, "canonical", attempts=a.attempts, seed=seed, strip_attempts=0)
        outcome = [x["success"] for x in r["per_attempt"]]
        for row in wrapped.log:
            row.update(seed=seed, success=bool(outcome[row["attempt"]]))
        logs += wrapped.log
        results.append(
            {
                "seed": seed,
                "successes": r["successes"],
                "attempts": r["attempts"],
                "mean_steps": r["mean_steps"],
            }
        )
        print(f"set {seed}: {r['successes']}/{r['attempts']}  mean steps {r['mean_steps']:.1f}", flush=True)
    k, n = sum(r["successes"] for r in results), sum(r["attempts"] for r in results)
    held = [x["q"] for x in logs if x["holding"]]
    empty = [x["q"] for x in logs if not x["holding"]]
    summary = {
        "agent": a.agent,
        "check": a.check,
        "lift": a.lift,
        "min_left": a.min_left,
        "max_retries": a.max_retries,
        "successes": k,
        "attempts": n,
        "success_rate": k / n,
        "wilson95": list(wilson_interval(k, n)),
        "per_set": results,
        "checks": len(logs),
        "checks_empty": len(empty),
        "critic_auc_vs_holding": auc(held, empty),
        "retried_attempts": len({(x["seed"], x["attempt"]) for x in logs if x["retry"] > 0}),
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (a.out / "checks.json").write_text(json.dumps(logs))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_set"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
