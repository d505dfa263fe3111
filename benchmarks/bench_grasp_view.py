"""Can a network see, from the camera, whether a grasp will succeed? (the first thing QT-Opt must learn)

Scripted exploration episodes are collected in the canonical domain (train objects for fitting, test
objects for scoring); from each, the frame where the gripper is commanded closed and that action are kept,
labelled with the episode's success. The Q-network of ``rcan.qtopt`` (default config) is then fitted to
these labels alone (supervised, cross-entropy, DrQ shifts) and scored by ROC AUC on the test episodes.
An AUC near 0.5 means the view hides what decides a grasp, and no amount of RL will learn to aim from it.

Compare cameras with ``--camera EYE_X,EYE_Y,EYE_Z,TARGET_X,TARGET_Y,TARGET_Z,FOV`` (default: the env's).

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_grasp_view.py --train 2400 --test 600
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def _collect(job: tuple[int, int, str, str | None]) -> dict[str, np.ndarray]:
    """One worker's episodes: the closing frame, state and action of each, and its success."""
    index, n, split, camera = job
    from rcan.qtopt.collectors import CollectorConfig, EpisodeRunner
    from rcan.qtopt.network import QNetConfig
    from rcan.sim.grasp_env import GraspEnv
    from rcan.sim.renderer import CameraConfig

    torch.set_num_threads(1)
    cfg = CollectorConfig(network=QNetConfig().to_json(), cem={"samples": 8, "elites": 2, "iterations": 1})
    runner = EpisodeRunner(cfg, seed=123 + 1000 * (split == "test"), index=index)
    kwargs = dict(runner.env_kwargs)
    if camera:
        v = [float(x) for x in camera.split(",")]
        kwargs["camera"] = CameraConfig(eye=tuple(v[0:3]), target=tuple(v[3:6]), fov=v[6])
    runner.env.close()
    runner.env = GraspEnv(object_split=split, **kwargs)
    rows: dict[str, list] = {"images": [], "states": [], "actions": [], "success": []}
    for _ in range(n):
        ep = runner.run_episode("scripted")
        closing = [i for i in range(ep.length) if ep.actions[i, 4] > 0 and ep.states[i, 0] == 0]
        i = closing[0] if closing else ep.length - 1
        rows["images"].append(ep.images[i])
        rows["states"].append(ep.states[i])
        rows["actions"].append(ep.actions[i])
        rows["success"].append(float(ep.success))
    runner.close()
    return {k: np.asarray(v) for k, v in rows.items()}


def collect(n: int, split: str, camera: str | None, workers: int) -> dict[str, torch.Tensor]:
    jobs = [(w, n // workers + (w < n % workers), split, camera) for w in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_collect, jobs)
    return {
        k: torch.from_numpy(np.concatenate([p[k] for p in parts])).float()
        if k != "images"
        else torch.from_numpy(np.concatenate([p[k] for p in parts]))
        for k in parts[0]
    }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney); tied scores share their mean rank (count half)."""
    scores = np.asarray(scores, np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts - 1) / 2.0)[inverse]
    pos = labels > 0.5
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=2400, help="scripted episodes on train objects")
    p.add_argument("--test", type=int, default=600, help="scripted episodes on test objects")
    p.add_argument("--steps", type=int, default=3000, help="supervised steps (batch 64)")
    p.add_argument("--camera", default=None, help="EYE_X,EYE_Y,EYE_Z,TARGET_X,TARGET_Y,TARGET_Z,FOV")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 60/40 episodes, 100 steps")
    a = p.parse_args()
    if a.quick:
        a.train, a.test, a.steps = 60, 40, 100
    from rcan.qtopt.network import QNetConfig, QNetwork, random_shift

    t0 = time.perf_counter()
    tr = collect(a.train, "train", a.camera, a.workers)
    te = collect(a.test, "test", a.camera, a.workers)
    collect_s = time.perf_counter() - t0
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = QNetwork(QNetConfig())
    opt = torch.optim.Adam(net.parameters(), 3e-4)
    g = torch.Generator().manual_seed(0)
    curve = []
    for step in range(1, a.steps + 1):
        i = torch.randint(0, len(tr["success"]), (64,), generator=g)
        logits = net(random_shift(tr["images"][i], 4, g), tr["states"][i], tr["actions"][i])
        loss = F.binary_cross_entropy_with_logits(logits, tr["success"][i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, a.steps // 6) == 0 or step == a.steps:
            with torch.no_grad():
                s = net(te["images"], te["states"], te["actions"]).numpy()
            curve.append((step, roc_auc(s, te["success"].numpy())))
            print(f"step {step}: test AUC {curve[-1][1]:.3f}", flush=True)
    result = {
        "camera": a.camera or "default",
        "train_episodes": a.train,
        "test_episodes": a.test,
        "train_success": float(tr["success"].mean()),
        "test_success": float(te["success"].mean()),
        "auc_curve": curve,
        "final_test_auc": curve[-1][1],
        "collect_seconds": collect_s,
        "load_average": os.getloadavg(),
    }
    print("| camera | train / test episodes | test AUC (final) | AUC curve |")
    print("|---|---|---|---|")
    print(
        f"| {result['camera']} | {a.train} / {a.test} | {curve[-1][1]:.3f} | "
        + ", ".join(f"{s}: {v:.2f}" for s, v in curve)
        + " |"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
