"""RCAN's losses (paper section 4.2): MPSE for RGB, L2 for segmentation and depth, sigmoid cross-entropy GAN.

Generator objective (eq. 2-4), per batch:

    lambda_x * MPSE(rgb) + lambda_rgb_l2 * MSE(rgb) + lambda_m * L2(seg) + lambda_d * L2(depth)
    + lambda_gan * BCE(D(G_x(x)), 1)

``lambda_rgb_l2`` is our addition: MPSE is blind to a constant offset of the whole image, so with MPSE
alone the generated image's mean colour is only constrained by the GAN term. The adversarial term is the
usual non-saturating form of eq. 3 (G maximizes log D(G(x)) instead of minimizing log(1 - D(G(x)))),
which has the same fixed point and usable gradients early in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def mean_pairwise_squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pairwise squared error, computed per example over all its elements, then averaged over the batch.

    For one example with residual d = pred - target over its n elements, TensorFlow's
    ``mean_pairwise_squared_error`` averages ((p_i - p_j) - (t_i - t_j))^2 = (d_i - d_j)^2 over the
    n(n-1)/2 pairs i < j (equivalently over all ordered pairs i != j). Since
    sum_{i<j} (d_i - d_j)^2 = n * sum d^2 - (sum d)^2, this is, in O(n):

        MPSE = 2/(n-1) * sum(d^2) - 2/(n(n-1)) * (sum d)^2  =  2n/(n-1) * Var(d)

    computed here as the variance form (numerically better than subtracting two large sums). Unlike
    TensorFlow, which sums the per-example losses, we average them so the value does not grow with batch size.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
    d = (pred - target).flatten(1)
    n = d.shape[1]
    if n < 2:
        raise ValueError("MPSE needs at least 2 elements per example")
    var = d.var(dim=1, correction=0)
    return (2.0 * n / (n - 1) * var).mean()


def mpse_bruteforce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """O(n^2) definition of MPSE (for tests only): mean over pairs i < j of ((p_i - p_j) - (t_i - t_j))^2."""
    p, t = pred.flatten(1).double(), target.flatten(1).double()
    n = p.shape[1]
    i, j = torch.triu_indices(n, n, offset=1)
    pair = ((p[:, i] - p[:, j]) - (t[:, i] - t[:, j])) ** 2
    return pair.mean(dim=1).mean()


def segmentation_l2(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 between softmax probabilities (N, C, H, W) and one-hot classes (N, H, W), per pixel summed over
    classes (the Brier score: 0 when right and certain, 2 when certain and wrong), averaged over pixels."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return (probs - onehot).square().sum(dim=1).mean()


def depth_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target depth, both in the generator's scaled units."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return F.mse_loss(pred, target)


def gan_loss(logits: Sequence[torch.Tensor], real: bool) -> torch.Tensor:
    """Sigmoid cross-entropy against all-real or all-fake labels, averaged over patches, then over scales."""
    if not logits:
        raise ValueError("no discriminator outputs")
    value = 1.0 if real else 0.0
    losses = [F.binary_cross_entropy_with_logits(x, torch.full_like(x, value)) for x in logits]
    return torch.stack(losses).mean()


def discriminator_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """D's side of eq. 3 as a loss to minimize: -log D(x_c) - log(1 - D(G_x(x_s))), halved as in pix2pix."""
    return 0.5 * (gan_loss(real_logits, True) + gan_loss(fake_logits, False))


def mean_probability(logits: Sequence[torch.Tensor]) -> float:
    """Mean of sigmoid(D) over patches and scales: D's average belief that its inputs are canonical."""
    return float(torch.stack([torch.sigmoid(x.detach()).mean() for x in logits]).mean())


def equality_losses(
    out: Any, rgb_target: torch.Tensor, seg_target: torch.Tensor, depth_target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The equality terms of eq. 2 (plus our RGB L2) for a :class:`~rcan.adapt.networks.GeneratorOutput`.

    Targets: canonical RGB as NCHW float in [-1, 1], segmentation classes (N, H, W), depth (N, 1, H, W) in
    the generator's scaled units (metres / depth_scale).
    """
    return {
        "mpse": mean_pairwise_squared_error(out.rgb, rgb_target),
        "rgb_l2": F.mse_loss(out.rgb, rgb_target),
        "seg_l2": segmentation_l2(out.segmentation, seg_target),
        "depth_l2": depth_l2(out.depth, depth_target),
    }
