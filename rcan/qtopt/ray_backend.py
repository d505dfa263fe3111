"""The Ray backend (``--backend ray``): collectors, replay and Bellman targets as Ray actors.

Why a second backend: one machine's cores bound both the env steps the collectors make and the target
computations the trainer needs. With Ray, each collector actor owns a simulator (``EpisodeRunner``, as in
the local processes) on any node of a cluster; the replay buffers live in one ``ReplayActor``; one or more
``BellmanActor`` s sample batches from it and compute V(s') with the target networks while the trainer, in
the driver, takes gradient steps on the batches they prepared (QT-Opt's replay / Bellman updater / trainer
split). Weights go to the actors through the object store: ``ray.put`` once, the reference to every actor.

``ray`` is an optional install (``pip install 'rcan[ray]'``) and is imported only inside this module's
functions, so ``import rcan`` and the local backend never need it. ``start_ray`` joins a cluster given its
address, or starts a local one with ``num_cpus`` set explicitly.

Faults: a collector actor that dies (node lost, OOM kill, ``ray.kill``) is replaced by a new one with a fresh
seed and the current weights; the episode it was running is lost, nothing else (the replay is another actor).
The replay actor itself is a single copy: losing it loses the buffer since the last checkpoint (``--resume``
restores it, on either backend).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from rcan.qtopt.replay import (
    EpisodeSteps,
    Mix,
    ReplayBuffer,
    buffers_from_arrays,
    buffers_to_arrays,
    mixed_sample,
)

if TYPE_CHECKING:
    from rcan.qtopt.args import TrainArgs
    from rcan.qtopt.collectors import CollectorConfig, Episode

BACKENDS = ("local", "ray")
RAY_INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'rcan[ray]'"
BELLMAN_ACTORS = 1
"""Bellman actors of a training run (one CPU each). One keeps a 2-core trainer fed at the tiny/default sizes;
raise it (``RayReplay(..., bellman_actors=N)``) when the trainer waits for targets (docs/scaling.md)."""
TARGET_SYNC_EVERY = 10
"""Gradient steps between target-network pushes to the Bellman actors. The Polyak target moves by a fraction
tau = 0.005 per step, so 10 steps of lag change it by ~5% of the online-target gap."""
PREFETCH_PER_ACTOR = 2
"""Batches each Bellman actor prepares ahead of the trainer (one being computed, one waiting)."""
MAX_QUICK_DEATHS = 3
"""A collector slot whose replacements die this many times in a row without finishing an episode is a bug
(e.g. its env cannot be built on that node), not bad luck: the run stops with the error."""


# -- the session -----------------------------------------------------------------------------------------
def check_backend(backend: str, address: str | None = None) -> None:
    """One clear ValueError for a bad ``--backend``/``--address`` or a missing Ray (before any work)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise ValueError("--address is only for --backend ray")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError(RAY_INSTALL_HINT)


def import_ray() -> Any:
    """The ``ray`` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_INSTALL_HINT) from None
    return ray


def start_ray(address: str | None = None, num_cpus: int = 1) -> bool:
    """Connect this process to Ray: to the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://...``), or
    to a new local instance with exactly ``num_cpus`` logical CPUs (never "all the machine's", so a shared
    machine is not oversubscribed). Returns whether a new connection was made (then the caller shuts it
    down); an already connected process (e.g. tests) is left as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            num_cpus=max(1, int(num_cpus)),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int = 1) -> Iterator[Any]:
    """``start_ray`` for a ``with`` block: yields the ``ray`` module, shuts down only what it started."""
    ray = import_ray()
    started = start_ray(address, num_cpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_cpus(ray: Any, needed: float, what: str) -> None:
    """Fail clearly instead of waiting forever for actors the cluster can never place."""
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if have < needed:
        raise ValueError(
            f"{what} need {needed:g} CPUs but the Ray cluster has {have:g}; "
            "use fewer collectors or a larger cluster"
        )


def quiet_stdout() -> None:
    """pybullet prints to fd 1; in a Ray worker that would be forwarded to the driver's terminal."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def to_arrays(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict (tensors or arrays) as numpy arrays, the form that crosses the object store."""
    out = {}
    for k, v in weights.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    return out


def _load_state(net: Any, weights: Mapping[str, np.ndarray]) -> None:
    import torch

    # Arrays from the object store are read-only views; copy before torch sees them.
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


# -- collectors ------------------------------------------------------------------------------------------
class CollectorActor:
    """One simulator and policy (``EpisodeRunner``) in a Ray worker; episodes one call at a time, so weights
    sent meanwhile take effect between episodes (as in the local collector processes)."""

    def __init__(self, config: CollectorConfig, seed: int, index: int) -> None:
        import torch

        from rcan.qtopt.collectors import EpisodeRunner

        quiet_stdout()
        torch.set_num_threads(1)
        self.runner = EpisodeRunner(config, seed, index)

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        self.runner.set_weights({k: np.array(v) for k, v in weights.items()}, version)

    def run_episode(self, kind: str | None = None) -> Episode:
        return self.runner.run_episode(kind)


def replacement_seed(seed: int, index: int, generation: int) -> int:
    """Seed of the ``generation``-th collector in slot ``index``: the first one gets ``seed`` itself (so a
    Ray collector i runs the same episodes as local collector i), replacements fresh streams."""
    if generation == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), index, generation]).generate_state(1)[0])


class RayCollectors:
    """``n`` collector actors behind the trainer's ``Collector`` protocol (set_weights / poll / close).

    Each actor always has one ``run_episode`` call outstanding; ``poll`` collects the finished ones without
    blocking and starts the next. A dead actor is replaced (see the module docstring). Needs a connected Ray
    (``start_ray``)."""

    def __init__(self, n: int, config: CollectorConfig, seed: int, num_cpus: float = 1.0) -> None:
        if n < 1:
            raise ValueError(f"need at least one collector, got {n}")
        self._ray = ray = import_ray()
        if not ray.is_initialized():
            raise RuntimeError("RayCollectors needs a connected Ray (call start_ray first)")
        check_cpus(ray, n * num_cpus, f"{n} collector(s)")
        self._cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(CollectorActor)
        self._config, self._seed = config, int(seed)
        self._actors: list[Any] = [None] * n
        self._generation = [0] * n
        self._quick_deaths = [0] * n
        self._pending: dict[Any, int] = {}
        self._weights: tuple[Any, int] | None = None
        self.replacements = 0
        """How many dead collectors were replaced (for tests and logs)."""
        for i in range(n):
            self._start(i)
        self._closed = False

    @property
    def actors(self) -> list[Any]:
        """The current actor handles (a test kills one with ``ray.kill``)."""
        return list(self._actors)

    def _start(self, i: int) -> None:
        seed = replacement_seed(self._seed, i, self._generation[i])
        actor = self._cls.remote(self._config, seed, i)
        self._actors[i] = actor
        if self._weights is not None:
            actor.set_weights.remote(*self._weights)
        self._pending[actor.run_episode.remote()] = i

    def set_weights(self, weights: Mapping[str, Any], version: int = 0) -> None:
        ref = self._ray.put(to_arrays(weights))  # once; every actor gets the reference
        self._weights = (ref, int(version))
        for actor in self._actors:
            actor.set_weights.remote(ref, int(version))

    def poll(self) -> list[Episode]:
        ray = self._ray
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        out: list[Episode] = []
        for ref in ready:
            i = self._pending.pop(ref)
            try:
                ep = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the worker or its node died: replace it
                self._replace(i, err)
                continue
            except ray.exceptions.RayTaskError as err:  # an exception in our code: a bug, as locally
                raise RuntimeError(f"a collector failed: {err.cause!r}") from None
            self._quick_deaths[i] = 0
            out.append(ep)
            self._pending[self._actors[i].run_episode.remote()] = i
        return out

    def _replace(self, i: int, err: BaseException) -> None:
        self._quick_deaths[i] += 1
        if self._quick_deaths[i] >= MAX_QUICK_DEATHS:
            raise RuntimeError(
                f"collector {i} died {self._quick_deaths[i]} times in a row without finishing an episode; "
                f"last error: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            )
        with contextlib.suppress(Exception):
            self._ray.kill(self._actors[i], no_restart=True)
        self._generation[i] += 1
        self.replacements += 1
        logging.getLogger(__name__).warning("collector %d died; starting a replacement", i)
        self._start(i)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for ref in list(self._pending):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._pending.clear()
        for actor in self._actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)

    def __enter__(self) -> RayCollectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- replay and Bellman targets --------------------------------------------------------------------------
class ReplayActor:
    """The named replay buffers (``scripted``, ``policy``) in a Ray worker; samples as the trainer does."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.buffers = buffers_from_arrays(arrays)

    def add_episode(self, kind: str, ep: EpisodeSteps) -> None:
        self.buffers[kind].add_episode(ep)

    def sample(
        self, batch: int, mix: Mix, seed: int, outcomes: float = 0.0, mirror: float = 0.0
    ) -> dict[str, np.ndarray]:
        return mixed_sample(self.buffers, batch, mix, np.random.default_rng(seed), outcomes, mirror)

    def sizes(self) -> dict[str, int]:
        return {k: len(b) for k, b in self.buffers.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return buffers_to_arrays(self.buffers)

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.buffers = buffers_from_arrays(arrays)


class BellmanActor:
    """Target networks in a Ray worker: V(s') for sampled batches (``next_state_values``, the same function
    the local trainer calls), so the trainer only takes gradient steps."""

    def __init__(self, network: str, cem: Mapping[str, Any], aug_pad: int) -> None:
        import copy

        import torch

        from rcan.qtopt.cem import CEMConfig
        from rcan.qtopt.network import QNetConfig, QNetwork

        torch.set_num_threads(1)
        self.target1 = QNetwork(QNetConfig.from_json(network)).requires_grad_(False)
        self.target2 = copy.deepcopy(self.target1)
        self.cem, self.aug_pad = CEMConfig(**cem), int(aug_pad)
        self.version = -1

    def set_targets(
        self, weights: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], version: int
    ) -> None:
        _load_state(self.target1, weights[0])
        _load_state(self.target2, weights[1])
        self.version = int(version)

    def targets(self, batch: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """The batch without its next-state fields, plus ``next_values`` (0 where there is no bootstrap)."""
        import torch

        from rcan.qtopt.losses import next_state_values

        tb = {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}
        gen = torch.Generator().manual_seed(int(seed))
        values = next_state_values(tb, self.target1, self.target2, self.cem, self.aug_pad, gen)
        out = {k: np.asarray(a) for k, a in batch.items() if not k.startswith("next_")}
        out["next_values"] = values.numpy()
        out["target_version"] = np.array(self.version, np.int64)
        return out


class RayReplay:
    """The trainer's ``ReplaySource`` on Ray: a ``ReplayActor`` and ``BellmanActor`` s.

    ``sample`` returns batches the Bellman actors prepared ahead (replay -> Bellman actor through the object
    store, never through the driver), each with ``next_values`` computed by target networks at most
    ``TARGET_SYNC_EVERY`` gradient steps (plus the prefetch depth) old: QT-Opt's asynchronous Bellman
    updaters. Built first by the trainer, it starts (or joins) Ray and shuts down what it started."""

    def __init__(
        self, buffers: Mapping[str, ReplayBuffer], args: TrainArgs, bellman_actors: int = BELLMAN_ACTORS
    ) -> None:
        import dataclasses

        from rcan.qtopt.args import network_config, target_cem

        self._ray = ray = import_ray()
        self._started = start_ray(args.address, num_cpus=args.collectors + bellman_actors)
        try:
            check_cpus(
                ray, args.collectors + bellman_actors, f"{args.collectors} collector(s) + the Bellman actors"
            )
            # The replay is memory, not compute: it takes no CPU slot (and so never waits for one).
            self._replay = ray.remote(num_cpus=0)(ReplayActor).remote(buffers_to_arrays(buffers))
            bellman = ray.remote(num_cpus=1)(BellmanActor)
            cem = dataclasses.asdict(target_cem(args))
            net = network_config(args).to_json()
            self._bellman = [bellman.remote(net, cem, args.aug_pad) for _ in range(max(1, bellman_actors))]
        except BaseException:
            self.close()
            raise
        self._inflight: collections.deque[Any] = collections.deque()
        self._next_actor = 0
        self._synced = -(10**9)
        self._has_targets = False
        self._adds: list[Any] = []
        self._sizes: dict[str, int] | None = None
        self._closed = False

    def add_episode(self, kind: str, ep: EpisodeSteps) -> None:
        # Fire and forget (calls from one caller run in order, so later samples see it); errors surface at
        # the next ``sizes``.
        self._adds.append(self._replay.add_episode.remote(kind, ep))
        self._sizes = None

    def _check_adds(self) -> None:
        if self._adds:
            self._ray.get(self._adds)
            self._adds.clear()

    def sizes(self) -> dict[str, int]:
        if self._sizes is None:
            self._check_adds()
            self._sizes = self._ray.get(self._replay.sizes.remote())
        return dict(self._sizes)

    def sync_targets(self, target1: Any, target2: Any, version: int) -> None:
        if self._has_targets and version - self._synced < TARGET_SYNC_EVERY:
            return
        ref = self._ray.put((to_arrays(target1.state_dict()), to_arrays(target2.state_dict())))
        for actor in self._bellman:
            actor.set_targets.remote(ref, int(version))
        self._synced, self._has_targets = int(version), True

    def sample(
        self, batch: int, mix: Mix, rng: np.random.Generator, outcomes: float = 0.0, mirror: float = 0.0
    ) -> dict[str, np.ndarray]:
        if not self._has_targets:
            raise RuntimeError(
                "RayReplay.sample before sync_targets: the Bellman actors have no target networks"
            )
        depth = PREFETCH_PER_ACTOR * len(self._bellman)
        while len(self._inflight) < depth:
            seeds = rng.integers(2**62, size=2)
            actor = self._bellman[self._next_actor % len(self._bellman)]
            self._next_actor += 1
            drawn = self._replay.sample.remote(batch, mix, int(seeds[0]), outcomes, mirror)
            self._inflight.append(actor.targets.remote(drawn, int(seeds[1])))
        if len(self._adds) > 256:
            self._check_adds()
        out = self._ray.get(self._inflight.popleft())
        return {k: np.array(v) for k, v in out.items() if k != "target_version"}

    def sample_plain(self, batch: int, mix: Mix, rng: np.random.Generator) -> dict[str, np.ndarray]:
        self._check_adds()
        drawn = self._replay.sample.remote(batch, mix, int(rng.integers(2**62)))
        return {k: np.array(v) for k, v in self._ray.get(drawn).items()}

    def buffers(self) -> dict[str, ReplayBuffer]:
        """A copy of the buffers, fetched from the replay actor (checkpoints)."""
        self._check_adds()
        return buffers_from_arrays(self._ray.get(self._replay.to_arrays.remote()))

    def load(self, buffers: Mapping[str, ReplayBuffer]) -> None:
        self._ray.get(self._replay.load_arrays.remote(buffers_to_arrays(buffers)))
        self._inflight.clear()  # batches drawn from the old contents
        self._sizes = None

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        ray = self._ray
        for actor in [getattr(self, "_replay", None), *getattr(self, "_bellman", [])]:
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
        if self._started:
            ray.shutdown()


def make_ray_collectors(args: TrainArgs, config: CollectorConfig, seed: int) -> RayCollectors:
    """The trainer's collectors on Ray (Ray is already connected by ``RayReplay``)."""
    return RayCollectors(args.collectors, config, seed)
