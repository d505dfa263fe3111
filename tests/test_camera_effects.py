"""Tests for rcan.sim.camera_effects: each effect moves the image the expected way; validation."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from rcan.sim.camera_effects import CameraEffects

NONE = CameraEffects.none()


def _flat(value: int = 128, size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _random(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _high_freq(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


@pytest.mark.parametrize("shape", [(64, 64, 3), (1, 1, 3), (48, 80, 3), (472, 472, 3)])
def test_identity_returns_equal_copy(shape: tuple[int, int, int]) -> None:
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = NONE.apply(img)
    assert out is not img
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(NONE.apply(img, np.random.default_rng(0)), img)
    assert NONE.is_identity and not CameraEffects.sample(np.random.default_rng(0)).is_identity


@pytest.mark.parametrize("shape", [(64, 64, 3), (48, 80, 3), (3, 5, 3), (472, 472, 3)])
def test_sampled_output_shape_dtype(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    for _ in range(3):
        out = CameraEffects.sample(rng).apply(img, rng)
        assert out.shape == shape and out.dtype == np.uint8


def test_input_not_modified() -> None:
    img = _random()
    before = img.copy()
    CameraEffects.sample(np.random.default_rng(0)).apply(img, np.random.default_rng(0))
    np.testing.assert_array_equal(img, before)


def test_non_contiguous_input() -> None:
    img = _random(128)[::2, ::2]
    effect = CameraEffects.sample(np.random.default_rng(3))
    np.testing.assert_array_equal(
        effect.apply(img, np.random.default_rng(1)),
        effect.apply(np.ascontiguousarray(img), np.random.default_rng(1)),
    )


@pytest.mark.parametrize("exposure", [0.5, 0.8, 1.25, 2.0])
def test_exposure_scales_brightness(exposure: float) -> None:
    img = _random()
    out = NONE.replace(exposure=exposure).apply(img)
    expected = np.clip(img.astype(np.float64) * exposure, 0, 255)
    assert np.abs(out - expected).max() <= 0.5 + 1e-3
    assert (out.mean() > img.mean()) == (exposure > 1)


def test_exposure_saturates_before_gamma() -> None:
    out = NONE.replace(exposure=3.0, gamma=2.0).apply(_flat(200))
    assert np.all(out == 255)  # the sensor clips at full scale; gamma maps 1 to 1


def test_color_gain_casts_colour() -> None:
    img = _flat(128)
    out = NONE.replace(color_gain=(1.2, 1.0, 0.8)).apply(img).astype(int)
    assert np.all(out[..., 0] == round(128 * 1.2))
    assert np.all(out[..., 1] == 128)
    assert np.all(out[..., 2] == round(128 * 0.8))


@pytest.mark.parametrize(("gamma", "darker"), [(0.5, False), (0.8, False), (1.25, True), (2.2, True)])
def test_gamma_tone_curve(gamma: float, darker: bool) -> None:
    img = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # every grey level, 256x1
    out = NONE.replace(gamma=gamma).apply(img)
    expected = np.rint(255.0 * (img / 255.0) ** gamma)
    assert np.abs(out - expected).max() <= 1
    assert out[0, 0, 0] == 0 and out[-1, 0, 0] == 255  # black and white are fixed points
    mid = out[128, 0, 0]
    assert (mid < 128) if darker else (mid > 128)


@pytest.mark.parametrize("size", [64, 101])
def test_vignette_darkens_corners(size: int) -> None:
    out = NONE.replace(vignette=0.4).apply(_flat(200, size)).astype(float)
    centre = out[size // 2, size // 2].mean()
    corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
    assert centre >= 198
    for c in corners:
        assert c.mean() < centre
        assert abs(c.mean() - 200 * 0.6) < 6  # the corners lose about the vignette fraction
    # Monotonic along the diagonal from centre to corner.
    diagonal = [out[i, i, 0] for i in range(size // 2, size)]
    assert all(a >= b for a, b in zip(diagonal, diagonal[1:], strict=False))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_reduces_high_frequencies(sigma: float) -> None:
    img = _random()
    out = NONE.replace(blur_sigma=sigma).apply(img)
    assert _high_freq(out) < 0.7 * _high_freq(img)
    assert abs(out.mean() - img.mean()) < 2.0  # blur keeps the overall brightness
    stronger = NONE.replace(blur_sigma=sigma * 2).apply(img)
    assert _high_freq(stronger) < _high_freq(out)


def test_blur_scales_with_image_width() -> None:
    def edge_spread(size: int) -> float:
        """Standard deviation, in pixels, of the blurred step edge's derivative (= the blur sigma)."""
        img = np.zeros((8, size, 3), np.uint8)
        img[:, size // 2 :] = 255
        row = NONE.replace(blur_sigma=2.0).apply(img)[4, :, 0].astype(float)
        weights = np.diff(row) / np.diff(row).sum()
        pos = np.arange(len(weights))
        mean = (weights * pos).sum()
        return float(np.sqrt((weights * (pos - mean) ** 2).sum()))

    s64, s256 = edge_spread(64), edge_spread(256)
    assert abs(s64 - 2.0) < 0.2  # blur_sigma is in pixels at 64 px width
    assert abs(s256 - 8.0) < 0.4  # ... and scales with the width


@pytest.mark.parametrize("std", [2.0, 5.0, 20.0])
def test_noise_raises_std_of_flat_image(std: float) -> None:
    img = _flat(128, 128)
    out = NONE.replace(noise_std=std).apply(img, np.random.default_rng(0)).astype(float)
    assert img.std() == 0
    assert abs(out.std() - std) < 0.1 * std + 0.3  # rounding adds about 1/12 to the variance
    assert abs(out.mean() - 128) < 0.5


def test_noise_needs_rng() -> None:
    with pytest.raises(ValueError, match="rng"):
        NONE.replace(noise_std=3.0).apply(_flat())


def test_deterministic_with_same_seed() -> None:
    img = _random()
    effect = CameraEffects.sample(np.random.default_rng(7))
    a = effect.apply(img, np.random.default_rng(123))
    b = effect.apply(img, np.random.default_rng(123))
    c = effect.apply(img, np.random.default_rng(124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_is_deterministic_and_plausible() -> None:
    assert CameraEffects.sample(np.random.default_rng(5)) == CameraEffects.sample(np.random.default_rng(5))
    rng = np.random.default_rng(0)
    samples = [CameraEffects.sample(rng) for _ in range(200)]
    for e in samples:
        assert 0 <= e.noise_std <= 10 and 0 <= e.blur_sigma <= 2
        assert all(0.8 <= g <= 1.2 for g in e.color_gain)
        assert 0.7 <= e.exposure <= 1.4 and 0.7 <= e.gamma <= 1.4 and 0 <= e.vignette <= 0.5
    assert len({e.exposure for e in samples}) == 200
    # A sampled camera changes the image, but not beyond recognition.
    img = _random()
    out = samples[0].apply(img, rng)
    assert 0 < np.abs(out.astype(int) - img).mean() < 80


def test_frozen_and_normalized() -> None:
    e = CameraEffects(noise_std=1, blur_sigma=0, color_gain=[1, 1, 1], exposure=1, gamma=1, vignette=0)  # type: ignore[arg-type]
    assert e.color_gain == (1.0, 1.0, 1.0) and isinstance(e.noise_std, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.noise_std = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3, 1), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        np.zeros((64, 64, 3), np.int64),
        [[[0, 0, 0]]],
    ],
)
def test_bad_input_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="uint8 HxWx3|non-empty"):
        CameraEffects.sample(np.random.default_rng(0)).apply(bad, np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NONE.apply(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"noise_std": -1.0},
        {"blur_sigma": -0.1},
        {"exposure": 0.0},
        {"gamma": -1.0},
        {"vignette": 1.5},
        {"vignette": -0.1},
        {"color_gain": (1.0, 1.0)},
        {"color_gain": (1.0, 0.0, 1.0)},
        {"exposure": float("nan")},
        {"noise_std": float("inf")},
    ],
)
def test_bad_parameters_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NONE.replace(**changes)


def test_speed_report() -> None:
    """Not an assertion on speed (machines differ); prints ms per call for a look with ``-s``."""
    rng = np.random.default_rng(0)
    effects = [CameraEffects.sample(rng) for _ in range(20)]
    for size, n in ((64, 500), (472, 20)):
        img = _random(size)
        start = time.perf_counter()
        for i in range(n):
            effects[i % len(effects)].apply(img, rng)
        print(f"\ncamera effects {size}x{size}: {(time.perf_counter() - start) / n * 1e3:.3f} ms per call")
