"""``rcan reproduce``: the CLI shell over :func:`rcan.experiments.reproduce.reproduce`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="Table 1 and Figure 4 on the sim-to-sim stand-in: train, evaluate, finetune, report",
        description="Trains (or reuses) the five agents of Table 1, evaluates them in simulation and zero-shot "
        "in the held-out 'real' domain, jointly finetunes them on small budgets of 'real' grasps, and writes "
        "report.md/report.html with Figure 4. Killed and started again with the same command, it carries on "
        "from the last finished piece.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--preset", choices=("tiny", "default", "paper"), default="default")
    p.add_argument("--generator", default=None, help="RCAN generator (default: the shipped one)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--attempts", type=int, default=None, help="grasp attempts per evaluation (default 102)")
    p.add_argument("--agent-minutes", type=float, default=None, help="training minutes per agent")
    p.add_argument("--collectors", type=int, default=None, help="collector processes per training run")
    p.add_argument(
        "--finetune",
        choices=("fresh", "continue"),
        default=None,
        help="joint finetuning from the agent's weights with a new optimizer and replay (fresh), or carrying "
        "on its training run with the real grasps mixed in (continue)",
    )
    p.add_argument("--backend", choices=("local", "ray"), default=None)
    p.add_argument("--address", default=None, help="with --backend ray: the cluster to join")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rcan.experiments.reproduce import make_args, reproduce

    overrides = {
        k: v
        for k, v in {
            "out": args.out,
            "generator": args.generator,
            "seed": args.seed,
            "attempts": args.attempts,
            "agent_minutes": args.agent_minutes,
            "collectors": args.collectors,
            "finetune": args.finetune,
            "backend": args.backend,
            "address": args.address,
        }.items()
        if v is not None
    }
    paths = reproduce(make_args(args.preset, **overrides))
    for key in ("report_md", "report_html", "figure4"):
        if key in paths:
            print(f"wrote {paths[key]}")
    return 0
