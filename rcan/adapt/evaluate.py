"""``rcan eval-generator``: how well G maps held-out randomized and "real" scenes to the canonical look.

Held-out scenes are made on the fly: test objects, seeds far from any training seed, scripted grasping
trajectories; at each step a pair is rendered in the ``heavy`` domain and in the ``real`` domain (whose
canonical twin is seen from the real camera's pose, so the target lines up with the input). Metrics
against the canonical target: RGB PSNR and MPSE (on [-1, 1] images), segmentation mean IoU over the five
classes, depth RMSE (metres). The identity baseline (no translation: the input itself as the canonical
guess) is reported for the RGB metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcan.adapt.inference import load_generator, translate_batch
from rcan.adapt.losses import mean_pairwise_squared_error
from rcan.common.atomic import write_json_atomic, write_text_atomic
from rcan.common.images import colour_depth, colour_segmentation

EVAL_SEED = 900_000  # far from the seeds `rcan collect` uses by default
NUM_CLASSES = 5


@dataclass
class HeldOut:
    """Paired held-out frames of one domain."""

    inputs: np.ndarray
    canonical: np.ndarray
    segmentation: np.ndarray
    depth: np.ndarray


def held_out_scenes(
    domains: tuple[str, ...], frames: int, image_size: int, seed: int = EVAL_SEED
) -> dict[str, HeldOut]:
    """``frames`` paired frames per domain along scripted trajectories on test objects."""
    from rcan.sim.grasp_env import GraspEnv
    from rcan.sim.scripted import ScriptedGraspPolicy

    env = GraspEnv(image_size=image_size, object_split="test")
    rows: dict[str, list[dict[str, np.ndarray]]] = {d: [] for d in domains}
    pol = ScriptedGraspPolicy(np.random.default_rng(seed), tray_half=env.cell.config.tray_inner_half)
    episode = 0
    try:
        with tqdm(total=frames, desc="held-out scenes", unit="frame") as bar:
            while len(rows[domains[0]]) < frames:
                obs, info = env.reset(seed=seed + episode)
                pol.reset(info)
                episode += 1
                done = False
                while not done and len(rows[domains[0]]) < frames:
                    for d in domains:
                        rows[d].append(env.render_pair(d))
                    bar.update(1)
                    obs, _, done, _, info = env.step(pol.act(obs, info))
    finally:
        env.close()
    return {
        d: HeldOut(
            inputs=np.stack([r["randomized"] for r in rs]),
            canonical=np.stack([r["canonical"] for r in rs]),
            segmentation=np.stack([r["segmentation"] for r in rs]),
            depth=np.stack([r["depth"] for r in rs]),
        )
        for d, rs in rows.items()
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of uint8 images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def mpse(a: np.ndarray, b: np.ndarray) -> float:
    """MPSE of uint8 images mapped to [-1, 1], as in training."""
    ta = torch.from_numpy(a).float() / 127.5 - 1
    tb = torch.from_numpy(b).float() / 127.5 - 1
    return float(mean_pairwise_squared_error(ta, tb))


def mean_iou(
    pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_CLASSES
) -> tuple[float, list[float]]:
    """Mean IoU over the classes present in either prediction or target."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = np.logical_or(p, t).sum()
        ious.append(float(np.logical_and(p, t).sum() / union) if union else float("nan"))
    return float(np.nanmean(ious)), ious


def evaluate_generator(generator: str, frames: int = 200, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Metrics per domain for the generator at ``generator`` (run dir or file), plus the samples used."""
    model, config = load_generator(generator)
    scenes = held_out_scenes(("heavy", "real"), frames, config.image_size, seed)
    results: dict[str, Any] = {"generator": str(generator), "frames": frames, "seed": seed, "domains": {}}
    outputs = {}
    for domain, h in scenes.items():
        out = translate_batch(model, h.inputs)
        outputs[domain] = out
        miou, per_class = mean_iou(out["segmentation"], h.segmentation)
        results["domains"][domain] = {
            "rgb_psnr": psnr(out["rgb"], h.canonical),
            "rgb_mpse": mpse(out["rgb"], h.canonical),
            "identity_rgb_psnr": psnr(h.inputs, h.canonical),
            "identity_rgb_mpse": mpse(h.inputs, h.canonical),
            "segmentation_miou": miou,
            "segmentation_iou_per_class": per_class,
            "depth_rmse_m": float(np.sqrt(np.mean((out["depth"] - h.depth) ** 2))),
        }
    results["_scenes"], results["_outputs"] = scenes, outputs
    return results


def figure3_grid(
    scenes: dict[str, HeldOut], outputs: dict[str, dict[str, np.ndarray]], rows_per_domain: int = 4
) -> np.ndarray:
    """Rows of (input | G rgb | canonical target | G mask | G depth) per domain, like the paper's Figure 3."""
    rows = []
    for domain, h in scenes.items():
        o = outputs[domain]
        idx = np.linspace(0, len(h.inputs) - 1, rows_per_domain).astype(int)
        for i in idx:
            rows.append(
                np.concatenate(
                    [
                        h.inputs[i],
                        o["rgb"][i],
                        h.canonical[i],
                        colour_segmentation(o["segmentation"][i]),
                        colour_depth(o["depth"][i]),
                    ],
                    axis=1,
                )
            )
    return np.concatenate(rows, axis=0)


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| domain | RGB PSNR (dB) | identity PSNR | RGB MPSE | identity MPSE | seg mIoU | depth RMSE (m) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, m in results["domains"].items():
        lines.append(
            f"| {d} | {m['rgb_psnr']:.2f} | {m['identity_rgb_psnr']:.2f} | {m['rgb_mpse']:.4f} | "
            f"{m['identity_rgb_mpse']:.4f} | {m['segmentation_miou']:.3f} | {m['depth_rmse_m']:.4f} |"
        )
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """metrics.json, metrics.md and figure3.png (grid of both domains) in ``out``."""
    from rcan.common.images import save_png

    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    write_json_atomic(out / "metrics.json", public)
    write_text_atomic(out / "metrics.md", results_markdown(results) + "\n")
    grid = figure3_grid(results["_scenes"], results["_outputs"])
    grid = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)  # 2x nearest-neighbour, for reading
    return {
        "json": out / "metrics.json",
        "md": out / "metrics.md",
        "grid": save_png(out / "figure3.png", grid),
    }
