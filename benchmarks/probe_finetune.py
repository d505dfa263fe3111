"""Joint finetuning variants on a reproduce run's trained agents: does the dip after the first real grasps go?

`rcan reproduce` finetunes each agent in ``real`` from its weights with a fresh optimizer and replay, no
gradient-free warm-up and the training learning rate (3e-4), and every recorded run so far lost most of the
agent's zero-shot success after the first stage before climbing back (benchmarks/RESULTS.md). This finetunes
the same agents to the same budgets (the small one, a fifth of 5% of the agent's simulated grasps, then
the large one) under named variants of training arguments, and evaluates each after both budgets in
``real`` with the reproduce run's protocol (102 attempts, ``--seed`` objects), so a variant's effect is read
beside the run's own ``ftK`` figures. Every step is an ``rcan`` command (printed), so each figure can be
re-made by hand.

    .venv/bin/python benchmarks/probe_finetune.py runs/table1-v2 --agents mild heavy \\
        --variant lr3e-5:lr=3e-5 --variant warm:finetune_learning_starts=500 --out runs/ftprobe
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rcan.common.atomic import write_json_atomic
from rcan.experiments.reproduce import stage_budgets


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, ["--set", "key=value", ...]); ``name:`` is the default."""
    name, _, sets = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} has no name (NAME:key=value,...)")
    flags: list[str] = []
    for item in filter(None, sets.split(",")):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"variant {text!r}: {item!r} is not key=value")
        flags += ["--set", item]
    return name, flags


def budgets(pieces: dict[str, Any], agent: str) -> tuple[int, int]:
    """(small, large) real-episode budgets exactly as the reproduce run computed them."""
    cfg = pieces["config"]
    trained = pieces["results"][f"train:{agent}"]["episodes"]
    sim = int(trained.get("scripted", 0)) + int(trained.get("policy", 0))
    large = max(cfg["min_real_episodes"], int(round(cfg["real_fraction"] * sim)))
    stages = stage_budgets(large, cfg["stages"])
    return stages[0], stages[-1]


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reproduce", type=Path, help="an rcan reproduce output directory (with pieces.json)")
    p.add_argument("--agents", nargs="+", default=["mild", "heavy"])
    p.add_argument("--variant", type=parse_variant, action="append", default=[], help="NAME:key=value,...")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    pieces_file = a.reproduce / "pieces.json"
    if not pieces_file.is_file():
        p.error(f"{a.reproduce} has no pieces.json")
    pieces = json.loads(pieces_file.read_text())
    seed = str(pieces["config"]["seed"])
    attempts = str(pieces["config"]["attempts"])
    generator = pieces["config"]["generator"] or str(Path(__file__).resolve().parents[1] / "rcan/assets/generator")
    rcan = str(Path(sys.executable).parent / "rcan")
    a.out.mkdir(parents=True, exist_ok=True)
    record = a.out / "probe_finetune.json"  # earlier invocations' variants are kept beside this one's
    results: dict[str, Any] = json.loads(record.read_text()) if record.is_file() else {}
    for agent in a.agents:
        if f"train:{agent}" not in pieces["results"]:
            p.error(f"{a.reproduce} has not trained the {agent} agent yet")
        gen = ["--generator", generator] if agent == "rcan" else []
        for name, flags in a.variant:
            ft = a.out / f"{agent}-{name}"
            row: dict[str, Any] = {}
            for k, budget in zip(("small", "large"), budgets(pieces, agent), strict=True):
                cmd = [rcan, "train-agent", "--input", agent, "--out", str(ft), "--seed", seed, *gen]
                cmd += ["--finetune-from", str(a.reproduce / "agents" / agent), "--real-episodes", str(budget)]
                cmd += ["--minutes", "0", "--env-steps", str(10**9), "--set", "eval_prob=0", *flags]
                if (ft / "train_state.safetensors").is_file():
                    cmd.append("--resume")
                run(cmd, a.out / f"{agent}-{name}.log")
                ev = a.out / f"{agent}-{name}-eval-{k}"
                cmd = [rcan, "evaluate", "--agent", str(ft), "--domain", "real", "--attempts", attempts]
                run([*cmd, "--seed", seed, "--out", str(ev), *gen], a.out / f"{agent}-{name}.log")
                r = json.loads((ev / "result.json").read_text())
                row[k] = {"budget": budget, "successes": r["successes"], "attempts": r["attempts"]}
                print(f"{agent} {name} after {budget} real grasps: {r['success_rate']:.1%}", flush=True)
            results[f"{agent}:{name}"] = row
            write_json_atomic(record, results)
    for key, row in results.items():
        print(key, "  ".join(f"{k} {v['successes']}/{v['attempts']} ({v['budget']} grasps)" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
