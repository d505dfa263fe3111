"""Scale-out benchmark: collector env steps/s and trainer gradient steps/s, local vs Ray backend.

For each backend (``local``: spawned processes; ``ray``: Ray actors on a local Ray started here with
``max(collectors) + 1`` CPUs, or the cluster at ``--address``) and each number of collectors (1 and 2):

1. Collectors alone (no trainer): env steps/s in total over ``--seconds`` after every collector has finished
   its first episode (start-up is reported separately), first with scripted episodes (no weights yet),
   then with policy episodes (weights pushed; CEM every step).
2. The training loop (``Trainer.run``) with that many collectors, the replay pre-filled with synthetic
   episodes so gradient steps start at once and never wait for the update-to-data budget: gradient
   steps/s and the env steps/s the collectors deliver meanwhile (steady state: the log rows after the
   first). With Ray, V(s') is computed by a Bellman actor, so the trainer's process only takes gradient
   steps; on a machine with fewer cores than collectors + 2 the processes share cores (see the load).

Prints machine info (cores, load before/after, Ray version and start-up seconds) and a markdown table on
stdout (progress on stderr); ``--json PATH`` writes every number. ``--quick`` is a smoke run (tiny network,
1 collector, 3-second windows). Run on a quiet machine:

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_ray.py --json /tmp/bench_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine_info

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def log(msg: str) -> None:
    print(f"[bench_ray] {msg}", file=sys.stderr, flush=True)


def make_collectors(backend: str, n: int, config: Any, seed: int) -> Any:
    if backend == "ray":
        from rcan.qtopt.ray_backend import RayCollectors

        return RayCollectors(n, config, seed)
    from rcan.qtopt.collectors import LocalCollectors

    return LocalCollectors(n, config, seed)


def _wait_all(coll: Any, n: int, kind: str, timeout: float) -> float:
    """Poll until every collector index delivered an episode of ``kind``; returns the seconds it took."""
    t0 = time.perf_counter()
    seen: set[int] = set()
    while len(seen) < n:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"collectors delivered no {kind} episode within {timeout:.0f} s")
        for ep in coll.poll():
            if ep.kind == kind:
                seen.add(ep.collector)
        time.sleep(0.01)
    return time.perf_counter() - t0


def _rate(coll: Any, kind: str, seconds: float) -> tuple[float, int]:
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        steps += sum(ep.length for ep in coll.poll() if ep.kind == kind)
        time.sleep(0.01)
    return steps / (time.perf_counter() - t0), steps


def bench_collectors(backend: str, n: int, preset: str, seconds: float) -> dict[str, Any]:
    """Env steps/s of ``n`` collectors, scripted then policy episodes."""
    from rcan.qtopt.args import collector_config, make_args, network_config
    from rcan.qtopt.network import QNetwork

    args = make_args(preset, out=os.devnull, scripted_prob=0.0, eval_prob=0.0)
    t0 = time.perf_counter()
    coll = make_collectors(backend, n, collector_config(args), seed=0)
    try:
        startup = _wait_all(coll, n, "scripted", timeout=300)
        out: dict[str, Any] = {"startup_s": time.perf_counter() - t0, "first_episodes_s": startup}
        out["scripted_env_steps_per_s"], out["scripted_steps"] = _rate(coll, "scripted", seconds)
        coll.set_weights(QNetwork(network_config(args)).state_dict(), 0)
        _wait_all(coll, n, "policy", timeout=300)
        out["policy_env_steps_per_s"], out["policy_steps"] = _rate(coll, "policy", seconds)
    finally:
        coll.close()
    return out


def _synthetic_fill(trainer: Any, steps: int, seed: int = 0) -> None:
    from rcan.qtopt.collectors import Episode

    rng = np.random.default_rng(seed)
    c, size = trainer.replay.buffers()["scripted"].image_shape[:2]
    done = 0
    while done < steps:
        t_len = int(rng.integers(4, 15))
        kind = "scripted" if done < steps // 2 else "policy"
        trainer.add_episode(
            Episode(
                images=rng.integers(0, 256, (t_len, c, size, size), dtype=np.uint8),
                states=np.stack([rng.integers(0, 2, t_len), rng.uniform(0, 0.3, t_len)], 1).astype(
                    np.float32
                ),
                actions=rng.uniform(-1, 1, (t_len, 6)).astype(np.float32),
                rewards=np.r_[np.full(t_len - 1, -0.05), rng.choice([-0.05, 1.0])].astype(np.float32),
                success=False,
                kind=kind,
            )
        )
        done += t_len


def bench_training(backend: str, n: int, preset: str, seconds: float, fill: int) -> dict[str, Any]:
    """Gradient steps/s and delivered env steps/s of ``Trainer.run`` with ``n`` collectors."""
    from rcan.qtopt.args import make_args
    from rcan.qtopt.train import Trainer

    out_dir = Path(tempfile.mkdtemp(prefix="bench_ray_run-"))
    try:
        args = make_args(
            preset,
            out=str(out_dir / "run"),
            backend=backend,
            collectors=n,
            learning_starts=0,
            utd=1e9,
            env_steps=10**9,
            minutes=seconds / 60,
            checkpoint_minutes=1e6,
            log_every=max(5, int(seconds)),
            push_every=50,
            scripted_capacity=max(2000, 2 * fill),
            policy_capacity=max(2000, 2 * fill),
        )
        trainer = Trainer(args)
        try:
            _synthetic_fill(trainer, fill)
            # Warm-up outside the clock: the first step waits for the Bellman actor to start (Ray).
            t = time.perf_counter()
            trainer.train_step()
            first_step_s = time.perf_counter() - t
            env0, grad0 = trainer.env_steps, trainer.grad_steps
            summary = trainer.run()
            summary["grad_steps"] -= grad0
        finally:
            trainer.close()
        progress = out_dir / "run" / "progress.jsonl"
        rows = [json.loads(line) for line in progress.read_text().splitlines()] if progress.exists() else []
        steady = [r for r in rows[1:] if "grad_steps_per_s" in r]
        wall = max(1e-9, summary["minutes"] * 60)
        out = {
            "grad_steps": summary["grad_steps"],
            "env_steps": summary["env_steps"] - env0,
            "seconds": wall,
            "grad_steps_per_s_overall": summary["grad_steps"] / wall,
            "env_steps_per_s_overall": (summary["env_steps"] - env0) / wall,
            "log_rows": len(rows),
            "first_step_s": first_step_s,
        }
        # Steady state (log rows after the first, i.e. after the collectors' start-up) when there are any.
        out["grad_steps_per_s"] = (
            float(np.mean([r["grad_steps_per_s"] for r in steady]))
            if steady
            else out["grad_steps_per_s_overall"]
        )
        out["env_steps_per_s"] = (
            float(np.mean([r["env_steps_per_s"] for r in steady]))
            if steady
            else out["env_steps_per_s_overall"]
        )
        return out
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny network, 1 collector, 3 s windows"
    )
    parser.add_argument("--backends", default="local,ray", help="comma-separated: local, ray (default both)")
    parser.add_argument("--collectors", default=None, help="comma-separated counts (default 1,2; quick: 1)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measurement window (default 30; quick: 3)"
    )
    parser.add_argument("--fill", type=int, default=None, help="synthetic env steps pre-filled in the replay")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: start a local Ray)")
    parser.add_argument("--skip-training", action="store_true", help="collectors only")
    args = parser.parse_args(argv)
    os.environ.setdefault("RCAN_CACHE", str(Path.home() / ".cache" / "rcan"))
    torch.set_num_threads(1)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counts = [int(c) for c in (args.collectors or ("1" if args.quick else "1,2")).split(",")]
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 30.0)
    fill = args.fill if args.fill is not None else (200 if args.quick else 2000)
    preset = "tiny" if args.quick else "default"
    res: dict[str, Any] = {
        "machine": machine_info(),
        "quick": args.quick,
        "preset": preset,
        "seconds": seconds,
        "rows": [],
    }
    started = False
    if "ray" in backends:
        from rcan.qtopt.ray_backend import BELLMAN_ACTORS, import_ray, start_ray

        ray = import_ray()
        t = time.perf_counter()
        started = start_ray(args.address, num_cpus=max(counts) + BELLMAN_ACTORS)
        res["machine"]["ray"] = ray.__version__
        res["machine"]["ray_start_s"] = time.perf_counter() - t
        res["machine"]["ray_cpus"] = ray.cluster_resources().get("CPU", 0)
    try:
        for backend in backends:
            for n in counts:
                row: dict[str, Any] = {"backend": backend, "collectors": n}
                log(f"{backend}, {n} collector(s): collectors alone, {seconds:.0f} s per kind")
                row.update(bench_collectors(backend, n, preset, seconds))
                if not args.skip_training:
                    log(f"{backend}, {n} collector(s): training loop, {seconds:.0f} s")
                    row["training"] = bench_training(backend, n, preset, seconds, fill)
                res["rows"].append(row)
    finally:
        if started:
            import ray

            ray.shutdown()
    res["machine"]["load_after"] = os.getloadavg()

    print(f"machine: {res['machine']}\n")
    print(
        "| backend | collectors | start-up s | scripted env steps/s | policy env steps/s "
        "| trainer grad steps/s | env steps/s while training |\n|---|---|---|---|---|---|---|"
    )
    for r in res["rows"]:
        tr = r.get("training", {})
        grad = f"{tr['grad_steps_per_s']:.1f}" if tr else "-"
        env = f"{tr['env_steps_per_s']:.1f}" if tr else "-"
        print(
            f"| {r['backend']} | {r['collectors']} | {r['startup_s']:.1f} | {r['scripted_env_steps_per_s']:.1f} "
            f"| {r['policy_env_steps_per_s']:.1f} | {grad} | {env} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
