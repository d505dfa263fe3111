"""``rcan translate``: any user image (a real camera frame, a randomized render) -> the canonical look.

Each input is centre-cropped to a square and resized to the generator's input size; for ``NAME.ext``
the output folder gets ``NAME_canonical.png`` (RGB), ``NAME_segmentation.png`` (class ids 0-4 as pixel
values), ``NAME_segmentation_colour.png``, ``NAME_depth.png`` (16-bit, millimetres) and
``NAME_depth_colour.png``. Unreadable inputs are reported and skipped; the rest still go through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from rcan.adapt.inference import load_generator, translate_batch
from rcan.common.images import colour_depth, colour_segmentation, find_images, load_square_rgb, save_png

if TYPE_CHECKING:
    from torch import nn


@dataclass
class TranslateReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def translate_paths(
    inputs: list[str], generator: str, out: str | Path, batch_size: int = 32
) -> TranslateReport:
    """Translate every image among ``inputs`` (files or folders) with the generator at ``generator``."""
    model, config = load_generator(generator)
    size = config.image_size
    paths, failed = find_images(inputs)
    report = TranslateReport(failed=list(failed))
    out = Path(out)
    stems: dict[str, int] = {}
    bar = tqdm(total=len(paths), unit="image", desc="translate", leave=False)
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        chunk, images = [], []
        for p in batch:
            try:
                images.append(load_square_rgb(p, size))
                chunk.append(p)
            except ValueError as err:
                report.failed.append((str(p), str(err)))
        if images:
            report.written += _write_batch(model, np.stack(images), chunk, out, stems)
        bar.update(len(batch))
    bar.close()
    return report


def _unique_stem(stem: str, stems: dict[str, int]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... when two inputs share a name (folders of their own): never a name
    already used, even by an input really called ``stem_2``; records the name it returns."""
    name, k = stem, stems.get(stem, 1)
    while name in stems:
        k += 1
        name = f"{stem}_{k}"
    stems[stem] = k
    stems[name] = stems.get(name, 1)
    return name


def _write_batch(
    model: nn.Module, images: np.ndarray, chunk: list[Path], out: Path, stems: dict[str, int]
) -> list[Path]:
    """Translate one batch and write each image's five PNGs; ``stems`` counts names already used."""
    written: list[Path] = []
    result = translate_batch(model, images)
    for k, p in enumerate(chunk):
        stem = _unique_stem(p.stem, stems)
        seg, depth = result["segmentation"][k], result["depth"][k]
        depth_mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        written += [
            save_png(out / f"{stem}_canonical.png", result["rgb"][k]),
            save_png(out / f"{stem}_segmentation.png", seg),
            save_png(out / f"{stem}_segmentation_colour.png", colour_segmentation(seg)),
            save_png(out / f"{stem}_depth.png", depth_mm),
            save_png(out / f"{stem}_depth_colour.png", colour_depth(depth)),
        ]
    return written
