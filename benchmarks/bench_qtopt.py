"""QT-Opt agent speed benchmark: CEM action selection, gradient steps, collector env steps.

Measures, single-threaded (one core, as the trainer and each collector run):

1. The Q-network: parameters, MACs per state (image tower) and per action candidate (post-fusion head).
2. CEM action selection per control step at 64x64 (tower once + 64 samples x 2 iterations, 6 elites): ms,
   mean and median; goal <= 10 ms.
3. Gradient steps/s of the default preset (batch 32, clipped double-Q targets by CEM, random shifts) on a
   replay filled with synthetic episodes (the learning math does not depend on the pixels' meaning).
4. Collector env steps/s in one process: scripted episodes, and policy episodes (CEM every step).

Prints machine info and a markdown table on stdout (progress on stderr); ``--json PATH`` also writes every
number as JSON; ``--quick`` is a smoke run of well under a minute.

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_qtopt.py --json /tmp/bench_qtopt.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine_info

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
CEM_GOAL_MS = 10.0


def log(msg: str) -> None:
    print(f"[bench_qtopt] {msg}", file=sys.stderr, flush=True)


def bench_network(in_channels: int) -> dict[str, Any]:
    from rcan.qtopt.args import make_args, network_config
    from rcan.qtopt.network import QNetwork, count_macs, count_parameters

    cfg = network_config(
        make_args(
            "default",
            input="rcan" if in_channels == 6 else "canonical",
            generator="g" if in_channels == 6 else None,
        )
    )
    net = QNetwork(cfg)
    tower, head = count_macs(net)
    return {
        "in_channels": in_channels,
        "params": count_parameters(net),
        "mmacs_state": tower / 1e6,
        "mmacs_candidate": head / 1e6,
    }


def bench_cem(
    steps: int, view_shifts: int = 1, members: int = 1, rerank: int = 0, search_critics: int = 0
) -> dict[str, Any]:
    """CEM per control step; ``view_shifts``, ``members``, ``rerank`` and ``search_critics``: the test-time
    options (shifted views of the image, an ensemble of critics, re-scoring only the one-view search's best
    candidates on all views, searching with the first critics only), whose cost is a tower per view and
    member and a head per candidate, view and member."""
    from rcan.qtopt.agent import QTOptPolicy
    from rcan.qtopt.args import acting_cem, make_args, network_config
    from rcan.qtopt.network import QNetwork

    args = make_args("default")
    nets = [QNetwork(network_config(args)) for _ in range(members)]
    policy = QTOptPolicy(
        nets[0],
        acting_cem(args),
        "canonical",
        seed=0,
        view_shifts=view_shifts,
        ensemble=nets[1:],
        rerank=rerank,
        search_critics=search_critics,
    )
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 5):
        img = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
        state = np.array([0.0, rng.uniform(0, 0.3)], np.float32)
        t = time.perf_counter()
        policy.act_prepared(img, state)
        if i >= 5:
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "cem_ms_mean": statistics.fmean(times),
        "cem_ms_median": statistics.median(times),
        "cem_steps": steps,
    }


def bench_grad(steps: int) -> dict[str, Any]:
    from rcan.qtopt.args import make_args
    from rcan.qtopt.replay import EpisodeSteps
    from rcan.qtopt.train import Trainer

    args = make_args("default", out=os.devnull, scripted_capacity=2000, policy_capacity=2000)
    trainer = Trainer(args)
    rng = np.random.default_rng(0)
    for kind in ("scripted", "policy"):
        for _ in range(100):
            t_len = int(rng.integers(4, 15))
            trainer.replays[kind].add_episode(
                EpisodeSteps(
                    rng.integers(0, 256, (t_len, 3, 64, 64), dtype=np.uint8),
                    np.stack([rng.integers(0, 2, t_len), rng.uniform(0, 0.3, t_len)], 1).astype(np.float32),
                    rng.uniform(-1, 1, (t_len, 6)).astype(np.float32),
                    np.r_[np.full(t_len - 1, -0.05), rng.choice([-0.05, 0.95])].astype(np.float32),
                )
            )
    for _ in range(3):
        trainer.train_step()
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    dt = time.perf_counter() - t
    return {
        "grad_steps_per_s": steps / dt,
        "grad_ms": dt / steps * 1e3,
        "batch_size": args.batch_size,
        "grad_steps": steps,
    }


def bench_collector(episodes: int) -> dict[str, Any]:
    from rcan.qtopt.args import collector_config, make_args, network_config
    from rcan.qtopt.collectors import EpisodeRunner
    from rcan.qtopt.network import QNetwork

    args = make_args("default", out=os.devnull)
    runner = EpisodeRunner(collector_config(args), seed=0)
    runner.set_weights(QNetwork(network_config(args)).state_dict(), 0)
    out: dict[str, Any] = {}
    for kind in ("scripted", "policy"):
        runner.run_episode(kind)  # warm-up
        steps, t = 0, time.perf_counter()
        for _ in range(episodes):
            steps += runner.run_episode(kind).length
        out[f"{kind}_env_steps_per_s"] = steps / (time.perf_counter() - t)
        out[f"{kind}_steps"] = steps
    runner.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run (well under a minute)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("RCAN_CACHE", str(Path.home() / ".cache" / "rcan"))
    n_cem, n_grad, n_eps = (50, 10, 3) if args.quick else (500, 100, 30)
    res: dict[str, Any] = {
        "machine": machine_info(),
        "quick": args.quick,
    }
    log("network")
    res["network"] = [bench_network(3), bench_network(6)]
    log(f"CEM x {n_cem}")
    res["cem"] = bench_cem(n_cem)
    log(f"CEM x {n_cem} with 5 shifted views (searched, and re-ranking 16), and with 5 views x 2 critics")
    res["cem_views5"] = bench_cem(n_cem, view_shifts=5)
    res["cem_views5_rerank16"] = bench_cem(n_cem, view_shifts=5, rerank=16)
    res["cem_views5_ensemble2"] = bench_cem(n_cem, view_shifts=5, members=2)
    log(f"CEM x {n_cem} in the default acting mode with 3 critics: searching with all, and with the first")
    res["cem_views5_rerank16_critics3"] = bench_cem(n_cem, view_shifts=5, members=3, rerank=16)
    res["cem_views5_rerank16_critics3_search1"] = bench_cem(
        n_cem, view_shifts=5, members=3, rerank=16, search_critics=1
    )
    log(f"gradient steps x {n_grad}")
    res["grad"] = bench_grad(n_grad)
    log(f"collector episodes x {n_eps} per kind")
    res["collector"] = bench_collector(n_eps)
    res["machine"]["load_after"] = os.getloadavg()

    net3, net6 = res["network"]
    ok = "PASS" if res["cem"]["cem_ms_median"] <= CEM_GOAL_MS else "FAIL"
    ok_default = "PASS" if res["cem_views5_rerank16"]["cem_ms_median"] <= CEM_GOAL_MS else "FAIL"
    print(f"machine: {res['machine']}\n")
    print("| measure | value | goal |\n|---|---|---|")
    print(f"| Q-network params (3 / 6 input channels) | {net3['params']:,} / {net6['params']:,} | |")
    print(
        f"| MMACs per state, image tower (3 / 6 ch) | {net3['mmacs_state']:.2f} / {net6['mmacs_state']:.2f} | |"
    )
    print(f"| MMACs per action candidate (head) | {net3['mmacs_candidate']:.3f} | |")
    print(
        f"| CEM ms per control step, 64x64, 64x2, one view (mean / median) | {res['cem']['cem_ms_mean']:.2f} / "
        f"{res['cem']['cem_ms_median']:.2f} | <= {CEM_GOAL_MS:.0f} ms: {ok} |"
    )
    for key, what, goal in (
        ("cem_views5_rerank16", "5 views, re-ranking 16 (the default acting mode)", f"<= {CEM_GOAL_MS:.0f} ms: {ok_default}"),
        ("cem_views5", "5 shifted views, search on their mean (opt-in)", ""),
        ("cem_views5_ensemble2", "5 views x 2 critics (opt-in)", ""),
        ("cem_views5_rerank16_critics3", "the default mode with 3 critics, searching with all", ""),
        ("cem_views5_rerank16_critics3_search1", "the default mode with 3 critics, searching with 1", ""),
    ):
        r = res[key]
        print(f"| CEM ms per control step, {what} (mean / median) | {r['cem_ms_mean']:.2f} / "
              f"{r['cem_ms_median']:.2f} | {goal} |")
    print(
        f"| gradient steps/s (batch {res['grad']['batch_size']}, 1 thread) | {res['grad']['grad_steps_per_s']:.1f} | |"
    )
    c = res["collector"]
    print(f"| collector env steps/s, scripted episodes | {c['scripted_env_steps_per_s']:.1f} | |")
    print(f"| collector env steps/s, policy episodes (CEM each step) | {c['policy_env_steps_per_s']:.1f} | |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
