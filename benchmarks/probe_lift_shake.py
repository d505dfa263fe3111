"""Probe: does moving the closed gripper sideways or turning it during the lift show sooner which grasps
will slip?

Why: a check that decides after two lift steps instead of three would leave room for a third grasp (a
never-wrong one: 91.8% against 88.2% for the shipped agent, ``probe_oracle_check.py --lift 2``), but
after two plain steps up (8 cm) a grasp that will slip mostly still looks held: the learned two-step check
accepts twice as many grasps that then fail. A turn or a sideways move on the second step loads the grasp
as the final lift to 30 cm does, so a loose grasp may drop its object before the check looks, or it may
cost grasps that would have held. Both are measured here, with the simulator as the judge.

For each test-object attempt the agent (its default acting mode, no check) acts until it closes and
terminates; the closing is made without terminating, and from that closed state each lift variant is
played (``env.step``) and judged (``try_grasps``: lift to 30 cm and test), the world put back between
variants (``up0``: ending right after the separate closing step; the agent's own close-and-end in one
step is judged too, from the state before its closing step: whether a grip needs time to build before
the lift). Per variant: the success of terminating after it, the share of the failures in which no finger
touches an object any more (visible), and the AUC against the outcome of two privileged signals (a finger
touches an object; the highest object's lowest point). Privileged; a probe, never a product path.

    .venv/bin/python benchmarks/probe_lift_shake.py [RUN] [--sets 0,1] [--attempts 102] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import add_probe_arguments, write_probe_result

from rcan.qtopt.agent import load_agent, resolve_agent_path
from rcan.qtopt.evaluate import ASSET_AGENT, protocol_first_closings
from rcan.qtopt.grasp_check import LIFT, TERMINATE_HERE, auc


def _lift(dx: float = 0.0, dyaw: float = 0.0) -> np.ndarray:
    a = LIFT.copy()
    a[0], a[3] = dx, dyaw
    return a


HOLD = np.array([0, 0, 0, 0, 1, -1], dtype=np.float32)
"""A step in place with the gripper closed: the grasp carries the object's weight for one more step without
rising (a reopening from there needs fewer steps back down than from a higher lift)."""

VARIANTS: dict[str, list[np.ndarray]] = {
    "up0": [],
    "up1": [_lift()],
    "up2": [_lift(), _lift()],
    "up3": [_lift(), _lift(), _lift()],
    "up2-turn": [_lift(), _lift(dyaw=1.0)],
    "up2-wiggle": [_lift(dyaw=1.0), _lift(dyaw=-1.0)],
    "up2-side": [_lift(), _lift(dx=1.0)],
    "up2-shake": [_lift(dx=1.0), _lift(dx=-1.0)],
    "up1-hold1": [_lift(), HOLD],
    "up1-hold2": [_lift(), HOLD, HOLD],
    "up2-hold1": [_lift(), _lift(), HOLD],
}


def _branch_state(env: Any) -> tuple[int, tuple]:
    kept = (env._target.copy(), env._yaw, env._step, env.cell.gripper.snapshot())
    return env.client.saveState(), kept


def _restore(env: Any, saved: int, kept: tuple) -> None:
    env.client.restoreState(saved)
    env._target, env._yaw, env._step = kept[0].copy(), kept[1], kept[2]
    env.cell.gripper.restore(kept[3])


def probe_set(path: Path, seed: int, attempts: int) -> list[dict[str, Any]]:
    policy = load_agent(path, seed=seed)
    rows = []
    for env, obs, info, reset_seed, a in protocol_first_closings(policy, seed, attempts):
        direct, _ = env.try_grasps(a[None])  # the agent's own close-and-end, as it acts when trained
        a[5] = -1.0  # close without ending
        obs, _, _, _, info = env.step(a)
        saved, kept = _branch_state(env)
        row: dict[str, Any] = {"seed": seed, "reset_seed": int(reset_seed), "direct": bool(direct[0] > 0)}
        try:
            for name, actions in VARIANTS.items():
                for act in actions:
                    env.step(act)
                touching = bool(env.holding())
                highest = float(np.max(env.cell.object_min_z()))
                reward, _ = env.try_grasps(TERMINATE_HERE[None])
                row[name] = {"success": bool(reward[0] > 0), "touching": touching, "highest": highest}
                _restore(env, saved, kept)
        finally:
            env.client.removeState(saved)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rows and "direct" in rows[0]:
        out["closing and ending in one step"] = {
            "success": round(float(np.mean([r["direct"] for r in rows])), 4)
        }
    for name in VARIANTS:
        s = np.array([r[name]["success"] for r in rows])
        t = np.array([r[name]["touching"] for r in rows])
        h = np.array([r[name]["highest"] for r in rows])
        fails = ~s
        out[name] = {
            "success": round(float(s.mean()), 4),
            "failures_visible": round(float((~t[fails]).mean()), 4) if fails.any() else None,
            "auc_touching": round(float(auc(t.astype(float), s)), 4),
            "auc_highest": round(float(auc(h, s)), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(p, str(ASSET_AGENT))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    path = resolve_agent_path(a.run)
    rows = []
    for seed in [int(s) for s in a.sets.split(",")]:
        rows += probe_set(path, seed, a.attempts)
        print(f"set {seed}: {len(rows)} grasps", flush=True)
    summary = {"agent": str(path), "sets": a.sets, "grasps": len(rows), "variants": summarize(rows)}
    write_probe_result(a.out, summary, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
