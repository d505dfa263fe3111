"""``rcan reproduce``: Table 1 and Figure 4 of the paper (section 5) with the ``real`` domain standing in
for the real world.

The pieces, in order (each one's result goes into ``DIR/pieces.json`` when it finishes; killed and started
again with the same command, a run skips finished pieces and resumes the training it was in):

1. ``train:<agent>``: five agents trained in simulation (``DIR/agents/<agent>``): canonical, mild, medium
   and heavy randomization (trained on that domain's images) and RCAN (heavy images through the frozen
   generator, concatenated with the input; section 4.3). The generator was trained on heavy pairs only
   and never sees ``real`` images.
2. ``eval:<agent>:sim`` and ``eval:<agent>:real``: the paper's protocol (section 5.1) in the agent's own
   simulated domain and zero-shot in ``real`` (``DIR/evals/...``).
3. ``finetune:<agent>:<k>``: joint finetuning (``DIR/finetune/<agent>``): on-policy ``real`` episodes mixed
   50/50 with simulated on-policy ones, the generator frozen, in ``stages`` equal steps up to the large
   budget; ``eval:<agent>:ft<k>`` in ``real`` after the first stage (the small budget) and the last, and
   after every stage for RCAN and mild randomization (Figure 4).
4. ``DIR/report.md``, ``DIR/report.html``, ``figure4.png``, ``learning_curves.png``, ``figure3_real.png``,
   ``config.json``.

Budgets. The paper's 5,000 and 28,000 real grasps were small next to its simulated grasps; here the large
budget is ``real_fraction`` (5%) of the agent's simulated training episodes (at least
``min_real_episodes``) and the small one is a fifth of it (the paper's ratio is 5.6), so the small budget's
result is the first point of the large budget's curve.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rcan.common.atomic import write_json_atomic, write_text_atomic
from rcan.common.images import save_figure
from rcan.common.presets import from_preset

AGENTS = ("canonical", "mild", "medium", "heavy", "rcan")
PIECES_FILE = "pieces.json"
FORMAT = "rcan.reproduce-v1"

PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "canonical": {"sim": 0.99, "real": 0.21, "small": 0.30, "large": None},
    "mild": {"sim": 0.98, "real": 0.37, "small": 0.85, "large": None},
    "medium": {"sim": 0.98, "real": 0.35, "small": 0.77, "large": None},
    "heavy": {"sim": 0.98, "real": 0.33, "small": 0.85, "large": 0.92},
    "rcan": {"sim": 0.99, "real": 0.70, "small": 0.91, "large": 0.94},
}
"""Table 1 of the paper (real-world success, 102 attempts per robot; "small" = +5,000 and "large" = +28,000
on-policy real grasps). The paper's finetuned rows are joint finetuning except the real-data baseline."""

LABELS = {
    "canonical": "Canonical sim",
    "mild": "Mild randomization",
    "medium": "Medium randomization",
    "heavy": "Heavy randomization",
    "rcan": "RCAN",
}


@dataclass
class ReproduceArgs:
    """Arguments of ``rcan reproduce``. Defaults are the ``default`` preset (about 3 hours on 2 cores)."""

    out: str = "runs/reproduce"
    """Output directory (agents, finetuning runs, evaluations, report)."""
    preset: str = "default"
    """tiny (a few minutes, for tests), default (this machine), paper (large hardware)."""
    generator: str | None = None
    """RCAN generator (run dir or file), trained on heavy pairs; default: the shipped one."""
    seed: int = 0
    """Seeds training and evaluation (the evaluation's test objects and placements)."""
    agent_preset: str = "default"
    """``rcan train-agent`` preset of the five agents."""
    agent_minutes: float = 24.0
    """Training minutes per agent (0: the agent preset's own budget)."""
    agent_env_steps: int = 0
    """Env steps per agent (0: the agent preset's own budget)."""
    collectors: int = 1
    """Collector processes per training run (0: inside the trainer's process)."""
    attempts: int = 102
    """Grasp attempts per evaluation (the paper's 102)."""
    real_fraction: float = 0.05
    """Large finetuning budget as a fraction of the agent's simulated training episodes (28,000 real grasps
    in the paper); the small budget is a fifth of it."""
    min_real_episodes: int = 10
    """Floor on the large budget (real episodes)."""
    stages: int = 5
    """Finetuning stages up to the large budget; Figure 4 evaluates after each."""
    finetune: str = "fresh"
    """How joint finetuning starts from a trained agent: ``fresh`` (its weights; new optimizer and replay)
    or ``continue`` (the training run carries on: its target networks, optimizer and simulated replay)."""
    figure4_agents: tuple[str, ...] = ("rcan", "mild")
    """Agents evaluated after every finetuning stage (Figure 4)."""
    grid_frames: int = 8
    """Rows of the generator grid on ``real`` images."""
    backend: str = "local"
    """local or ray (see ``rcan train-agent --backend``)."""
    address: str | None = None
    """Ray cluster address for ``backend="ray"``."""


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "agent_preset": "tiny",
        "agent_minutes": 0.0,
        "collectors": 0,
        "attempts": 3,
        "min_real_episodes": 5,
        "grid_frames": 2,
    },
    "default": {},
    "paper": {"agent_preset": "paper", "agent_minutes": 0.0, "collectors": 8, "min_real_episodes": 100},
}

RESUMABLE = frozenset({"out", "backend", "address", "collectors"})
"""Arguments that may differ when a run is started again (they do not change what it computes)."""


def make_args(preset: str = "default", **overrides: Any) -> ReproduceArgs:
    args = from_preset(ReproduceArgs, PRESETS, preset, overrides)
    if args.backend == "ray" and args.collectors == 0 and "collectors" not in overrides:
        # a preset's in-process collector (tiny) has no Ray form: one collector actor instead
        args = dataclasses.replace(args, collectors=1)
    if args.stages < 1 or args.attempts < 1 or args.min_real_episodes < args.stages:
        raise ValueError("stages and attempts must be >= 1, and min_real_episodes >= stages")
    if args.agent_minutes < 0 or args.agent_env_steps < 0 or args.grid_frames < 1:
        raise ValueError("agent_minutes and agent_env_steps must be >= 0 (0: the preset's), grid_frames >= 1")
    if not 0.0 < args.real_fraction <= 1.0:
        raise ValueError(f"real_fraction must be in (0, 1], got {args.real_fraction}")
    if args.finetune not in ("fresh", "continue"):
        raise ValueError(f"finetune must be 'fresh' or 'continue', got {args.finetune!r}")
    unknown = set(args.figure4_agents) - set(AGENTS)
    if unknown:
        raise ValueError(f"unknown figure-4 agents {sorted(unknown)}; choose from {', '.join(AGENTS)}")
    return dataclasses.replace(args, preset=preset, figure4_agents=tuple(args.figure4_agents))


# -- bookkeeping ------------------------------------------------------------------------------------------
class Pieces:
    """Finished pieces and their results, in ``DIR/pieces.json`` (rewritten atomically after each piece)."""

    def __init__(self, out: Path, args: ReproduceArgs) -> None:
        self.path = out / PIECES_FILE
        self.config = {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE}
        self.config["figure4_agents"] = list(self.config["figure4_agents"])
        self.results: dict[str, Any] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                    raise ValueError("wrong format")
                if not isinstance(saved.get("config"), dict) or not isinstance(saved.get("results"), dict):
                    raise ValueError("no config or results")
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
                raise ValueError(f"{self.path} is not an rcan reproduce record ({err})") from None
            diff = [k for k in self.config if saved["config"].get(k) != self.config[k]]
            if diff:
                raise ValueError(
                    f"{out} was started with other arguments ({', '.join(diff)}); use the same command or a new --out"
                )
            self.results = saved["results"]

    def done(self, name: str) -> bool:
        return name in self.results

    def record(self, name: str, result: Any) -> Any:
        self.results[name] = result
        payload = {"format": FORMAT, "config": self.config, "results": self.results}
        write_json_atomic(self.path, payload)
        return result


# -- the pieces -------------------------------------------------------------------------------------------
def _train_overrides(args: ReproduceArgs, agent: str, generator: str) -> dict[str, Any]:
    o: dict[str, Any] = {
        "input": agent,
        "seed": args.seed,
        "collectors": args.collectors,
        "backend": args.backend,
        "address": args.address,
        "check_grasps": 0,  # Table 1's agents act as the paper's: no grasp check (rcan.qtopt.grasp_check)
        "ensemble_members": 1,  # and one critic, never distilled from snapshots (rcan.qtopt.distill)
        "distill_steps": 0,
    }
    if agent == "rcan":
        o["generator"] = generator
    if args.agent_minutes > 0:
        o["minutes"] = args.agent_minutes
    if args.agent_env_steps > 0:
        o["env_steps"] = args.agent_env_steps
    return o


def _run_training(run: Path, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one run to its budget; returns the trainer's summary."""
    from rcan.qtopt.args import STATE_FILE, resolve_args
    from rcan.qtopt.train import train

    resume = (run / STATE_FILE).is_file()
    summary = train(resolve_args(str(run), preset, resume, overrides))
    if not summary["finished"]:  # stopped by a signal: checkpointed, not done; the same command carries on
        raise KeyboardInterrupt
    return summary


def _evaluate(
    args: ReproduceArgs, out: Path, name: str, run: Path, domain: str, generator: str | None
) -> dict[str, Any]:
    from rcan.qtopt.evaluate import run_evaluation

    r = run_evaluation(
        str(run),
        domain,
        attempts=args.attempts,
        seed=args.seed,
        out=str(out / "evals" / name.replace(":", "-")),
        generator=generator,
    )
    return {k: r[k] for k in ("domain", "attempts", "successes", "success_rate", "wilson95", "objects")}


def stage_budgets(large: int, stages: int) -> list[int]:
    """Real-episode targets after each stage: ``stages`` nearly equal steps up to ``large``."""
    return [int(round(large * k / stages)) for k in range(1, stages + 1)]


def reproduce(args: ReproduceArgs) -> dict[str, Path]:
    """Run (or continue) every piece, then write the report. Returns the paths of what it wrote."""
    from tqdm.auto import tqdm

    from rcan.adapt.inference import resolve_generator_path
    from rcan.qtopt.agent import env_domain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = str(resolve_generator_path(args.generator or _shipped_generator()))
    pieces = Pieces(out, args)
    bar = tqdm(AGENTS, desc="reproduce", unit="agent")
    for agent in bar:
        run = out / "agents" / agent
        agent_generator = generator if agent == "rcan" else None
        train_overrides = _train_overrides(args, agent, generator)
        name = f"train:{agent}"
        if not pieces.done(name):
            bar.set_postfix_str(f"training {agent}")
            s = _run_training(run, args.agent_preset, train_overrides)
            pieces.record(name, {"episodes": s["episodes"], "env_steps": s["env_steps"], "minutes": s["minutes"]})
        for where, domain in (("sim", env_domain(agent)), ("real", "real")):
            name = f"eval:{agent}:{where}"
            if not pieces.done(name):
                bar.set_postfix_str(f"evaluating {agent} in {domain}")
                pieces.record(name, _evaluate(args, out, name, run, domain, agent_generator))
        trained = pieces.results[f"train:{agent}"]["episodes"]
        sim_episodes = int(trained.get("scripted", 0)) + int(trained.get("policy", 0))
        large = max(args.min_real_episodes, int(round(args.real_fraction * sim_episodes)))
        budgets = stage_budgets(large, args.stages)
        ft_run = out / "finetune" / agent
        for k, budget in enumerate(budgets, start=1):
            name = f"finetune:{agent}:{k}"
            if not pieces.done(name):
                bar.set_postfix_str(f"finetuning {agent} to {budget} real grasps")
                o = {
                    **train_overrides,
                    "finetune_from": str(run),
                    "finetune_continue": args.finetune == "continue",
                    "real_episodes": budget,
                    "eval_prob": 0.0,
                    "minutes": 0.0,
                    "env_steps": 10**9,
                }
                s = _run_training(ft_run, args.agent_preset, o)
                pieces.record(name, {"real_episodes": s["episodes"].get("real", 0), "budget": budget})
            if k in (1, len(budgets)) or agent in args.figure4_agents:
                name = f"eval:{agent}:ft{k}"
                if not pieces.done(name):
                    bar.set_postfix_str(f"evaluating {agent} after {budget} real grasps")
                    pieces.record(name, _evaluate(args, out, name, ft_run, "real", agent_generator))
    bar.close()
    if not pieces.done("grid"):
        pieces.record("grid", str(_generator_grid(out, generator, args)))
    return write_report(out, args, pieces.results, generator)


def _shipped_generator() -> str:
    return str(Path(__file__).resolve().parent.parent / "assets" / "generator")


def _generator_grid(out: Path, generator: str, args: ReproduceArgs) -> Path:
    """Figure-3-style rows on ``real`` frames of test objects: input | G(x) | canonical | mask | depth."""
    from rcan.adapt.evaluate import figure3_grid, held_out_scenes
    from rcan.adapt.inference import load_generator, translate_batch
    from rcan.common.images import save_png

    model, config = load_generator(generator)
    scenes = held_out_scenes(("real",), args.grid_frames, config.image_size, seed=700_000 + args.seed)
    outputs = {"real": translate_batch(model, scenes["real"].inputs)}
    grid = figure3_grid(scenes, outputs, rows_per_domain=args.grid_frames)
    return save_png(out / "figure3_real.png", np.kron(grid, np.ones((2, 2, 1), np.uint8)))


def source_commit() -> str:
    """The git commit of the ``rcan`` source that runs, "+changes" when its tree has uncommitted ones, or
    "unknown" when the package does not run from its own checkout (an install inside another repository
    would otherwise report that repository's commit)."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding rcan/

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != root:
            return "unknown"
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "rcan")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if commit and dirty else commit or "unknown"


# -- the report -------------------------------------------------------------------------------------------
def _cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    lo, hi = r["wilson95"]
    return f"{100 * r['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={r['attempts']})"


def _paper(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def table1_rows(results: dict[str, Any], stages: int) -> list[list[str]]:
    rows = []
    for agent in AGENTS:
        if f"train:{agent}" not in results:
            continue
        t = results[f"train:{agent}"]["episodes"]
        sim_grasps = int(t.get("scripted", 0)) + int(t.get("policy", 0))
        small = results.get(f"finetune:{agent}:1", {}).get("budget")
        large = results.get(f"finetune:{agent}:{stages}", {}).get("budget")
        p = PAPER_TABLE1[agent]
        rows.append(
            [
                LABELS[agent],
                f"{sim_grasps:,}",
                _cell(results.get(f"eval:{agent}:sim")),
                _paper(p["sim"]),
                _cell(results.get(f"eval:{agent}:real")),
                _paper(p["real"]),
                f"+{small}: {_cell(results.get(f'eval:{agent}:ft1'))}" if small else "-",
                _paper(p["small"]),
                f"+{large}: {_cell(results.get(f'eval:{agent}:ft{stages}'))}" if large else "-",
                _paper(p["large"]),
            ]
        )
    return rows


TABLE1_HEADER = [
    "trained on",
    "sim grasps",
    "sim (ours)",
    "sim (paper)",
    "real zero-shot (ours)",
    "real zero-shot (paper)",
    "+ small real budget (ours)",
    "+5,000 (paper)",
    "+ large real budget (ours)",
    "+28,000 (paper)",
]


def figure4(out: Path, results: dict[str, Any], args: ReproduceArgs) -> Path | None:
    """Success in ``real`` against real grasps used in joint finetuning, with Wilson 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for agent in args.figure4_agents:
        xs, ys, lo, hi = [], [], [], []
        points = [(0, results.get(f"eval:{agent}:real"))]
        points += [
            (results.get(f"finetune:{agent}:{k}", {}).get("budget"), results.get(f"eval:{agent}:ft{k}"))
            for k in range(1, args.stages + 1)
        ]
        for x, r in points:
            if x is None or not r:
                continue
            xs.append(x)
            ys.append(100 * r["success_rate"])
            lo.append(100 * (r["success_rate"] - r["wilson95"][0]))
            hi.append(100 * (r["wilson95"][1] - r["success_rate"]))
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[agent])
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("on-policy grasps in the real domain (joint finetuning)")
    ax.set_ylabel("grasp success in the real domain (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Figure 4 (sim-to-sim): success vs real grasps, Wilson 95%")
    fig.tight_layout()
    return save_figure(fig, out / "figure4.png", dpi=110)


def environment_info() -> dict[str, str]:
    """Versions and machine, for the report's "exact configuration" section."""
    from importlib.metadata import version

    import gymnasium
    import torch

    import rcan

    return {
        "rcan": rcan.__version__,
        "commit": source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pybullet": version("pybullet"),
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs",
    }


def write_report(out: Path, args: ReproduceArgs, results: dict[str, Any], generator: str) -> dict[str, Path]:
    """``report.md``, ``report.html`` and ``config.json`` from the recorded results."""
    import html

    fig4 = figure4(out, results, args)
    curves = learning_curves(out)
    env = environment_info()
    config = {"args": dataclasses.asdict(args), "generator": generator, "environment": env}
    write_json_atomic(out / "config.json", config)
    rows = table1_rows(results, args.stages)
    intro = (
        f"Preset `{args.preset}`. The `real` domain (photo textures, another light model, a camera offset, "
        "camera effects) stands in for the real world; no generator or agent saw it before finetuning. "
        f"Every cell: grasp success on unseen test objects, {args.attempts} attempts, Wilson 95% interval. "
        "The paper's numbers are real-robot results."
    )
    budgets = (
        "Small/large budgets: on-policy grasps in `real` during joint finetuning (mixed 50/50 with simulated "
        f"on-policy grasps, generator frozen); large = {100 * args.real_fraction:.0f}% of the agent's "
        "simulated grasps (at least "
        f"{args.min_real_episodes}), small = a fifth of it."
    )
    md = [
        "# Table 1 and Figure 4, sim-to-sim",
        "",
        intro,
        "",
        "## Table 1",
        "",
        "| " + " | ".join(TABLE1_HEADER) + " |",
        "|" + "---|" * len(TABLE1_HEADER),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        budgets,
        "",
        "## Figure 4",
        "",
        "![figure 4](figure4.png)" if fig4 else "(no finetuning evaluations yet)",
        "",
        "## Learning curves",
        "",
        "Greedy success on unseen test objects in each agent's own training domain (the last 100 greedy "
        "episodes during training, Wilson 95% band) against the simulated grasps collected.",
        "",
        "![learning curves](learning_curves.png)" if curves else "(no greedy episodes during training)",
        "",
        "## The generator on `real` images (Figure 3 style)",
        "",
        "Columns: `real` input | generated canonical RGB | true canonical | generated segmentation | "
        "generated depth.",
        "",
        "![generator on real](figure3_real.png)",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    md_path = write_text_atomic(out / "report.md", "\n".join(md))
    esc = html.escape
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in TABLE1_HEADER) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rcan: Table 1 and Figure 4 (sim-to-sim)</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:90%}}pre{{background:#f4f4f4;padding:1em}}</style></head>
<body><h1>Table 1 and Figure 4, sim-to-sim</h1>
<p>{esc(intro)}</p>
<h2>Table 1</h2>{table}
<p>{esc(budgets)}</p>
<h2>Figure 4</h2>{'<img src="figure4.png" alt="figure 4">' if fig4 else "<p>(no finetuning evaluations yet)</p>"}
<h2>Learning curves</h2>{'<img src="learning_curves.png" alt="learning curves">' if curves else "<p>(none)</p>"}
<h2>The generator on real images</h2><img src="figure3_real.png" alt="generator on real images">
<h2>Configuration</h2><pre>{esc(json.dumps(config, indent=2))}</pre>
</body></html>
"""
    html_path = write_text_atomic(out / "report.html", page)
    paths = {"report_md": md_path, "report_html": html_path, "config": out / "config.json"}
    if fig4:
        paths["figure4"] = fig4
    if curves:
        paths["learning_curves"] = curves
    return paths


def learning_curves(out: Path) -> Path | None:
    """``learning_curves.png``: the agents' greedy success against grasps collected while they trained."""
    from rcan.qtopt.curves import learning_curve, plot_learning_curves

    curves = []
    for agent in AGENTS:
        try:
            c = learning_curve(out / "agents" / agent)
        except (FileNotFoundError, ValueError):
            continue  # not trained yet, or no greedy episodes (the tiny preset has none)
        c.name = LABELS[agent]
        curves.append(c)
    return plot_learning_curves(curves, out / "learning_curves.png", goal=None) if curves else None
