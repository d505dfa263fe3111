"""Does checking and regrasping pay in this cell, and at which discount? (issue 4 diagnosis, privileged)

The paper's agents regrasp; ours close once. Two measurements with the aimed scripted approach (a random
object's centre with 1 cm noise and a random yaw, privileged) on test objects, canonical domain:

1. ``lift``: after the closing, the closed gripper rises three 4 cm steps; whether the fingers still touch
   an object (``info["holding"]``) after each, for grasps that the final lift keeps and for those it
   loses: how soon a failure shows.
2. ``retry``: after each closing the gripper rises L steps, terminates if it holds an object, otherwise
   reopens and aims at another object while ``--min-left`` steps remain (L = 0: close and terminate at
   once, what the agents do). Success rate, steps, grasps, and the mean discounted return (reward 1 for a
   success at the last step, as the critic learns it with ``reward_offset`` 0.05) at several discounts:
   the policy with the highest return is what a perfect critic with that discount would prefer.

    .venv/bin/python benchmarks/probe_retry_value.py lift --episodes 200
    .venv/bin/python benchmarks/probe_retry_value.py retry --lifts 0,1,2,3 --episodes 300

Prints one JSON line per result. Deterministic (episode seeds fixed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

CLOSE = np.array([0, 0, -1, 0, 1, -1], np.float32)
CLOSE_AND_END = np.array([0, 0, -1, 0, 1, 1], np.float32)
RISE = np.array([0, 0, 1, 0, 1, -1], np.float32)
END = np.array([0, 0, 0, 0, 1, 1], np.float32)


def approach(env, policy, seed: int):
    """Reset and run the aimed scripted policy to the step where it would close; None if it ended first."""
    obs, info = env.reset(seed=seed)
    policy.reset(info)
    done = False
    while not done and policy.phase != "close":
        obs, _, done, _, info = env.step(policy.act(obs, info))
    return None if done else (obs, info)


def lift(episodes: int) -> dict:
    from rcan.sim.grasp_env import GraspEnv
    from rcan.sim.scripted import ScriptedGraspPolicy

    env = GraspEnv(domain="canonical", image_size=64, object_split="test")
    policy = ScriptedGraspPolicy(np.random.default_rng(7), aim_prob=1.0)
    rows, ep = [], 0
    while len(rows) < episodes:
        ep += 1
        if approach(env, policy, 50_000 + ep - 1) is None:
            continue
        held = [env.step(CLOSE)[4]["holding"]]
        held += [env.step(RISE)[4]["holding"] for _ in range(3)]
        held.append(bool(env.step(END)[4]["is_success"]))
        rows.append(held)
    env.close()
    r = np.array(rows, bool)
    ok = r[:, -1]
    out: dict = {"probe": "lift", "grasps": len(r), "success": round(float(ok.mean()), 3)}
    for k, name in enumerate(("closed", "lift1", "lift2", "lift3")):
        out[f"failures_empty_{name}"] = round(float((~r[~ok, k]).mean()), 3)
        out[f"successes_holding_{name}"] = round(float(r[ok, k].mean()), 3)
    return out


def retry(lifts: int, episodes: int, min_left: int) -> dict:
    from rcan.sim.grasp_env import GraspEnv
    from rcan.sim.scripted import ScriptedGraspPolicy

    env = GraspEnv(domain="canonical", image_size=64, object_split="test")
    policy = ScriptedGraspPolicy(np.random.default_rng(7), aim_prob=1.0)
    success, steps, grasps = [], [], []
    for ep in range(episodes):
        obs, info = env.reset(seed=70_000 + ep)
        policy.reset(info)
        done, t, g = False, 0, 0
        while not done:
            if policy.phase != "close":
                obs, _, done, _, info = env.step(policy.act(obs, info))
                t += 1
                continue
            g += 1
            obs, _, done, _, info = env.step(CLOSE_AND_END if lifts == 0 else CLOSE)
            t += 1
            for _ in range(lifts):
                if not done:
                    obs, _, done, _, info = env.step(RISE)
                    t += 1
            if done:
                break
            if info["holding"] or env.max_steps - t < min_left:
                obs, _, done, _, info = env.step(END)
                t += 1
                break
            policy._new_goal(info)  # reopen: the policy's next move step opens the gripper
        success.append(bool(info.get("is_success", False)))
        steps.append(t)
        grasps.append(g)
    env.close()
    s, n = np.array(success), np.array(steps)
    out = {
        "probe": "retry",
        "lifts": lifts,
        "episodes": episodes,
        "success": round(float(s.mean()), 3),
        "mean_steps": round(float(n.mean()), 2),
        "grasps_per_episode": round(float(np.mean(grasps)), 2),
    }
    for gamma in (0.9, 0.95, 0.97):
        out[f"return_gamma_{gamma}"] = round(float(np.mean(s * gamma ** (n - 1))), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("lift", "retry"))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--lifts", default="0,1,2,3", help="retry: comma list of lift steps before the check")
    parser.add_argument("--min-left", type=int, default=5, help="retry: steps that must remain to reopen")
    args = parser.parse_args(argv)
    if args.probe == "lift":
        print(json.dumps(lift(args.episodes)), flush=True)
    else:
        for lifts in (int(v) for v in args.lifts.split(",")):
            print(json.dumps(retry(lifts, args.episodes, args.min_left)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
