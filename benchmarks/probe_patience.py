"""Probe: does waiting for a confident closing raise a trained agent's success rate?

Why: at gamma 0.9 and -0.05 per step one more corrective step costs about 15% of a grasp's value, so the
return-optimal policy closes as soon as a grasp is "good enough" and never pays a step for precision.
The success rate, which the protocol measures, does not charge for steps (up to 20). The terminal
closing's Q is the critic's estimate of that closing's success (no bootstrap), so a "patient" acting mode
can refuse to close-and-terminate while that estimate is below ``tau`` and take the best action that
neither closes nor terminates instead, until ``last_step`` (after which it acts greedily as trained).
No training: the same agent, five test-object sets (the protocol of ``eval_object_sets.py``).

    .venv/bin/python benchmarks/probe_patience.py --agent rcan/assets/agent --tau 0 0.6 0.7 0.8 [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def make_patient(policy: Any, tau: float, last_step: int) -> Any:
    """Wrap a ``QTOptPolicy``: below ``tau`` a close-and-terminate is replaced by the best open move."""
    import torch

    from rcan.qtopt.agent import QTOptPolicy

    class Patient(QTOptPolicy):
        episodes: list[list[dict[str, Any]]]
        """One list per episode since the policy was made (the current one last): each step's Q,
        whether the greedy action closed and terminated, and whether it was refused."""

        def reset(self, info: Any = None) -> None:
            super().reset(info)
            self.step_count = 0
            self.log: list[dict[str, Any]] = []
            self.episodes.append(self.log)

        def act(self, obs: Any, info: Any = None) -> np.ndarray:
            image, state = self.prepare(obs)
            a, q = self.act_prepared(image, state)
            ends = a[4] > 0 and a[5] > 0
            waited = False
            if ends and q < tau and self.step_count < last_step:
                a, _ = self._open_move(image, state)
                waited = True
            self.log.append({"q": q, "ends": bool(ends), "waited": waited})
            self.step_count += 1
            return a

        @torch.no_grad()
        def _open_move(self, image: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, float]:
            """The greedy action among those that keep the gripper open and do not terminate."""

            def opened(head: Any) -> Any:
                def score(f: Any, s: Any, c: Any, chunk: int = 256) -> Any:
                    c = c.clone()
                    c[..., 4] = -1.0
                    c[..., 5] = -1.0
                    return head(f, s, c, chunk)

                return score

            for net in self.networks:  # every critic scores the candidates with the gripper kept open
                net.head = opened(net.head)  # type: ignore[method-assign]
            try:
                a, q = self.act_prepared(image, state)
            finally:
                for net in self.networks:
                    del net.head
            a = a.copy()
            a[4] = -1.0
            a[5] = -1.0
            return a, q

    p = Patient(
        policy.network,
        policy.cem,
        policy.input_mode,
        policy.generator,
        seed=0,
        camera=policy.camera,
        view_shifts=policy.view_shifts,
        ensemble=policy.networks[1:],
        rerank=policy.rerank,
    )
    p.torch_rng = policy.torch_rng
    p.episodes = []
    return p


def run_one(agent: str, tau: float, last_step: int, seed: int, attempts: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from rcan.qtopt.agent import load_agent
    from rcan.qtopt.evaluate import evaluate_policy

    policy = make_patient(load_agent(agent, seed=seed), tau, last_step)
    r = evaluate_policy(policy, "canonical", attempts, seed, camera=policy.camera, strip_attempts=0)
    logs = policy.episodes
    waited = sum(any(s["waited"] for s in ep) for ep in logs)
    final_q = [next((s["q"] for s in reversed(ep) if s["ends"] and not s["waited"]), None) for ep in logs]
    succ = [a["success"] for a in r["per_attempt"]]
    return {
        "seed": seed,
        "successes": r["successes"],
        "attempts": r["attempts"],
        "mean_steps": r["mean_steps"],
        "failures": r["failures"],
        "waited_attempts": waited,
        "final_q": final_q,
        "success": succ,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default="rcan/assets/agent")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.0, 0.7])
    ap.add_argument("--last-step", type=int, default=16, help="steps after which the agent acts as trained")
    ap.add_argument("--sets", type=int, default=5)
    ap.add_argument("--attempts", type=int, default=102)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args()
    from bench_grasp_view import roc_auc  # this script's folder is on sys.path when it runs

    from rcan.qtopt.evaluate import wilson_interval

    results = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for tau in args.tau:
            futs = [
                pool.submit(run_one, args.agent, tau, args.last_step, s, args.attempts)
                for s in range(args.sets)
            ]
            rows = [f.result() for f in futs]
            k = sum(r["successes"] for r in rows)
            n = sum(r["attempts"] for r in rows)
            q = [x for r in rows for x in r["final_q"]]
            y = [x for r in rows for x in r["success"]]
            have = [(a, b) for a, b in zip(q, y, strict=True) if a is not None]
            fails: dict[str, int] = {}
            for r in rows:
                for name, v in r["failures"].items():
                    fails[name] = fails.get(name, 0) + v
            summary = {
                "success_rate": k / n,
                "wilson95": list(wilson_interval(k, n)),
                "per_set": [r["successes"] / r["attempts"] for r in rows],
                "mean_steps": sum(r["mean_steps"] * r["attempts"] for r in rows) / n,
                "waited_attempts": sum(r["waited_attempts"] for r in rows),
                "auc_final_q": roc_auc(np.array([a for a, _ in have]), np.array([b for _, b in have], float)),
                "final_q_quartiles": [
                    round(float(v), 3) for v in np.percentile([a for a, _ in have], [25, 50, 75])
                ],
                "failures": fails,
            }
            results[str(tau)] = summary
            print(f"tau {tau}: {json.dumps(summary)}", flush=True)
    if args.out:
        from machine import machine_info  # benchmarks/machine.py, beside this script

        results["machine"] = machine_info()
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
