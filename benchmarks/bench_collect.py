"""Paired-data collection benchmark: pairs/s with 1 and 2 workers, bytes per pair, compression choice.

Measures, on this machine:

1. ``rcan.data.collect`` end to end (process start-up, env construction, episodes, HDF5 writes) with 1
   worker (in-process) and 2 workers (spawned processes): pairs/s in total and per worker, and the
   goal check (>= 25 pairs/s per core at 64x64; reported, never asserted).
2. Bytes per pair on disk (shards / samples) and that both runs wrote byte-identical shards.
3. The compression choice: the collected samples rewritten one image per chunk with gzip 1/4/9, lzf
   and none: bytes per pair, write and random-read ms per pair, and whether two writes of the same
   data give the same bytes (required for reproducible shards).

The machine is shared: the load average before and after is printed, and numbers are only meaningful
when it is low. Prints a markdown table on stdout (progress on stderr); ``--json PATH`` writes every
number; ``--quick`` is a smoke run of well under a minute.

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_collect.py --json /tmp/bench_collect.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

try:
    import rcan  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rcan.data import CollectConfig, PairedDataset, collect  # noqa: E402
from rcan.data.paired import IMAGE_KEYS  # noqa: E402

GOAL_PER_CORE = 25.0
FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "gzip-1": {"compression": "gzip", "compression_opts": 1},
    "gzip-4": {"compression": "gzip", "compression_opts": 4},
    "gzip-9": {"compression": "gzip", "compression_opts": 9},
    "lzf": {"compression": "lzf"},
}


def log(msg: str) -> None:
    print(f"[bench_collect] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send fd 1 (pybullet's C-level prints) to stderr, so stdout holds only the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shard_bytes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(root.glob("shard-*.h5"))}


def shard_hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("shard-*.h5"))}


def warm_cache(domain: str, image_size: int) -> None:
    """Build every texture of the bank and the meshes now, so that no timed run pays for it."""
    from rcan.sim.grasp_env import GraspEnv

    t = time.perf_counter()
    env = GraspEnv(image_size=image_size, pair_domain=domain)
    for source in env.textures.values():
        for i in range(len(source)):
            source.path(i)
    env.close()
    log(f"texture cache warm ({time.perf_counter() - t:.1f} s)")


def run_collect(root: Path, config: CollectConfig, workers: int) -> dict[str, Any]:
    log(f"collect {config.samples} pairs, shards of {config.shard_size}, {workers} worker(s); load {load()}")
    t0 = time.perf_counter()
    summary = collect(root, config, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    sizes = shard_bytes(root)
    rate = config.samples / seconds
    return {
        "workers": workers,
        "samples": config.samples,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(rate, 2),
        "pairs_per_s_per_worker": round(rate / workers, 2),
        "bytes_per_pair": round(sum(sizes.values()) / config.samples, 1),
        "shards": summary.shards,
        "load_after": load(),
    }


def write_images(path: Path, data: dict[str, np.ndarray], opts: dict[str, Any]) -> None:
    """The shard layout for the image datasets: one image per chunk, no timestamps."""
    n = len(data["depth"])
    with h5py.File(path, "w") as f:
        for key in IMAGE_KEYS:
            arr = data[key]
            ds = f.create_dataset(
                key, shape=arr.shape, dtype=arr.dtype, chunks=(1, *arr.shape[1:]), track_times=False, **opts
            )
            for i in range(n):
                ds[i] = arr[i]


_SUBPROCESS_WRITE = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[4])
from bench_collect import write_images
write_images(Path(sys.argv[1]), dict(np.load(sys.argv[2])), json.loads(sys.argv[3]))
"""


def compression_table(data: dict[str, np.ndarray], tmp: Path, reads: int) -> list[dict[str, Any]]:
    """Size, speed and reproducibility of each filter on the same samples.

    Reproducible means that writing the same 16 samples eight times in this process and once in a fresh
    process always gives the same bytes, as shards must whichever worker writes them. (h5py's bundled
    liblzf leaves its hash table uninitialised on the stack, ``INIT_HTAB 0``, so its output may depend
    on what the process did before; zlib's does not.)
    """
    n = len(data["depth"])
    subset = {k: v[:16] for k, v in data.items()}
    npz = tmp / "subset.npz"
    np.savez(npz, **subset)
    order = np.random.default_rng(0).integers(0, n, reads)
    here = str(Path(__file__).resolve().parent)
    rows = []
    for name, opts in FILTERS.items():
        path = tmp / f"{name}.h5"
        t0 = time.perf_counter()
        write_images(path, data, opts)
        write_s = time.perf_counter() - t0
        with h5py.File(path, "r") as f:
            t0 = time.perf_counter()
            for i in order:
                for key in IMAGE_KEYS:
                    f[key][int(i)]
            read_s = time.perf_counter() - t0
        small = tmp / f"{name}-small.h5"
        hashes = set()
        for _ in range(8):
            write_images(small, subset, opts)
            hashes.add(hashlib.sha256(small.read_bytes()).hexdigest())
        subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_WRITE, str(small), str(npz), json.dumps(opts), here],
            check=True,
        )
        hashes.add(hashlib.sha256(small.read_bytes()).hexdigest())
        rows.append(
            {
                "filter": name,
                "bytes_per_pair": round(path.stat().st_size / n, 1),
                "write_ms_per_pair": round(write_s / n * 1e3, 3),
                "read_ms_per_pair": round(read_s / reads * 1e3, 3),
                "reproducible": len(hashes) == 1,
            }
        )
        log(f"compression {name}: {rows[-1]}")
    return rows


def breakdown(config: CollectConfig, tmp: Path, samples: int) -> dict[str, float]:
    """Where one worker's time goes (ms per pair): the loop of ``write_shard`` with a timer per part."""
    from rcan.data.collect import make_policy
    from rcan.data.paired import ShardWriter
    from rcan.sim.grasp_env import GraspEnv

    config = CollectConfig(**{**config.__dict__, "samples": samples, "shard_size": samples}).validated()
    parts = dict.fromkeys(
        ("env construction", "reset", "render_pair", "step (physics + observation)", "hdf5 write"), 0.0
    )
    t = time.perf_counter()
    env = GraspEnv(image_size=config.image_size, object_split=config.object_split, pair_domain=config.domain)
    parts["env construction"] += time.perf_counter() - t
    policy = make_policy(config.policy, env, np.random.default_rng(0))
    writer = ShardWriter(tmp / "breakdown.h5", config.manifest(), 0, num_objects=env.num_objects)
    rng = np.random.default_rng(0)
    t_all = time.perf_counter()
    while not writer.full:
        t = time.perf_counter()
        seed = int(rng.integers(2**62))
        obs, info = env.reset(seed=seed)
        policy.reset(info)
        parts["reset"] += time.perf_counter() - t
        step, done = 0, False
        while not done and not writer.full:
            t = time.perf_counter()
            pair = env.render_pair(config.domain)
            parts["render_pair"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.append(pair, episode=0, step=step, seed=seed, objects=env.episode_objects)
            parts["hdf5 write"] += time.perf_counter() - t
            t = time.perf_counter()
            obs, _, done, _, info = env.step(policy.act(obs, info))
            parts["step (physics + observation)"] += time.perf_counter() - t
            step += 1
    t = time.perf_counter()
    writer.close()
    parts["hdf5 write"] += time.perf_counter() - t
    total = time.perf_counter() - t_all + parts["env construction"]
    env.close()
    parts["other"] = total - sum(parts.values())
    out = {k: round(v / samples * 1e3, 2) for k, v in parts.items()}
    out["total"] = round(total / samples * 1e3, 2)
    log(f"breakdown (ms/pair): {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1024, help="pairs per run (default 1024)")
    parser.add_argument("--shard-size", type=int, default=128, help="pairs per shard (default 128)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--domain", default="heavy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 pairs in shards of 24")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the collections in DIR")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.shard_size = 96, 24
    os.environ.setdefault("RCAN_CACHE", str(Path(tempfile.gettempdir()) / "rcan_cache"))

    config = CollectConfig(
        samples=args.samples,
        shard_size=args.shard_size,
        image_size=args.image_size,
        domain=args.domain,
        seed=args.seed,
    )
    machine = {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "load_before": load(),
    }
    log(f"machine {machine}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_collect-"))
    try:
        with stdout_to_stderr():
            warm_cache(args.domain, args.image_size)
            runs = [run_collect(tmp / f"w{w}", config, w) for w in (1, 2)]
            identical = shard_hashes(tmp / "w1") == shard_hashes(tmp / "w2")
            with PairedDataset(tmp / "w1") as ds:
                data = ds.load(0, min(args.samples, 256))
            comp = compression_table(data, tmp, reads=200 if args.quick else 1000)
            split = breakdown(config, tmp, 48 if args.quick else 256)
            machine["load_after"] = load()
            if args.keep:
                for w in (1, 2):
                    shutil.copytree(tmp / f"w{w}", Path(args.keep) / f"w{w}", dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    best = max(r["pairs_per_s_per_worker"] for r in runs)
    result = {
        "machine": machine,
        "config": {k: getattr(config, k) for k in ("samples", "shard_size", "image_size", "domain", "seed")},
        "runs": runs,
        "byte_identical_1_vs_2_workers": identical,
        "compression": comp,
        "ms_per_pair_breakdown_1_worker": split,
        "goal_pairs_per_s_per_core": GOAL_PER_CORE,
        "goal_met": best >= GOAL_PER_CORE,
    }

    print(f"## rcan collect benchmark ({machine['cpu']}, {machine['nproc']} cores)\n")
    print(
        f"{args.samples} pairs at {args.image_size}x{args.image_size}, domain {args.domain}, shards of "
        f"{args.shard_size}, scripted policy. Load average before {machine['load_before']}, after "
        f"{machine['load_after']} (the machine is shared: high load means lower numbers).\n"
    )
    print("| workers | seconds | pairs/s | pairs/s per worker | bytes/pair | load after |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['workers']} | {r['seconds']:.1f} | {r['pairs_per_s']:.1f} | {r['pairs_per_s_per_worker']:.1f} "
            f"| {r['bytes_per_pair']:.0f} | {r['load_after']} |"
        )
    verdict = "PASS" if result["goal_met"] else "FAIL"
    print(f"\nGoal >= {GOAL_PER_CORE:.0f} pairs/s per core: {verdict} (best {best:.1f}).")
    print(f"Shards byte-identical with 1 and 2 workers: {identical}.\n")
    print("| one worker's time per pair | ms |")
    print("|---|---|")
    for k, v in split.items():
        print(f"| {k} | {v:.2f} |")
    own = split["hdf5 write"] + split["other"]
    print(
        f"\nCollector overhead (HDF5 write + bookkeeping): {own:.1f} of {split['total']:.1f} ms per pair "
        f"({100 * own / split['total']:.0f}%); the rest is the simulator.\n"
    )
    print(
        "| compression (one image per chunk) | bytes/pair | write ms/pair | read ms/pair | reproducible bytes |"
    )
    print("|---|---|---|---|---|")
    for c in comp:
        print(
            f"| {c['filter']} | {c['bytes_per_pair']:.0f} | {c['write_ms_per_pair']:.2f} "
            f"| {c['read_ms_per_pair']:.2f} | {c['reproducible']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
