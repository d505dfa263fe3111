"""Arguments of ``rcan train-generator``: the dataclass (one docstring per field), its presets, which fields
may change on ``--resume``, and validation. The run directory's file names live here too, because reading a
run's saved arguments back is part of resolving a command line."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcan.adapt.networks import discriminator_config, generator_config
from rcan.common.checkpoint import read_metadata
from rcan.common.presets import from_preset

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "rcan.generator_train_state"
CONFIG_FILE = "config.json"


@dataclass
class TrainArgs:
    """Arguments of ``rcan train-generator``. Defaults are the ``default`` preset: 64x64, 12k steps of 16 pairs
    (~10 epochs of 20k pairs), about an hour on this 2-core machine at the 45-60 pairs/s measured with 1 thread."""

    data: str = ""
    """Paired dataset: a directory readable by ``rcan.data.paired.PairedDataset``, or an ``.npz`` with the
    arrays randomized, canonical, segmentation, depth."""
    out: str = "runs/generator"
    """Run directory (config, TensorBoard logs, image grids, checkpoints)."""
    preset: str = "default"
    """Name of the preset these arguments started from (tiny, default, paper); informational."""
    resume: bool = False
    """Continue the run in ``out`` from its checkpoint (required if ``out`` has one)."""
    steps: int = 12000
    """Total optimizer steps (G and D one step each); on resume, may be raised to train further."""
    batch_size: int = 16
    """Pairs per step."""
    seed: int = 0
    """Seeds weight init, the data order (per epoch) and torch's RNG."""
    generator: str = "default"
    """Generator architecture preset (see ``rcan.adapt.networks.GENERATOR_PRESETS``; ``pix2pix`` = the
    standard pix2pix U-Net)."""
    discriminator: str = "default"
    """Discriminator architecture preset (see ``rcan.adapt.networks.DISCRIMINATOR_PRESETS``)."""
    lr: float = 2e-4
    """Adam learning rate for G and D."""
    beta1: float = 0.5
    """Adam beta1 (pix2pix's 0.5)."""
    beta2: float = 0.999
    """Adam beta2."""
    lambda_x: float = 1.0
    """Weight of the MPSE between generated and canonical RGB (paper eq. 2)."""
    lambda_rgb_l2: float = 0.1
    """Weight of a plain MSE on RGB (our addition): MPSE ignores a constant colour offset, this pins it."""
    lambda_m: float = 1.0
    """Weight of the L2 between softmax segmentation and one-hot targets (Brier score per pixel)."""
    lambda_d: float = 1.0
    """Weight of the L2 on depth, in units of metres / depth_scale (2 m)."""
    lambda_gan: float = 0.02
    """Weight of the (non-saturating) sigmoid cross-entropy GAN loss for G; 0 disables D entirely."""
    val_fraction: float = 0.02
    """Held-out fraction: the dataset's last pairs (a contiguous tail, since neighbouring pairs share a scene)."""
    val_max: int = 512
    """At most this many held-out pairs are scored at each evaluation."""
    log_every: int = 50
    """Steps between TensorBoard scalar logs (averages over the interval)."""
    eval_every: int = 1000
    """Steps between validation losses (and at the end)."""
    grid_every: int = 2000
    """Steps between image grids (and at the end)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and at the end, and on Ctrl-C/SIGTERM at a step boundary)."""
    grid_samples: int = 6
    """Rows of an image grid."""
    threads: int = 0
    """torch intra-op threads; 0 = half the logical CPUs, at most 8 (1 on a 2-core machine), or on resume the
    count the run used (bitwise-exact resume needs the same count). On a shared machine a second thread
    competing with another busy process made steps up to 8x slower, while on an idle one it gained ~1.5x;
    pass 2 for a dedicated 2-core machine."""


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "generator": "tiny",
        "discriminator": "tiny",
        "steps": 80,
        "batch_size": 8,
        "log_every": 10,
        "eval_every": 40,
        "grid_every": 40,
        "checkpoint_every": 40,
        "grid_samples": 4,
        "val_max": 64,
    },
    "default": {},
    # The paper's 472x472 images; for a machine with an accelerator or many cores.
    "paper": {
        "generator": "paper",
        "discriminator": "paper",
        "steps": 200000,
        "batch_size": 16,
        "log_every": 100,
        "eval_every": 5000,
        "grid_every": 5000,
        "checkpoint_every": 2000,
        "val_max": 256,
    },
}

# Fields that may differ between a run and its resumption: they do not change the training trajectory.
RESUMABLE = frozenset(
    {
        "data",
        "out",
        "resume",
        "steps",
        "threads",
        "log_every",
        "eval_every",
        "grid_every",
        "checkpoint_every",
        "grid_samples",
        "val_max",
    }
)


def make_args(preset: str = "default", **overrides: Any) -> TrainArgs:
    """TrainArgs for a preset, with keyword overrides (unknown names raise ValueError)."""
    return from_preset(TrainArgs, PRESETS, preset, overrides)


def resolve_args(out: str, preset: str | None, resume: bool, overrides: Mapping[str, Any]) -> TrainArgs:
    """Arguments for a CLI invocation: on ``--resume``, the run's saved arguments with the given options
    applied (``train`` then rejects changes that would alter the trajectory); otherwise the preset's."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        saved = _saved_args(Path(out))
        if saved is not None:
            if preset is not None and preset != saved.preset:
                raise ValueError(f"{out} was trained with --preset {saved.preset}, not {preset}")
            return dataclasses.replace(saved, out=out, resume=True, **overrides)
    return make_args(preset or "default", out=out, resume=resume, **overrides)


def _saved_args(out: Path) -> TrainArgs | None:
    state = out / STATE_FILE
    if not state.is_file():
        return None
    meta = read_metadata(state)
    if meta.get("format") != STATE_FORMAT or "args" not in meta:
        raise ValueError(f"{state} is not an rcan generator training state")
    return args_from_json(meta["args"])


def args_from_json(text: str) -> TrainArgs:
    raw = json.loads(text)
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    return TrainArgs(**{k: v for k, v in raw.items() if k in names})


def validate_args(args: TrainArgs) -> None:
    """Reject impossible settings with one clear message each."""
    if not args.out:
        raise ValueError("--out is required")
    for name in ("steps", "batch_size", "log_every", "eval_every", "grid_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")
    for name in ("grid_samples", "val_max", "threads"):
        if getattr(args, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in [0, 0.5), got {args.val_fraction}")
    for name in ("lambda_x", "lambda_rgb_l2", "lambda_m", "lambda_d", "lambda_gan"):
        if getattr(args, name) < 0 or not math.isfinite(getattr(args, name)):
            raise ValueError(f"{name} must be a finite number >= 0, got {getattr(args, name)}")
    if not (args.lr > 0 and 0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        raise ValueError("need lr > 0 and betas in [0, 1)")
    generator_config(args.generator)
    discriminator_config(args.discriminator)
