"""Environment speed benchmark: ``rcan/Grasp-v0`` side by side with pybullet's KukaDiverseObjectEnv.

One process, one machine, one run. Measures:

1. Peer (``pybullet_envs.bullet.kuka_diverse_object_gym_env.KukaDiverseObjectEnv``, 48x48 RGB, 8-step
   episodes, random actions from its action space): env steps/s including resets.
2. Ours, 64x64 canonical domain, one render per step (the observation), random displacement actions with
   terminate forced at the 8th step: steps/s including resets and grasp attempts (lifts).
3. Same as 2 plus ``env.unwrapped.render_pair()`` every step: steps/s and paired samples/s.
4. Reset time, the extra cost of a grasp attempt (close, then lift), ``render()`` and ``render_pair()`` ms.
5. Scripted exploration policy success rate on train and test objects, with a Wilson 95% interval.
6. Speed-up ours/peer for 2 and the goal check (2 >= 10x peer, 3 pairs/s >= 25): reported, not asserted.

Prints machine info and a markdown table on stdout (progress on stderr); ``--json PATH`` also writes
every number as JSON. ``--quick`` is a smoke run of well under a minute. The peer needs the old ``gym``
package (see ``benchmarks/requirements-peer.txt``); without it the peer rows are reported as skipped.

    RCAN_CACHE=/tmp/rcan_cache .venv/bin/python benchmarks/bench_env.py --json /tmp/bench_env.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
EPISODE_STEPS = 8  # the peer's default maxSteps; our random-action episodes are forced to the same length
PAIRS_GOAL = 25.0
SPEEDUP_GOAL = 10.0


# -- helpers ---------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench_env] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to fd 1 (including C-level prints from pybullet) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu,
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pybullet": version("pybullet"),
        "numpy": np.__version__,
        "gymnasium": version("gymnasium"),
        "gym": version("gym"),
        "loadavg_start": list(os.getloadavg()),
        "git": git_state(),
    }


def contention(cpu0: float, wall: float, load0: float) -> dict[str, Any]:
    """This process's CPU time over wall time (about 1.0 when it had a core to itself) and the 1-min load."""
    cpu = time.process_time() - cpu0
    return {
        "cpu_over_wall": cpu / wall if wall > 0 else float("nan"),
        "loadavg_1min": [load0, os.getloadavg()[0]],
    }


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether rcan/ has uncommitted edits (read-only git calls)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--", "rcan")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "rcan_dirty": None if status is None else bool(status),
    }


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def ms_stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    if not ms:
        return {"n": 0, "mean_ms": float("nan"), "median_ms": float("nan"), "p90_ms": float("nan")}
    return {
        "n": len(ms),
        "mean_ms": statistics.fmean(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": float(np.percentile(ms, 90)),
    }


# -- the peer --------------------------------------------------------------------------------------------
def import_peer():
    """Import KukaDiverseObjectEnv from the pybullet wheel with the smallest workarounds that make it load.

    * ``pybullet_envs/__init__.py`` registers its envs through ``registry.env_specs`` (gym < 0.26 only) and
      ``pybullet_envs/bullet/__init__.py`` imports every other bullet env: both packages are stubbed with
      their real ``__path__`` so only the Kuka modules execute.
    * The Kuka modules do ``from pkg_resources import parse_version``; setuptools >= 81 no longer ships
      ``pkg_resources``, so a stub with ``packaging.version.parse`` stands in when it is missing.
    * ``np.bool8`` (removed in numpy 2) is aliased to ``np.bool_`` for gym 0.26's checkers.
    """
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pybullet_envs not found (it ships in the pybullet wheel)")
    importlib.import_module("gym")  # fail early, with a clear message, when gym is missing
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("pybullet_envs", root), ("pybullet_envs.bullet", root / "bullet")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    if not hasattr(np, "bool8"):
        np.bool8 = np.bool_  # type: ignore[attr-defined]
    mod = importlib.import_module("pybullet_envs.bullet.kuka_diverse_object_gym_env")
    return mod.KukaDiverseObjectEnv


def bench_peer(n_steps: int, warmup: int, seed: int) -> dict[str, Any]:
    with warnings.catch_warnings(), stdout_to_stderr():
        warnings.simplefilter("ignore")
        env_cls = import_peer()
        t0 = time.perf_counter()
        env = env_cls(renders=False, isDiscrete=False, removeHeightHack=False, maxSteps=EPISODE_STEPS)
        construct = time.perf_counter() - t0
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the peer draws objects from the legacy global generators
    env.action_space.seed(seed)
    obs = env.reset()
    for _ in range(warmup):
        _, _, done, _ = env.step(env.action_space.sample())
        if done:
            env.reset()
    steps = resets = episodes = grasps = successes = 0
    lengths: list[int] = []
    need_reset = True
    load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    while steps < n_steps:
        if need_reset:
            obs = env.reset()
            resets += 1
            need_reset = False
        obs, _, done, info = env.step(env.action_space.sample())
        steps += 1
        if done:
            episodes += 1
            lengths.append(env._env_step)
            grasps += int(env._attempted_grasp)
            successes += int(info.get("grasp_success", 0) > 0)
            need_reset = True
        if steps % 25 == 0:
            log(f"peer {steps}/{n_steps} steps")
    wall = time.perf_counter() - t0
    shape = list(np.asarray(obs).shape)
    # KukaGymEnv.__del__ disconnects the global pybullet connection it made: drop it before ours start.
    del env
    gc.collect()
    return {
        "env": "pybullet_envs KukaDiverseObjectEnv(renders=False, isDiscrete=False, removeHeightHack=False, "
        f"maxSteps={EPISODE_STEPS})",
        "observation_shape": shape,
        "construct_s": construct,
        "steps": steps,
        "resets": resets,
        "episodes_completed": episodes,
        "mean_episode_length": statistics.fmean(lengths) if lengths else float("nan"),
        "grasp_attempts": grasps,
        "successes": successes,
        "wall_s": wall,
        **contention(cpu0, wall, load0),
        "steps_per_s": steps / wall,
    }


# -- ours ------------------------------------------------------------------------------------------------
def import_rcan():
    try:
        return importlib.import_module("rcan")
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))  # running from a checkout without `pip install -e .`
        return importlib.import_module("rcan")


def make_env(object_split: str = "train"):
    import gymnasium as gym

    import_rcan()
    with stdout_to_stderr():
        t0 = time.perf_counter()
        env = gym.make("rcan/Grasp-v0", domain="canonical", image_size=64, object_split=object_split)
        construct = time.perf_counter() - t0
    return env, construct


def random_action(rng: np.random.Generator, step_in_episode: int) -> np.ndarray:
    """dx, dy, dz, dyaw, gripper ~ U(-1, 1); terminate > 0 exactly at the EPISODE_STEPS-th step."""
    a = rng.uniform(-1.0, 1.0, 6).astype(np.float32)
    a[5] = 1.0 if step_in_episode == EPISODE_STEPS else -1.0
    return a


def warm_up(env, rng: np.random.Generator, n: int, seed: int, pairs: bool = False) -> None:
    env.reset(seed=seed)
    for k in range(1, n + 1):
        _, _, term, trunc, _ = env.step(random_action(rng, k))
        if pairs:
            env.unwrapped.render_pair()
        if term or trunc:
            env.reset()


def bench_ours(env, n_steps: int, warmup: int, seed: int, pairs: bool) -> dict[str, Any]:
    label = "ours+pairs" if pairs else "ours"
    warm_up(env, np.random.default_rng(seed + 1), warmup, seed + 1, pairs=pairs)
    rng = np.random.default_rng(seed)
    u = env.unwrapped
    steps = resets = episodes = lifts = successes = n_pairs = 0
    lengths: list[int] = []
    k = 0
    need_reset, first = True, True
    load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    while steps < n_steps:
        if need_reset:
            env.reset(seed=seed) if first else env.reset()
            first, need_reset, k = False, False, 0
            resets += 1
        k += 1
        a = random_action(rng, k)
        _, _, term, trunc, info = env.step(a)
        steps += 1
        if pairs:
            u.render_pair()
            n_pairs += 1
        if term or trunc:
            episodes += 1
            lengths.append(k)
            lifts += int(a[4] > 0)  # the lift only runs when the gripper is closed at the end
            successes += int(bool(info.get("is_success", False)))
            need_reset = True
        if steps % 100 == 0:
            log(f"{label} {steps}/{n_steps} steps")
    wall = time.perf_counter() - t0
    out = {
        "env": "rcan/Grasp-v0(domain='canonical', image_size=64, object_split='train')",
        "steps": steps,
        "resets": resets,
        "episodes_completed": episodes,
        "mean_episode_length": statistics.fmean(lengths) if lengths else float("nan"),
        "grasp_attempts_with_lift": lifts,
        "successes": successes,
        "wall_s": wall,
        **contention(cpu0, wall, load0),
        "steps_per_s": steps / wall,
    }
    if pairs:
        out["pair_domain"] = u.pair_domain
        out["pairs"] = n_pairs
        out["pairs_per_s"] = n_pairs / wall
    return out


def bench_costs(env, n_resets: int, n_episodes: int, seed: int) -> dict[str, Any]:
    """Reset, grasp attempt (close at step 7, lift at step 8), render() and render_pair() costs."""
    u = env.unwrapped
    warm_up(env, np.random.default_rng(seed + 7), 4, seed + 7, pairs=True)
    load0, cpu0, t_section = os.getloadavg()[0], time.process_time(), time.perf_counter()
    resets: list[float] = []
    for i in range(n_resets):
        t0 = time.perf_counter()
        env.reset(seed=seed + 100 + i)
        resets.append(time.perf_counter() - t0)
    rng = np.random.default_rng(seed)
    normal: list[float] = []
    closing: list[float] = []
    terminal: list[float] = []
    renders: list[float] = []
    render_pairs: list[float] = []
    held = 0
    for e in range(n_episodes):
        env.reset(seed=seed + 200 + e)
        for k in range(1, EPISODE_STEPS + 1):
            a = np.zeros(6, dtype=np.float32)
            a[4], a[5] = -1.0, -1.0
            if k < EPISODE_STEPS - 1:  # move: random x-y-yaw, always descending, gripper open
                a[[0, 1, 3]] = rng.uniform(-1.0, 1.0, 3)
                a[2] = -1.0
            elif k == EPISODE_STEPS - 1:  # close in place
                a[4] = 1.0
            else:  # terminate with the gripper closed: lift and check
                a[4], a[5] = 1.0, 1.0
            t0 = time.perf_counter()
            _, _, term, _, info = env.step(a)
            dt = time.perf_counter() - t0
            if k < EPISODE_STEPS - 1:
                normal.append(dt)
                t0 = time.perf_counter()
                u.render()
                renders.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                u.render_pair()
                render_pairs.append(time.perf_counter() - t0)
            elif k == EPISODE_STEPS - 1:
                closing.append(dt)
            else:
                terminal.append(dt)
                assert term, "terminate > 0 must end the episode"
                held += int(bool(info.get("is_success", False)))
    normal_ms = statistics.fmean(normal) * 1e3
    return {
        "reset": ms_stats(resets),
        "normal_step": ms_stats(normal),
        "close_step": ms_stats(closing),
        "terminal_step": ms_stats(terminal),
        "close_extra_ms": statistics.fmean(closing) * 1e3 - normal_ms,
        "grasp_attempt_extra_ms": statistics.fmean(terminal) * 1e3 - normal_ms,
        "grasp_episodes": n_episodes,
        "grasp_successes": held,
        "render": ms_stats(renders),
        "render_pair": ms_stats(render_pairs),
        **contention(cpu0, time.perf_counter() - t_section, load0),
    }


def bench_scripted(n_episodes: int) -> dict[str, Any]:
    import_rcan()
    from rcan.sim.scripted import ScriptedGraspPolicy

    out: dict[str, Any] = {}
    for split in ("train", "test"):
        env, _ = make_env(split)
        successes = 0
        lengths: list[int] = []
        load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
        for seed in range(n_episodes):
            policy = ScriptedGraspPolicy(np.random.default_rng(seed))
            obs, info = env.reset(seed=seed)
            policy.reset(info)
            n = 0
            while True:
                obs, _, term, trunc, info = env.step(policy.act(obs, info))
                n += 1
                if term or trunc:
                    break
            successes += int(bool(info.get("is_success", False)))
            lengths.append(n)
            if (seed + 1) % 25 == 0:
                log(f"scripted {split} {seed + 1}/{n_episodes} episodes")
        wall = time.perf_counter() - t0
        env.close()
        lo, hi = wilson(successes, n_episodes)
        out[split] = {
            "episodes": n_episodes,
            "seeds": f"0..{n_episodes - 1}",
            "successes": successes,
            "success_rate": successes / n_episodes if n_episodes else float("nan"),
            "wilson95": [lo, hi],
            "mean_episode_length": statistics.fmean(lengths) if lengths else float("nan"),
            "wall_s": wall,
            **contention(cpu0, wall, load0),
        }
    return out


# -- report ----------------------------------------------------------------------------------------------
def cw(section: dict[str, Any]) -> str:
    la = section["loadavg_1min"]
    return f"cpu/wall {section['cpu_over_wall']:.2f}, load {la[0]:.2f}->{la[1]:.2f}"


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    peer, ours, pairs, costs, scr, goals = (
        res.get("peer"),
        res["ours"],
        res["ours_pairs"],
        res["costs"],
        res["scripted"],
        res["goals"],
    )
    if peer and "steps_per_s" in peer:
        rows.append(
            (
                "1. peer KukaDiverseObjectEnv, steps/s (incl. resets)",
                f"{peer['steps_per_s']:.2f}",
                f"{peer['steps']} steps, {peer['resets']} resets, 48x48, random actions, "
                f"mean ep len {peer['mean_episode_length']:.2f}, {cw(peer)}",
            )
        )
    else:
        rows.append(("1. peer KukaDiverseObjectEnv, steps/s", "skipped", str((peer or {}).get("error"))))
    rows.append(
        (
            "2. ours 64x64 canonical, steps/s (incl. resets, lifts)",
            f"{ours['steps_per_s']:.1f}",
            f"{ours['steps']} steps, {ours['resets']} resets, {ours['grasp_attempts_with_lift']} lifts, "
            f"{EPISODE_STEPS}-step episodes, {cw(ours)}",
        )
    )
    rows.append(
        (
            "3. ours + render_pair every step, steps/s",
            f"{pairs['steps_per_s']:.1f}",
            f"{pairs['steps']} steps, {pairs['resets']} resets, pair domain {pairs['pair_domain']!r}, "
            f"{cw(pairs)}",
        )
    )
    rows.append(("3. paired samples/s", f"{pairs['pairs_per_s']:.1f}", f"{pairs['pairs']} pairs, 1 per step"))
    r = costs["reset"]
    rows.append(
        (
            "4. reset ms (mean / median)",
            f"{r['mean_ms']:.1f} / {r['median_ms']:.1f}",
            f"{r['n']} resets, {cw(costs)}",
        )
    )
    rows.append(
        (
            "4. grasp attempt (close + lift) extra ms",
            f"{costs['close_extra_ms'] + costs['grasp_attempt_extra_ms']:.1f}",
            f"close step +{costs['close_extra_ms']:.1f}, lift (terminal) step +"
            f"{costs['grasp_attempt_extra_ms']:.1f} over a normal step of "
            f"{costs['normal_step']['mean_ms']:.1f} ms ({costs['grasp_episodes']} episodes)",
        )
    )
    for key, name in (("render", "render() ms"), ("render_pair", "render_pair() ms")):
        s = costs[key]
        rows.append(
            (f"4. {name} (mean / median)", f"{s['mean_ms']:.1f} / {s['median_ms']:.1f}", f"{s['n']} calls")
        )
    for split in ("train", "test"):
        s = scr[split]
        lo, hi = s["wilson95"]
        rows.append(
            (
                f"5. scripted success, {split} objects",
                f"{100 * s['success_rate']:.1f}%",
                f"{s['successes']}/{s['episodes']}, Wilson 95% [{100 * lo:.1f}, {100 * hi:.1f}]%, "
                f"mean ep len {s['mean_episode_length']:.1f}",
            )
        )
    sp = goals.get("speedup")
    rows.append(("6. speed-up ours/peer (2 / 1)", "n/a" if sp is None else f"{sp:.1f}x", ""))
    rows.append(("6. goal: (2) >= 10x peer", goals["speedup_goal"], f"goal {SPEEDUP_GOAL:.0f}x"))
    rows.append(("6. goal: (3) pairs/s >= 25", goals["pairs_goal"], f"{pairs['pairs_per_s']:.1f} pairs/s"))
    lines = ["| metric | value | detail |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400, help="env steps for our throughput runs (2, 3)")
    ap.add_argument("--peer-steps", type=int, default=150, help="env steps for the peer's throughput run (1)")
    ap.add_argument("--resets", type=int, default=30, help="resets timed for (4)")
    ap.add_argument("--grasp-episodes", type=int, default=10, help="close-then-lift episodes timed for (4)")
    ap.add_argument("--scripted-episodes", type=int, default=100, help="scripted episodes per object split")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps before each timed run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-peer", action="store_true", help="do not run the peer (e.g. gym not installed)")
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of well under a minute")
    ap.add_argument("--json", type=Path, default=None, help="also write all results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.peer_steps, args.resets = 24, 8, 5
        args.grasp_episodes, args.scripted_episodes, args.warmup = 2, 3, 2

    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": machine_info()}
    res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res["config"]["episode_steps"] = EPISODE_STEPS
    res["config"]["RCAN_CACHE"] = os.environ.get("RCAN_CACHE")
    log(f"load average at start: {res['machine']['loadavg_start']}")

    # The peer runs first: it uses pybullet's global connection (client id 0), ours use their own clients.
    if args.skip_peer:
        res["peer"] = {"error": "--skip-peer"}
    else:
        log("peer ...")
        try:
            res["peer"] = bench_peer(args.peer_steps, args.warmup, args.seed)
        except ImportError as exc:
            log(f"peer skipped: {exc!r} (pip install -r benchmarks/requirements-peer.txt)")
            res["peer"] = {"error": repr(exc)}

    log("ours ...")
    env, construct = make_env("train")
    res["ours"] = bench_ours(env, args.steps, args.warmup, args.seed, pairs=False)
    res["ours"]["construct_s"] = construct
    log("ours + render_pair ...")
    res["ours_pairs"] = bench_ours(env, args.steps, args.warmup, args.seed, pairs=True)
    log("costs ...")
    res["costs"] = bench_costs(env, args.resets, args.grasp_episodes, args.seed)
    env.close()
    log("scripted policy ...")
    res["scripted"] = bench_scripted(args.scripted_episodes)

    peer_sps = res["peer"].get("steps_per_s")
    speedup = res["ours"]["steps_per_s"] / peer_sps if peer_sps else None
    res["goals"] = {
        "speedup": speedup,
        "speedup_goal": "n/a" if speedup is None else ("PASS" if speedup >= SPEEDUP_GOAL else "FAIL"),
        "pairs_per_s": res["ours_pairs"]["pairs_per_s"],
        "pairs_goal": "PASS" if res["ours_pairs"]["pairs_per_s"] >= PAIRS_GOAL else "FAIL",
    }
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["total_wall_s"] = time.perf_counter() - t_start

    m = res["machine"]
    print("## Environment benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print()
    print(f"- CPU: {m['cpu_model']}, nproc {m['nproc']}")
    print(
        f"- python {m['python']}, pybullet {m['pybullet']}, numpy {m['numpy']}, gymnasium {m['gymnasium']}, "
        f"gym {m['gym']}"
    )
    la0, la1 = m["loadavg_start"], m["loadavg_end"]
    print(
        f"- load average (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
        f"at end {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f}"
    )
    g = m["git"]
    dirty = " (rcan/ has uncommitted edits)" if g["rcan_dirty"] else ""
    print(f"- commit {g['commit']}{dirty}; single process; total wall time {res['total_wall_s']:.0f} s")
    print()
    print(table(res))
    starved = [
        name
        for name, sec in (
            ("1", res["peer"]),
            ("2", res["ours"]),
            ("3", res["ours_pairs"]),
            ("4", res["costs"]),
        )
        if sec.get("cpu_over_wall", 1.0) < 0.9
    ]
    if starved:
        print(
            f"\nWARNING: sections {', '.join(starved)} got < 90% of a core (cpu/wall): other processes were "
            "competing for the CPU, so those numbers are pessimistic; rerun on a quiet machine."
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
