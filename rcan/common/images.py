"""Reading user images, colour-coding masks and depth, and writing PNGs atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rcan.common.atomic import open_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEG_COLOURS = np.array(
    [[40, 40, 40], [200, 200, 190], [240, 150, 40], [60, 120, 230], [230, 60, 90]], dtype=np.uint8
)


def colour_segmentation(seg: np.ndarray) -> np.ndarray:
    """Class ids (..., H, W) uint8 -> a fixed colour per class (..., H, W, 3) uint8."""
    return SEG_COLOURS[np.clip(seg, 0, len(SEG_COLOURS) - 1)]


def colour_depth(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Depth (H, W) metres -> grey (H, W, 3) uint8, near = bright; range from percentiles unless given."""
    lo = float(np.percentile(depth, 1)) if lo is None else lo
    hi = float(np.percentile(depth, 99)) if hi is None else hi
    grey = 255 * (1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1))
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


def find_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (PNG/JPEG directly inside) into image paths; missing paths are reported."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                missing.append((item, "folder has no PNG/JPEG images"))
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            missing.append((item, "no such file or folder"))
    return found, missing


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16- and 32-bit grey images are scaled from 0-65535 (PIL's own
    ``convert("RGB")`` clips them at 255: a 16-bit PNG would come out nearly white); float images from 0-1."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if im.mode == "F" and np.nanmax(a, initial=0.0) <= 1.0 else 255.0 / 65535.0
        im = Image.fromarray(np.clip(np.nan_to_num(a) * scale, 0, 255).round().astype(np.uint8))
    return im.convert("RGB")


def load_square_rgb(path: Path, size: int) -> np.ndarray:
    """Load any PNG/JPEG as RGB, centre-crop to a square and resize to ``size`` (what the model takes).

    Raises ``ValueError`` with the reason for a file that is not a readable image."""
    try:
        with Image.open(path) as im:
            im = to_rgb8(ImageOps.exif_transpose(im))
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Write a matplotlib figure as a PNG atomically (``open_atomic``) and close it, written or not."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with open_atomic(path) as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a PNG atomically (temp file + rename): a kill never leaves a half-written image."""
    path = Path(path)
    image = Image.fromarray(array)  # a bad array fails here, before any file is touched
    with open_atomic(path) as f:
        image.save(f, format="PNG")
    return path
