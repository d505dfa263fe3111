"""CLI wiring for using a trained generator: ``rcan translate`` and ``rcan eval-generator``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_GENERATOR = Path(__file__).resolve().parent.parent / "assets" / "generator"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "translate", help="turn images (real or randomized) into canonical RGB, mask and depth"
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="PNG/JPEG files or folders of them")
    p.add_argument("--generator", default=str(DEFAULT_GENERATOR), help="run folder or generator.safetensors")
    p.add_argument("--out", required=True, help="folder for the outputs")
    p.set_defaults(func=_cmd_translate)

    p = sub.add_parser(
        "eval-generator", help="RCAN metrics on held-out heavy and real scenes + a Figure-3 grid"
    )
    p.add_argument("--generator", default=str(DEFAULT_GENERATOR), help="run folder or generator.safetensors")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md and figure3.png")
    p.add_argument("--frames", type=int, default=200, help="held-out frames per domain")
    p.add_argument("--seed", type=int, default=900_000)
    p.set_defaults(func=_cmd_eval)


def _cmd_translate(args: argparse.Namespace) -> int:
    from rcan.adapt.translate import translate_paths

    report = translate_paths(args.inputs, args.generator, args.out)
    for path, reason in report.failed:
        print(f"rcan translate: skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {len(report.written)} files to {args.out}")
    return 1 if report.failed else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from rcan.adapt.evaluate import evaluate_generator, results_markdown, write_report

    if args.frames < 1:
        raise ValueError("--frames must be >= 1")
    results = evaluate_generator(args.generator, frames=args.frames, seed=args.seed)
    paths = write_report(results, Path(args.out))
    print(results_markdown(results))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['grid']}")
    return 0
