"""The generator file (``generator.safetensors``): writing it, loading it, and translating images with it.

The file holds the generator's weights and, in its metadata, the architecture config, so
``load_generator`` rebuilds the model without any other file (no code is ever unpickled).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rcan.adapt.networks import config_to_json, define_G, generator_config, images_to_input, output_to_images
from rcan.common.checkpoint import load_safetensors, load_weights_strict, save_safetensors_atomic

GENERATOR_FILE = "generator.safetensors"
GENERATOR_FORMAT = "rcan.generator"
FORMAT_VERSION = "1"


def save_generator(
    path: str | os.PathLike[str], model: nn.Module, step: int, extra: Mapping[str, str] | None = None
) -> Path:
    """Write weights + architecture config (+ the training step) atomically."""
    metadata = {
        "format": GENERATOR_FORMAT,
        "version": FORMAT_VERSION,
        "step": str(int(step)),
        "config": config_to_json(model.config),
        **(extra or {}),
    }
    return save_safetensors_atomic(path, model.state_dict(), metadata)


def resolve_generator_path(path: str | os.PathLike[str]) -> Path:
    """A run directory means its ``generator.safetensors``; a file path is used as is."""
    p = Path(path)
    if p.is_dir():
        p = p / GENERATOR_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no generator checkpoint at {p}")
    return p


def generator_fingerprint(path: str | os.PathLike[str]) -> str:
    """A short hash of a generator file's bytes: an agent trained on a generator's images records it, so a
    generator file overwritten later (a resumed or retrained generator run) is never taken for it."""
    import hashlib

    return hashlib.sha256(resolve_generator_path(path).read_bytes()).hexdigest()[:16]


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild a trained generator from a run directory or a ``generator.safetensors`` file.

    Returns ``(model in eval mode, config)``; ``model.step`` is the training step it was saved at.
    """
    p = resolve_generator_path(path)
    tensors, metadata = load_safetensors(p, expect_format=GENERATOR_FORMAT)
    try:
        config = generator_config(json.loads(metadata["config"]))
        step = int(metadata.get("step", "0"))
    except (KeyError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{p} has a broken generator config ({err})") from None
    model = define_G(config)
    load_weights_strict(model, tensors, p)
    model.step = step
    return model.to(device).eval(), config


def translate_batch(
    model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Run G on uint8 NHWC images; returns canonical ``rgb`` uint8 NHWC, ``segmentation`` uint8 NHW class
    ids, and ``depth`` float32 NHW in metres."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    size = model.config.image_size
    if tuple(x.shape[1:3]) != (size, size):
        raise ValueError(f"this generator was trained on {size}x{size} images, got {x.shape[1]}x{x.shape[2]}")
    device = next(model.parameters()).device
    rgb, seg, depth = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                out = model(images_to_input(x[start : start + batch_size]).to(device))
                rgb.append(output_to_images(out.rgb))
                seg.append(out.segmentation.argmax(dim=1).to(torch.uint8).cpu().numpy())
                depth.append((out.depth[:, 0] * model.config.depth_scale).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not rgb:
        n, h, w = x.shape[:3]
        return {
            "rgb": np.zeros((n, h, w, 3), np.uint8),
            "segmentation": np.zeros((n, h, w), np.uint8),
            "depth": np.zeros((n, h, w), np.float32),
        }
    return {"rgb": np.concatenate(rgb), "segmentation": np.concatenate(seg), "depth": np.concatenate(depth)}
