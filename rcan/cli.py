"""The ``rcan`` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def _cmd_show(args: argparse.Namespace) -> int:
    from rcan.sim.gallery import LEGEND, save_grid, scene_panels

    panels = scene_panels(seed=args.seed, size=args.size, object_split=args.split, texture_dir=args.texture_dir)
    out = save_grid(panels, args.out, title=f"seed {args.seed}, {args.split} objects; segmentation: {LEGEND}")
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from rcan.experiments.demo import run_demo

    report = run_demo(args.out, seed=args.seed, frames=args.frames, attempts=args.attempts)
    print(f"wrote {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("show", help="render one scene in every visual domain, with segmentation and depth")
    p.add_argument("--out", default="demo/scene_domains.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--texture-dir", default=None, help="folder of PNG/JPEG textures for randomized domains")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("demo", help="the whole pipeline with shipped weights: pictures, metrics, report.md")
    p.add_argument("--out", default="demo", help="folder for the report and its pictures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=24, help="held-out frames per domain for the generator")
    p.add_argument("--attempts", type=int, default=10, help="grasp attempts by the shipped agent")
    p.set_defaults(func=_cmd_demo)

    from rcan.adapt import apply_commands
    from rcan.adapt import commands as adapt_commands
    from rcan.data import commands as data_commands
    from rcan.experiments import commands as experiment_commands
    from rcan.qtopt import commands as qtopt_commands

    data_commands.register(sub)
    adapt_commands.register(sub)
    apply_commands.register(sub)
    qtopt_commands.register(sub)
    experiment_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as err:  # a bad path, a full disk, a file where a folder goes
        print(f"rcan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
