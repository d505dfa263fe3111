"""Paired samples per second on one core: what one `rcan collect` worker does, minus the HDF5 write.

One env (blind scripted policy, so no observation render, as `rcan collect` runs it), a warm-up, then N
pairs of `render_pair("heavy")` + one policy step each, resets included. Reports pairs per wall second and
per CPU second of this process (the latter is the per-core figure when the machine is shared).

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_pairs_core.py [--pairs 400] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from rcan.sim.grasp_env import GraspEnv
from rcan.sim.scripted import ScriptedGraspPolicy


def run(env: GraspEnv, policy: ScriptedGraspPolicy, pairs: int, seed: int) -> int:
    made, episode = 0, 0
    while made < pairs:
        obs, info = env.reset(seed=seed + episode)
        policy.reset(info)
        episode += 1
        done = False
        while not done and made < pairs:
            env.render_pair("heavy")
            made += 1
            obs, _, done, _, info = env.step(policy.act(obs, info))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    env = GraspEnv(image_size=args.image_size, render_observation=False)
    policy = ScriptedGraspPolicy(np.random.default_rng(0), tray_half=env.cell.config.tray_inner_half)
    run(env, policy, args.warmup, 10_000)
    load0 = os.getloadavg()
    w0, c0 = time.perf_counter(), time.process_time()
    n = run(env, policy, args.pairs, 0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    env.close()
    result = {
        "pairs": n,
        "image_size": args.image_size,
        "pairs_per_wall_s": n / wall,
        "pairs_per_cpu_s": n / cpu,
        "cpu_over_wall": cpu / wall,
        "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()),
        "goal_25_per_core": "PASS" if n / cpu >= 25 else "FAIL",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
