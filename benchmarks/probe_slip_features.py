"""Probe: after two lift steps, is a grasp that will slip told apart by what a camera could see, or only by
forces and motion no image shows?

Why: a check that decides after two lift steps instead of three leaves room for a third grasp (a
never-wrong one: 91.8% against 88.2% for the shipped agent, ``probe_oracle_check.py --lift 2``), but the
learned two-step check accepts twice as many grasps that then fail: 8 cm up, a grasp that will slip mostly
still looks held in the 64x64 view. Whether a sharper view of the gripper (a higher-resolution crop for the
check) could do better depends on whether the slip is already *visible* (the object shifted or tilted in
the fingers, hanging low, held off-centre) or only *felt* (contact forces, relative motion). This records,
at each of the three lift steps of the shipped agent's first closings on test objects, privileged
features in the gripper's frame, judges terminating there with the simulator (``try_grasps``), and
fits, with 5-fold cross-validation, a logistic regression and a small MLP on each feature group:

- ``geometry``: the held object's centre relative to the fingertip point, its shift and tilt since the
  closing, how far it hangs below the fingertips, the gripper's opening (what a sharp image shows);
- ``contact``: finger contacts and their normal and friction forces, the object's other contacts;
- ``motion``: the object's velocity relative to the gripper, its angular speed;
- ``check``: the learned check's own estimate from the image (``--check``, a check fitted at that lift).

Privileged; a probe, never a product path.

    .venv/bin/python benchmarks/probe_slip_features.py [RUN] [--sets 0,1] [--check RUN2/check.safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import add_probe_arguments, write_probe_result
from torch import nn

from rcan.qtopt.agent import load_agent, resolve_agent_path
from rcan.qtopt.evaluate import ASSET_AGENT, protocol_first_closings
from rcan.qtopt.grasp_check import LIFT, TERMINATE_HERE, auc, check_probability, load_check

GROUPS: dict[str, list[str]] = {
    "geometry": ["rel_x", "rel_y", "rel_z", "shift_x", "shift_y", "shift_z", "tilt", "hang", "opening"],
    "contact": ["n0", "n1", "force0", "force1", "friction0", "friction1", "other_n", "other_force"],
    "motion": ["vel_x", "vel_y", "vel_z", "spin"],
}
FEATURES = [f for names in GROUPS.values() for f in names]


def _frame(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """The fingertip point and the rotation into the gripper's frame (x across the fingers' closing)."""
    g = env.cell.gripper
    _, yaw = g.palm_pose()
    c, s = np.cos(-yaw), np.sin(-yaw)
    return g.tool_position(), np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def object_poses(env: Any) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every object's centre in the gripper's frame and its orientation (at the closing: the reference)."""
    tool, rot = _frame(env)
    out = {}
    for body in env.cell.object_bodies:
        pos, orn = env.client.getBasePositionAndOrientation(body)
        out[body] = (rot @ (np.asarray(pos) - tool), np.asarray(orn))
    return out


def slip_features(env: Any, at_closing: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The features of GROUPS for the object the fingers press hardest (zeros and n0 = n1 = 0 if none)."""
    c, g = env.client, env.cell.gripper
    per_body: dict[int, np.ndarray] = {}
    for body in env.cell.object_bodies:
        row = np.zeros(6)  # n0, n1, force0, force1, friction0, friction1
        for link in (0, 1):
            for p in c.getContactPoints(bodyA=g.body, bodyB=body, linkIndexA=link):
                row[link] += 1
                row[2 + link] += p[9]
                row[4 + link] += np.hypot(p[10], p[12])
        per_body[body] = row
    f = dict.fromkeys(FEATURES, 0.0)
    f["opening"] = g.opening()
    held = max(per_body, key=lambda b: per_body[b][2] + per_body[b][3], default=None)
    if held is None or per_body[held][:2].sum() == 0:
        return f
    for k, name in enumerate(GROUPS["contact"][:6]):
        f[name] = float(per_body[held][k])
    others = [p for p in c.getContactPoints(bodyA=held) if p[2] != g.body]
    f["other_n"], f["other_force"] = float(len(others)), float(sum(p[9] for p in others))
    tool, rot = _frame(env)
    pos, orn = c.getBasePositionAndOrientation(held)
    rel = rot @ (np.asarray(pos) - tool)
    rel0, orn0 = at_closing[held]
    f["rel_x"], f["rel_y"], f["rel_z"] = rel
    f["shift_x"], f["shift_y"], f["shift_z"] = rel - rel0
    dot = abs(float(np.dot(np.asarray(orn), orn0)))
    f["tilt"] = float(2 * np.arccos(min(1.0, dot)))
    f["hang"] = float(c.getAABB(held)[0][2] - tool[2])
    lin, ang = c.getBaseVelocity(held)
    glin, _ = c.getBaseVelocity(g.body)
    f["vel_x"], f["vel_y"], f["vel_z"] = rot @ (np.asarray(lin) - np.asarray(glin))
    f["spin"] = float(np.linalg.norm(ang))
    return f


def probe_set(path: Path, seed: int, attempts: int, check: Any) -> list[dict[str, Any]]:
    policy = load_agent(path, seed=seed)
    rows = []
    for env, obs, info, reset_seed, a in protocol_first_closings(policy, seed, attempts):
        a[5] = -1.0  # close without ending, as the checked agent does
        obs, _, _, _, info = env.step(a)
        at_closing = object_poses(env)
        row: dict[str, Any] = {"seed": seed, "reset_seed": int(reset_seed)}
        for lift in (1, 2, 3):
            obs, _, _, _, info = env.step(LIFT)
            reward, _ = env.try_grasps(TERMINATE_HERE[None])
            level = {"success": bool(reward[0] > 0), "touching": bool(env.holding())}
            level.update(slip_features(env, at_closing))
            if check is not None and check[1].lift == lift:
                level["check"] = check_probability(check[0], *policy.prepare(obs))
            row[f"up{lift}"] = level
        rows.append(row)
    return rows


def _standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    return (x - mu) / sd


def cv_scores(x: np.ndarray, y: np.ndarray, hidden: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression (hidden 0) or a one-layer MLP, fitted by Adam
    with weight decay (full batch, 400 steps)."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(y)) % folds
    out = np.zeros(len(y))
    for k in range(folds):
        train, test = fold != k, fold == k
        xs = torch.from_numpy(_standardize(x, train)).float()
        t = torch.from_numpy(y.astype(np.float32))
        torch.manual_seed(seed + k)
        net = (
            nn.Linear(x.shape[1], 1)
            if hidden == 0
            else nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1))
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
        tr = torch.from_numpy(train)
        for _ in range(400):
            loss = nn.functional.binary_cross_entropy_with_logits(net(xs[tr]).squeeze(1), t[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[test] = torch.sigmoid(net(xs[torch.from_numpy(test)]).squeeze(1)).numpy()
    return out


def false_accepts(scores: np.ndarray, y: np.ndarray, keep: float = 0.95) -> int:
    """Failures accepted by the threshold that keeps ``keep`` of the successes."""
    t = np.quantile(scores[y], 1.0 - keep)
    return int(np.sum(scores[~y] >= t))


def summarize(rows: list[dict[str, Any]], touching_only: bool = False) -> dict[str, Any]:
    """Per lift step, each group's cross-validated AUC and false accepts; ``touching_only``: only the grasps
    in which a finger still touches an object (the failures a check cannot see as an empty gripper)."""
    out: dict[str, Any] = {}
    for lift in (1, 2, 3):
        levels = [r[f"up{lift}"] for r in rows if r[f"up{lift}"]["touching"] or not touching_only]
        y = np.array([v["success"] for v in levels])
        if y.all() or not y.any():
            continue
        touching = np.array([v["touching"] for v in levels])
        x_all = np.array([[v[f] for f in FEATURES] for v in levels])
        res: dict[str, Any] = {
            "grasps": len(y),
            "success": round(float(y.mean()), 4),
            "failures_touching": int(np.sum(~y & touching)),
            "touching": {"auc": round(auc(touching.astype(float), y), 4)},
        }
        sets = {name: [FEATURES.index(f) for f in names] for name, names in GROUPS.items()}
        sets["all"] = list(range(len(FEATURES)))
        has_check = "check" in levels[0]
        for name, cols in sets.items():
            for hidden in (0, 32):
                s = cv_scores(x_all[:, cols], y, hidden)
                res[f"{name}/{'mlp' if hidden else 'logistic'}"] = {
                    "auc": round(auc(s, y), 4),
                    "false_accepts_at_95": false_accepts(s, y),
                }
        if has_check:
            s = np.array([v["check"] for v in levels])
            res["check"] = {"auc": round(auc(s, y), 4), "false_accepts_at_95": false_accepts(s, y)}
            both = np.concatenate([x_all, s[:, None]], 1)
            s2 = cv_scores(both[:, [*sets["geometry"], len(FEATURES)]], y, 32)
            res["check+geometry/mlp"] = {
                "auc": round(auc(s2, y), 4),
                "false_accepts_at_95": false_accepts(s2, y),
            }
        out[f"up{lift}"] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(p, str(ASSET_AGENT))
    p.add_argument("--check", default=None, help="a check file to score at its own lift level")
    p.add_argument("--out", type=Path, default=None, help="write the rows and summary here (JSON)")
    p.add_argument("--rows", type=Path, nargs="*", default=[], help="summarize saved rows instead")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for saved in a.rows:
        rows += json.loads(saved.read_text())["rows"]
    if not a.rows:
        path = resolve_agent_path(a.run)
        check = load_check(a.check)[:2] if a.check else None
        for seed in [int(s) for s in a.sets.split(",")]:
            rows += probe_set(path, seed, a.attempts, check)
            print(f"set {seed}: {len(rows)} grasps", flush=True)
    summary = {"all grasps": summarize(rows), "grasps still touching": summarize(rows, touching_only=True)}
    write_probe_result(a.out, summary, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
