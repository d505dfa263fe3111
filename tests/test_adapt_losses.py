"""RCAN losses: MPSE against its O(n^2) definition, invariances, and the L2/GAN terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rcan.adapt.losses import (
    depth_l2,
    discriminator_loss,
    equality_losses,
    gan_loss,
    mean_pairwise_squared_error,
    mean_probability,
    mpse_bruteforce,
    segmentation_l2,
)
from rcan.adapt.networks import GeneratorOutput


@pytest.mark.parametrize("shape", [(1, 2), (3, 7), (2, 3, 4, 5), (4, 1, 6, 6)])
def test_mpse_closed_form_matches_bruteforce(shape):
    g = torch.Generator().manual_seed(sum(shape))
    p, t = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(
        mean_pairwise_squared_error(p, t), mpse_bruteforce(p, t), rtol=1e-10, atol=1e-12
    )


def test_mpse_tensorflow_docstring_example():
    # TF: labels=[a, b, c], predictions=[x, y, z] -> [((a-b)-(x-y))^2 + ((a-c)-(x-z))^2 + ((b-c)-(y-z))^2] / 3
    a, b, c, x, y, z = 1.0, 4.0, -2.0, 0.5, 3.0, 1.0
    expected = (((a - b) - (x - y)) ** 2 + ((a - c) - (x - z)) ** 2 + ((b - c) - (y - z)) ** 2) / 3
    got = mean_pairwise_squared_error(torch.tensor([[x, y, z]]), torch.tensor([[a, b, c]]))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_mpse_matches_the_notes_formula():
    g = torch.Generator().manual_seed(0)
    p, t = (
        torch.randn(2, 50, generator=g, dtype=torch.float64),
        torch.randn(2, 50, generator=g, dtype=torch.float64),
    )
    d, n = p - t, 50
    per_example = 2 / (n - 1) * d.square().sum(1) - 2 / (n * (n - 1)) * d.sum(1).square()
    torch.testing.assert_close(mean_pairwise_squared_error(p, t), per_example.mean())


def test_mpse_invariant_to_constant_offset_per_example():
    g = torch.Generator().manual_seed(1)
    p, t = (
        torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
    )
    offsets = torch.tensor([0.7, -3.0, 12.5], dtype=torch.float64).view(3, 1, 1, 1)
    torch.testing.assert_close(mean_pairwise_squared_error(p + offsets, t), mean_pairwise_squared_error(p, t))
    assert mean_pairwise_squared_error(t + 5.0, t).item() == pytest.approx(0.0, abs=1e-9)
    # ... whereas MSE is not: that is why we add a small RGB L2 term
    assert F.mse_loss(t + 5.0, t).item() == pytest.approx(25.0)


def test_mpse_is_per_example_not_across_the_batch():
    # Offsets that differ between examples are still invisible: pairs never cross examples.
    t = torch.zeros(2, 10)
    p = torch.cat([torch.full((1, 10), 1.0), torch.full((1, 10), -4.0)])
    assert mean_pairwise_squared_error(p, t).item() == pytest.approx(0.0, abs=1e-7)


def test_mpse_gradient_and_errors():
    p = torch.randn(2, 3, 4, 4, requires_grad=True)
    mean_pairwise_squared_error(p, torch.zeros(2, 3, 4, 4)).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    # gradient sums to zero per example (offset invariance)
    assert p.grad.flatten(1).sum(1).abs().max() < 1e-6
    with pytest.raises(ValueError):
        mean_pairwise_squared_error(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        mean_pairwise_squared_error(torch.zeros(2, 1), torch.zeros(2, 1))


def test_segmentation_l2_is_brier_score():
    target = torch.tensor([[[0, 1], [4, 2]]])  # (1, 2, 2)
    perfect = F.one_hot(target, 5).permute(0, 3, 1, 2).float() * 100.0
    assert segmentation_l2(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot((target + 1) % 5, 5).permute(0, 3, 1, 2).float() * 100.0
    assert segmentation_l2(wrong, target).item() == pytest.approx(2.0, abs=1e-6)
    uniform = torch.zeros(1, 5, 2, 2)  # p = 0.2 each: (0.8^2 + 4 * 0.2^2) = 0.8
    assert segmentation_l2(uniform, target).item() == pytest.approx(0.8, abs=1e-6)


def test_depth_l2():
    assert depth_l2(torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.25)).item() == pytest.approx(
        0.0625
    )
    with pytest.raises(ValueError):
        depth_l2(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))


def test_gan_losses():
    big = [torch.full((2, 1, 4, 4), 20.0), torch.full((2, 1, 2, 2), 20.0)]
    small = [-x for x in big]
    assert gan_loss(big, real=True).item() < 1e-6 and gan_loss(small, real=False).item() < 1e-6
    assert gan_loss([torch.zeros(1, 1, 3, 3)], real=True).item() == pytest.approx(math.log(2))
    assert discriminator_loss(big, small).item() < 1e-6
    assert discriminator_loss(small, big).item() == pytest.approx(20.0, rel=1e-3)
    assert mean_probability(big) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        gan_loss([], real=True)


def test_equality_losses_keys_and_zero_at_target():
    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    seg = torch.randint(0, 5, (2, 4, 4))
    depth = torch.rand(2, 1, 4, 4)
    out = GeneratorOutput(rgb, F.one_hot(seg, 5).permute(0, 3, 1, 2).float() * 50, depth)
    losses = equality_losses(out, rgb, seg, depth)
    assert set(losses) == {"mpse", "rgb_l2", "seg_l2", "depth_l2"}
    assert all(v.item() < 1e-6 for v in losses.values())
