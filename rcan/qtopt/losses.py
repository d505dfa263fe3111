"""The math of a QT-Opt gradient step: clipped double-Q targets with CEM, and the auxiliary losses that
teach the critic where the gripper, its move, its fingers and the objects are (labels from the simulator,
training only)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from rcan.qtopt.cem import CEMConfig, cem_maximize
from rcan.qtopt.network import OFFSET_RANGE, QNetwork, random_shift


@torch.no_grad()
def clipped_double_q_values(
    target1: QNetwork,
    target2: QNetwork,
    images: torch.Tensor,
    states: torch.Tensor,
    cem: CEMConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """V(s') = min(Q1(s', a*), Q2(s', a*)) as probabilities, a* = CEM argmax of Q1 (QT-Opt, paper eq. 1)."""
    f1 = target1.features(images)
    a_star, logit1 = cem_maximize(
        lambda c: target1.head(f1, states, c), images.shape[0], cem, generator=generator
    )
    logit2 = target2.head(target2.features(images), states, a_star[:, None])[:, 0]
    return torch.minimum(torch.sigmoid(logit1), torch.sigmoid(logit2))


def bellman_targets(
    returns: torch.Tensor, discounts: torch.Tensor, next_values: torch.Tensor
) -> torch.Tensor:
    """y = R_n + gamma^k V(s_{t+k}) (discount 0 = terminal: no bootstrap), clipped to the sigmoid's [0, 1]."""
    return (returns + discounts * next_values).clamp(0.0, 1.0)


def next_state_values(
    batch: Mapping[str, torch.Tensor],
    target1: QNetwork,
    target2: QNetwork,
    cem: CEMConfig,
    aug_pad: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The target computation of a batch: V(s') per row (0 where there is no bootstrap), next images randomly
    shifted. One function for the trainer (local backend) and the Ray Bellman actors."""
    nxt = batch["discounts"] > 0
    v = torch.zeros(len(batch["discounts"]))
    if nxt.any():
        next_images = random_shift(batch["next_images"][nxt], aug_pad, generator)
        v[nxt] = clipped_double_q_values(
            target1, target2, next_images, batch["next_states"][nxt], cem, generator
        )
    return v


def gripper_aux_loss(
    net: QNetwork, feats: torch.Tensor, tool_pixels: torch.Tensor, shifts: torch.Tensor, width: int
) -> torch.Tensor:
    """Squared distance, in feature-map cells, between the located gripper and where the simulator says the
    fingertips are (moved by the same random shift as the image); rows without a label count for nothing."""
    label = tool_pixels + shifts * (2.0 / width)
    known = torch.isfinite(label).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0  # image units -> cells
    err = (net.gripper_coords(feats[known]) - label[known]) * cells
    return (err**2).sum(dim=1).mean()


def move_aux_loss(
    net: QNetwork,
    feats: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    tool_pixels_after: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Squared distance, in fused-map cells, between where the target read-out expects the action to take
    the gripper and where the simulator shows the fingertips after the step, in the shifted image's
    coordinates (the shift moves the whole image); rows without a label count for nothing."""
    label = tool_pixels_after + shifts * (2.0 / width)
    known = torch.isfinite(label).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0
    pred = net.move_pixels(feats[known], states[known], actions[known][:, None])[:, 0]
    return (((pred - label[known]) * cells) ** 2).sum(dim=1).mean()


def finger_aux_loss(
    net: QNetwork,
    feats: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    finger_pixels: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Squared distance, in fused-map cells, between where the finger read-out expects the action to put
    the two fingertips and where the simulator shows them once the move is done (before any closing), in
    the shifted image's coordinates; the fingers in the order that fits better (they are interchangeable);
    rows without a label count for nothing."""
    label = finger_pixels.view(-1, 2, 2) + shifts[:, None] * (2.0 / width)
    known = torch.isfinite(label).flatten(1).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0
    pred = net.finger_pixels(feats[known], states[known], actions[known][:, None])[:, 0]  # (N, 2, 2)
    lab = label[known]
    same = ((pred - lab) ** 2).sum(dim=(1, 2))
    swapped = ((pred - lab.flip(1)) ** 2).sum(dim=(1, 2))
    return (torch.minimum(same, swapped) * cells**2).mean()


def yaw_aux_loss(net: QNetwork, feats: torch.Tensor, yaws: torch.Tensor) -> torch.Tensor:
    """Squared error between the read yaw vector and (cos 2 psi, sin 2 psi) of the simulator's yaw (a random
    shift does not turn the image); rows without a label count for nothing."""
    known = torch.isfinite(yaws)
    if not known.any():
        return torch.zeros(())
    label = torch.stack([torch.cos(2 * yaws[known]), torch.sin(2 * yaws[known])], dim=1)
    return ((net.gripper_yaw_vector(feats[known]) - label) ** 2).sum(dim=1).mean()


def wall_yaw_loss(
    net: QNetwork, feats: torch.Tensor, signs: torch.Tensor, landing: torch.Tensor, shifts: torch.Tensor, width: int
) -> torch.Tensor:
    """Cross-entropy of the wall-parallel yaw read where each transition's move landed (``landing``, where the
    simulator shows the fingertips after the step, moved with the image's random shift) against the
    simulator's sign there (+1: yaw 0); rows without both labels count for nothing."""
    points = landing + shifts * (2.0 / width)
    known = torch.isfinite(signs) & torch.isfinite(points).all(dim=1)
    if not known.any():
        return torch.zeros(())
    logits = net.wall_yaw_logits(feats[known], points[known][:, None])[:, 0]
    return F.binary_cross_entropy_with_logits(logits, (signs[known] > 0).to(logits.dtype))


def offset_points(
    centres: torch.Tensor, landing: torch.Tensor, extra: int, spread: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, O, 2) object grasp points (NaN: absent), (B, 2) landing points (NaN: unknown) -> (B, 1 + extra, 2)
    points at which to teach object offsets: the landing point, ``extra // 2`` around random objects (normal
    noise of std ``spread`` image units), the rest uniform over the image; NaN where there is no such point."""
    b = centres.shape[0]
    near = extra // 2
    weights = torch.isfinite(centres).all(dim=-1).float() + 1e-12  # a row without objects draws NaN slots
    parts = [landing[:, None]]
    if near:
        pick = torch.multinomial(weights, near, replacement=True, generator=generator)
        chosen = torch.gather(centres, 1, pick[..., None].expand(b, near, 2))
        parts.append(chosen + spread * torch.randn(b, near, 2, generator=generator))
    if extra - near:
        parts.append(torch.rand(b, extra - near, 2, generator=generator) * 2.0 - 1.0)
    return torch.cat(parts, dim=1)


def nearest_offsets(points: torch.Tensor, centres: torch.Tensor, cells: float, limit: float) -> torch.Tensor:
    """(B, M, 2) points, (B, O, 2) grasp points (NaN: absent) -> (B, M, 2): from each point to the nearest
    grasp point, in cells (``cells`` per image unit), clipped to +-``limit``; NaN where a row has none."""
    diff = centres[:, None] - points[:, :, None]  # (B, M, O, 2)
    dist = (diff**2).sum(-1).nan_to_num(float("inf"))
    idx = dist.argmin(dim=-1)  # (B, M)
    near = torch.gather(diff, 2, idx[..., None, None].expand(*idx.shape, 1, 2))[:, :, 0]
    none = torch.isinf(dist.min(dim=-1).values)
    return (near * cells).clamp(-limit, limit).masked_fill(none[..., None], float("nan"))


def object_offset_loss(
    net: QNetwork,
    feats: torch.Tensor,
    object_pixels: torch.Tensor,
    landing: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
    extra: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Squared error, in fused-map cells, of the offsets the read-out reads to the nearest object's grasp
    point, at the landing points and ``extra`` more points per image (:func:`offset_points`), all in the
    shifted image's coordinates; points without a label count for nothing."""
    move = shifts * (2.0 / width)
    centres = object_pixels + move[:, None]
    h = feats.shape[-1]
    points = offset_points(centres, landing + move, extra, 2.0 / h, generator)
    label = nearest_offsets(points, centres, h / 2.0, OFFSET_RANGE)
    known = torch.isfinite(label).all(dim=-1) & torch.isfinite(points).all(dim=-1)  # (B, M)
    if not known.any():
        return torch.zeros(())
    pred = net.object_offsets(feats, points.nan_to_num(0.0))
    return ((pred - label.nan_to_num(0.0)) ** 2).sum(-1)[known].mean()


def shift_images(
    images: torch.Tensor, masks: torch.Tensor | None, pad: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DrQ's random shift of a batch of images, and of their object masks (B, H, W) by the same offsets
    (one more channel through the same crop); returns images, the (B, 2) shifts and the shifted masks."""
    if masks is None:
        images, shifts = random_shift(images, pad, generator, return_shifts=True)
        return images, shifts, None
    out, shifts = random_shift(torch.cat([images, masks[:, None].to(images.dtype)], 1), pad, generator, True)
    return out[:, :-1], shifts, out[:, -1]


def object_aux_loss(net: QNetwork, feats: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the predicted object map and the fraction of each cell's pixels that show an
    object (``masks`` (B, H, W) 0/1, already shifted with the images); rows without a mask count for nothing."""
    if not known.any():
        return torch.zeros(())
    h, w = feats.shape[-2:]
    frac = F.adaptive_avg_pool2d(masks[known][:, None].float(), (h, w))[:, 0]
    return F.binary_cross_entropy_with_logits(net.object_logits(feats[known]), frac)
