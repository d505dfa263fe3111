"""Can the critic's network *choose* a closing, given dense outcome labels? (issue 4 diagnosis)

The agents plateau at 60-70% while a grasp aimed exactly at an object from their closing states lifts
83%. Is the network (its image size and tower) unable to tell a closing that will hold from a near miss,
or do RL's labels (one outcome per closing) not teach it? This probe removes RL: it builds states where
the gripper has come down by an object (aimed scripted approaches, privileged) and, for each, labels K
alternative closings within one step's reach (uniform dx, dy in +-4 cm, uniform dyaw in +-15 degrees)
with ``GraspEnv.try_grasps``. It then fits the default Q-network (or a variant) to those labels with the
same auxiliary gripper and landing-point losses the trainer uses, and scores on held-out states of *test*
objects how well its argmax picks: the success of the closing it ranks first, against a random pick
(the mean label) and any success among the K (the best pick).

    .venv/bin/python benchmarks/probe_closing_choice.py gen --out /tmp/probe --states 1200 --split train
    .venv/bin/python benchmarks/probe_closing_choice.py gen --out /tmp/probe --states 300 --split test
    .venv/bin/python benchmarks/probe_closing_choice.py fit --data /tmp/probe --size 64 --steps 4000

``gen`` stores both 64x64 and 128x128 renders of each state, so ``fit --size 128`` asks whether more
pixels help the same labels (``--strides 4,2,2`` keeps the tower's cost and map sizes of 64x64).
Data are throwaway files (npz) in ``--out``; nothing here is used by the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def _fold_yaw(delta: np.ndarray) -> np.ndarray:
    """Angle between two finger directions, 0-90 degrees (the gripper is symmetric by 180)."""
    return np.abs((np.degrees(delta) + 90.0) % 180.0 - 90.0)


def _closing_states(env, seed: int, n_states: int):
    """Yield (obs, info) at ``n_states`` states where an aimed scripted approach (privileged object
    centre) is about to close; episodes seeded from ``seed``, so the same seed gives the same states."""
    from probe_retry_value import approach  # this script's folder is on sys.path when it runs

    from rcan.sim.scripted import ScriptedGraspPolicy

    policy = ScriptedGraspPolicy(np.random.default_rng(seed + 1), aim_prob=1.0)
    episode = found = 0
    while found < n_states:
        state = approach(env, policy, int(seed * 100_000 + episode))
        episode += 1
        if state is not None:
            found += 1
            yield state


def _worker_seeds(split: str, seed: int, workers: int) -> list[int]:
    """The episode seed of each worker: ``gen`` and ``noise`` with the same arguments see the same states."""
    return [(1000 if split == "test" else 0) + seed * 10 + w for w in range(workers)]


def _closings(rng: np.random.Generator, k: int) -> np.ndarray:
    """K closings within one step's reach: dx, dy uniform over the step (+-4 cm), dyaw uniform (+-15 deg)."""
    acts = np.zeros((k, 6), np.float32)
    acts[:, :2] = rng.uniform(-1, 1, (k, 2))
    acts[:, 2] = -1.0
    acts[:, 3] = rng.uniform(-1, 1, k)
    acts[:, 4:] = 1.0
    return acts


def _aux_channels(frame) -> np.ndarray:
    """Privileged channels of a 64x64 render as uint8 (H, W, 3): depth (0.45-1.0 m over 0-255, ~2 mm a
    level), the object mask and the robot (arm and gripper) mask: does more than RGB tell a closing?"""
    from rcan.sim.stage import OBJECT, ROBOT

    d = np.clip((frame.depth - 0.45) / 0.55, 0.0, 1.0) * 255.0
    seg = frame.segmentation
    return np.stack([d, (seg == OBJECT) * 255.0, (seg == ROBOT) * 255.0], -1).round().astype(np.uint8)


def _robot_free(env) -> np.ndarray:
    """The same 64x64 frame with the gripper (and the arm, which follows it) moved out of view: what the
    camera would show of the objects if the robot hid nothing (privileged; a diagnosis only)."""
    st = env.stage
    st.client.resetBasePositionAndOrientation(st.gripper, [0.0, -0.6, 1.0], [0, 0, 0, 1])
    rgb = env.renderer.render(env._style, 64).rgb
    env.stage.sync(env.cell)
    return rgb


def _gen_worker(job: tuple[str, int, int, int, str]) -> dict[str, np.ndarray]:
    split, seed, n_states, k, out = job
    from rcan.sim.grasp_env import GraspEnv

    rng = np.random.default_rng(seed)
    env = GraspEnv(domain="canonical", image_size=64, object_split=split)
    rows: dict[str, list] = {
        n: []
        for n in (
            "img64",
            "img128",
            "aux64",
            "clean64",
            "state",
            "tool",
            "acts",
            "labels",
            "after",
            "fingers",
            "dist",
            "yawoff",
        )
    }
    for obs, info in _closing_states(env, seed, n_states):
        acts = _closings(rng, k)
        dist = np.array([env.closing_distance(a) for a in acts], np.float32)
        yaw_off = np.array(
            [
                _fold_yaw(env.commanded_yaw(a) - env.wall_parallel_yaw(env.commanded_point(a)[:2]))
                for a in acts
            ],
            np.float32,
        )
        env.stage.sync(env.cell)
        img128 = env.renderer.render(env._style, 128).rgb
        rows["aux64"].append(_aux_channels(env.renderer.render(env._style, 64, aux=True)))
        rows["clean64"].append(_robot_free(env))
        rewards, fingers = env.try_grasps(acts)
        rows["img64"].append(obs["image"])
        rows["img128"].append(img128)
        rows["state"].append([float(obs["gripper_closed"]), float(obs["gripper_height"][0])])
        rows["tool"].append(info["tool_pixel"])
        rows["acts"].append(acts)
        rows["labels"].append((rewards > 0).astype(np.float32))
        rows["after"].append(fingers.reshape(k, 2, 2).mean(1))
        rows["fingers"].append(fingers.reshape(k, 2, 2))
        rows["dist"].append(dist)
        rows["yawoff"].append(yaw_off)
    env.close()
    data = {n: np.asarray(v) for n, v in rows.items()}
    np.savez_compressed(f"{out}/{split}-{seed}.npz", **data)
    return {"states": len(data["labels"]), "success": float(data["labels"].mean())}


def gen(args: argparse.Namespace) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    per = math.ceil(args.states / args.workers)
    jobs = [
        (args.split, s, per, args.k, args.out) for s in _worker_seeds(args.split, args.seed, args.workers)
    ]
    t = time.time()
    with Pool(args.workers) as pool:
        res = pool.map(_gen_worker, jobs)
    print(json.dumps({"split": args.split, "workers": res, "seconds": round(time.time() - t, 1)}))


def _noise_worker(job: tuple[str, int, int, int, tuple[tuple[float, float], ...], int]) -> dict:
    split, seed, n_states, k, scales, repeats = job
    from rcan.sim.grasp_env import GraspEnv

    rng, jitter = np.random.default_rng(seed), np.random.default_rng([seed, 7])
    env = GraspEnv(domain="canonical", image_size=64, object_split=split)
    unit_m, unit_deg = env.max_translation, math.degrees(env.max_rotation)
    base, perturbed, dist = [], [], []
    for _obs, _info in _closing_states(env, seed, n_states):
        acts = _closings(rng, k)  # the same closings as ``gen`` draws for these seeds
        dist.append([env.closing_distance(a) for a in acts])
        base.append(env.try_grasps(acts)[0] > 0)
        per_scale = []
        for mm, deg in scales:
            tries = np.repeat(acts[None], repeats, 0)  # (P, K, 6)
            tries[..., :2] += jitter.normal(0.0, mm / 1000.0 / unit_m, (repeats, k, 2))
            tries[..., 3] += jitter.normal(0.0, deg / unit_deg, (repeats, k))
            per_scale.append(env.try_grasps(tries.reshape(-1, 6))[0].reshape(repeats, k) > 0)
        perturbed.append(per_scale)
    env.close()
    return {"base": np.array(base), "perturbed": np.array(perturbed), "dist": np.array(dist)}


def noise(args: argparse.Namespace) -> None:
    """How repeatable is a closing's outcome, and how well would a picker do that knew each closing's
    success *probability* (its neighbourhood's mean) exactly? Labels the same states and closings as
    ``gen`` (same seeds), then each closing again ``--repeats`` times with its aim moved by N(0, mm) in x
    and y and its yaw by N(0, deg), for each ``--scales`` pair (0,0 = the same closing again: what
    ``restoreState`` leaves of the solver's history). The smoothed pick is the closing whose perturbed
    copies lift most often, scored by its own (unperturbed) outcome, which its estimate did not see."""
    from bench_grasp_view import roc_auc  # this script's folder is on sys.path when it runs

    scales = tuple(tuple(float(v) for v in pair.split(",")) for pair in args.scales.split(";"))
    per = math.ceil(args.states / args.workers)
    jobs = [
        (args.split, s, per, args.k, scales, args.repeats)
        for s in _worker_seeds(args.split, args.seed, args.workers)
    ]
    t = time.time()
    with Pool(args.workers) as pool:
        parts = pool.map(_noise_worker, jobs)
    base = np.concatenate([p["base"] for p in parts]).astype(np.float64)  # (N, K)
    pert = np.concatenate([p["perturbed"] for p in parts]).astype(np.float64)  # (N, S, P, K)
    dist = np.concatenate([p["dist"] for p in parts])
    rows = np.arange(len(base))
    tie = np.random.default_rng(args.seed).random(base.shape) * 1e-3  # random tie-break
    out = {
        "states": len(base),
        "closings": int(base.size),
        "seconds": round(time.time() - t, 1),
        "base_success": round(base.mean(), 3),
        "any": round(base.max(1).mean(), 3),
        "nearest_centre": round(base[rows, dist.argmin(1)].mean(), 3),
        "scales": [],
    }
    for i, (mm, deg) in enumerate(scales):
        p_hat = pert[:, i].mean(1)  # (N, K)
        pick = (p_hat + tie).argmax(1)
        out["scales"].append(
            {
                "mm": mm,
                "deg": deg,
                "flip": round(np.abs(pert[:, i] - base[:, None]).mean(), 3),
                "flip_of_successes": round(
                    np.abs(pert[:, i] - 1.0)[base[:, None].repeat(args.repeats, 1) > 0].mean(), 3
                ),
                "smoothed_pick": round(base[rows, pick].mean(), 3),
                "auc_of_estimate": round(roc_auc(p_hat.ravel(), base.ravel()), 3),
                "smoothed_pick_estimate": round(p_hat[rows, pick].mean(), 3),
                "states_with_a_sure_closing": round((p_hat.max(1) >= 1.0).mean(), 3),
            }
        )
    print(json.dumps(out, indent=1))


EXTRA = {"depth": (0, 0, 0), "seg": (1, 2, 2), "both": (0, 1, 2)}  # which aux64 planes fill 3 more channels


def _load(data: str, split: str, size: int, extra: str = "") -> dict[str, np.ndarray]:
    files = sorted(Path(data).glob(f"{split}-*.npz"))
    if not files:
        raise SystemExit(f"no {split}-*.npz in {data}")
    parts = [dict(np.load(f)) for f in files]
    out = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
    out["img"] = out.pop(f"img{size}")
    out.pop("img128" if size == 64 else "img64")
    aux = out.pop("aux64", None)
    clean = out.pop("clean64", None)
    if extra == "clean":
        if clean is None or size != 64:
            raise SystemExit("--extra clean needs 64x64 data generated with clean64 (re-run gen)")
        out["img"] = np.concatenate([out["img"], clean], -1)
    elif extra:
        if aux is None or size != 64:
            raise SystemExit("--extra needs 64x64 data generated with aux64 (re-run gen)")
        out["img"] = np.concatenate([out["img"], aux[..., list(EXTRA[extra])]], -1)
    return out


def make_glimpse(size: int, span: float, channels: tuple[int, ...]):
    """A grasp-quality CNN on an aligned crop, as grasp detectors such as Dex-Net's GQ-CNN use: the image
    sampled on a ``size`` x ``size`` grid centred between the two fingertips and turned so that they
    close along the crop's x axis, ``span`` times their half-distance to each side. Input: images
    (B, 3, H, W), fingertips (B, K, 2, 2) in [-1, 1] image coordinates -> logits (B, K)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Glimpse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin = 3
            for i, c in enumerate(channels):
                layers += [nn.Conv2d(cin, c, 3, 1 if i == 0 else 2, 1), nn.ReLU(inplace=True)]
                cin = c
            self.convs = nn.Sequential(*layers)
            cells = size // 2 ** (len(channels) - 1)
            self.fc = nn.Sequential(
                nn.Linear(cin * cells * cells, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)
            )
            t = torch.linspace(-1.0, 1.0, size)
            self.register_buffer("s", t[None, :].expand(size, size).reshape(-1))  # along the fingers
            self.register_buffer("t", t[:, None].expand(size, size).reshape(-1))  # across

        def crops(self, images: torch.Tensor, fingers: torch.Tensor) -> torch.Tensor:
            b, k = fingers.shape[:2]
            c = fingers.mean(2)  # (B, K, 2)
            u = (fingers[:, :, 1] - fingers[:, :, 0]) / 2.0
            along = u * span
            across = torch.stack([-along[..., 1], along[..., 0]], -1)
            pts = c[:, :, None] + self.s[:, None] * along[:, :, None] + self.t[:, None] * across[:, :, None]
            grid = pts.view(b, k * size, size, 2)
            x = images.float() * (1.0 / 255.0) - 0.5
            out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
            return out.view(b, 3, k, size, size).permute(0, 2, 1, 3, 4).reshape(b * k, 3, size, size)

        def forward(self, images: torch.Tensor, fingers: torch.Tensor) -> torch.Tensor:
            b, k = fingers.shape[:2]
            return self.fc(self.convs(self.crops(images, fingers)).flatten(1)).view(b, k)

    return Glimpse()


def fit(args: argparse.Namespace) -> None:
    import torch

    from rcan.common.presets import parse_settings
    from rcan.qtopt.args import TrainArgs, make_args, network_config
    from rcan.qtopt.losses import gripper_aux_loss
    from rcan.qtopt.network import QNetwork, random_shift

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    overrides = {"image_size": args.size}
    if args.strides:
        overrides["strides"] = tuple(int(s) for s in args.strides.split(","))
    if args.channels:
        overrides["channels"] = tuple(int(s) for s in args.channels.split(","))
    overrides.update(parse_settings(TrainArgs, args.set))
    glimpse = args.glimpse > 0
    if glimpse:
        net = make_glimpse(args.glimpse, args.span, tuple(int(c) for c in args.glimpse_channels.split(",")))
    else:
        config = network_config(make_args("default", **overrides))
        if args.extra:
            config = dataclasses.replace(config, in_channels=6)  # RGB + three privileged planes
        net = QNetwork(config)
    train, test = (
        _load(args.data, "train", args.size, args.extra),
        _load(args.data, "test", args.size, args.extra),
    )
    if args.train_states:
        train = {n: v[: args.train_states] for n, v in train.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=args.weight_decay)  # 0: plain Adam
    gen_ = torch.Generator().manual_seed(args.seed)
    pad = args.size // 16 if args.pad < 0 else args.pad
    t_img = torch.from_numpy(train["img"]).permute(0, 3, 1, 2).contiguous()
    names = ("state", "tool", "acts", "labels", "after") + (("fingers",) if glimpse else ())
    tensors = {n: torch.from_numpy(train[n]) for n in names}
    n = len(t_img)
    train_eval = {k: v[: len(test["labels"])] for k, v in train.items()}  # same size as the test set
    rng = np.random.default_rng(args.seed)
    curve = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.integers(0, n, args.batch))
        images, shifts = random_shift(t_img[idx], pad, gen_, return_shifts=True)
        move = shifts * (2.0 / args.size)
        if glimpse:
            fingers = tensors["fingers"][idx] + move[:, None, None]
            swap = torch.from_numpy(rng.random(fingers.shape[:2]) < 0.5)[..., None, None]
            fingers = torch.where(swap, fingers.flip(2), fingers)  # the fingers are interchangeable
            logits = net(images, fingers)
            aux = torch.zeros(())
        else:
            feats = net.features(images)
            states, acts = tensors["state"][idx], tensors["acts"][idx]
            logits = net.head(feats, states, acts)
            # the trainer's two auxiliary losses; the landing-point one for all K candidates of a state at once
            cells = net.feature_shape[-1] / 2.0
            p_err = (net.move_pixels(feats, states, acts) - (tensors["after"][idx] + move[:, None])) * cells
            aux = (
                gripper_aux_loss(net, feats, tensors["tool"][idx], shifts, args.size)
                + p_err.pow(2).sum(-1).mean()
            )
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, tensors["labels"][idx])
        opt.zero_grad()
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            row = {"step": step, "minutes": round((time.time() - t0) / 60, 2), "loss": round(loss.item(), 4)}
            row.update(score(net, test, glimpse))
            if args.views > 1 and not glimpse:
                row.update(
                    {
                        f"views{args.views}_{k}": v
                        for k, v in score(net, test, views=args.views).items()
                        if k in ("pick", "auc", "pick_dist_cm")
                    }
                )
            train_row = score(net, train_eval, glimpse)
            row.update({f"train_{k}": v for k, v in train_row.items() if k in ("pick", "auc")})
            curve.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "curve": curve}, indent=1))


def score(net, data: dict[str, np.ndarray], glimpse: bool = False, views: int = 1) -> dict[str, float]:
    """Pick quality on held-out states: the success of the top-ranked closing, of a random one (mean),
    of the best one (any), and of the closing nearest an object's centre (privileged aim, any yaw)."""
    import torch
    from bench_grasp_view import roc_auc  # this script's folder is on sys.path when it runs

    from rcan.qtopt.agent import shifted_views

    with torch.no_grad():
        logits = []
        for i in range(0, len(data["img"]), 64):
            img = torch.from_numpy(data["img"][i : i + 64]).permute(0, 3, 1, 2)
            if glimpse:
                logits.append(net(img, torch.from_numpy(data["fingers"][i : i + 64])))
            else:
                states, acts = (torch.from_numpy(data[n][i : i + 64]) for n in ("state", "acts"))
                # test-time augmentation as the policy does it: the mean logit over shifted views
                out = net(shifted_views(img, views), states.repeat(views, 1), acts.repeat(views, 1, 1))
                logits.append(out.view(views, len(img), -1).mean(0))
        q = torch.cat(logits).numpy()
    y = data["labels"]
    rows = np.arange(len(y))
    pick = y[rows, q.argmax(1)]
    nearest = y[rows, data["dist"].argmin(1)]
    return {
        "pick": round(float(pick.mean()), 3),
        "random": round(float(y.mean()), 3),
        "any": round(float(y.max(1).mean()), 3),
        "nearest_centre": round(float(nearest.mean()), 3),
        "pick_dist_cm": round(float(data["dist"][rows, q.argmax(1)].mean() * 100), 2),
        "auc": round(roc_auc(q.ravel(), y.ravel()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="label K closings at each of N states")
    g.add_argument("--out", required=True)
    g.add_argument("--states", type=int, default=1200)
    g.add_argument("--split", choices=("train", "test"), default="train")
    g.add_argument("--k", type=int, default=16)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("noise", help="repeat each closing with small perturbations; the smoothed picker")
    r.add_argument("--states", type=int, default=200)
    r.add_argument("--split", choices=("train", "test"), default="test")
    r.add_argument("--k", type=int, default=16)
    r.add_argument("--scales", default="0,0;2,2;5,5", help="'mm,deg;mm,deg;...' perturbation std")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit", help="fit the Q-network to the labels; score its picks on test states")
    f.add_argument("--data", required=True)
    f.add_argument("--size", type=int, choices=(64, 128), default=64)
    f.add_argument("--strides", default="")
    f.add_argument("--channels", default="")
    f.add_argument("--steps", type=int, default=4000)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    f.add_argument("--views", type=int, default=1, help="also score with Q averaged over N shifted views")
    f.add_argument("--pad", type=int, default=-1, help="random-shift pixels (-1: the trainer's size // 16)")
    f.add_argument("--train-states", type=int, default=0, help="use only the first N training states")
    f.add_argument("--eval-every", type=int, default=500)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a network setting of TrainArgs"
    )
    f.add_argument("--glimpse", type=int, default=0, help="fit an aligned-crop CNN of this crop size instead")
    f.add_argument("--span", type=float, default=1.6, help="glimpse half-width in fingertip half-distances")
    f.add_argument("--glimpse-channels", default="16,32,32")
    f.add_argument("--json", default="")
    f.add_argument(
        "--extra",
        choices=("", *EXTRA, "clean"),
        default="",
        help="privileged planes (or clean: the robot-free frame) stacked on RGB (a diagnosis only)",
    )
    args = parser.parse_args(argv)
    {"gen": gen, "noise": noise, "fit": fit}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
