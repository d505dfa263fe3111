"""Learning curves of training runs: greedy success on the unseen test objects against grasps collected.

Why from ``episodes.jsonl`` and not from TensorBoard: every episode is there with its kind and outcome,
so the curve can be recomputed with any window and compared across runs, and the x axis can be what the
issue and the paper count, simulated grasps (training episodes, plus any counterfactual grasps tried at
their closings), not gradient steps. The greedy episodes (``kind == "eval"``, a tenth of all episodes by
default) run on test objects and are never trained on.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcan.qtopt.evaluate import wilson_interval

TRAINING_KINDS = ("scripted", "policy", "real")


@dataclass
class Curve:
    """One run's curve: for each greedy episode, the state of the run when it finished."""

    name: str
    grasps: np.ndarray
    """Training episodes (scripted + on-policy + real) collected by then."""
    minutes: np.ndarray
    """Training minutes by then (NaN when the run has no ``progress.jsonl``)."""
    success: np.ndarray
    """Success rate of the last ``window`` greedy episodes."""
    low: np.ndarray
    high: np.ndarray
    """Wilson 95% interval of that window."""
    window: int


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's log. A last line without its newline is a row being written (a live run) or cut
    by a kill: it is left out; any other line that is not JSON is an error."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                if not line.endswith("\n"):  # only the last line can lack one: unfinished
                    break
                raise ValueError(f"{path}:{n} is not JSON ({err})") from None
    return rows


def learning_curve(run: str | os.PathLike[str], window: int = 100) -> Curve:
    """The curve of training run ``run`` (a directory written by ``rcan train-agent``)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    run = Path(run)
    episodes_file = run / "episodes.jsonl"
    if not episodes_file.is_file():
        raise FileNotFoundError(f"{run} is not a training run (no episodes.jsonl)")
    rows = _read_jsonl(episodes_file)
    if any("kind" not in r or "success" not in r for r in rows):
        raise ValueError(f"{episodes_file} has rows without kind/success")
    # Minutes by gradient steps, from the progress log (monotone in both).
    steps, mins = [], []
    progress = run / "progress.jsonl"
    if progress.is_file():
        for r in _read_jsonl(progress):
            if "grad_steps" in r and "minutes" in r:
                steps.append(int(r["grad_steps"]))
                mins.append(float(r["minutes"]))
    grasps, minutes, outcomes = [], [], []
    collected = 0
    for r in rows:
        if r["kind"] in TRAINING_KINDS:
            collected += 1 + int(r.get("branches", 0))  # counterfactual grasps are simulated grasps too
        elif r["kind"] == "eval":
            grasps.append(collected)
            outcomes.append(bool(r["success"]))
            g = int(r.get("grad_steps", 0))
            i = bisect.bisect_left(steps, g)
            minutes.append(mins[min(i, len(mins) - 1)] if mins else float("nan"))
    if not outcomes:
        raise ValueError(
            f"{episodes_file} has no greedy (eval) episodes yet (a run with eval_prob=0, as the tiny preset, "
            "has none: train with --set eval_prob=0.1 for a curve)"
        )
    o = np.asarray(outcomes, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(o)])
    idx = np.arange(1, len(o) + 1)
    start = np.maximum(0, idx - window)
    wins = c[idx] - c[start]
    n = idx - start
    bounds = np.array([wilson_interval(int(w), int(k)) for w, k in zip(wins, n, strict=True)])
    return Curve(
        name=run.name,
        grasps=np.asarray(grasps),
        minutes=np.asarray(minutes, dtype=float),
        success=wins / n,
        low=bounds[:, 0],
        high=bounds[:, 1],
        window=window,
    )


def plot_learning_curves(curves: list[Curve], out: str | os.PathLike[str], goal: float | None = 0.9) -> Path:
    """Success against grasps collected (one line and interval band per run) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rcan.common.images import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c in curves:
        (line,) = ax.plot(c.grasps, 100 * c.success, label=c.name)
        ax.fill_between(c.grasps, 100 * c.low, 100 * c.high, color=line.get_color(), alpha=0.15, lw=0)
    if goal is not None:
        ax.axhline(100 * goal, color="grey", ls="--", lw=1, label=f"goal {goal:.0%}")
    ax.set_xlabel("simulated grasps collected (training episodes and counterfactual grasps)")
    ax.set_ylabel(f"greedy success, unseen test objects (%)\nlast {curves[0].window} attempts, Wilson 95%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi=120)
