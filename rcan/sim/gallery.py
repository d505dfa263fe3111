"""``rcan show``: one scene in every visual domain, with its segmentation and depth, as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcan.common.images import colour_depth, colour_segmentation, save_figure
from rcan.sim.domains import DOMAINS, canonical_twin
from rcan.sim.grasp_env import GraspEnv
from rcan.sim.scene import CLASS_NAMES


def scene_panels(
    seed: int = 0, size: int = 128, object_split: str = "train", texture_dir: str | None = None, steps: int = 3
) -> list[tuple[str, np.ndarray]]:
    """Render one seeded scene in every domain (the gripper moved a few steps in) plus depth and masks."""
    env = GraspEnv(image_size=size, object_split=object_split, texture_dir=texture_dir)
    try:
        env.reset(seed=seed)
        for _ in range(steps):
            env.step(np.array([0.3, -0.2, -0.6, 0.2, -1.0, -1.0], dtype=np.float32))
        panels: list[tuple[str, np.ndarray]] = []
        rng = np.random.default_rng(seed)
        styles = {d: env.sample_style(d, rng) for d in DOMAINS}
        for domain in DOMAINS:
            panels.append((domain, env.render_style(styles[domain]).rgb))
        aux = env.render_style(canonical_twin(styles["heavy"]), aux=True)
        panels.append(("segmentation", colour_segmentation(aux.segmentation)))
        panels.append(("depth", colour_depth(aux.depth)))
        return panels
    finally:
        env.close()


def save_grid(panels: list[tuple[str, np.ndarray]], out: Path, title: str = "") -> Path:
    """Save labelled panels side by side as a PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    for ax, (name, img) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)


LEGEND = ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES))
