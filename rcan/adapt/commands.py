"""CLI wiring for the generator: ``rcan train-generator``. Imports torch only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``train-generator`` subcommand to the ``rcan`` parser's subparsers."""
    p = sub.add_parser(
        "train-generator",
        help="train the RCAN generator (randomized -> canonical RGB, segmentation, depth)",
        description=(
            "Train the RCAN generator on paired randomized/canonical images. Writes RUN/config.json, "
            "TensorBoard logs in RUN/tb, image grids in RUN/grids, and checkpoints RUN/generator.safetensors "
            "(weights for inference) and RUN/train_state.safetensors (everything needed to resume exactly). "
            "Ctrl-C stops at the next step boundary and saves a checkpoint."
        ),
    )
    p.add_argument("--data", default=None, help="paired dataset directory (or an .npz with the same arrays)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument(
        "--preset",
        choices=("tiny", "default", "paper"),
        default=None,
        help="tiny: a minute, for tests; default: 64x64, about an hour on 2 cores; paper: 472x472 (default: default)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its checkpoint")
    p.add_argument(
        "--steps", type=int, default=None, help="total optimizer steps (on resume: train on to this)"
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: half the CPUs, 1 on 2 cores; use 2 on an idle 2-core machine)",
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=None, metavar="N", help="steps between checkpoints"
    )
    p.add_argument(
        "--lambda-gan", type=float, default=None, help="GAN loss weight (0 turns the discriminator off)"
    )
    p.add_argument(
        "--lambda-rgb-l2", type=float, default=None, help="weight of the plain RGB L2 next to MPSE"
    )
    p.set_defaults(func=_cmd_train_generator)


def _cmd_train_generator(args: argparse.Namespace) -> int:
    from rcan.adapt.args import resolve_args
    from rcan.adapt.train import train

    overrides = {
        "data": args.data,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
        "checkpoint_every": args.checkpoint_every,
        "lambda_gan": args.lambda_gan,
        "lambda_rgb_l2": args.lambda_rgb_l2,
    }
    targs = resolve_args(args.out, args.preset, args.resume, overrides)
    summary = train(targs)
    val = summary.get("val") or {}
    extra = "".join(f", val {k} {val[k]:.4g}" for k in ("mpse", "seg_accuracy", "depth_mae_m") if k in val)
    print(f"step {summary['step']}: wrote {summary['generator']}{extra}")
    return 0
