"""CLI wiring for the agent: ``rcan train-agent``, ``rcan evaluate`` and ``rcan learning-curve``. Imports
torch only when run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rcan.qtopt import INPUT_MODES


def register(sub: Any) -> None:
    """Add ``train-agent``, ``evaluate`` and ``learning-curve`` to the ``rcan`` parser's subparsers."""
    p = sub.add_parser(
        "train-agent",
        help="train the QT-Opt grasping agent in simulation",
        description=(
            "Train QT-Opt with collector processes. Writes RUN/config.json, TensorBoard logs in RUN/tb, "
            "RUN/progress.jsonl, RUN/agent.safetensors (the policy), RUN/train_state.safetensors and the "
            "replay buffer RUN/replay-*.npz (everything needed to resume). Ctrl-C/SIGTERM saves a checkpoint."
        ),
    )
    p.add_argument("--input", choices=INPUT_MODES, default=None, help="state images (default: canonical)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument(
        "--preset",
        choices=("tiny", "default", "paper"),
        default=None,
        help="tiny: seconds, for tests; default: 64x64, up to 2 hours on 2 cores; paper: 472x472, big machines",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its checkpoint")
    p.add_argument("--generator", default=None, help="RCAN generator run or file (for --input rcan)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--collectors", type=int, default=None, metavar="N", help="collector processes (0: one in the trainer)"
    )
    p.add_argument("--env-steps", type=int, default=None, help="stop after this many env steps in total")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time in total")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the trainer")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default=None,
        help="local: collector processes on this machine (default); ray: collectors, replay and Bellman "
        "targets as Ray actors (pip install 'rcan[ray]'); may change on --resume",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: join this Ray cluster (e.g. auto, HOST:6379); default: a local Ray",
    )
    p.add_argument(
        "--finetune-from",
        default=None,
        metavar="AGENT",
        help="joint finetuning (paper 4.3): start from this trained agent and mix on-policy episodes in "
        "--real-domain with simulated ones; needs --real-episodes",
    )
    p.add_argument(
        "--real-episodes", type=int, default=None, metavar="N", help="joint finetuning: the budget of real grasps"
    )
    p.add_argument("--real-domain", default=None, help="the domain standing in for the real world (default real)")
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="any other training argument (TrainArgs field), e.g. --set lr=1e-3 --set keypoints=16",
    )
    p.set_defaults(func=_cmd_train_agent)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a grasping agent with the paper's protocol (success rate, Wilson 95%% interval)",
        description=(
            "Grasp attempts of at most 20 steps on 5-6 unseen test objects, re-dropped at random after each "
            "attempt. Prints the success rate with a Wilson 95%% interval; writes OUT/result.json, a frame "
            "strip OUT/frames.png and OUT/closings.png (every attempt's last closing, failures first, with where "
            "the fingertips were sent and the objects' centres)."
        ),
    )
    e.add_argument(
        "--agent", default=None, help="run directory or agent.safetensors (default: the shipped agent)"
    )
    e.add_argument("--domain", required=True, help="visual domain: canonical, mild, medium, heavy or real")
    e.add_argument("--texture-dir", default=None, help="folder of textures for randomized domains")
    e.add_argument("--attempts", type=int, default=102)
    e.add_argument("--seed", type=int, default=0, help="chooses the test objects and the drops")
    e.add_argument(
        "--objects",
        choices=("test", "train"),
        default="test",
        help="object split: test (the protocol: unseen objects) or train (to measure the generalization gap)",
    )
    e.add_argument("--out", default=None, help="output directory (default: eval/AGENT-DOMAIN-seedS)")
    e.add_argument("--generator", default=None, help="RCAN generator for an rcan agent (default: beside it)")
    e.add_argument(
        "--cem",
        default=None,
        metavar="SAMPLES,ELITES,ITERATIONS",
        help="action search to act with instead of the agent's own (e.g. 64,6,3)",
    )
    e.add_argument(
        "--view-shifts",
        type=int,
        default=None,
        metavar="N",
        help="test-time augmentation: average Q over N shifted copies of each image (1-9, 1: off; "
        "default: the agent's own)",
    )
    e.add_argument(
        "--rerank",
        type=int,
        default=None,
        metavar="M",
        help="with --view-shifts N > 1: search on the unshifted image and re-score only its M best candidates "
        "on all N views (about one view's cost; 0: search on the mean over views; default: the agent's own)",
    )
    e.add_argument(
        "--search-critics",
        type=int,
        default=None,
        metavar="N",
        help="with several critics (an agent file with ensemble members, or --ensemble) and --rerank M > 0: "
        "search with the first N critics and re-score the M best candidates on all (0: all; default: the "
        "agent's own)",
    )
    e.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="AGENT",
        help="average Q with this agent's too (repeatable; same input mode and camera as --agent)",
    )
    e.add_argument(
        "--no-check",
        action="store_true",
        help="act without the agent's grasp check (check.safetensors beside it): close and terminate as the "
        "critic chooses, never reopen",
    )
    e.add_argument(
        "--check-threshold",
        type=float,
        default=None,
        metavar="P",
        help="end an attempt when the grasp check's success estimate is at least P (default: the check's own)",
    )
    e.add_argument(
        "--check-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="act with another grasp-check setting (repeatable; a CheckConfig field of "
        "rcan/qtopt/grasp_check.py, e.g. min_steps_left=3, early_threshold=0.3; not lift or max_steps)",
    )
    e.set_defaults(func=_cmd_evaluate)

    k = sub.add_parser(
        "train-check",
        help="fit a trained agent's grasp check (regrasp when a lifted grasp holds nothing)",
        description=(
            "Collects GRASPS lifted grasps with the agent in simulation on training objects (closed, then "
            "LIFT 4 cm steps up), labels each by whether terminating there succeeds, and fits a copy of the "
            "agent's critic to that label. Writes RUN/check.safetensors (used by rcan evaluate from then on), "
            "RUN/check_data.h5 and RUN/check.json. See rcan/qtopt/grasp_check.py."
        ),
    )
    k.add_argument("--agent", required=True, help="run directory or agent.safetensors")
    k.add_argument("--grasps", type=int, default=4000, help="lifted grasps to collect (default 4000)")
    k.add_argument("--lift", type=int, default=3, help="4 cm steps up before the check (default 3)")
    k.add_argument("--epochs", type=int, default=12)
    k.add_argument("--jobs", type=int, default=2, help="collector processes (default 2)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--threshold", type=float, default=0.6, help="the check's default threshold (default 0.6)")
    k.add_argument("--generator", default=None, help="RCAN generator for an rcan agent (default: beside it)")
    k.add_argument(
        "--early-threshold",
        type=float,
        default=0.0,
        metavar="P",
        help="also judge after each lift step and reopen at once below P (0: off; fits every lift step)",
    )
    k.add_argument(
        "--confirm",
        type=int,
        default=1,
        metavar="K",
        help="after an accepted check, rise K more steps and look again before ending (default 1, as "
        "train-agent; 0: off); the grasps are lifted LIFT + K steps and both heights are learned",
    )
    k.set_defaults(func=_cmd_train_check)

    c = sub.add_parser(
        "learning-curve",
        help="plot greedy test-object success against grasps collected for training runs",
        description=(
            "Reads RUN/episodes.jsonl (and RUN/progress.jsonl for minutes) of each run; plots the success of "
            "the last WINDOW greedy episodes on unseen test objects, with a Wilson 95%% band, against the "
            "simulated grasps collected; prints a short table."
        ),
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="training run directories")
    c.add_argument("--out", required=True, help="PNG file to write")
    c.add_argument("--window", type=int, default=100, help="greedy episodes per point (default 100)")
    c.set_defaults(func=_cmd_learning_curve)


def _cmd_train_agent(args: argparse.Namespace) -> int:
    from rcan.qtopt.args import resolve_args
    from rcan.qtopt.train import train

    overrides = {
        "input": args.input,
        "generator": args.generator,
        "seed": args.seed,
        "collectors": args.collectors,
        "env_steps": args.env_steps,
        "minutes": args.minutes,
        "threads": args.threads,
        "backend": args.backend,
        "address": args.address,
        "finetune_from": args.finetune_from,
        "real_episodes": args.real_episodes,
        "real_domain": args.real_domain,
    }
    from rcan.common.presets import parse_settings
    from rcan.qtopt.args import TrainArgs

    overrides.update(parse_settings(TrainArgs, args.set))
    targs = resolve_args(args.out, args.preset, args.resume, overrides)
    if args.address and targs.backend != "ray":
        raise ValueError("--address is only for --backend ray")
    s = train(targs)
    rates = ", ".join(f"{k} {v:.0%}" for k, v in s["recent_success"].items() if v == v)
    print(
        f"{s['env_steps']} env steps, {s['grad_steps']} gradient steps, {s['minutes']:.1f} min; "
        f"recent success: {rates or 'n/a'}; wrote {s['agent']}"
    )
    if not s["finished"]:  # a signal: checkpointed short of the budget
        print(
            f"rcan train-agent: stopped before the end of its budget; continue with "
            f"rcan train-agent --out {args.out} --resume",
            file=sys.stderr,
        )
        return 130
    if "distill" in s:
        d = s["distill"]
        print(f"distilled the {d['critics']}-critic ensemble into one network: {d['steps']} steps, {d['minutes']:.1f} min")
    if "check" in s:
        c = s["check"]
        print(
            f"grasp check: {c['grasps']} lifted grasps, validation AUC {c['val_auc']:.3f}, "
            f"{c['minutes']:.1f} min; wrote {Path(s['agent']).parent / 'check.safetensors'}"
        )
    return 0


def _parse_cem(text: str | None) -> Any:
    """``SAMPLES,ELITES,ITERATIONS`` -> CEMConfig (None: the agent's own); a bad value is a ValueError."""
    if text is None:
        return None
    from rcan.qtopt.cem import CEMConfig

    try:
        samples, elites, iterations = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--cem must be SAMPLES,ELITES,ITERATIONS (three integers), got {text!r}") from None
    return CEMConfig(samples, elites, iterations)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rcan.qtopt.evaluate import run_evaluation
    from rcan.qtopt.grasp_check import parse_check_settings

    r = run_evaluation(
        args.agent, args.domain, args.attempts, args.seed, args.out, args.texture_dir, args.generator,
        cem=_parse_cem(args.cem),
        objects=args.objects,
        view_shifts=args.view_shifts,
        ensemble=args.ensemble,
        rerank=args.rerank,
        search_critics=args.search_critics,
        check=not args.no_check,
        check_threshold=args.check_threshold,
        check_settings=parse_check_settings(args.check_set),
    )
    lo, hi = r["wilson95"]
    print(
        f"{r['domain']}, {r['object_split']} objects: {r['success_rate']:.1%} success "
        f"({r['successes']}/{r['attempts']}), "
        f"Wilson 95% [{lo:.1%}, {hi:.1%}]; wrote {r['result_json']}, {r['frames_png']} "
        f"and {r['closings_png']}"
    )
    f = r["failures"]
    print(
        f"failures: {f['closed_at_an_object']} closed at an object (within 3 cm of its centre) but lost it, "
        f"{f['closed_away_from_objects']} closed away from every object, {f['never_closed']} never closed"
    )
    t = r["retries"]
    n = t["attempts_with_retries"]
    print(
        f"grasps per attempt: {t['mean_grasps']:.2f} (closings of the open gripper, in the air too); "
        f"{n} attempt{'' if n == 1 else 's'} closed more than once, {t['successes_after_a_retry']} of {n} succeeded"
    )
    c = r.get("checks")
    if c:
        print(
            f"grasp check: first grasp accepted in {c['first_accepted']} attempts "
            f"({c['held_after_first_accept']} held), reopened in {c['first_reopened']} "
            f"({c['succeeded_after_first_reopen']} succeeded later); failures: {c['failed_accepted']} "
            f"accepted and lost, {c['failed_after_reopen']} failed after the last reopening, "
            f"{c['failed_ended_below_threshold']} ended below the threshold (no room left), "
            f"{c['failed_unchecked']} never checked"
            + (
                f"; {c['late_reopened']} late reopenings ({c['succeeded_after_late_reopen']} succeeded)"
                if c.get("late_reopened")
                else ""
            )
            + (
                f"; {c['confirm_reopened']} reopened after the second look "
                f"({c['succeeded_after_confirm_reopen']} succeeded)"
                if c.get("confirm_reopened")
                else ""
            )
        )
    y = r["yaw"]
    if y["mean_offset_successes"] is not None or y["mean_offset_failures"] is not None:
        print(
            f"closing yaw vs the wall-parallel yaw: {_deg(y['mean_offset_successes'])} (mean) for successes, "
            f"{_deg(y['mean_offset_failures'])} for failures; {y['closings_within_30']} closings within 30 deg "
            f"succeed {_pct(y['success_within_30'])}, the others {_pct(y['success_beyond_30'])}"
        )
    return 0


def _cmd_train_check(args: argparse.Namespace) -> int:
    from rcan.qtopt.grasp_check import fit_check

    s = fit_check(
        args.agent,
        grasps=args.grasps,
        lift=args.lift,
        epochs=args.epochs,
        jobs=args.jobs,
        seed=args.seed,
        generator=args.generator,
        threshold=args.threshold,
        all_levels=args.early_threshold > 0,
        early_threshold=args.early_threshold,
        confirm=args.confirm,
    )
    print(
        f"{s['grasps']} lifted grasps ({s['success_if_terminated']:.0%} would succeed), validation AUC "
        f"{s['val_auc']:.3f}; at threshold {s['config']['threshold']}: {s['failures_caught']:.0%} of failures "
        f"caught, {s['successes_reopened']:.0%} of successes reopened; {s['minutes']:.1f} min"
    )
    return 0


def _deg(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} deg"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    import numpy as np

    from rcan.qtopt.curves import learning_curve, plot_learning_curves

    curves = [learning_curve(run, args.window) for run in args.runs]
    out = plot_learning_curves(curves, args.out)
    for c in curves:
        marks = np.unique(np.linspace(0, len(c.grasps) - 1, 6).round().astype(int))
        cells = ", ".join(
            f"{c.grasps[i]} grasps: {c.success[i]:.0%}"
            if np.isnan(c.minutes[i])  # a run without progress.jsonl
            else f"{c.grasps[i]} grasps ({c.minutes[i]:.0f} min): {c.success[i]:.0%}"
            for i in marks
        )
        print(f"{c.name}: {cells}")
    print(f"wrote {out}")
    return 0
