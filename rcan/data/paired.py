"""Paired RCAN training data on disk (format ``rcan-paired-v1``): HDF5 shards plus a JSON manifest.

A collection directory holds::

    manifest.json        the exact collection config (written first, atomically)
    shard-00000.h5       samples [0, shard_size)
    shard-00001.h5       samples [shard_size, 2 * shard_size) ... the last shard may be smaller
    .shard-00002.h5.<pid>.tmp   a shard being written (renamed when complete; removed on restart)

Every shard has root attributes ``format`` ("rcan-paired-v1"), ``shard`` (its index), ``start`` and
``count`` (its global sample range) and ``collection`` (the manifest's config as canonical JSON, so a
shard from another collection is recognised), and these datasets, ``n = count``:

=============  ================  =======  =====================================================
name           shape             dtype    meaning
=============  ================  =======  =====================================================
randomized     (n, H, W, 3)      uint8    randomized RGB (the generator's input)
canonical      (n, H, W, 3)      uint8    canonical RGB of the same frozen scene
segmentation   (n, H, W)         uint8    canonical classes 0..4 (see ``rcan.sim.scene``)
depth          (n, H, W)         float32  canonical depth, metres
episode        (n,)              int64    collection-unique episode id (shard start + episode no.)
step           (n,)              int64    time step within the episode (0 = after reset)
seed           (n,)              int64    the seed the episode's ``env.reset`` got
objects        (n, K)            S64      names of the episode's objects (ASCII)
=============  ================  =======  =====================================================

Images are chunked one image per chunk so random access reads one chunk, compressed with gzip level 4
and checksummed (fletcher32) so silent corruption fails loudly on read. gzip rather than lzf
(``benchmarks/bench_collect.py``): ~28% smaller at about the same write and read speed (~1.3 ms per
pair, small next to ~50 ms of simulation), and byte-reproducible, which h5py's lzf is not (its liblzf
leaves the hash table uninitialised, so output depends on the process's history). Nothing
time-dependent is stored (``track_times=False``, fixed attribute order): same content, same bytes.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rcan.common.atomic import write_json_atomic as _write_json_atomic

FORMAT = "rcan-paired-v1"
MANIFEST_NAME = "manifest.json"
#: Manifest fields, in the order they are written; all of them must match to resume a collection.
CONFIG_FIELDS = (
    "format",
    "samples",
    "shard_size",
    "seed",
    "domain",
    "image_size",
    "policy",
    "texture_dir",
    "object_split",
    "version",
)
IMAGE_KEYS = ("randomized", "canonical", "segmentation", "depth")
META_KEYS = ("episode", "step", "seed")
OBJECT_NAME_BYTES = 64
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 4
MAX_OPEN_SHARDS = 64

_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
_TEMP_RE = re.compile(r"^\.(shard-\d{5,}\.h5|manifest\.json)\.\d+\.tmp$")
_INT_FIELDS = ("samples", "shard_size", "seed", "image_size")
_STR_FIELDS = ("format", "domain", "policy", "object_split", "version")


# -- names and ranges -----------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    """File name of shard ``index`` (zero-padded so names sort in sample order)."""
    return f"shard-{index:05d}.h5"


def temp_name(final_name: str) -> str:
    """A hidden per-process temp name next to ``final_name``; only complete files get the final name."""
    return f".{final_name}.{os.getpid()}.tmp"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def num_shards(samples: int, shard_size: int) -> int:
    return math.ceil(samples / shard_size)


def shard_range(samples: int, shard_size: int, index: int) -> tuple[int, int]:
    """Global sample range ``[start, stop)`` of shard ``index``."""
    start = index * shard_size
    return start, min(start + shard_size, samples)


def scan_shards(root: Path) -> dict[int, Path]:
    """Shard files present in ``root`` by index (temp files and other files are ignored)."""
    found: dict[int, Path] = {}
    for entry in os.scandir(root):
        m = _SHARD_RE.match(entry.name)
        if m:
            found[int(m.group(1))] = Path(entry.path)
    return dict(sorted(found.items()))


def dataset_layout(image_size: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Per-sample dtype and shape of every dataset except ``objects`` (whose width K may vary)."""
    s = image_size
    u8, i64 = np.dtype(np.uint8), np.dtype(np.int64)
    return {
        "randomized": (u8, (s, s, 3)),
        "canonical": (u8, (s, s, 3)),
        "segmentation": (u8, (s, s)),
        "depth": (np.dtype(np.float32), (s, s)),
        "episode": (i64, ()),
        "step": (i64, ()),
        "seed": (i64, ()),
    }


# -- manifest --------------------------------------------------------------------------------------------
def config_json(manifest: dict[str, Any]) -> str:
    """Canonical JSON of the config fields: stored in every shard to tie it to its collection."""
    return json.dumps({k: manifest[k] for k in CONFIG_FIELDS}, sort_keys=True, separators=(",", ":"))


def config_differences(
    a: dict[str, Any], b: dict[str, Any], a_label: str = "expected", b_label: str = "got"
) -> list[str]:
    """One ``"field: <a_label> x, <b_label> y"`` per config field that differs between ``a`` and ``b``."""
    return [
        f"{k}: {a_label} {a.get(k)!r}, {b_label} {b.get(k)!r}" for k in CONFIG_FIELDS if a.get(k) != b.get(k)
    ]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that ``path`` is always either absent, the old file, or the complete new one
    (under a temp name this module recognizes, so a leftover from a kill is cleaned up on restart)."""
    _write_json_atomic(path, data, tmp=path.with_name(temp_name(path.name)))


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Load and check ``root/manifest.json``; any problem is a ValueError naming the file."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise FileNotFoundError(f"paired dataset directory does not exist: {root}")
    if not path.is_file():
        raise ValueError(
            f"{path}: missing; {root} is not an {FORMAT} dataset (create one with `rcan collect`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not an {FORMAT} manifest (top level is not an object)")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in CONFIG_FIELDS if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    for k in _INT_FIELDS:
        v = manifest[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
            raise ValueError(
                f"{path}: field {k} must be a {'non-negative' if k == 'seed' else 'positive'} integer, got {v!r}"
            )
    for k in _STR_FIELDS:
        if not isinstance(manifest[k], str):
            raise ValueError(f"{path}: field {k} must be a string, got {manifest[k]!r}")
    if manifest["texture_dir"] is not None and not isinstance(manifest["texture_dir"], str):
        raise ValueError(
            f"{path}: field texture_dir must be a string or null, got {manifest['texture_dir']!r}"
        )
    return manifest


# -- writing ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes one shard sample by sample into a preallocated file; ``close()`` checks it is full.

    The caller writes to a temp name and renames on success (see ``rcan.data.collect``), so a reader
    never sees a partly written shard.
    """

    def __init__(
        self,
        path: str | Path,
        manifest: dict[str, Any],
        index: int,
        num_objects: int,
    ) -> None:
        self.path = Path(path)
        self.start, stop = shard_range(manifest["samples"], manifest["shard_size"], index)
        self.count = stop - self.start
        if self.count < 1:
            raise ValueError(f"shard {index} is out of range for {manifest['samples']} samples")
        self._n = 0
        self._file = h5py.File(self.path, "w")
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["shard"] = np.int64(index)
        f.attrs["start"] = np.int64(self.start)
        f.attrs["count"] = np.int64(self.count)
        f.attrs["collection"] = config_json(manifest)
        self._ds: dict[str, h5py.Dataset] = {}
        for name, (dtype, shape) in dataset_layout(manifest["image_size"]).items():
            image = name in IMAGE_KEYS
            self._ds[name] = f.create_dataset(
                name,
                shape=(self.count, *shape),
                dtype=dtype,
                chunks=(1, *shape) if image else None,
                compression=COMPRESSION if image else None,
                compression_opts=COMPRESSION_LEVEL if image else None,
                fletcher32=True,  # every dataset: a flipped bit in a label is an error, not a wrong label
                track_times=False,
            )
        self._ds["objects"] = f.create_dataset(
            "objects",
            shape=(self.count, num_objects),
            dtype=f"S{OBJECT_NAME_BYTES}",
            fletcher32=True,
            track_times=False,
        )
        self._meta = {k: np.zeros(self.count, np.int64) for k in META_KEYS}
        self._objects = np.zeros((self.count, num_objects), dtype=f"S{OBJECT_NAME_BYTES}")

    def __len__(self) -> int:
        return self._n

    @property
    def full(self) -> bool:
        return self._n >= self.count

    def append(
        self, pair: dict[str, np.ndarray], episode: int, step: int, seed: int, objects: list[str]
    ) -> None:
        if self.full:
            raise ValueError(f"{self.path}: shard already holds its {self.count} samples")
        j = self._n
        for name in IMAGE_KEYS:
            self._ds[name][j] = pair[name]
        self._meta["episode"][j], self._meta["step"][j], self._meta["seed"][j] = episode, step, seed
        encoded = [name.encode("ascii") for name in objects]
        if len(encoded) != self._objects.shape[1] or max(map(len, encoded), default=0) > OBJECT_NAME_BYTES:
            raise ValueError(
                f"expected {self._objects.shape[1]} object names of <= {OBJECT_NAME_BYTES} bytes, got {objects!r}"
            )
        self._objects[j] = encoded
        self._n += 1

    def close(self) -> None:
        """Write the metadata, flush and fsync; raises if the shard is not full."""
        if self._file is None:
            return
        try:
            if not self.full:
                raise ValueError(f"{self.path}: closing after {self._n} of {self.count} samples")
            for k in META_KEYS:
                self._ds[k][...] = self._meta[k]
            self._ds["objects"][...] = self._objects
            self._file.flush()
        finally:
            self._file.close()
            self._file = None
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abort(self) -> None:
        """Close without checks (the caller deletes the temp file)."""
        if self._file is not None:
            self._file.close()
            self._file = None


# -- validation ------------------------------------------------------------------------------------------
def check_shard(path: str | Path, manifest: dict[str, Any], index: int, full: bool = False) -> int:
    """Check that ``path`` is shard ``index`` of the collection in ``manifest``; returns its sample count.

    Checks structure and reads the metadata (ids, steps, seeds, object names: small); with ``full`` also
    every image, so that every chunk's fletcher32 checksum is verified (``rcan collect`` does this for the
    shards it keeps on a restart; a dataset opened for training checks pixels as it reads them).
    Any problem is one ValueError that names the file.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable HDF5 file, truncated or corrupt ({_short(err)})") from err
    try:
        with f:
            n = _check_open_shard(f, path, manifest, index)
            meta = {name: f[name][:] for name in (*META_KEYS, "objects")}  # small; each checksum checked
            if meta["step"].min(initial=0) < 0 or meta["episode"].min(initial=0) < 0:
                raise ValueError(f"{path}: negative episode ids or steps")
            for name in IMAGE_KEYS if full else ():
                for lo in range(0, n, 256):  # a few chunks at a time: a damaged one fails its checksum here
                    f[name][lo : lo + 256]
            return n
    except ValueError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/RuntimeError/TypeError on damaged files
        raise ValueError(f"{path}: damaged {FORMAT} shard ({type(err).__name__}: {_short(err)})") from err


def _check_open_shard(f: h5py.File, path: Path, manifest: dict[str, Any], index: int) -> int:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT:
        raise ValueError(
            f"{path}: not an {FORMAT} shard (format attribute is {fmt!r}); it comes from elsewhere"
        )
    try:
        theirs = json.loads(f.attrs["collection"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: {FORMAT} shard without a readable collection attribute") from err
    if not isinstance(theirs, dict):
        raise ValueError(f"{path}: {FORMAT} shard with a malformed collection attribute")
    diff = config_differences(theirs, manifest, "shard has", f"{MANIFEST_NAME} has")
    if diff:
        raise ValueError(
            f"{path}: belongs to a different collection than {MANIFEST_NAME} ({'; '.join(diff)})"
        )
    start, stop = shard_range(manifest["samples"], manifest["shard_size"], index)
    want = {"shard": index, "start": start, "count": stop - start}
    for k, v in want.items():
        got = f.attrs.get(k)
        if isinstance(got, np.integer):
            got = int(got)
        if got != v:
            raise ValueError(f"{path}: attribute {k} is {got!r}, expected {v} for {shard_name(index)}")
    n = stop - start
    layout = dataset_layout(manifest["image_size"])
    expected_names = {*layout, "objects"}
    names = set(f.keys())
    if names != expected_names:
        extra, missing = sorted(names - expected_names), sorted(expected_names - names)
        raise ValueError(f"{path}: datasets differ from {FORMAT} (missing {missing}, unexpected {extra})")
    for name, (dtype, shape) in layout.items():
        ds = f[name]
        if not isinstance(ds, h5py.Dataset) or ds.dtype != dtype or ds.shape != (n, *shape):
            raise ValueError(
                f"{path}: dataset {name} is {getattr(ds, 'dtype', '?')} {getattr(ds, 'shape', '?')}, "
                f"expected {dtype} {(n, *shape)}"
            )
    objects = f["objects"]
    if objects.dtype.kind != "S" or objects.ndim != 2 or objects.shape[0] != n:
        raise ValueError(f"{path}: dataset objects is {objects.dtype} {objects.shape}, expected S (n={n}, K)")
    return n


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


# -- reading ---------------------------------------------------------------------------------------------
class PairedDataset:
    """Random access to a paired collection, validated on open.

    ``dataset[i]`` reads one sample (one chunk per image); ``load(start, stop)`` reads a range into
    stacked in-RAM arrays. File handles are opened lazily per process (safe with DataLoader workers) and
    at most ``MAX_OPEN_SHARDS`` are kept open. ``allow_partial=True`` accepts an unfinished collection
    and serves the complete shards present, in shard order.
    """

    def __init__(self, root: str | Path, allow_partial: bool = False) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = read_manifest(self.root)
        self.image_size: int = int(self.manifest["image_size"])
        m = self.manifest
        total = num_shards(m["samples"], m["shard_size"])
        present = scan_shards(self.root)
        for index, path in present.items():
            if index >= total:
                raise ValueError(
                    f"{path}: unexpected shard file; {MANIFEST_NAME} lists only {total} shard(s)"
                )
        missing = [i for i in range(total) if i not in present]
        if missing and not allow_partial:
            raise ValueError(
                f"{self.root / shard_name(missing[0])}: missing shard ({len(missing)} of {total} missing); "
                "the collection is unfinished: rerun the same `rcan collect` command, or open with allow_partial=True"
            )
        self.shards: list[tuple[int, Path, int]] = []  # (index, path, count)
        for index, path in present.items():
            self.shards.append((index, path, check_shard(path, m, index)))
        self._offsets = [0]
        for _, _, count in self.shards:
            self._offsets.append(self._offsets[-1] + count)
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    # -- basics ----------------------------------------------------------------------------------------
    @property
    def domain(self) -> str:
        return str(self.manifest["domain"])

    @property
    def complete(self) -> bool:
        return len(self) == self.manifest["samples"]

    def __len__(self) -> int:
        return self._offsets[-1]

    def __repr__(self) -> str:
        return f"PairedDataset({str(self.root)!r}, samples={len(self)}, shards={len(self.shards)}, domain={self.domain!r})"

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k, j = self._locate(i)
        f = self._file(k)
        try:
            out: dict[str, Any] = {name: f[name][j] for name in IMAGE_KEYS}
            for name in META_KEYS:
                out[name] = np.int64(f[name][j])
        except OSError as err:  # a failed checksum or a damaged chunk
            raise ValueError(f"{self.shards[k][1]}: cannot read sample {j} ({_short(err)})") from err
        return out

    def objects(self, i: int) -> list[str]:
        """Names of the objects in sample ``i``'s episode."""
        k, j = self._locate(i)
        return [b.decode("ascii") for b in self._file(k)["objects"][j]]

    def load(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Samples ``[start, stop)`` (slice semantics) as stacked arrays in RAM."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(stop, start)
        n = stop - start
        out = {
            name: np.empty((n, *shape), dtype)
            for name, (dtype, shape) in dataset_layout(self.image_size).items()
        }
        for k, (_, _, count) in enumerate(self.shards):
            lo, hi = self._offsets[k], self._offsets[k] + count
            a, b = max(start, lo), min(stop, hi)
            if a >= b:
                continue
            f = self._file(k)
            try:
                for name, arr in out.items():
                    f[name].read_direct(arr, np.s_[a - lo : b - lo], np.s_[a - start : b - start])
            except OSError as err:
                raise ValueError(f"{self.shards[k][1]}: cannot read samples ({_short(err)})") from err
        return out

    # -- handles ---------------------------------------------------------------------------------------
    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __enter__(self) -> PairedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index out of range for {n} samples")
        k = bisect.bisect_right(self._offsets, i) - 1
        return k, i - self._offsets[k]

    def _file(self, k: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: never share HDF5 handles across processes
            self._handles = OrderedDict()
            self._pid = os.getpid()
        f = self._handles.get(k)
        if f is None:
            path = self.shards[k][1]
            try:
                f = h5py.File(path, "r")
            except OSError as err:
                raise ValueError(f"{path}: cannot open shard ({_short(err)})") from err
            self._handles[k] = f
            if len(self._handles) > MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(k)
        return f


def remove_temp_files(root: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.shard-*.h5.<pid>.tmp``, ``.manifest.json.<pid>.tmp``)."""
    removed = []
    for entry in os.scandir(root):
        if is_temp_name(entry.name):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed
