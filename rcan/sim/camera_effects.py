"""The camera of the held-out "real" domain.

A rendered image is too clean to stand for a real camera: real sensors add noise, optics blur and
vignette, auto white balance and exposure shift the colours, and the tone curve is not linear.
:class:`CameraEffects` applies these, in the order light goes through a camera, to a uint8 image:

    exposure and colour gain (then sensor saturation) -> gamma -> vignette -> blur -> noise -> uint8

All parameters are expressed for a 64x64 image and the blur scales with the image width, so the same
effects look the same at the network's resolution and at the paper's 472x472. Only the noise draws
from the ``rng`` passed to :meth:`CameraEffects.apply`, so results are reproducible given its seed.

Cost: about half a millisecond at 64x64. At 472x472 everything but the blur takes a few milliseconds;
the blur (scipy's exact separable Gaussian, up to ~7 px at that size) adds roughly 5-25 ms.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import ndtri

__all__ = ["CameraEffects"]

#: Kernel radius in standard deviations; 3 keeps >99.7% of the mass and is faster than scipy's 4.
_TRUNCATE = 3.0


@functools.lru_cache(maxsize=32)
def _radius2(height: int, width: int) -> np.ndarray:
    """Squared distance from the image centre, 1 at the corners, repeated per channel: (H, W*3) float32."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    x = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / np.float32(0.5)
    r2 = np.repeat(r2, 3, axis=1)
    r2.setflags(write=False)
    return r2


@functools.lru_cache(maxsize=64)
def _gamma_table(gamma: float) -> np.ndarray:
    """``255 * (v / 255) ** gamma`` for every uint8 value ``v`` (float32)."""
    table = (255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.float32)
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    """The standard normal's quantiles at the centres of 65536 equal-probability bins (float32)."""
    table = ndtri((np.arange(65536) + 0.5) / 65536.0).astype(np.float32)
    table.setflags(write=False)
    return table


def _gaussian_noise(
    rng: np.random.Generator, shape: tuple[int, ...], std: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Gaussian noise by inverse-CDF lookup of 16-bit uniforms: several times faster than
    ``rng.standard_normal`` at 472x472; the only difference is that tails beyond 4.2 sigma are cut."""
    u = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    noise = np.take(_normal_quantiles(), u, out=out, mode="clip")
    noise *= np.float32(std)
    return noise


_SCRATCH = threading.local()


def _scratch(slot: str, shape: tuple[int, int, int]) -> np.ndarray:
    """A per-thread float32 work buffer, reused across calls.

    Fresh multi-megabyte arrays are served by mmap and page-faulted in on every call; at 472x472 that
    cost more than all the arithmetic without blur. The result returned to callers is never a scratch
    buffer.
    """
    buffers: dict[tuple[str, tuple[int, int, int]], np.ndarray] | None = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    key = (slot, shape)
    buf = buffers.get(key)
    if buf is None:
        if len(buffers) >= 12:  # many image sizes in one thread: keep memory bounded
            buffers.clear()
        buf = buffers[key] = np.empty(shape, dtype=np.float32)
    return buf


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy uint8 HxWx3 image, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {image.dtype} shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


@dataclass(frozen=True)
class CameraEffects:
    """Photometric effects of a real camera; ``none()`` is the identity, ``sample(rng)`` a random camera.

    Attributes:
        noise_std: standard deviation of additive Gaussian sensor noise, in 0..255 units.
        blur_sigma: Gaussian blur in pixels of a 64-pixel-wide image (``blur_sigma * W / 64`` at width W).
        color_gain: per-channel (R, G, B) multiplier: a white-balance colour cast.
        exposure: overall multiplicative brightness, applied with the colour gain before saturation.
        gamma: tone curve ``out = in ** gamma`` on [0, 1]; ``> 1`` darkens mid-tones, ``< 1`` brightens.
        vignette: fraction of brightness lost at the image corners (0 = none), quadratic in the radius.
    """

    noise_std: float
    blur_sigma: float
    color_gain: tuple[float, float, float]
    exposure: float
    gamma: float
    vignette: float

    def __post_init__(self) -> None:
        gain = tuple(float(g) for g in self.color_gain)
        if len(gain) != 3:
            raise ValueError(f"color_gain must have 3 entries (R, G, B), got {self.color_gain!r}")
        object.__setattr__(self, "color_gain", gain)
        for field in ("noise_std", "blur_sigma", "exposure", "gamma", "vignette"):
            object.__setattr__(self, field, float(getattr(self, field)))
        values = (self.noise_std, self.blur_sigma, self.exposure, self.gamma, self.vignette, *gain)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera effect parameters must be finite: {self}")
        if self.noise_std < 0 or self.blur_sigma < 0:
            raise ValueError(f"noise_std and blur_sigma must be >= 0: {self}")
        if self.exposure <= 0 or self.gamma <= 0 or min(gain) <= 0:
            raise ValueError(f"exposure, gamma and color_gain must be > 0: {self}")
        if not 0.0 <= self.vignette <= 1.0:
            raise ValueError(f"vignette must be in [0, 1]: {self}")

    @classmethod
    def none(cls) -> CameraEffects:
        """The identity: ``apply`` returns the image unchanged."""
        return cls(
            noise_std=0.0, blur_sigma=0.0, color_gain=(1.0, 1.0, 1.0), exposure=1.0, gamma=1.0, vignette=0.0
        )

    @classmethod
    def sample(cls, rng: np.random.Generator) -> CameraEffects:
        """A random but plausible real camera: mild noise and defocus, a few-percent colour cast,
        +-25% exposure, a slightly non-linear tone curve and up to 35% corner fall-off."""
        return cls(
            noise_std=float(rng.uniform(1.0, 6.0)),
            blur_sigma=float(rng.uniform(0.0, 0.6)),
            color_gain=tuple(float(g) for g in rng.uniform(0.9, 1.1, size=3)),
            exposure=float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))),
            gamma=float(rng.uniform(0.85, 1.15)),
            vignette=float(rng.uniform(0.0, 0.35)),
        )

    @property
    def is_identity(self) -> bool:
        return self == CameraEffects.none()

    def replace(self, **changes: object) -> CameraEffects:
        """A copy with some parameters changed (convenience for sweeps and tests)."""
        return dataclasses.replace(self, **changes)

    def apply(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Return a new uint8 HxWx3 image as this camera would have captured ``image``.

        ``rng`` drives the sensor noise and is required when ``noise_std > 0``.
        """
        _check_image(image)
        if self.is_identity:
            return image.copy()
        if self.noise_std > 0.0 and rng is None:
            raise ValueError("CameraEffects.apply needs an rng when noise_std > 0")
        height, width = image.shape[:2]
        shape = (height, width, 3)

        # Exposure, colour gain, sensor saturation and gamma are per-value maps of a uint8 input, so
        # they are computed through a 256-entry table: min(g * v, 255) ** gamma == min(g ** gamma *
        # v ** gamma, 255 ** gamma) because the power is monotonic.
        x = _scratch("x", shape)
        if self.gamma != 1.0:
            np.take(_gamma_table(self.gamma), image, out=x, mode="clip")
        else:
            np.copyto(x, image)
        # Per-pixel maps are applied on the (H, W*3) view with full-row factors: broadcasting a
        # length-3 or HxWx1 factor makes numpy loop over 3-element runs, several times slower.
        rows = x.reshape(height, width * 3)
        gain = np.asarray(self.color_gain, dtype=np.float32) * np.float32(self.exposure)
        if np.any(gain != 1.0):
            rows *= np.tile(gain ** np.float32(self.gamma), width)
            np.minimum(rows, 255.0, out=rows)
        if self.vignette > 0.0:
            falloff = _scratch("tmp", shape).reshape(height, width * 3)
            np.multiply(_radius2(height, width), np.float32(-self.vignette), out=falloff)
            falloff += 1.0
            rows *= falloff
        sigma = self.blur_sigma * width / 64.0
        if sigma > 0.0:
            blurred = _scratch("blur", shape)
            gaussian_filter(x, sigma=(sigma, sigma, 0.0), output=blurred, mode="reflect", truncate=_TRUNCATE)
            x = blurred
        if self.noise_std > 0.0 and rng is not None:  # rng was checked above
            x += _gaussian_noise(rng, shape, self.noise_std, out=_scratch("tmp", shape))

        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        return x.astype(np.uint8)
