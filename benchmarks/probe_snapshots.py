"""Which of a run's checkpoints acts best, and does acting with several of them help? (issue 4)

A run trained with ``--set keep_snapshots=true`` keeps every checkpoint's agent file in ``RUN/snapshots/``.
Two ways to use them without more training time:

* *choosing a checkpoint*: evaluate the last ones on the training objects (allowed: the agent trained on
  them) and keep the best; worth it only if a checkpoint's training-object figure predicts its test one,
  so this evaluates each on both (``--objects test train``);
* *a snapshot ensemble*: the final agent acting on the mean logit of itself and its K-1 previous
  snapshots (``rcan evaluate --ensemble``), with the run's grasp check (``--check``) or closing once;
* *averaged weights* (``--average K``): one network whose weights are the mean of the last K snapshots'
  (the network has no normalization statistics), acting at one network's cost.

Each variant is evaluated over ``--sets`` object sets of 102 attempts by ``eval_object_sets.evaluate_sets``, in
``RUN/snapshot-evals/<variant>/`` (a copy of the agent file, and of the check with ``--check``). Prints a
table and writes ``RUN/snapshot-evals/summary.json``; variants already in it are not evaluated again.

    .venv/bin/python benchmarks/probe_snapshots.py runs/e2e-s5 --last 5 --objects test train
    .venv/bin/python benchmarks/probe_snapshots.py runs/e2e-s5 --last 0 --ensemble 2 3 --check
    .venv/bin/python benchmarks/probe_snapshots.py runs/e2e-s7 --last 0 --ensemble 3 --check --search-critics 1
    .venv/bin/python benchmarks/probe_snapshots.py runs/e2e-s5 --last 0 --average 2 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from eval_object_sets import evaluate_sets, pool  # noqa: E402


def snapshot_minutes(run: Path) -> dict[int, float]:
    """Training minutes at each logged gradient-step count (from ``progress.jsonl``)."""
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["grad_steps"]): float(r["minutes"]) for r in rows}


def minutes_at(steps: int, table: dict[int, float]) -> float | None:
    """The minutes logged at the last log row at or before ``steps`` gradient steps."""
    before = [s for s in table if s <= steps]
    return table[max(before)] if before else None


def prepare(run: Path, name: str, agent: Path, check: bool) -> Path:
    """``RUN/snapshot-evals/<name>/`` holding a copy of ``agent`` (and of the run's check)."""
    d = run / "snapshot-evals" / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(agent, d / "agent.safetensors")
    for f in ("check.safetensors", "check.json"):
        if check:
            shutil.copyfile(run / f, d / f)
        else:
            (d / f).unlink(missing_ok=True)
    return d


def average_agent(members: list[Path], out: Path) -> Path:
    """An agent file whose weights are the mean of ``members``' (metadata of the last one)."""
    from rcan.common.checkpoint import load_safetensors, save_safetensors_atomic
    from rcan.qtopt.agent import AGENT_FORMAT

    loaded = [load_safetensors(m, expect_format=AGENT_FORMAT) for m in members]
    tensors = {k: sum(t[k].double() for t, _ in loaded) / len(loaded) for k in loaded[-1][0]}
    tensors = {k: v.to(loaded[-1][0][k].dtype) for k, v in tensors.items()}
    return save_safetensors_atomic(out, tensors, loaded[-1][1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory trained with keep_snapshots")
    p.add_argument("--last", type=int, default=5, help="evaluate each of the last N snapshots (0: none)")
    p.add_argument("--objects", nargs="+", choices=("test", "train"), default=["test"])
    p.add_argument("--ensemble", type=int, nargs="*", default=[], help="ensembles of the last K snapshots")
    p.add_argument("--average", type=int, nargs="*", default=[], help="weights averaged over the last K")
    p.add_argument("--check", action="store_true", help="act with the run's grasp check (default: close once)")
    p.add_argument(
        "--search-critics",
        type=int,
        default=0,
        help="ensembles: search with the first N critics, re-score the best on all (0: search with all)",
    )
    p.add_argument("--sets", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    snaps = sorted((a.run / "snapshots").glob("agent-*.safetensors"))
    if not snaps:
        p.error(f"{a.run} has no snapshots (train with --set keep_snapshots=true)")
    if a.check and not (a.run / "check.safetensors").is_file():
        p.error(f"{a.run} has no grasp check (rcan train-check --agent {a.run})")
    if any(k < 2 or k > len(snaps) for k in [*a.ensemble, *a.average]) or min(a.last, a.search_critics) < 0:
        p.error(f"ensembles need 2..{len(snaps)} members; --last and --search-critics must be >= 0")
    if a.sets < 1 or a.jobs < 1:
        p.error("--sets and --jobs must be >= 1")
    table = snapshot_minutes(a.run)
    tag = "check" if a.check else "once"
    variants: list[tuple[str, Path, list[str], dict[str, Any]]] = []
    for s in snaps[-a.last :] if a.last else []:
        steps = int(s.stem.split("-")[1])
        info = {"grad_steps": steps, "minutes": minutes_at(steps, table), "members": 1}
        variants.append((f"{s.stem}-{tag}", s, [], info))
    for k in a.ensemble:
        members = snaps[-k:]
        extra = [arg for m in reversed(members[:-1]) for arg in ("--ensemble", str(m.resolve()))]
        info = {"members": k, "snapshots": [m.name for m in members]}
        search = f"-search{a.search_critics}" if a.search_critics else ""
        if a.search_critics:
            extra += ["--search-critics", str(a.search_critics)]
            info["search_critics"] = a.search_critics
        variants.append((f"ensemble{k}{search}-{tag}", members[-1], extra, info))
    (a.run / "snapshot-evals").mkdir(exist_ok=True)
    for k in a.average:
        members = snaps[-k:]
        averaged = average_agent(members, a.run / "snapshot-evals" / f"average{k}.safetensors")
        info = {"members": k, "snapshots": [m.name for m in members], "averaged": True}
        variants.append((f"average{k}-{tag}", averaged, [], info))
    summary_file = a.run / "snapshot-evals" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    for name, agent, extra, info in variants:
        for objects in a.objects:
            key = f"{name}/{objects}"
            if key in summary and summary[key]["attempts"] == 102 * a.sets:
                r = summary[key]  # evaluated by an earlier call (a rerun after a kill carries on)
            else:
                d = prepare(a.run, name, agent, a.check)
                r = pool(evaluate_sets(d, objects, a.sets, a.jobs, extra=extra))
                summary[key] = {**info, "objects": objects, "check": a.check, **r}
            lo, hi = r["wilson95"]
            when = f"{info['minutes']:.0f} min" if info.get("minutes") is not None else f"{info['members']} nets"
            print(f"{key:40s} {when:>8s}  {r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}] of {r['attempts']}", flush=True)
            tmp = summary_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            tmp.replace(summary_file)  # atomic: a kill leaves the last complete summary
    return 0


if __name__ == "__main__":
    sys.exit(main())
