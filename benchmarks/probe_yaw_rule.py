"""Probe: does the closing yaw, imposed by a rule, raise an agent's success at its own aim?

Why: the shipped agent does not choose its closing yaw (27 of 100 closings within 30 degrees of the
wall-parallel yaw, as at random), and those near it succeed 82% against 63% for the others; exact aim at
the wall-parallel yaw lifts 89% against 70-73% at a random yaw. Whether that difference is the yaw's
(causal) or the positions' where agents happen to close at that yaw is what a rule settles: the agent
chooses every move as usual, and the rule replaces each step's yaw change with one (at most the step's
15 degrees) towards a target yaw at the point the move goes to:

- ``wall``: the wall-parallel yaw (fingers parallel to the nearest wall or the divider; privileged: the
  divider's place is drawn per episode);
- ``axis``: the nearer of 0 and 90 degrees (parallel to one of the tray's walls; needs only the tray's
  orientation, which a real cell's calibration gives);
- ``none``: the agent's own yaw (the baseline, through the same code).

Runs the ``rcan evaluate`` protocol on object sets, with or without the agent's grasp check.
Uses ``info["tool"]``, ``info["yaw"]`` and ``info["divider_x"]`` (the robot's own pose, and for ``wall``
the divider): a probe, never a product path.

    .venv/bin/python benchmarks/probe_yaw_rule.py [RUN] --rule wall|axis|none [--sets 0,1,2,3,4] \\
        [--no-check] [--jobs 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcan.qtopt.agent import load_agent, resolve_agent_path
from rcan.qtopt.evaluate import ASSET_AGENT, evaluate_policy, wilson_interval
from rcan.qtopt.grasp_check import with_check
from rcan.sim.scene import CellConfig
from rcan.sim.scripted import wall_parallel_yaw

MAX_ROTATION = math.radians(15.0)
MAX_TRANSLATION = 0.04


class YawRule:
    """Wraps a greedy policy: its moves, with each step's yaw change replaced by the rule's."""

    def __init__(self, policy: Any, rule: str) -> None:
        self.policy, self.rule = policy, rule
        self.tray_half = CellConfig().tray_inner_half

    def __getattr__(self, name: str) -> Any:
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def reset(self, info: Any = None) -> None:
        self.policy.reset(info)

    def act(self, obs: Any, info: Any) -> np.ndarray:
        a = np.asarray(self.policy.act(obs, info), dtype=np.float32).copy()
        if self.rule == "none":
            return a
        xy = np.asarray(info["tool"], np.float64)[:2] + np.clip(a[:2], -1, 1) * MAX_TRANSLATION
        yaw = float(info["yaw"])
        if self.rule == "wall":
            goal = wall_parallel_yaw(xy, self.tray_half, float(info["divider_x"]))
        else:  # the nearer of 0 and 90 degrees (mod 180)
            goal = round(yaw / (math.pi / 2)) * (math.pi / 2)
        delta = (goal - yaw + math.pi / 2) % math.pi - math.pi / 2  # the fingers are symmetric: mod 180
        a[3] = float(np.clip(delta / MAX_ROTATION, -1.0, 1.0))
        return a


def run_set(job: tuple[str, str, int, int, bool]) -> dict[str, Any]:
    path, rule, seed, attempts, check = job
    torch.set_num_threads(1)
    policy = load_agent(path, seed=seed)
    wrapped: Any = YawRule(policy, rule)
    if check:
        wrapped = with_check(wrapped, path)
    r = evaluate_policy(
        wrapped,
        "canonical",
        attempts,
        seed,
        image_size=policy.network.config.image_size,
        strip_attempts=0,
        camera=policy.camera,
    )
    r.pop("frames", None)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=str(ASSET_AGENT))
    p.add_argument("--rule", choices=("wall", "axis", "none"), required=True)
    p.add_argument("--sets", default="0,1,2,3,4")
    p.add_argument("--attempts", type=int, default=102)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    path = str(resolve_agent_path(a.run))
    jobs = [(path, a.rule, int(s), a.attempts, not a.no_check) for s in a.sets.split(",")]
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(run_set, jobs))
    k, n = sum(r["successes"] for r in results), sum(r["attempts"] for r in results)
    summary = {
        "agent": path,
        "rule": a.rule,
        "check": not a.no_check,
        "sets": a.sets,
        "successes": k,
        "attempts": n,
        "success_rate": k / n,
        "wilson95": list(wilson_interval(k, n)),
        "per_set": [r["successes"] / r["attempts"] for r in results],
        "yaw": [r.get("yaw") for r in results],
    }
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
