"""Probe: learn the grasp check from simulated grasps (no privileged state at test time).

``probe_check_retry.py`` showed that checking a grasp after lifting it and regrasping when it holds
nothing lifts the shipped agent from 73% to 88% with a privileged check. Its own critic is a poor judge
there (it has seen lifted states only from the scripted episodes). This collects the state the check
looks at, the same way the acting procedure reaches it (the agent's greedy closing, ``lift`` 4 cm steps
up), on *training* objects, labels each by what terminating there yields (the episode's success), and
fits a copy of the agent's critic to that label for the action "terminate here" (binary cross-entropy,
random shifts as in training). The fitted network is then a check for ``probe_check_retry.py --check
learned:PATH:TAU``.

    .venv/bin/python benchmarks/probe_check_learned.py --lift 2 --grasps 3000 --out runs/checkprobe/learned
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rcan.qtopt.agent import load_agent, load_network, save_agent
from rcan.qtopt.evaluate import ASSET_AGENT, make_eval_env

TERMINATE_HERE = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)


def collect(job: tuple[str, int, int, int]) -> dict[str, np.ndarray]:
    """``n`` lifted grasps by the agent on training objects (a new object set every 20 attempts)."""
    agent, lift, n, worker = job
    torch.set_num_threads(1)
    policy = load_agent(agent, seed=worker)
    images, states, labels = [], [], []
    rng = np.random.default_rng([worker, 77])
    env = None
    bar = tqdm(total=n, desc=f"collector {worker}", position=worker, leave=False)
    try:
        while len(labels) < n:
            if len(labels) % 20 == 0 or env is None:
                if env is not None:
                    env.close()
                env = make_eval_env("canonical", int(rng.integers(2**31)), objects="train")
            obs, info = env.reset(seed=int(rng.integers(2**31)))
            policy.reset(info)
            done, lifting = False, -1
            while not done:
                if lifting == 0:  # the state the check looks at: record it and terminate here
                    image, state = policy.prepare(obs)
                    obs, _, done, _, info = env.step(TERMINATE_HERE)
                    images.append(image), states.append(state), labels.append(bool(info["is_success"]))
                    bar.update(1)
                    break
                if lifting > 0:
                    a = np.array([0, 0, 1, 0, 1, -1], dtype=np.float32)
                    lifting -= 1
                else:
                    a = np.asarray(policy.act(obs, info), dtype=np.float32).copy()
                    if a[5] > 0 and a[4] > 0 and 20 - int(info.get("step", 0)) > lift + 1:
                        a[5], lifting = -1.0, lift
                obs, _, done, _, info = env.step(a)
    finally:
        bar.close()
        if env is not None:
            env.close()
    return {"images": np.stack(images), "states": np.stack(states), "labels": np.array(labels)}


def shift(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels (replicate padding), one per image."""
    b, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    out = torch.empty(b, images.shape[1], h, w)
    for i, (dx, dy) in enumerate(torch.randint(0, 2 * pad + 1, (b, 2)).tolist()):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", default=str(ASSET_AGENT))
    p.add_argument("--lift", type=int, default=2)
    p.add_argument("--grasps", type=int, default=3000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    data_path = a.out / "data.npz"
    t0 = time.time()
    if data_path.is_file():
        data = dict(np.load(data_path))
    else:
        per = -(-a.grasps // a.jobs)
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            parts = pool.map(collect, [(a.agent, a.lift, per, w) for w in range(a.jobs)])
        data = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        np.savez(data_path, **data)
    t_collect = time.time() - t0
    n = len(data["labels"])
    print(f"{n} lifted grasps, {data['labels'].mean():.3f} succeed if terminated there ({t_collect:.0f} s)")

    torch.set_num_threads(2)
    torch.manual_seed(0)
    net, _ = load_network(a.agent)
    net.train()
    idx = np.random.default_rng(0).permutation(n)
    val, tr = idx[: n // 5], idx[n // 5 :]
    images = torch.from_numpy(data["images"])
    states = torch.from_numpy(data["states"]).float()
    labels = torch.from_numpy(data["labels"]).float()
    act = torch.from_numpy(TERMINATE_HERE)

    @torch.no_grad()
    def scores(rows: np.ndarray) -> np.ndarray:
        net.eval()
        out = torch.cat(
            [
                net(
                    images[rows[i : i + 256]],
                    states[rows[i : i + 256]],
                    act.expand(len(rows[i : i + 256]), -1),
                )
                for i in range(0, len(rows), 256)
            ]
        )
        net.train()
        return torch.sigmoid(out).numpy()

    history = [{"epoch": 0, "val_auc": auc(scores(val), data["labels"][val])}]
    print(f"epoch 0 (the critic as it is): val AUC {history[0]['val_auc']:.3f}")
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    for epoch in range(1, a.epochs + 1):
        order = np.random.default_rng(epoch).permutation(tr)
        for i in range(0, len(order), 32):
            rows = order[i : i + 32]
            logits = net(shift(images[rows]), states[rows], act.expand(len(rows), -1))
            loss = F.binary_cross_entropy_with_logits(logits, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        s = scores(val)
        history.append({"epoch": epoch, "val_auc": auc(s, data["labels"][val]), "loss": float(loss)})
        print(f"epoch {epoch}: val AUC {history[-1]['val_auc']:.3f}", flush=True)
    net.eval()
    s, y = scores(val), data["labels"][val]
    taus = {}
    for tau in (0.3, 0.4, 0.5, 0.6, 0.7):
        taus[str(tau)] = {
            "fails_caught": float((s[~y] < tau).mean()),
            "successes_reopened": float((s[y] < tau).mean()),
        }
    from rcan.qtopt.cem import CEMConfig

    save_agent(a.out / "check.safetensors", net, "canonical", CEMConfig(), {"lift": str(a.lift)})
    summary = {
        "grasps": n,
        "positives": float(data["labels"].mean()),
        "collect_s": t_collect,
        "train_s": time.time() - t0 - t_collect,
        "history": history,
        "taus_on_val": taus,
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(taus, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
