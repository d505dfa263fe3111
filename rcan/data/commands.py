"""``rcan collect``: argparse wiring for paired-data collection (the work is in ``rcan.data.collect``)."""

from __future__ import annotations

import argparse
from typing import Any

from rcan.data.collect import PAIR_DOMAINS, CollectConfig, collect


def register(sub: Any) -> None:
    """Add the ``collect`` subcommand to ``sub`` (the object ``add_subparsers`` returned)."""
    p = sub.add_parser(
        "collect",
        help="record paired (randomized, canonical RGB + segmentation + depth) samples along grasping trajectories",
        description=(
            "Record RCAN training pairs (paper 4.1): at each step of scripted grasping episodes the scene is "
            "frozen and rendered randomized and canonical. Writes HDF5 shards and manifest.json to --out. "
            "Deterministic for a given --seed whatever --workers and --backend; killed and rerun with the same "
            "command, it resumes where it stopped."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="collection directory (created if missing)")
    p.add_argument("--samples", type=int, required=True, metavar="N", help="number of pairs to record")
    p.add_argument("--workers", type=int, default=1, metavar="W", help="worker processes (1 = in-process)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    p.add_argument(
        "--policy",
        nargs="+",
        default=["scripted"],
        metavar="POLICY",
        help="what drives the episodes: 'scripted' (default) or 'agent CHECKPOINT' (a QT-Opt run or agent file)",
    )
    p.add_argument(
        "--domain",
        default="heavy",
        help=f"randomization of the randomized image: {', '.join(PAIR_DOMAINS)} (default heavy)",
    )
    p.add_argument(
        "--texture-dir", default=None, metavar="DIR", help="folder of PNG/JPEG textures to randomize with"
    )
    p.add_argument(
        "--image-size", type=int, default=64, metavar="PX", help="image side in pixels (default 64)"
    )
    p.add_argument("--object-split", default="train", help="object set: train or test (default train)")
    p.add_argument(
        "--shard-size", type=int, default=256, metavar="N", help="samples per shard file (default 256)"
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: processes on this machine (default); ray: Ray tasks (pip install 'rcan[ray]'), same bytes",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: join this Ray cluster (e.g. auto, HOST:6379); default: start a local Ray "
        "with --workers CPUs",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``rcan collect``; user errors propagate as ValueError (the CLI prints one line)."""
    if args.policy[0] == "agent" and len(args.policy) == 2:
        policy = "agent:" + args.policy[1]
    elif len(args.policy) == 1 and args.policy[0] != "agent":
        policy = args.policy[0]
    else:
        raise ValueError("--policy takes 'scripted' or 'agent CHECKPOINT'")
    config = CollectConfig(
        samples=args.samples,
        seed=args.seed,
        shard_size=args.shard_size,
        domain=args.domain,
        image_size=args.image_size,
        policy=policy,
        texture_dir=args.texture_dir,
        object_split=args.object_split,
    )
    summary = collect(
        args.out,
        config,
        workers=args.workers,
        progress=not args.no_progress,
        backend=args.backend,
        address=args.address,
    )
    rate = f" at {summary.pairs_per_second:.1f} pairs/s" if summary.samples_written else ""
    print(
        f"{summary.root}: {summary.samples} samples in {summary.shards} shard(s); wrote {summary.shards_written} "
        f"shard(s), {summary.samples_written} samples{rate}; kept {summary.shards_skipped} complete shard(s)"
    )
    return 0
