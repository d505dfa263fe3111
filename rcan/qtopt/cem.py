"""Batched cross-entropy method over the action Box [-1, 1]^6 (QT-Opt's argmax over actions).

Why batched: one call optimizes the actions of B states at once (B = 1 when acting, the batch size when
computing targets), so the image tower runs once per state and the head scores all B x K candidates in a
few large calls. All six dimensions, including gripper and terminate, are searched as the continuous
dimensions they are in the env's action Box (the env thresholds them at 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps candidate actions (B, K, D) to scores (B, K); higher is better."""


@dataclass(frozen=True)
class CEMConfig:
    """CEM hyperparameters (QT-Opt's public code: 64 samples, 6 to 10 elites, 2 to 3 iterations)."""

    samples: int = 64
    """Candidates scored per iteration and state."""
    elites: int = 6
    """Best candidates the Gaussian is refitted to."""
    iterations: int = 2
    """Rounds; the first samples uniformly over the Box, later ones from the refitted Gaussian."""
    min_std: float = 0.05
    """Floor on the refitted standard deviation, so later rounds still explore a little."""

    def __post_init__(self) -> None:
        if self.samples < 1 or self.iterations < 1:
            raise ValueError("CEM needs samples >= 1 and iterations >= 1")
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"CEM elites must be in 1..samples ({self.samples}), got {self.elites}")


@torch.no_grad()
def cem_maximize(
    score_fn: ScoreFn,
    batch: int,
    config: CEMConfig,
    dim: int = 6,
    generator: torch.Generator | None = None,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate argmax per state. Returns (best actions (B, D), their scores (B,)).

    The best candidate seen in any round is returned (not the final mean), so more rounds never hurt."""
    k, e = config.samples, config.elites
    best_a = torch.zeros(batch, dim)
    best_s = torch.full((batch,), -torch.inf)
    mean = torch.zeros(batch, 1, dim)
    std = torch.ones(batch, 1, dim)
    rows = torch.arange(batch)
    for it in range(config.iterations):
        if it == 0:
            cand = low + (high - low) * torch.rand(batch, k, dim, generator=generator)
        else:
            cand = mean + std * torch.randn(batch, k, dim, generator=generator)
            cand = cand.clamp_(low, high)
        scores = score_fn(cand).reshape(batch, k)
        top_s, top_i = scores.topk(e, dim=1)
        elite = cand[rows[:, None], top_i]  # (B, E, D)
        better = top_s[:, 0] > best_s
        best_s = torch.where(better, top_s[:, 0], best_s)
        best_a = torch.where(better[:, None], elite[:, 0], best_a)
        mean = elite.mean(dim=1, keepdim=True)
        std = (
            elite.std(dim=1, keepdim=True, unbiased=False).clamp_(min=config.min_std) if e > 1 else std * 0.5
        )
    return best_a, best_s
