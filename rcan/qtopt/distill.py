"""Distil an ensemble of critics into one, so the agent acts like the ensemble at one critic's cost.

Beyond the paper. A run's last checkpoints, acting on their mean logit (``TrainArgs.ensemble_members``),
close better once than the final critic alone, but each critic adds its CEM time (three: 18 ms per
control step against the 10 ms goal). Distillation fits a copy of the final critic to the ensemble's
mean logit (squared error on logits) on replay images with training's random shift, for candidate
actions drawn where CEM's choices are made: uniform over the action box, closings that end, the replay's
own actions with noise, and jittered copies of the ensemble's best of 64 uniform candidates. No new data
and no simulator. Measured on the eighth default seed (2026-12-06, ``benchmarks/probe_distill.py``, 4,000
steps, ~6 minutes on 2 cores): closing once 74.3% against 68.4% (final critic) and 73.9% (ensemble);
with a grasp check fitted on its own grasps 87.0% over 30 object sets against 85.5% and 87.4%.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch

from rcan.qtopt.network import QNetwork, random_shift

FOCUS_PROBES = 64
"""Uniform candidates (half of them closings that end) the ensemble scores to find its best ones."""
FOCUS_TOP = 8
"""The ensemble's best this-many probes, jittered into the focused candidates."""


def teacher_features(teachers: Sequence[QNetwork], images: torch.Tensor) -> list[torch.Tensor]:
    """Each critic's image features of ``images`` (no gradients): computed once per batch and shared by
    the focused candidates and the targets."""
    with torch.no_grad():
        return [t.features(images) for t in teachers]


def ensemble_logits(
    teachers: Sequence[QNetwork],
    images: torch.Tensor,
    states: torch.Tensor,
    cands: torch.Tensor,
    feats: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The critics' mean logit (B, K) for K candidate actions (B, K, 6) per state. ``feats``: each
    critic's image features of ``images``, when already computed (a tower once per batch, not per call)."""
    if feats is None:
        feats = teacher_features(teachers, images)
    with torch.no_grad():
        return torch.stack([t.head(f, states, cands) for t, f in zip(teachers, feats, strict=True)]).mean(0)


def distill_candidates(
    rng: np.random.Generator,
    teachers: Sequence[QNetwork],
    images: torch.Tensor,
    states: torch.Tensor,
    actions: np.ndarray,
    k: int = 32,
    focus: int = 16,
    feats: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, K, 6) candidate actions for B states: a quarter uniform over [-1, 1]^6, a quarter closings that
    end (close and end uniform in (0.05, 1)), a quarter the replay's action plus noise (std 0.2), the rest
    uniform; the last ``focus`` replaced by copies of the ensemble's ``FOCUS_TOP`` best of
    ``FOCUS_PROBES`` uniform probes, jittered (std 0.1). ``feats``: as for ``ensemble_logits``."""
    if k < 4 or not 0 <= focus <= k:
        raise ValueError(f"need k >= 4 candidates and 0 <= focus <= k, got k={k}, focus={focus}")
    b = len(actions)
    c = rng.uniform(-1, 1, (b, k, 6)).astype(np.float32)
    q = k // 4
    c[:, q : 2 * q, 4:] = rng.uniform(0.05, 1, (b, q, 2))
    c[:, 2 * q : 3 * q] = np.clip(actions[:, None] + rng.normal(0, 0.2, (b, q, 6)), -1, 1)
    out = torch.from_numpy(c)
    if focus:
        probe = rng.uniform(-1, 1, (b, FOCUS_PROBES, 6)).astype(np.float32)
        probe[:, FOCUS_PROBES // 2 :, 4:] = rng.uniform(0.05, 1, (b, FOCUS_PROBES // 2, 2))
        probes = torch.from_numpy(probe)
        best = ensemble_logits(teachers, images, states, probes, feats).topk(FOCUS_TOP, dim=1).indices
        top = probes.gather(1, best[..., None].expand(-1, -1, 6))
        jitter = torch.from_numpy(rng.normal(0, 0.1, (b, focus, 6)).astype(np.float32))
        near = (top.repeat(1, -(-focus // FOCUS_TOP), 1)[:, :focus] + jitter).clamp(-1, 1)
        out = torch.cat([out[:, : k - focus], near], 1)
    return out


def distill(
    teachers: Sequence[QNetwork],
    sample: Callable[[int], dict[str, np.ndarray]],
    steps: int,
    seed: int = 0,
    batch: int = 32,
    cands: int = 32,
    focus: int = 16,
    lr: float = 1e-4,
    aug_pad: int = 4,
    on_step: Callable[[int, float, QNetwork], None] | None = None,
) -> QNetwork:
    """A copy of ``teachers[0]`` fitted for ``steps`` Adam steps to the teachers' mean logit, on states
    from ``sample(n)`` (a dict with ``images`` (n, C, H, W) uint8, ``states`` and ``actions``, as a replay
    samples them). Deterministic for a seed and the same samples. ``on_step(step, loss, student)``:
    progress (the student in training mode, to be validated under ``torch.no_grad``)."""
    if len(teachers) < 2 or steps < 1:
        raise ValueError("distillation needs at least two critics and steps >= 1")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    teachers = [t.eval() for t in teachers]
    student = copy.deepcopy(teachers[0]).train()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for step in range(1, steps + 1):
        rows = sample(batch)
        images, states = torch.as_tensor(rows["images"]), torch.as_tensor(rows["states"])
        images = random_shift(images, aug_pad, gen) if aug_pad else images
        feats = teacher_features(teachers, images)
        c = distill_candidates(
            rng, teachers, images, states, np.asarray(rows["actions"]), cands, focus, feats
        )
        target = ensemble_logits(teachers, images, states, c, feats)
        loss = ((student.head(student.features(images), states, c) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(loss.detach()), student)
    return student.eval()


__all__ = ["distill", "distill_candidates", "ensemble_logits"]
