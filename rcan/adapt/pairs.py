"""Paired training data for the generator: loading (a dataset directory or an ``.npz``), validation, the
held-out split, a fingerprint checked on resume, and a deterministic, resumable batch order."""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from rcan.adapt.networks import NUM_CLASSES, images_to_input

ARRAY_KEYS = ("randomized", "canonical", "segmentation", "depth")
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)
"""What ``np.load`` raises for an empty, truncated or foreign file, on opening or on reading an array."""


def load_arrays(data: str) -> dict[str, np.ndarray]:
    """The four paired arrays from a dataset directory (``PairedDataset``) or an ``.npz`` file."""
    if not data:
        raise ValueError("--data is required (a paired dataset directory or an .npz file)")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path} is a file but not an .npz; pass a paired dataset directory")
        try:
            loaded = np.load(path, allow_pickle=False)
        except NPZ_ERRORS as err:
            raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # an .npy renamed to .npz
            raise ValueError(f"{path} is not an .npz archive (a single array?); save with numpy.savez")
        try:
            with loaded as f:
                return {k: f[k] for k in ARRAY_KEYS if k in f.files}
        except NPZ_ERRORS as err:
            raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    from rcan.data.paired import PairedDataset

    with PairedDataset(path) as ds:
        arrays = ds.load()
    return {k: arrays[k] for k in ARRAY_KEYS if k in arrays}


def validate_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Check keys, dtypes and shapes; returns (number of pairs, image size)."""
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"paired data lacks {', '.join(missing)}")
    rnd, can, seg, dep = (arrays[k] for k in ARRAY_KEYS)
    if rnd.dtype != np.uint8 or rnd.ndim != 4 or rnd.shape[-1] != 3:
        raise ValueError(f"randomized must be uint8 (n, H, W, 3), got {rnd.dtype} {rnd.shape}")
    n, h, w = rnd.shape[:3]
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if can.shape != rnd.shape or can.dtype != np.uint8:
        raise ValueError(f"canonical must be uint8 {rnd.shape}, got {can.dtype} {can.shape}")
    if seg.shape != (n, h, w) or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segmentation must be integer {(n, h, w)}, got {seg.dtype} {seg.shape}")
    if dep.shape != (n, h, w) or not np.issubdtype(dep.dtype, np.floating):
        raise ValueError(f"depth must be float {(n, h, w)}, got {dep.dtype} {dep.shape}")
    if n < 2:
        raise ValueError(f"need at least 2 pairs, got {n}")
    if seg.min() < 0 or seg.max() >= NUM_CLASSES:
        raise ValueError(
            f"segmentation ids must lie in 0..{NUM_CLASSES - 1} (background, tray, divider, robot, object), "
            f"got {seg.min()}..{seg.max()}"
        )
    if not np.isfinite(dep).all():
        raise ValueError("depth holds NaN or infinite values")
    return n, h


def split_indices(n: int, val_fraction: float) -> tuple[int, int]:
    """(number of training pairs, number of held-out pairs); the held-out pairs are the last ones."""
    n_val = 0 if val_fraction <= 0 else min(n - 1, max(1, round(n * val_fraction)))
    return n - n_val, n_val


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """A cheap identity of the data (sizes and a CRC of a strided sample), checked on resume."""
    rnd = arrays["randomized"]
    step = max(1, rnd.shape[0] // 64)
    crc = zlib.crc32(np.ascontiguousarray(rnd[::step]).tobytes())
    crc = zlib.crc32(np.ascontiguousarray(arrays["canonical"][::step]).tobytes(), crc)
    return json.dumps({"shape": list(rnd.shape), "crc32": crc})


class BatchOrder:
    """Deterministic, resumable data order: epoch e visits the training pairs in the permutation drawn
    from ``default_rng([seed, e])``, in consecutive batches (the incomplete last batch is dropped)."""

    def __init__(self, n_train: int, batch_size: int, seed: int) -> None:
        if n_train < batch_size:
            raise ValueError(f"{n_train} training pairs are fewer than the batch size {batch_size}")
        self.n_train, self.batch_size, self.seed = n_train, batch_size, seed
        self.per_epoch = n_train // batch_size
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of the batch used by 0-based ``step``."""
        return divmod(step, self.per_epoch)

    def batch(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        if epoch != self._epoch:
            self._epoch, self._perm = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.n_train),
            )
        return np.sort(self._perm[i * self.batch_size : (i + 1) * self.batch_size])


def make_batch(
    arrays: Mapping[str, np.ndarray], idx: np.ndarray, depth_scale: float
) -> dict[str, torch.Tensor]:
    """Model-ready tensors for the pairs ``idx``: inputs and RGB targets in [-1, 1], class ids, scaled depth."""
    depth = torch.from_numpy(np.asarray(arrays["depth"][idx], dtype=np.float32)).unsqueeze(1) / depth_scale
    return {
        "x": images_to_input(arrays["randomized"][idx]),
        "rgb": images_to_input(arrays["canonical"][idx]),
        "seg": torch.from_numpy(np.asarray(arrays["segmentation"][idx])).long(),
        "depth": depth,
    }
