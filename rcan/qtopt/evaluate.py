"""The paper's evaluation protocol (section 5.1) in simulation.

Each evaluation uses one fixed set of 5 or 6 unseen test objects (``object_split="test"``, chosen by the
seed); ``objects="train"`` draws the set from the training objects instead, to measure how much of the
agent's success is generalization to new shapes (a diagnostic, not the paper's protocol). Every attempt
is an episode of at most 20 steps; after it, the same objects are dropped back into the
tray at random places (a reset with the same object set: the simplest honest version of "the grasped object
is put back at a random location"). The success rate is reported with a Wilson 95% interval, which stays
sensible at 0% or 100% and for 102 attempts.

Diagnostics (privileged simulator state, read only after the policy has acted, never shown to it): per
attempt, the gripper height and the x-y distance from the commanded grasp point to the nearest object's
centre at the attempt's last closing (an open gripper commanded closed: the grasp that is lifted; an agent
may close and reopen high above the tray first); summed up as ``failures``: never closed, closed away from
every object (farther than ``NEAR_OBJECT`` m), or closed on or beside one and still lost it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rcan.common.atomic import write_json_atomic
from rcan.qtopt.collectors import starts_a_grasp
from rcan.qtopt.grasp_check import REOPEN_DECISIONS

NEAR_OBJECT = 0.03
"""Closing within this x-y distance (m) of an object's centre counts as "closed at an object" (objects are
~6x8 cm, so the fingers then straddle or touch it)."""

ASSET_AGENT = Path(__file__).resolve().parent.parent / "assets" / "agent"
"""The agent shipped with the project (used when ``--agent`` is not given)."""


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default: 95%)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one attempt")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def make_eval_env(
    domain: str,
    seed: int,
    image_size: int = 64,
    texture_dir: str | None = None,
    camera: str = "wide",
    objects: str = "test",
) -> Any:
    """A GraspEnv whose every reset re-drops the same 5 or 6 objects of the ``objects`` split (chosen by
    ``seed``)."""
    from rcan.sim.grasp_env import OBJECT_SPLITS, GraspEnv

    if objects not in OBJECT_SPLITS:
        raise ValueError(f"objects must be one of {', '.join(OBJECT_SPLITS)}, got {objects!r}")

    rng = np.random.default_rng([seed, 5])
    n = int(rng.integers(5, 7))
    env = GraspEnv(
        domain=domain,
        image_size=image_size,
        object_split=objects,
        num_objects=n,
        texture_dir=texture_dir,
        camera=camera,
    )
    chosen = rng.choice(len(env.objects), size=n, replace=False)
    # GraspEnv draws num_objects of env.objects without replacement when it has enough: with exactly the
    # chosen n, every reset drops the same set, in a random order and at random places.
    env.objects = [env.objects[i] for i in chosen]
    return env


def reset_seeds(seed: int, attempts: int) -> list[int]:
    """The reset seed of each of the protocol's ``attempts`` on object set ``seed``: probes that replay the
    protocol take them from here, so that they see the scenes ``rcan evaluate`` sees."""
    rng = np.random.default_rng([seed, 6])
    return [int(rng.integers(2**31)) for _ in range(attempts)]


def protocol_scenes(
    policy: Any,
    seed: int,
    attempts: int,
    domain: str = "canonical",
    *,
    image_size: int | None = None,
    camera: str | None = None,
    texture_dir: str | None = None,
    objects: str = "test",
) -> Iterator[tuple[Any, dict[str, Any], dict[str, Any], int]]:
    """The protocol's scenes, for ``evaluate_policy`` and for probes that drive the env themselves: the env
    of object set ``seed`` (``make_eval_env``; image size and camera the policy's unless given), reset with
    each attempt's seed and the policy reset with it; yields (env, obs, info, reset seed) per attempt and
    closes the env at the end."""
    size = image_size if image_size is not None else policy.network.config.image_size
    env = make_eval_env(domain, seed, size, texture_dir, camera if camera is not None else policy.camera, objects)
    try:
        for reset_seed in reset_seeds(seed, attempts):
            obs, info = env.reset(seed=reset_seed)
            policy.reset(info)
            yield env, obs, info, reset_seed
    finally:
        env.close()


def protocol_first_closings(
    policy: Any, seed: int, attempts: int, steps_left: int = 4
) -> Iterator[tuple[Any, dict[str, Any], dict[str, Any], int, np.ndarray]]:
    """For probes of what follows a closing: each protocol scene (``protocol_scenes``) acted in by the
    policy until its first action that closes and ends the attempt, not taken; yields (env, obs, info,
    reset seed, that action) with the env just before it. Attempts that end first, or reach that action
    with fewer than ``steps_left`` steps to spare, are skipped."""
    for env, obs, info, reset_seed in protocol_scenes(policy, seed, attempts):
        done = False
        for _ in range(env.max_steps - steps_left):
            a = np.asarray(policy.act(obs, info), dtype=np.float32).copy()
            if a[4] > 0 and a[5] > 0:
                break
            obs, _, done, _, info = env.step(a)
            if done:
                break
        else:
            continue
        if not done:
            yield env, obs, info, reset_seed, a


def evaluate_policy(
    policy: Any,
    domain: str,
    attempts: int = 102,
    seed: int = 0,
    image_size: int = 64,
    texture_dir: str | None = None,
    strip_attempts: int = 4,
    camera: str = "wide",
    objects: str = "test",
) -> dict[str, Any]:
    """Run the protocol; ``policy`` has ``reset(info)`` and ``act(obs, info)``. Returns the result dict
    plus ``frames`` (list of per-attempt frame lists) for the first ``strip_attempts`` attempts and
    ``closings`` (each attempt's last closing: image, commanded point and objects' centres in image
    coordinates; for :func:`save_closing_sheet`)."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    scenes = protocol_scenes(
        policy, seed, attempts, domain, image_size=image_size, camera=camera, texture_dir=texture_dir, objects=objects
    )
    per_attempt: list[dict[str, Any]] = []
    frames: list[list[np.ndarray]] = []
    closings: list[dict[str, Any]] = []
    try:
        bar = tqdm(scenes, total=attempts, desc=f"evaluating in {domain}", unit="attempt", leave=False)
        for i, (env, obs, info, _) in enumerate(bar):
            shots = [obs["image"]]
            done, steps, success = False, 0, False
            close: dict[str, float] = {}
            closing: dict[str, Any] = {}
            grasps = 0
            while not done:
                action = np.asarray(policy.act(obs, info), dtype=np.float32)
                if starts_a_grasp(np.asarray(obs["gripper_closed"]).any(), action[4]):  # the last: the grasp lifted
                    grasps += 1
                    close = {
                        "close_height": float(obs["gripper_height"][0]),
                        "close_distance": round(env.closing_distance(action), 4),
                        "close_yaw_offset": round(wall_yaw_offset(env, action), 1),
                    }
                    closing = {
                        "image": obs["image"],
                        "point": env.project(env.commanded_point(action)[None])[0],
                        "objects": env.project(env.object_positions()),
                    }
                obs, _, done, _, info = env.step(action)
                steps += 1
                shots.append(obs["image"])
                success = bool(info.get("is_success", False)) if done else False
            row = {"success": success, "steps": steps, "grasps": grasps, **close}
            if hasattr(policy, "checks"):  # a CheckedPolicy: its success estimates at each check
                row["checks"] = [round(float(p), 4) for p in policy.checks]
                row["check_decisions"] = list(getattr(policy, "decisions", []))
                row["check_steps"] = list(getattr(policy, "check_steps", []))
                row["empty_reopens"] = int(getattr(policy, "empty_reopens", 0))
                row["forced_closings"] = int(getattr(policy, "forced_closings", 0))
            per_attempt.append(row)
            if closing:
                closings.append({**closing, "success": success, "attempt": i})
            if i < strip_attempts:
                frames.append(shots)
        episode_objects = env.episode_objects  # kept by the env after it closes
    finally:
        scenes.close()  # the env too, if the loop stopped early
    k = sum(a["success"] for a in per_attempt)
    lo, hi = wilson_interval(k, attempts)
    return {
        "domain": domain,
        "attempts": attempts,
        "successes": k,
        "success_rate": k / attempts,
        "wilson95": [lo, hi],
        "objects": sorted(episode_objects),
        "object_split": objects,
        "seed": seed,
        "mean_steps": float(np.mean([a["steps"] for a in per_attempt])),
        "failures": failure_breakdown(per_attempt),
        "retries": retry_summary(per_attempt),
        "checks": check_summary(per_attempt),
        "yaw": yaw_summary(per_attempt),
        "per_attempt": per_attempt,
        "frames": frames,
        "closings": closings,
    }


def failure_breakdown(per_attempt: list[dict[str, Any]]) -> dict[str, int]:
    """Failed attempts by kind: never closed; closed farther than ``NEAR_OBJECT`` from every object's
    centre; closed near one and still did not hold it after the lift."""
    out = {"never_closed": 0, "closed_away_from_objects": 0, "closed_at_an_object": 0}
    for a in per_attempt:
        if a["success"]:
            continue
        if "close_distance" not in a:
            out["never_closed"] += 1
        elif a["close_distance"] > NEAR_OBJECT:
            out["closed_away_from_objects"] += 1
        else:
            out["closed_at_an_object"] += 1
    return out


def wall_yaw_offset(env: Any, action: np.ndarray) -> float:
    """Degrees (0-90) between the yaw ``action`` closes at and the yaw whose fingers close parallel to the
    wall or divider nearest to where it closes (``wall_parallel_yaw``, the oracle's). The two-finger
    gripper is the same turned by 180 degrees. Why: at exact aim the wall-parallel yaw lifts 89% of the
    objects, a yaw 60 degrees off it 60-62% (benchmarks/RESULTS.md, 2026-12-03), so an agent's yaw choice
    is a large part of its success; privileged, read after acting."""
    best = env.wall_parallel_yaw(env.commanded_point(action)[:2])
    diff = abs(math.degrees(env.commanded_yaw(action) - best)) % 180.0
    return float(min(diff, 180.0 - diff))


def yaw_summary(per_attempt: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """The closing yaws against the wall-parallel yaw: mean offset (degrees) of successes and of failures
    that closed, and the success rate of closings within 30 degrees of it and beyond (None: no such
    closing)."""
    closed = [a for a in per_attempt if "close_yaw_offset" in a]

    def mean(rows: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([a["close_yaw_offset"] for a in rows])), 1) if rows else None

    def rate(rows: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([bool(a["success"]) for a in rows])), 3) if rows else None

    near = [a for a in closed if a["close_yaw_offset"] <= 30.0]
    far = [a for a in closed if a["close_yaw_offset"] > 30.0]
    return {
        "mean_offset_successes": mean([a for a in closed if a["success"]]),
        "mean_offset_failures": mean([a for a in closed if not a["success"]]),
        "closings_within_30": len(near),
        "success_within_30": rate(near),
        "success_beyond_30": rate(far),
    }


def retry_summary(per_attempt: list[dict[str, Any]]) -> dict[str, float | int]:
    """How often the agent regrasped: the mean number of grasps (closings of an open gripper) per attempt,
    the attempts with more than one, and how many of those succeeded."""
    grasps = [int(a.get("grasps", 0)) for a in per_attempt]
    again = [a for a, g in zip(per_attempt, grasps, strict=True) if g > 1]
    return {
        "mean_grasps": round(float(np.mean(grasps)) if grasps else 0.0, 3),
        "attempts_with_retries": len(again),
        "successes_after_a_retry": sum(bool(a["success"]) for a in again),
    }


def check_summary(per_attempt: list[dict[str, Any]]) -> dict[str, int] | None:
    """Where a checked agent (``CheckedPolicy``) wins and loses, from each attempt's check decisions (None
    for an agent without a check): its first decision (accepted, or reopened for a retry) and how those
    attempts ended, and the failures by kind: a grasp the check accepted and lost; a retry after the
    last reopening that failed (too late to be checked, or no closing at all); a grasp below the threshold
    ended for want of steps or retries; no grasp checked at all. Also the late reopenings
    (``late_threshold``: an unchecked last retry) and the reopenings after a second look
    (``CheckConfig.confirm``), and how many of those attempts succeeded."""
    rows = [a for a in per_attempt if "check_decisions" in a]
    if not rows:
        return None
    out = dict.fromkeys(
        [
            "first_accepted",
            "held_after_first_accept",
            "first_reopened",
            "succeeded_after_first_reopen",
            "failed_accepted",
            "failed_after_reopen",
            "failed_ended_below_threshold",
            "failed_unchecked",
            "late_reopened",
            "succeeded_after_late_reopen",
            "confirm_reopened",
            "succeeded_after_confirm_reopen",
        ],
        0,
    )
    for a in rows:
        decided = [x for x in a["check_decisions"] if x != "early-pass"]  # a pass decides nothing yet
        first = decided[0] if decided else None
        if "late-reopen" in decided:
            out["late_reopened"] += 1
            out["succeeded_after_late_reopen"] += bool(a["success"])
        if "confirm-reopen" in decided:
            out["confirm_reopened"] += 1
            out["succeeded_after_confirm_reopen"] += bool(a["success"])
        if first == "accept":
            out["first_accepted"] += 1
            out["held_after_first_accept"] += bool(a["success"])
        elif first in REOPEN_DECISIONS:
            out["first_reopened"] += 1
            out["succeeded_after_first_reopen"] += bool(a["success"])
        if a["success"]:
            continue
        last = decided[-1] if decided else None
        if last is None:
            out["failed_unchecked"] += 1
        elif last in ("accept", "confirm"):
            out["failed_accepted"] += 1
        elif last == "end":
            out["failed_ended_below_threshold"] += 1
        else:
            out["failed_after_reopen"] += 1
    return out


def save_frame_strip(
    path: str | os.PathLike[str], frames: list[list[np.ndarray]], results: list[bool]
) -> Path:
    """One row per attempt (up to 8 frames, first and last included), a green or red bar for the outcome."""
    from PIL import Image

    path = Path(path)
    cols = 8
    rows = []
    for shots, ok in zip(frames, results, strict=False):
        idx = np.unique(np.linspace(0, len(shots) - 1, min(cols, len(shots))).round().astype(int))
        row = [shots[i] for i in idx]
        h, w = row[0].shape[:2]
        row += [np.zeros((h, w, 3), np.uint8)] * (cols - len(row))
        bar = np.zeros((h, 4, 3), np.uint8)
        bar[:] = (40, 200, 60) if ok else (220, 40, 40)
        rows.append(np.concatenate([bar, *row], axis=1))
    grid = np.concatenate(rows, axis=0) if rows else np.zeros((8, 8, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return path


def save_closing_sheet(path: str | os.PathLike[str], closings: list[dict[str, Any]], cols: int = 12) -> Path:
    """Every attempt's last closing, failures first: the image the agent closed on (4x), a cross where it
    commanded the fingertips (red: the attempt failed, green: it held an object) and a blue dot at each
    object's centre (privileged positions, drawn for diagnosis only). Shows whether failures are near
    misses, wrong objects or closings on nothing."""
    from PIL import Image, ImageDraw

    path = Path(path)
    scale = 4
    order = sorted(closings, key=lambda c: (c["success"], c["attempt"]))
    tiles = []
    for c in order:
        img = Image.fromarray(np.asarray(c["image"], np.uint8))
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(img)
        size = np.array([img.width, img.height], np.float64)
        for xy in c["objects"]:
            x, y = (np.asarray(xy) + 1) / 2 * size
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(40, 90, 255))
        x, y = (np.asarray(c["point"]) + 1) / 2 * size
        colour = (40, 200, 60) if c["success"] else (230, 30, 30)
        draw.line((x - 6, y, x + 6, y), fill=colour, width=2)
        draw.line((x, y - 6, x, y + 6), fill=colour, width=2)
        draw.text((3, 2), str(c["attempt"]), fill=(255, 255, 255))
        tiles.append(np.asarray(img))
    if not tiles:
        tiles = [np.zeros((8, 8, 3), np.uint8)]
    h, w = tiles[0].shape[:2]
    tiles += [np.zeros((h, w, 3), np.uint8)] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def run_evaluation(
    agent: str | None,
    domain: str,
    attempts: int = 102,
    seed: int = 0,
    out: str | None = None,
    texture_dir: str | None = None,
    generator: str | None = None,
    threads: int = 1,
    cem: Any = None,
    objects: str = "test",
    view_shifts: int | None = None,
    ensemble: list[str] | None = None,
    rerank: int | None = None,
    search_critics: int | None = None,
    check: bool = True,
    check_threshold: float | None = None,
    check_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load an agent (default: the shipped one), run the protocol, write ``result.json``, ``frames.png``
    and ``closings.png``.

    ``cem``: a ``CEMConfig`` to act with instead of the agent's own (None: its own; recorded in the result).
    ``objects``: ``test`` (the protocol: unseen objects) or ``train`` (the objects the agent trained on).
    ``view_shifts``: average Q over this many shifted copies of each image (test-time augmentation; 1: off;
    None: the agent file's own).
    ``ensemble``: more agents whose Q is averaged with the agent's (same input mode and camera).
    ``rerank``: with ``view_shifts`` > 1, search on the unshifted view and re-score only the M best
    candidates on all views (0: search on the mean over views; None: the agent file's own).
    ``search_critics``: with several critics and re-ranking, search with the first N and re-score on all
    (0: all; None: the agent file's own).
    ``check``: act with the agent's grasp check if it has one (``rcan.qtopt.grasp_check``);
    ``check_threshold`` overrides the check's threshold; ``check_settings`` any other ``CheckConfig`` fields
    (how it acts: ``min_steps_left``, ``early_threshold``, ...; recorded in the result).

    ``threads``: torch threads; the per-step work is small, and on a busy 2-core machine 2 threads made the
    protocol 4x slower than 1 (measured), so 1 is the default (0 keeps torch's choice)."""
    import torch

    from rcan.qtopt.agent import load_agent, resolve_agent_path
    from rcan.qtopt.grasp_check import CheckedPolicy, with_check

    if threads > 0:
        torch.set_num_threads(threads)
    from rcan.sim.domains import DOMAINS

    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if agent is None:
        if not (ASSET_AGENT / "agent.safetensors").is_file():
            raise FileNotFoundError(
                f"no shipped agent at {ASSET_AGENT}/agent.safetensors; pass --agent RUN (from 'rcan train-agent')"
            )
        agent = str(ASSET_AGENT)
    path = resolve_agent_path(agent)
    members = [resolve_agent_path(m) for m in ensemble or []]
    policy = load_agent(
        path,
        generator=generator,
        cem=cem,
        seed=seed,
        view_shifts=view_shifts,
        ensemble=members,
        rerank=rerank,
        search_critics=search_critics,
    )
    if check:
        settings = dict(check_settings or {})
        if check_threshold is not None and "threshold" in settings:
            raise ValueError("give the threshold once: --check-threshold or --check-set threshold=, not both")
        if check_threshold is not None:
            settings["threshold"] = check_threshold
        policy = with_check(policy, path, **settings)
        if settings and not isinstance(policy, CheckedPolicy):
            raise ValueError(f"--check-threshold and --check-set need a grasp check beside {path} (rcan train-check)")
    elif check_threshold is not None or check_settings:
        raise ValueError("--check-threshold and --check-set need the grasp check (drop --no-check)")
    split = "" if objects == "test" else f"-{objects}"
    out_dir = Path(out) if out else Path("eval") / f"{path.parent.name}-{domain}{split}-seed{seed}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)  # before the attempts: a bad --out fails in a second, not after
    result = evaluate_policy(
        policy,
        domain,
        attempts,
        seed,
        image_size=policy.network.config.image_size,
        texture_dir=texture_dir,
        camera=policy.camera,
        objects=objects,
    )
    frames = result.pop("frames")
    closings = result.pop("closings")
    result.update(
        {"agent": str(path), "input_mode": policy.input_mode, "camera": policy.camera, "texture_dir": texture_dir}
    )
    c = policy.cem
    result["cem"] = {"samples": c.samples, "elites": c.elites, "iterations": c.iterations}
    result["view_shifts"] = policy.view_shifts
    result["rerank"] = policy.rerank
    result["search_critics"] = policy.search_critics
    result["ensemble"] = [str(m) for m in members]
    result["critics"] = len(policy.networks)  # the agent file's own and its members, plus ``ensemble``
    result["grasp_check"] = dataclasses.asdict(policy.config) if isinstance(policy, CheckedPolicy) else None
    strip = save_frame_strip(out_dir / "frames.png", frames, [a["success"] for a in result["per_attempt"]])
    result["frames_png"] = str(strip)
    result["closings_png"] = str(save_closing_sheet(out_dir / "closings.png", closings))
    write_json_atomic(out_dir / "result.json", result)
    result["result_json"] = str(out_dir / "result.json")
    return result
