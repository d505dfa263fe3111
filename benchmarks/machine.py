"""What every benchmark records about the machine it ran on (so RESULTS.md rows can be compared), and how
probes write their results."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """Short commit of the checkout the benchmark runs from, with "+dirty" for uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return (sha.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "load_before": os.getloadavg(),
    }


def write_probe_result(out: Path | None, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A probe's result: the summary and every row to ``out`` (JSON, when given; a later ``--rows`` run or
    another analysis reads the rows back), the summary to stdout."""
    import json

    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "rows": rows}) + "\n")
    print(json.dumps(summary, indent=1))


def add_probe_arguments(parser: Any, default_run: str) -> None:
    """The arguments the per-closing probes share: the agent run, the object sets and attempts per set."""
    parser.add_argument("run", nargs="?", default=default_run)
    parser.add_argument("--sets", default="0", help="comma-separated object-set seeds")
    parser.add_argument("--attempts", type=int, default=102)
