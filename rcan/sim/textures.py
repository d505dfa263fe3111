"""Texture sources for visual domain randomization.

Why files: PyBullet's TinyRenderer (the CPU renderer used for headless data collection) can only take
textures from image files, through ``client.loadTexture(path)``. Every texture source therefore exposes
the same small interface (:class:`TextureSource`): a length, an in-memory ``image(index)`` and a
``path(index)`` that returns a PNG of that image, written to a shared on-disk cache on first use.

Determinism: ``image(index)`` depends only on the source's constructor arguments and ``index`` (every
texture draws from its own ``np.random.default_rng([seed, index])``), never on call order, process or
what was generated before. Workers in different processes therefore agree on what texture ``index``
means, and a grasping episode can record just ``(source.name, index)``.

Cache: ``$RCAN_CACHE`` if set, else ``~/.cache/rcan``; textures live in
``<cache>/textures/<source.name>/<index>.png``. ``name`` encodes everything the pixels depend on, so
different sources never share a directory. PNGs are written atomically (temporary file in the same
directory, then ``os.replace``), so many processes can fill the same cache concurrently; an existing file
is returned as it is, without being regenerated.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import operator
import os
import pathlib
import threading
import warnings
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps

from rcan.common.images import IMAGE_SUFFIXES, to_rgb8

__all__ = [
    "ImageFolderTextures",
    "PhotoTextures",
    "ProceduralTextures",
    "TextureSource",
    "cache_dir",
    "texture_files",
]



@runtime_checkable
class TextureSource(Protocol):
    """What the simulator needs from a bank of textures."""

    name: str

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray: ...

    def path(self, index: int) -> pathlib.Path: ...


def cache_dir() -> pathlib.Path:
    """Root of rcan's on-disk cache: ``$RCAN_CACHE`` or ``~/.cache/rcan`` (created if missing)."""
    env = os.environ.get("RCAN_CACHE")
    root = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "rcan"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_png_atomic(path: pathlib.Path, image: np.ndarray) -> None:
    """Write a PNG so that readers only ever see a complete file, even with concurrent writers."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _short_hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:10]


class _CachedSource:
    """Shared index checking and PNG caching; subclasses set ``name`` and implement ``_make(index)``."""

    name: str

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _make(self, index: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"texture index {index} out of range for {self.name} (length {n})")
        return i

    def image(self, index: int) -> np.ndarray:
        """The texture as uint8 (R, R, 3); the same bytes for the same index, in any process."""
        return self._make(self._check_index(index))

    def path(self, index: int) -> pathlib.Path:
        """A PNG of ``image(index)`` in the cache, for ``loadTexture``; written on first use only."""
        i = self._check_index(index)
        directory = cache_dir() / "textures" / self.name
        target = directory / f"{i:06d}.png"
        if target.exists():
            return target
        directory.mkdir(parents=True, exist_ok=True)
        _write_png_atomic(target, self._make(i))
        return target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)})"


# ----------------------------------------------------------------------------------------------------
# Procedural textures
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _coords(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): patterns are defined in texture space, not pixels."""
    t = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    y, x = np.meshgrid(t, t, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


@functools.lru_cache(maxsize=64)
def _upsample_weights(grid: int, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and smoothstep weights to interpolate a ``grid``-point lattice onto ``resolution`` pixels."""
    c = (np.arange(resolution) + 0.5) * grid / resolution - 0.5
    c = np.clip(c, 0.0, grid - 1.0)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, grid - 1)
    f = c - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep fade: no visible lattice creases
    for a in (i0, i1, f):
        a.setflags(write=False)
    return i0, i1, f


def _upsample(values: np.ndarray, resolution: int) -> np.ndarray:
    gh, gw = values.shape
    r0, r1, fr = _upsample_weights(gh, resolution)
    c0, c1, fc = _upsample_weights(gw, resolution)
    rows = values[r0] * (1.0 - fr)[:, None] + values[r1] * fr[:, None]
    return rows[:, c0] * (1.0 - fc)[None, :] + rows[:, c1] * fc[None, :]


def _normalize(field: np.ndarray) -> np.ndarray:
    lo, hi = float(field.min()), float(field.max())
    if hi - lo < 1e-12:
        return np.full_like(field, 0.5)
    return (field - lo) / (hi - lo)


def _fbm(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Smooth value noise: a sum of octaves of upsampled random lattices, normalized to [0, 1]."""
    grid = int(rng.integers(2, 9))
    octaves = int(rng.integers(1, 6))
    persistence = rng.uniform(0.35, 0.7)
    out = np.zeros((resolution, resolution))
    amp = 1.0
    for _ in range(octaves):
        g = min(grid, resolution)
        out += amp * _upsample(rng.random((g, g)), resolution)
        amp *= persistence
        grid *= 2
    return _normalize(out)


def _direction(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Coordinate along a random direction (texture units)."""
    y, x = _coords(resolution)
    theta = rng.uniform(0.0, math.pi)
    return x * math.cos(theta) + y * math.sin(theta)


def _rotated(rng: np.random.Generator, resolution: int, max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = _coords(resolution)
    theta = rng.uniform(-max_angle, max_angle)
    c, s = math.cos(theta), math.sin(theta)
    return x * c + y * s, -x * s + y * c


def _wave(rng: np.random.Generator, phase: np.ndarray) -> np.ndarray:
    """A periodic profile (period 1) of random shape: sine, square with a random duty cycle, or triangle."""
    kind = int(rng.integers(3))
    frac = phase - np.floor(phase)
    if kind == 0:
        return 0.5 + 0.5 * np.sin(2.0 * math.pi * phase)
    if kind == 1:
        duty = rng.uniform(0.2, 0.8)
        return (frac < duty).astype(np.float64)
    return 1.0 - np.abs(2.0 * frac - 1.0)


def _f_noise(rng: np.random.Generator, r: int) -> np.ndarray:
    field = _fbm(rng, r)
    if rng.random() < 0.3:  # ridged / turbulent variant
        field = 1.0 - np.abs(2.0 * field - 1.0)
    return field


def _f_stripes(rng: np.random.Generator, r: int) -> np.ndarray:
    s = _direction(rng, r)
    freq = rng.uniform(2.0, 20.0)
    if rng.random() < 0.4:  # hand-drawn wobble
        s = s + rng.uniform(0.01, 0.08) * _fbm(rng, r)
    return _wave(rng, freq * s + rng.random())


def _f_checker(rng: np.random.Generator, r: int) -> np.ndarray:
    a, b = _rotated(rng, r, math.pi / 4 if rng.random() < 0.3 else 0.0)
    fa = rng.uniform(2.0, 16.0)
    fb = fa if rng.random() < 0.6 else rng.uniform(2.0, 16.0)
    pa, pb = rng.random(2)
    return ((np.floor(a * fa + pa) + np.floor(b * fb + pb)) % 2.0).astype(np.float64)


def _f_dots(rng: np.random.Generator, r: int) -> np.ndarray:
    a, b = _rotated(rng, r, math.pi / 4)
    freq = rng.uniform(3.0, 16.0)
    u, v = a * freq + rng.random(), b * freq + rng.random()
    if rng.random() < 0.5:  # hexagonal packing: shift every other row by half a period
        u = u + 0.5 * (np.floor(v) % 2.0)
    du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
    d = np.sqrt(du * du + dv * dv)
    radius = rng.uniform(0.12, 0.45)
    edge = rng.uniform(0.01, 0.1)
    return np.clip((radius - d) / edge + 0.5, 0.0, 1.0)


def _f_plaid(rng: np.random.Generator, r: int) -> np.ndarray:
    a, b = _rotated(rng, r, math.pi / 4 if rng.random() < 0.3 else 0.0)
    s1 = _wave(rng, a * rng.uniform(2.0, 14.0) + rng.random())
    s2 = _wave(rng, b * rng.uniform(2.0, 14.0) + rng.random())
    w = rng.uniform(0.3, 0.7)
    if rng.random() < 0.5:
        return w * s1 + (1.0 - w) * s2
    return np.maximum(s1 * w * 2.0, s2 * (1.0 - w) * 2.0) / max(2.0 * w, 2.0 * (1.0 - w))


def _f_voronoi(rng: np.random.Generator, r: int) -> np.ndarray:
    y, x = _coords(r)
    n = int(rng.integers(4, 40))
    py, px = rng.random(n), rng.random(n)
    d2 = (y[..., None] - py) ** 2 + (x[..., None] - px) ** 2
    mode = int(rng.integers(3))
    if mode == 0:  # flat cells (stone, crazy paving)
        return rng.random(n)[np.argmin(d2, axis=-1)]
    if mode == 1:  # F1 distance (cellular bumps)
        return _normalize(np.sqrt(d2.min(axis=-1)))
    part = np.partition(d2, 1, axis=-1)  # F2 - F1: cell borders
    return _normalize(np.sqrt(part[..., 1]) - np.sqrt(part[..., 0]))


def _f_marble(rng: np.random.Generator, r: int) -> np.ndarray:
    s = _direction(rng, r)
    freq = rng.uniform(1.0, 8.0)
    turbulence = rng.uniform(0.3, 2.5)
    field = 0.5 + 0.5 * np.sin(2.0 * math.pi * (freq * s + turbulence * _fbm(rng, r)) + rng.uniform(0, 6.3))
    return field ** rng.uniform(0.3, 3.0)


def _f_wood(rng: np.random.Generator, r: int) -> np.ndarray:
    y, x = _coords(r)
    cy, cx = rng.uniform(-1.0, 2.0, size=2)
    stretch = rng.uniform(0.2, 1.0)  # elongated rings, like planks cut along the grain
    dy, dx = (y - cy) * stretch, x - cx
    if rng.random() < 0.5:
        dy, dx = dx, dy
    rings = np.sqrt(dy * dy + dx * dx) * rng.uniform(4.0, 25.0) + rng.uniform(0.1, 1.0) * _fbm(rng, r)
    frac = rings - np.floor(rings)
    return frac ** rng.uniform(0.3, 3.0)


def _f_gradient(rng: np.random.Generator, r: int) -> np.ndarray:
    if rng.random() < 0.5:
        field = _direction(rng, r)
    else:
        y, x = _coords(r)
        cy, cx = rng.uniform(-0.2, 1.2, size=2)
        field = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    field = _normalize(field)
    return 0.85 * field + 0.15 * _fbm(rng, r)


def _f_speckle(rng: np.random.Generator, r: int) -> np.ndarray:
    kind = int(rng.integers(3))
    if kind == 0:  # fine grain (sand, concrete, carpet)
        base = rng.uniform(0.2, 0.8)
        return np.clip(base + rng.uniform(0.05, 0.4) * rng.standard_normal((r, r)), 0.0, 1.0)
    if kind == 1:  # sparse flecks on a background (terrazzo, granite)
        density = rng.uniform(0.02, 0.3)
        return (rng.random((r, r)) < density).astype(np.float64) * 0.7 + 0.3 * _fbm(rng, r)
    block = int(rng.integers(2, 9))  # blocky mosaic / pixel noise
    cells = rng.random((-(-r // block), -(-r // block)))
    return np.repeat(np.repeat(cells, block, axis=0), block, axis=1)[:r, :r]


def _f_bricks(rng: np.random.Generator, r: int) -> np.ndarray:
    a, b = _rotated(rng, r, 0.0 if rng.random() < 0.7 else math.pi / 2)
    rows = rng.uniform(3.0, 14.0)
    aspect = rng.uniform(1.5, 4.0)
    v = b * rows
    u = a * rows / aspect + 0.5 * (np.floor(v) % 2.0)
    fu, fv = u - np.floor(u), v - np.floor(v)
    mortar = rng.uniform(0.04, 0.15)
    brick = (np.minimum(fu, 1.0 - fu) * aspect > mortar / 2) & (np.minimum(fv, 1.0 - fv) > mortar / 2)
    shade = _upsample(rng.random((8, 8)), r) * 0.3
    return np.where(brick, 0.7 + shade, 0.1 * shade)


_FAMILIES: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _f_noise,
    _f_stripes,
    _f_checker,
    _f_dots,
    _f_plaid,
    _f_voronoi,
    _f_marble,
    _f_wood,
    _f_gradient,
    _f_speckle,
    _f_bricks,
)


def _palette(rng: np.random.Generator) -> np.ndarray:
    """2-4 RGB colours (0..255): either unrelated hues or a harmonious variation around one hue."""
    k = int(rng.integers(2, 5))
    if rng.random() < 0.5:
        hsv = np.column_stack([rng.random(k), rng.uniform(0.0, 1.0, k), rng.uniform(0.05, 1.0, k)])
    else:
        hue = rng.random()
        hsv = np.column_stack(
            [(hue + rng.uniform(-0.08, 0.08, k)) % 1.0, rng.uniform(0.1, 0.9, k), rng.uniform(0.1, 1.0, k)]
        )
    return np.array([colorsys.hsv_to_rgb(*c) for c in hsv]) * 255.0


def _colorize(field: np.ndarray, colors: np.ndarray) -> np.ndarray:
    stops = np.linspace(0.0, 1.0, len(colors))
    out = np.empty((*field.shape, 3))
    for c in range(3):
        out[..., c] = np.interp(field, stops, colors[:, c])
    return out


class ProceduralTextures(_CachedSource):
    """A bank of ``size`` procedural textures (noise, stripes, checkers, dots, plaid, Voronoi cells,
    marble, wood, gradients, speckle, bricks) with random 2-4 colour palettes and contrast.

    Texture ``i`` is generated from ``np.random.default_rng([seed, i])`` alone, so it is reproducible and
    independent of ``size`` and of call order; generating is cheap (about a millisecond at 64x64), so no
    in-memory cache is kept.
    """

    def __init__(self, size: int = 8192, resolution: int = 64, seed: int = 0) -> None:
        size, resolution, seed = operator.index(size), operator.index(resolution), operator.index(seed)
        if size < 1:
            raise ValueError(f"ProceduralTextures: size must be >= 1, got {size}")
        if resolution < 4:
            raise ValueError(f"ProceduralTextures: resolution must be >= 4 pixels, got {resolution}")
        if seed < 0:
            raise ValueError(f"ProceduralTextures: seed must be >= 0, got {seed}")
        self.size = size
        self.resolution = resolution
        self.seed = seed
        self.name = f"procedural-s{seed}-r{resolution}"

    def __len__(self) -> int:
        return self.size

    def _make(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        r = self.resolution
        family = _FAMILIES[int(rng.integers(len(_FAMILIES)))]
        field = np.clip(family(rng, r), 0.0, 1.0)
        if rng.random() < 0.3:  # break up the synthetic look with some smooth noise
            w = rng.uniform(0.1, 0.4)
            field = (1.0 - w) * field + w * _fbm(rng, r)
        contrast = rng.uniform(0.3, 1.5)
        field = np.clip(0.5 + (field - 0.5) * contrast + rng.uniform(-0.15, 0.15), 0.0, 1.0)
        rgb = _colorize(field, _palette(rng))
        if rng.random() < 0.25:  # fine colour grain
            rgb += rng.normal(0.0, rng.uniform(2.0, 12.0), rgb.shape)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# The user's own images
# ----------------------------------------------------------------------------------------------------


def _square_rgb(im: Image.Image, resolution: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crop (default: the centred square) and resize to ``resolution`` x ``resolution`` RGB."""
    im = to_rgb8(im)
    if box is None:
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        box = (left, top, left + s, top + s)
    # Crop first: resizing with ``box=`` would let the filter reach pixels outside the crop.
    im = im.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.array(im, dtype=np.uint8)


def _load_file(path: pathlib.Path, resolution: int) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale, much faster
        im = ImageOps.exif_transpose(im)
        im.load()
        return _square_rgb(im, resolution)


def texture_files(directory: str | os.PathLike[str]) -> list[pathlib.Path]:
    """The image files (``IMAGE_SUFFIXES``) directly in a user's texture folder, sorted by name; a missing
    path, a file or a folder without images raises one clear ValueError (nothing is decoded here)."""
    root = pathlib.Path(directory).expanduser()
    if not root.exists():
        raise ValueError(f"texture directory does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"texture directory is not a directory: {root}")
    files = sorted(
        (p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name
    )
    if not files:
        raise ValueError(f"no image files (*.png, *.jpg, *.jpeg) in texture directory: {root}")
    return files


class ImageFolderTextures(_CachedSource):
    """The user's own textures: every ``*.png``, ``*.jpg``, ``*.jpeg`` directly in ``directory``.

    Files are sorted by name (so indices are stable), centre-cropped to a square and resized to
    ``resolution``. All files are decoded once at construction so that a bad file fails early, with
    its path, rather than in the middle of data collection.
    """

    def __init__(self, directory: str | os.PathLike[str], resolution: int = 64) -> None:
        resolution = operator.index(resolution)
        if resolution < 4:
            raise ValueError(f"ImageFolderTextures: resolution must be >= 4 pixels, got {resolution}")
        root = pathlib.Path(directory).expanduser()
        files = texture_files(root)
        for p in files:
            try:
                _load_file(p, resolution)
            except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
                raise ValueError(f"cannot decode texture image {p}: {err}") from err
        self.directory = root.resolve()
        self.resolution = resolution
        self.files: tuple[pathlib.Path, ...] = tuple(files)
        # Name, size and mtime of every file: a changed folder gets a fresh cache directory.
        listing = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
        self.name = f"folder-{_short_hash(str(self.directory), *listing)}-r{resolution}"

    def __len__(self) -> int:
        return len(self.files)

    def _make(self, index: int) -> np.ndarray:
        return _load_file(self.files[index], self.resolution)


# ----------------------------------------------------------------------------------------------------
# Photographs shipped with scikit-image: the held-out "real" domain
# ----------------------------------------------------------------------------------------------------

#: Photos of ``skimage.data`` that ship inside the scikit-image wheel (no download needed). Synthetic or
#: binary images (checkerboard, horse silhouette, logo, colorwheel) and duplicates (``cat`` = chelsea)
#: are excluded.
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
)


@functools.lru_cache(maxsize=1)
def _photo_library() -> tuple[tuple[str, np.ndarray], ...]:
    """Load the photos of :data:`PHOTO_NAMES` that are available offline, as uint8 RGB arrays.

    Loaded lazily (on first use, not at import) and once per process; a name whose loader fails
    (older scikit-image, data file needing a download) is skipped.
    """
    import skimage.data
    from skimage.util import img_as_ubyte

    photos = []
    for name in PHOTO_NAMES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = img_as_ubyte(np.asarray(loader()))
        except Exception:
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = np.ascontiguousarray(img[..., :3])
        img.setflags(write=False)
        photos.append((name, img))
    return tuple(photos)


class PhotoTextures(_CachedSource):
    """Photographic textures for the held-out "real" domain, cropped from scikit-image's sample photos.

    Photos used (those of them that load offline): astronaut, brick, camera, chelsea, clock, coffee,
    coins, grass, gravel, hubble_deep_field, immunohistochemistry, moon, page, rocket, text; greyscale
    ones are replicated to RGB. Texture ``i`` comes from photo ``i // crops_per_photo``: a square crop
    with side 20-100% of the photo's shorter side at a random position, a random 90-degree rotation and
    flip, resized to ``resolution``, all drawn from ``np.random.default_rng([seed, i])``.
    """

    def __init__(self, resolution: int = 64, crops_per_photo: int = 16, seed: int = 1234) -> None:
        resolution, crops_per_photo = operator.index(resolution), operator.index(crops_per_photo)
        seed = operator.index(seed)
        if resolution < 4:
            raise ValueError(f"PhotoTextures: resolution must be >= 4 pixels, got {resolution}")
        if crops_per_photo < 1:
            raise ValueError(f"PhotoTextures: crops_per_photo must be >= 1, got {crops_per_photo}")
        if seed < 0:
            raise ValueError(f"PhotoTextures: seed must be >= 0, got {seed}")
        photos = _photo_library()
        if not photos:
            raise RuntimeError("PhotoTextures: none of scikit-image's sample photos could be loaded")
        self.resolution = resolution
        self.crops_per_photo = crops_per_photo
        self.seed = seed
        self.photo_names: tuple[str, ...] = tuple(name for name, _ in photos)
        self._photos = tuple(img for _, img in photos)
        self.name = f"photo-{_short_hash(*self.photo_names)}-s{seed}-c{crops_per_photo}-r{resolution}"

    def __len__(self) -> int:
        return len(self._photos) * self.crops_per_photo

    def _make(self, index: int) -> np.ndarray:
        photo = self._photos[index // self.crops_per_photo]
        rng = np.random.default_rng([self.seed, index])
        h, w = photo.shape[:2]
        short = min(h, w)
        side = max(4, int(round(rng.uniform(0.2, 1.0) * short)))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = photo[top : top + side, left : left + side]
        crop = np.rot90(crop, int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return _square_rgb(Image.fromarray(np.ascontiguousarray(crop)), self.resolution)
