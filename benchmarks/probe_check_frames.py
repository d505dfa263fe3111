"""Probe: does the previous lift step's image help the grasp check tell a slipping grasp from a held one?

Why: a check that decided after two lift steps instead of three would leave room for a third grasp (worth
+3.6 points with a never-wrong check, ``probe_oracle_check.py --lift 2``), but the learned two-step checks
accept grasps that slip later. Between two lift steps a held object rises with the fingers and a slipping
one lags: a motion cue that one image lacks. This fits, on a check's own data (``rcan train-check
--early-threshold P`` stores the image after every lift step, ``RUN/check_data.h5``), the check for one
lift level from that level's image alone and from it stacked with the previous level's (6 channels; the
first conv's weights for the extra channels start at zero, so both fits start from the same function),
with the same grasp-wise validation split, and prints the validation AUC per epoch.

    .venv/bin/python benchmarks/probe_check_frames.py runs/my-agent [--levels 2 3] [--epochs 12]
"""

from __future__ import annotations

import argparse
import dataclasses

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from rcan.qtopt.agent import load_network
from rcan.qtopt.grasp_check import TERMINATE_HERE, _shift, auc, check_scores
from rcan.qtopt.network import QNetwork


def stacked_critic(agent: str) -> QNetwork:
    """The agent's critic taking (image, previous image): the previous image's first-conv weights zero."""
    base, _ = load_network(agent)
    net = QNetwork(dataclasses.replace(base.config, in_channels=2 * base.config.in_channels))
    state = base.state_dict()
    w, c = state["tower.0.weight"], base.config.in_channels
    wide = torch.zeros(w.shape[0], w.shape[1] + c, *w.shape[2:])
    wide[:, :c], wide[:, 2 * c :] = w[:, :c], w[:, c:]  # image, previous image (zero), coordinates
    state["tower.0.weight"] = wide
    net.load_state_dict(state)
    return net


def fit(run: str, data: dict[str, np.ndarray], level: int, previous: bool, epochs: int) -> list[float]:
    """Validation AUC before and after each epoch of fitting the check at ``level``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    rows: dict[int, dict[int, int]] = {}
    for i, (g, lv) in enumerate(zip(data["grasps"], data["levels"], strict=True)):
        rows.setdefault(int(g), {})[int(lv)] = i
    ids = np.array(sorted(g for g, d in rows.items() if level in d and level - 1 in d))
    held_out = set(np.random.default_rng(0).permutation(ids)[: len(ids) // 5].tolist())
    cur = np.array([rows[int(g)][level] for g in ids])
    pre = np.array([rows[int(g)][level - 1] for g in ids])
    val = np.array([int(g) in held_out for g in ids])
    images = data["images"][cur]
    if previous:
        images = np.concatenate([images, data["images"][pre]], 1)
    x, s = torch.from_numpy(images), torch.from_numpy(data["states"][cur]).float()
    y = data["labels"][cur].astype(np.float32)
    net = (
        stacked_critic(f"{run}/agent.safetensors")
        if previous
        else load_network(f"{run}/agent.safetensors")[0]
    )
    act = torch.from_numpy(TERMINATE_HERE)
    train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)

    def val_auc() -> float:
        return auc(check_scores(net, x[val_rows], s[val_rows]), y[val_rows])

    history = [val_auc()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)  # as fit_check
    rng, target = np.random.default_rng(1), torch.from_numpy(y)
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train_rows)
        for i in range(0, len(order), 32):
            r = order[i : i + 32]
            loss = F.binary_cross_entropy_with_logits(
                net(_shift(x[r], 2, gen), s[r], act.expand(len(r), -1)), target[r]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append(val_auc())
    return history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run", help="a run whose check_data.h5 holds every lift level (train-check --early-threshold)"
    )
    p.add_argument("--levels", type=int, nargs="+", default=[2, 3])
    p.add_argument("--epochs", type=int, default=12)
    a = p.parse_args(argv)
    if min(a.levels) < 2 or a.epochs < 1:
        p.error("--levels must be lift steps >= 2 (each is paired with the step before) and --epochs >= 1")
    torch.set_num_threads(1)
    with h5py.File(f"{a.run}/check_data.h5", "r") as f:
        data = {k: f[k][:] for k in ("images", "states", "labels", "levels", "grasps")}
    if len(np.unique(data["levels"])) < 2:
        p.error(
            f"{a.run}/check_data.h5 holds one lift level; fit it with rcan train-check --early-threshold P"
        )
    for level in a.levels:
        for previous in (False, True):
            h = fit(a.run, data, level, previous, a.epochs)
            name = "with the previous step's image" if previous else "one image"
            print(
                f"lift step {level}, {name}: best validation AUC {max(h):.4f} ({', '.join(f'{v:.3f}' for v in h)})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
