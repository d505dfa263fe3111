"""Collect RCAN's paired training data along grasping trajectories (paper 4.1), in resumable shards.

At every time step the scene is frozen and rendered twice by ``env.render_pair``: with a fresh
randomization of the chosen domain (heavy by default) and as its canonical twin (RGB, segmentation,
depth); then the policy acts. One pair per step, including the first (right after reset).

Reproducibility: shard ``i`` is made by its own environment and policy, seeded from
``SeedSequence([seed, i])``, running episodes until it holds its samples; so its bytes depend only on
``(seed, i, config)``, never on the number of workers or on scheduling. Shards are written under a
temp name and renamed when complete, so a collection killed at any instant resumes with the same
command: temp files are removed, complete shards are validated and kept, the rest are made again.

Policies: any object with ``reset(info)`` and ``act(obs, info) -> action``, built by a factory in
``POLICIES`` from ``(env, rng)``; only the scripted exploration policy exists so far.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from rcan.common.atomic import fsync_dir
from rcan.data.paired import (
    FORMAT,
    MANIFEST_NAME,
    ShardWriter,
    check_shard,
    config_differences,
    num_shards,
    read_manifest,
    remove_temp_files,
    scan_shards,
    shard_name,
    shard_range,
    temp_name,
    write_json_atomic,
)

if TYPE_CHECKING:
    from rcan.sim.grasp_env import GraspEnv

#: Domains the randomized image may come from ("real" is the held-out evaluation look).
PAIR_DOMAINS = ("mild", "medium", "heavy", "real")
OBJECT_SPLITS = ("train", "test")
LOCK_NAME = ".collect.lock"


class Policy(Protocol):
    """What the collector needs from a policy."""

    def reset(self, info: dict[str, Any]) -> None: ...

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray: ...


def _scripted_policy(env: GraspEnv, rng: np.random.Generator) -> Policy:
    from rcan.sim.scripted import ScriptedGraspPolicy

    return ScriptedGraspPolicy(
        rng,
        tray_half=env.cell.config.tray_inner_half,
        max_translation=env.max_translation,
        max_rotation=env.max_rotation,
    )


#: Policy factories by name: ``factory(env, rng) -> Policy``. A learned agent can be added here.
POLICIES: dict[str, Callable[[GraspEnv, np.random.Generator], Policy]] = {"scripted": _scripted_policy}
#: Policies that never look at the observation image: their env skips rendering it (a frame per step).
BLIND_POLICIES = frozenset({"scripted"})


AGENT_PREFIX = "agent:"
"""``policy="agent:/path/agent.safetensors"``: a trained QT-Opt agent drives the episodes (greedy CEM)."""


def make_policy(name: str, env: GraspEnv, rng: np.random.Generator) -> Policy:
    """Build policy ``name`` for ``env``; all its randomness must come from ``rng`` (reproducibility)."""
    if name.startswith(AGENT_PREFIX):
        from rcan.qtopt.agent import load_agent

        return load_agent(name[len(AGENT_PREFIX) :], seed=int(rng.integers(2**31)))
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)} or agent CHECKPOINT")
    return POLICIES[name](env, rng)


def policy_domain(name: str) -> str:
    """The visual domain the policy's observations must come from (an agent sees what it trained on)."""
    if name.startswith(AGENT_PREFIX):
        from rcan.qtopt.agent import env_domain, load_network

        _, metadata = load_network(name[len(AGENT_PREFIX) :])
        return env_domain(metadata.get("input_mode", "canonical"))
    return "canonical"


def resolve_policy(name: str) -> str:
    """``scripted`` as is; ``agent:PATH`` with PATH made the absolute agent file (checked to exist)."""
    if name.startswith(AGENT_PREFIX):
        from rcan.qtopt.agent import resolve_agent_path

        return AGENT_PREFIX + str(resolve_agent_path(name[len(AGENT_PREFIX) :]).resolve())
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)} or agent CHECKPOINT")
    return name


@dataclass(frozen=True)
class CollectConfig:
    """Everything that determines a collection's content (and so its manifest)."""

    samples: int
    seed: int = 0
    shard_size: int = 256
    domain: str = "heavy"
    image_size: int = 64
    policy: str = "scripted"
    texture_dir: str | None = None
    object_split: str = "train"

    def validated(self) -> CollectConfig:
        """A checked copy with ``texture_dir`` made absolute; bad values raise one clear ValueError."""
        for name, low in (("samples", 1), ("shard_size", 1), ("seed", 0), ("image_size", 8)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.image_size > 1024:
            raise ValueError(f"image_size must be <= 1024, got {self.image_size}")
        if self.domain not in PAIR_DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; choose one of {', '.join(PAIR_DOMAINS)}")
        if self.object_split not in OBJECT_SPLITS:
            raise ValueError(
                f"unknown object split {self.object_split!r}; choose one of {', '.join(OBJECT_SPLITS)}"
            )
        policy = resolve_policy(self.policy)
        texture_dir = None
        if self.texture_dir is not None:
            from rcan.sim.textures import texture_files

            root = Path(self.texture_dir).expanduser()
            texture_files(root)  # exists, is a folder, holds images
            texture_dir = str(root.resolve())
        return replace(
            self,
            samples=int(self.samples),
            seed=int(self.seed),
            shard_size=int(self.shard_size),
            image_size=int(self.image_size),
            texture_dir=texture_dir,
            policy=policy,
        )

    @property
    def num_shards(self) -> int:
        return num_shards(self.samples, self.shard_size)

    def manifest(self) -> dict[str, Any]:
        """The manifest for this config (field order fixed by ``rcan.data.paired.CONFIG_FIELDS``)."""
        from rcan import __version__

        return {
            "format": FORMAT,
            "samples": self.samples,
            "shard_size": self.shard_size,
            "seed": self.seed,
            "domain": self.domain,
            "image_size": self.image_size,
            "policy": self.policy,
            "texture_dir": self.texture_dir,
            "object_split": self.object_split,
            "version": __version__,
        }


@dataclass(frozen=True)
class CollectSummary:
    """What a ``collect`` call did."""

    root: Path
    samples: int
    shards: int
    shards_written: int
    shards_skipped: int
    samples_written: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.samples_written / self.seconds if self.seconds > 0 else 0.0


# -- one shard -------------------------------------------------------------------------------------------
class _Abandoned(Exception):
    """The process that asked for this shard is gone; stop quietly."""


def write_shard(
    root: str | Path,
    config: CollectConfig,
    index: int,
    on_sample: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Make shard ``index`` of ``config`` in ``root``: temp file, then atomic rename. Returns its path.

    Its content depends only on ``(config, index)``: a fresh env and policy seeded from
    ``SeedSequence([seed, index])``, episodes seeded from that, until the shard is full.
    """
    from rcan.sim.grasp_env import GraspEnv

    root = Path(root)
    manifest = config.manifest()
    start, stop = shard_range(config.samples, config.shard_size, index)
    final = root / shard_name(index)
    tmp = root / temp_name(final.name)
    episode_ss, policy_ss = np.random.SeedSequence([config.seed, index]).spawn(2)
    episode_rng = np.random.default_rng(episode_ss)
    env = GraspEnv(
        domain=policy_domain(config.policy),
        image_size=config.image_size,
        object_split=config.object_split,
        texture_dir=config.texture_dir,
        pair_domain=config.domain,
        render_observation=config.policy not in BLIND_POLICIES,
    )
    writer: ShardWriter | None = None
    try:
        policy = make_policy(config.policy, env, np.random.default_rng(policy_ss))
        writer = ShardWriter(tmp, manifest, index, num_objects=env.num_objects)
        episode = 0
        while not writer.full:
            episode_seed = int(episode_rng.integers(np.iinfo(np.int64).max))
            obs, info = env.reset(seed=episode_seed)
            policy.reset(info)
            objects = env.episode_objects
            step = 0
            while True:
                if should_stop is not None and should_stop():
                    raise _Abandoned
                pair = env.render_pair(config.domain)
                writer.append(pair, episode=start + episode, step=step, seed=episode_seed, objects=objects)
                if on_sample is not None:
                    on_sample()
                if writer.full:
                    break
                obs, _, terminated, truncated, info = env.step(policy.act(obs, info))
                step += 1
                if terminated or truncated:
                    break
            episode += 1
        writer.close()
        writer = None
        os.replace(tmp, final)
        fsync_dir(root)
        return final
    finally:
        if writer is not None:
            writer.abort()
        tmp.unlink(missing_ok=True)
        env.close()


# -- worker processes ------------------------------------------------------------------------------------
def _worker_main(root: str, config: dict[str, Any], tasks: Any, reports: Any) -> None:
    """Spawned worker: takes shard indices from ``tasks`` until ``None``; reports through ``reports``.

    Exits by itself if the parent dies (e.g. SIGKILL), so an orphan never outlives a killed collection.
    """
    with contextlib.suppress(OSError):  # pybullet prints to fd 1; a worker's stdout is never needed
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    parent = mp.parent_process()

    def parent_gone() -> bool:
        return parent is not None and not parent.is_alive()

    cfg = CollectConfig(**config)
    while True:
        try:
            index = tasks.get(timeout=0.5)
        except queue.Empty:
            if parent_gone():
                return
            continue
        if index is None or parent_gone():
            return
        try:
            write_shard(
                root, cfg, index, on_sample=lambda: reports.put(("sample", 1)), should_stop=parent_gone
            )
        except (_Abandoned, KeyboardInterrupt):  # Ctrl-C reaches the parent too; it reports that
            return
        except BaseException as err:
            reports.put(("error", index, type(err).__name__, str(err), traceback.format_exc()))
            return
        reports.put(("done", index))


def _run_workers(root: Path, config: CollectConfig, pending: list[int], workers: int, bar: tqdm) -> None:
    ctx = mp.get_context("spawn")
    tasks, reports = ctx.Queue(), ctx.Queue()
    for index in pending:
        tasks.put(index)
    for _ in range(workers):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(str(root), asdict(config), tasks, reports),
            name=f"rcan-collect-{k}",
            daemon=True,
        )
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    remaining = set(pending)
    try:
        while remaining:
            try:
                msg = reports.get(timeout=0.5)
            except queue.Empty:
                for p in procs:
                    if p.exitcode not in (None, 0):
                        raise RuntimeError(
                            f"collect worker {p.name} died with exit code {p.exitcode}; "
                            "rerun the same command to resume"
                        ) from None
                if all(p.exitcode is not None for p in procs):
                    _drain(reports, remaining, bar)
                    if remaining:
                        raise RuntimeError(
                            f"collect workers exited with shards {sorted(remaining)} unfinished"
                        ) from None
                continue
            _handle(msg, remaining, bar)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        for q in (tasks, reports):
            q.cancel_join_thread()
            q.close()


def _drain(reports: Any, remaining: set[int], bar: tqdm) -> None:
    while True:
        try:
            msg = reports.get(timeout=0.2)
        except queue.Empty:
            return
        _handle(msg, remaining, bar)


def _handle(msg: tuple[Any, ...], remaining: set[int], bar: tqdm) -> None:
    kind = msg[0]
    if kind == "sample":
        bar.update(msg[1])
    elif kind == "done":
        remaining.discard(msg[1])
    elif kind == "error":
        _, index, type_name, text, tb = msg
        if type_name in ("ValueError", "FileNotFoundError"):  # the user's input, e.g. an unreadable texture
            raise (ValueError if type_name == "ValueError" else FileNotFoundError)(text)
        raise RuntimeError(f"shard {index} failed in a worker ({type_name}: {text})\n{tb}")


# -- the job ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One collection per directory at a time (released automatically if the process dies)."""
    fh = open(root / LOCK_NAME, "a")  # held for the duration of the job
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another `rcan collect` is writing to {root}") from None
        yield
    finally:
        fh.close()


def prepare(root: Path, config: CollectConfig) -> dict[str, Any]:
    """Create or check ``root/manifest.json`` against ``config``; returns the manifest."""
    manifest = config.manifest()
    path = root / MANIFEST_NAME
    if path.exists():
        existing = read_manifest(root)
        diff = config_differences(existing, manifest, f"{MANIFEST_NAME} has", "this run has")
        if diff:
            raise ValueError(
                f"{path}: {root} holds a collection with a different config ({'; '.join(diff)}); "
                "use the same options to resume it, or another --out"
            )
        return existing
    shards = scan_shards(root)
    if shards:
        first = next(iter(shards.values()))
        raise ValueError(
            f"{first}: shard file without {MANIFEST_NAME} in {root}; refusing to mix collections"
        )
    write_json_atomic(path, manifest)
    return manifest


def collect(
    root: str | Path,
    config: CollectConfig,
    workers: int = 1,
    progress: bool = True,
    backend: str = "local",
    address: str | None = None,
) -> CollectSummary:
    """Collect (or finish collecting) ``config`` into directory ``root`` with ``workers`` processes.

    ``workers == 1`` runs in this process; more use the "spawn" start method, one env per worker.
    ``backend="ray"`` makes the shards in up to ``workers`` Ray tasks instead (on the cluster at ``address``,
    or on a local Ray with ``workers`` CPUs): the same bytes, since a shard depends only on its index.
    Safe to kill at any instant and rerun with the same arguments.
    """
    from rcan.qtopt.ray_backend import check_backend

    check_backend(backend, address)
    config = config.validated()
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out is not a directory: {root}")
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _locked(root):
        manifest = prepare(root, config)
        remove_temp_files(root)
        total = config.num_shards
        present = scan_shards(root)
        for index, path in present.items():
            if index >= total:
                raise ValueError(
                    f"{path}: unexpected shard file; {MANIFEST_NAME} lists only {total} shard(s)"
                )
            try:
                check_shard(path, manifest, index, full=True)  # kept for good: every checksum read once
            except ValueError as err:
                raise ValueError(f"{err}; delete it and rerun to make it again") from None
        pending = [i for i in range(total) if i not in present]
        done_samples = sum(_count(config, i) for i in present)
        todo_samples = config.samples - done_samples
        with tqdm(
            total=config.samples,
            initial=done_samples,
            unit="pair",
            desc="collect",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.05,
        ) as bar:
            n_proc = min(int(workers), len(pending))
            try:
                if backend == "ray" and pending:
                    from rcan.data.ray_collect import run_shards

                    run_shards(root, config, pending, n_proc, bar, address)
                elif n_proc == 1:
                    for index in pending:
                        write_shard(root, config, index, on_sample=lambda: bar.update(1))
                elif n_proc > 1:
                    _run_workers(root, config, pending, n_proc, bar)
            finally:
                remove_temp_files(root)  # our workers are gone by now
    return CollectSummary(
        root=root,
        samples=config.samples,
        shards=total,
        shards_written=len(pending),
        shards_skipped=total - len(pending),
        samples_written=todo_samples,
        seconds=time.perf_counter() - t0,
    )


def _count(config: CollectConfig, index: int) -> int:
    start, stop = shard_range(config.samples, config.shard_size, index)
    return stop - start
