"""Probe: is a trained agent's aim biased?

The signed x-y offset (cm, world frame) from each closing to the nearest object's bounding-box centre,
for successes and failures, and the success rate when every close-and-terminate move is shifted by a
fixed (ox, oy) metres (a privileged correction: a diagnostic, not an acting mode). The evaluation
protocol's test-object sets (seeds 0..sets-1), two processes, one torch thread each.

    .venv/bin/python benchmarks/probe_closing_offset.py AGENT [--ox M] [--oy M] [--sets 5] [--objects train]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

MAX_TRANSLATION = 0.04
"""``GraspEnv.max_translation``: metres per unit of the action's dx, dy."""


def run_set(
    agent: str, seed: int, ox: float, oy: float, attempts: int, objects: str = "test"
) -> list[dict[str, Any]]:
    """One object set: per attempt, success, the last closing's (object centre - closing point) and the
    name of that nearest object."""
    import torch

    torch.set_num_threads(1)
    from rcan.qtopt.agent import load_agent
    from rcan.qtopt.evaluate import protocol_scenes

    policy = load_agent(agent, seed=seed)
    rows = []
    for env, obs, info, _ in protocol_scenes(policy, seed, attempts, objects=objects):
        done, offset, nearest_name = False, None, None
        while not done:
            a = policy.act(obs, info).copy()
            closing = not obs["gripper_closed"] and a[4] > 0
            if closing and a[5] > 0:
                a[0] = np.clip(a[0] + ox / MAX_TRANSLATION, -1, 1)
                a[1] = np.clip(a[1] + oy / MAX_TRANSLATION, -1, 1)
            if closing:
                point = env.commanded_point(a)[:2]
                centres = np.array([env.cell.box_centre_xy(b) for b in env.cell.object_bodies])
                j = int(np.argmin(np.linalg.norm(centres - point, axis=1)))
                offset = (centres[j] - point).tolist()
                nearest_name = env.episode_objects[j]  # bodies are loaded in the episode's order
            obs, _, done, _, info = env.step(a)
        rows.append({"success": bool(info.get("is_success", False)), "offset": offset, "object": nearest_name})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agent")
    ap.add_argument("--ox", type=float, default=0.0, help="shift of every final closing in world x (m)")
    ap.add_argument("--oy", type=float, default=0.0, help="shift of every final closing in world y (m)")
    ap.add_argument("--sets", type=int, default=5)
    ap.add_argument("--attempts", type=int, default=102)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--objects", choices=("test", "train"), default="test", help="the object split")
    args = ap.parse_args()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_set, args.agent, s, args.ox, args.oy, args.attempts, args.objects)
            for s in range(args.sets)
        ]
        rows = [r for f in futures for r in f.result()]
    closed = [r for r in rows if r["offset"] is not None]
    offsets = 100 * np.array([r["offset"] for r in closed])
    ok = np.array([r["success"] for r in closed])
    per_object: dict[str, list[int]] = {}
    for r in closed:
        per_object.setdefault(r["object"], [0, 0])
        per_object[r["object"]][0] += r["success"]
        per_object[r["object"]][1] += 1
    print(
        json.dumps(
            {
                "objects": args.objects,
                "ox": args.ox,
                "oy": args.oy,
                "success_rate": sum(r["success"] for r in rows) / len(rows),
                "attempts": len(rows),
                "mean_offset_successes_cm": offsets[ok].mean(0).round(2).tolist(),
                "mean_offset_failures_cm": offsets[~ok].mean(0).round(2).tolist(),
                "median_abs_offset_cm": np.median(np.abs(offsets), 0).round(2).tolist(),
                "per_nearest_object": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_object.items())},
            }
        )
    )


if __name__ == "__main__":
    main()
