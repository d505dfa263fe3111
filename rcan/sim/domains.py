"""Visual domains: what each frame looks like, as data (``Look`` and ``FrameStyle``), sampled per domain.

A ``FrameStyle`` fully describes one rendered frame's appearance: a texture and colour per part, the light,
the jitter of tray and arm (position and size), the camera offset and the camera effects. Styles are drawn
from a seeded ``np.random.Generator`` and never touch the physics.

Domains (paper, sections 4.1 and 5.2):

* ``canonical``: flat colours for floor, tray and divider; each arm link its own fixed colour; objects
  keep their (episode) textures; one fixed light with shadows; no jitter.
* ``mild``: tray (and divider) texture; object texture and colour tint; a random flat colour per arm link;
  light direction and brightness; the floor is one of 6 fixed background textures.
* ``medium``: mild, with the floor drawn from the whole texture bank.
* ``heavy``: the scheme RCAN is trained on: an independent bank texture on floor, tray, divider, every arm
  link, gripper part and object; random light position, direction and colour; jitter of tray position and
  size and of arm base position and size (the same jitter goes into the canonical twin of a pair; in
  `render_pair` the arm size is drawn once per episode, since switching it reloads the arm).
* ``real``: the held-out stand-in for the real world, which no model trains on: photographic textures
  (scikit-image's bundled photos) on floor, tray, divider and objects; grey/white arm links with a little
  wear; a different light model (warm key light at a fixed place, stronger ambient, specular highlights);
  a fixed camera pose offset (the "real" camera is mounted 2-3 cm off the simulated one) plus 5 mm
  per-episode wobble; camera effects (sensor noise, blur, colour cast, exposure, gamma, vignetting).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rcan.sim.camera_effects import CameraEffects

DOMAINS = ("canonical", "mild", "medium", "heavy", "real")
RANDOMIZED = ("mild", "medium", "heavy")

# Texture sources a Look may point into; the renderer maps them to loaded textures.
BANK, PHOTO = "bank", "photo"
MILD_BACKGROUNDS = 6  # the paper's "background from 6 images" for the mild level


@dataclass(frozen=True)
class Look:
    """Appearance of one visual part: an optional texture (source, index) tinted by an RGBA colour."""

    rgba: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    texture: tuple[str, int] | None = None


@dataclass(frozen=True)
class Light:
    """TinyRenderer's light model parameters."""

    direction: tuple[float, float, float] = (0.4, -0.3, 1.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    distance: float = 2.0
    ambient: float = 0.55
    diffuse: float = 0.5
    specular: float = 0.05
    shadow: bool = True


@dataclass(frozen=True)
class Jitter:
    """Scene-level nuisance variation applied identically to both renders of a pair."""

    tray_scale: int | None = None  # index into CellConfig.visual_scales; None = the middle (unscaled) one
    tray_offset: tuple[float, float] = (0.0, 0.0)
    arm_scale: int | None = None  # index into the arm's scale variants; None = the middle (unscaled) one
    arm_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera_eye_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera_target_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class FrameStyle:
    """Everything about how one frame looks. ``objects`` has one Look per object in the scene."""

    domain: str
    floor: Look
    tray: Look
    divider: Look
    arm: tuple[Look, ...]
    gripper: tuple[Look, ...]
    objects: tuple[Look, ...]
    light: Light = field(default_factory=Light)
    jitter: Jitter = field(default_factory=Jitter)
    effects: CameraEffects | None = None
    effects_seed: int = 0


# -- canonical -----------------------------------------------------------------------------------------
CANON_FLOOR = (0.32, 0.36, 0.40, 1.0)
CANON_TRAY = (0.78, 0.78, 0.74, 1.0)
CANON_DIVIDER = (0.92, 0.58, 0.16, 1.0)
CANON_ARM = (
    (0.20, 0.20, 0.22, 1.0),
    (0.85, 0.20, 0.20, 1.0),
    (0.20, 0.70, 0.25, 1.0),
    (0.20, 0.35, 0.90, 1.0),
    (0.90, 0.85, 0.20, 1.0),
    (0.75, 0.25, 0.80, 1.0),
    (0.20, 0.80, 0.85, 1.0),
    (0.95, 0.55, 0.30, 1.0),
)
CANON_GRIPPER = ((0.95, 0.95, 0.95, 1.0), (0.10, 0.10, 0.10, 1.0), (0.10, 0.10, 0.10, 1.0))
CANON_LIGHT = Light()


def _rand_rgb(rng: np.random.Generator, low: float = 0.15, high: float = 1.0) -> tuple[float, float, float, float]:
    r, g, b = rng.uniform(low, high, size=3)
    return (float(r), float(g), float(b), 1.0)


def _bank(rng: np.random.Generator, n: int) -> tuple[str, int]:
    return (BANK, int(rng.integers(n)))


def object_looks(rng: np.random.Generator, n_objects: int, bank_size: int, tint: bool) -> tuple[Look, ...]:
    """Textured objects; ``tint`` multiplies the texture with a random colour (the "colour" of mild)."""
    looks = []
    for _ in range(n_objects):
        rgba = _rand_rgb(rng, 0.5, 1.0) if tint else (1.0, 1.0, 1.0, 1.0)
        looks.append(Look(rgba=rgba, texture=_bank(rng, bank_size)))
    return tuple(looks)


def canonical_style(objects: tuple[Look, ...], jitter: Jitter | None = None, n_arm: int = 8) -> FrameStyle:
    """The canonical look; ``objects`` keep the given textures and ``jitter`` is shared with a twin frame."""
    arm = tuple(Look(rgba=CANON_ARM[i % len(CANON_ARM)]) for i in range(n_arm))
    return FrameStyle(
        domain="canonical",
        floor=Look(CANON_FLOOR),
        tray=Look(CANON_TRAY),
        divider=Look(CANON_DIVIDER),
        arm=arm,
        gripper=tuple(Look(c) for c in CANON_GRIPPER),
        objects=objects,
        light=CANON_LIGHT,
        jitter=jitter or Jitter(),
    )


def canonical_twin(style: FrameStyle) -> FrameStyle:
    """The canonical frame matching ``style``: same object textures, same jitter and camera pose."""
    return canonical_style(style.objects, style.jitter, len(style.arm))


def _random_light(rng: np.random.Generator, colour: bool) -> Light:
    direction = rng.uniform([-1.0, -1.0, 0.4], [1.0, 1.0, 1.5])
    color = tuple(float(x) for x in rng.uniform(0.6, 1.0, 3)) if colour else (1.0, 1.0, 1.0)
    brightness = float(rng.uniform(0.6, 1.2))
    return Light(
        direction=tuple(float(x) for x in direction),
        color=color,
        distance=float(rng.uniform(1.0, 3.0)),
        ambient=float(rng.uniform(0.3, 0.7)) * brightness,
        diffuse=float(rng.uniform(0.3, 0.7)) * brightness,
        specular=float(rng.uniform(0.0, 0.3)),
        shadow=bool(rng.random() < 0.8),
    )


def _random_jitter(rng: np.random.Generator, n_tray_scales: int, n_arm_scales: int) -> Jitter:
    return Jitter(
        tray_scale=int(rng.integers(n_tray_scales)),
        tray_offset=tuple(float(x) for x in rng.uniform(-0.015, 0.015, 2)),
        arm_scale=int(rng.integers(n_arm_scales)),
        arm_offset=tuple(float(x) for x in rng.uniform([-0.03, -0.03, -0.01], [0.03, 0.03, 0.01])),
    )


def sample_style(
    domain: str,
    rng: np.random.Generator,
    n_objects: int,
    bank_size: int,
    photo_size: int,
    n_arm: int = 8,
    n_gripper: int = 3,
    n_tray_scales: int = 5,
    n_arm_scales: int = 3,
    object_textures: tuple[Look, ...] | None = None,
) -> FrameStyle:
    """Draw one frame's look for ``domain``. ``object_textures`` pins the objects' looks (canonical only)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if domain == "canonical":
        objs = object_textures or object_looks(rng, n_objects, bank_size, tint=False)
        return canonical_style(objs, n_arm=n_arm)
    if domain in ("mild", "medium"):
        tray = Look(texture=_bank(rng, bank_size), rgba=_rand_rgb(rng, 0.6, 1.0))
        if domain == "mild":
            floor = Look(texture=(BANK, int(rng.integers(MILD_BACKGROUNDS))))
        else:
            floor = Look(texture=_bank(rng, bank_size), rgba=_rand_rgb(rng, 0.5, 1.0))
        arm = tuple(Look(rgba=_rand_rgb(rng)) for _ in range(n_arm))
        grip = tuple(Look(rgba=_rand_rgb(rng)) for _ in range(n_gripper))
        light = _random_light(rng, colour=False)
        light = replace(light, shadow=True)
        return FrameStyle(
            domain=domain,
            floor=floor,
            tray=tray,
            divider=tray,
            arm=arm,
            gripper=grip,
            objects=object_looks(rng, n_objects, bank_size, tint=True),
            light=light,
        )
    if domain == "heavy":
        def tex() -> Look:
            return Look(texture=_bank(rng, bank_size), rgba=_rand_rgb(rng, 0.6, 1.0))

        return FrameStyle(
            domain="heavy",
            floor=tex(),
            tray=tex(),
            divider=tex(),
            arm=tuple(tex() for _ in range(n_arm)),
            gripper=tuple(tex() for _ in range(n_gripper)),
            objects=object_looks(rng, n_objects, bank_size, tint=True),
            light=_random_light(rng, colour=True),
            jitter=_random_jitter(rng, n_tray_scales, n_arm_scales),
        )
    return _real_style(rng, n_objects, photo_size, n_arm, n_gripper, n_tray_scales, n_arm_scales)


REAL_CAMERA_EYE_OFFSET = (0.025, -0.02, 0.015)
REAL_CAMERA_TARGET_OFFSET = (0.01, 0.015, 0.0)


def _real_style(
    rng: np.random.Generator,
    n_objects: int,
    photo_size: int,
    n_arm: int,
    n_gripper: int,
    n_tray_scales: int,
    n_arm_scales: int,
) -> FrameStyle:
    def photo() -> Look:
        return Look(texture=(PHOTO, int(rng.integers(photo_size))))

    grey = [(0.82, 0.82, 0.80), (0.95, 0.55, 0.15), (0.70, 0.70, 0.72)]
    arm = []
    for i in range(n_arm):
        base = np.array(grey[0] if i % 3 else grey[2]) * rng.uniform(0.9, 1.05)
        arm.append(Look(rgba=(*[float(min(1.0, x)) for x in base], 1.0)))
    grip = (Look(rgba=(0.25, 0.25, 0.27, 1.0)),) + tuple(Look(rgba=(0.12, 0.12, 0.12, 1.0)) for _ in range(n_gripper - 1))
    wobble = rng.uniform(-0.005, 0.005, 3)
    light = Light(
        direction=(-0.6 + float(rng.uniform(-0.1, 0.1)), 0.5, 1.2),
        color=(1.0, 0.9, 0.75),
        distance=1.5,
        ambient=float(rng.uniform(0.6, 0.8)),
        diffuse=float(rng.uniform(0.25, 0.4)),
        specular=float(rng.uniform(0.3, 0.5)),
        shadow=True,
    )
    jitter = Jitter(
        camera_eye_offset=tuple(float(a + b) for a, b in zip(REAL_CAMERA_EYE_OFFSET, wobble, strict=True)),
        camera_target_offset=REAL_CAMERA_TARGET_OFFSET,
    )
    return FrameStyle(
        domain="real",
        floor=photo(),
        tray=photo(),
        divider=photo(),
        arm=tuple(arm),
        gripper=grip,
        objects=tuple(photo() for _ in range(n_objects)),
        light=light,
        jitter=jitter,
        effects=CameraEffects.sample(rng),
        effects_seed=int(rng.integers(2**31)),
    )
