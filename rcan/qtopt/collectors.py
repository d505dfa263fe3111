"""Data collection: the ``Collector`` interface and local multiprocessing collectors.

Why an interface: the trainer only pushes weights and polls finished episodes, so it does not care whether
collectors are local processes (here) or remote workers (a later Ray backend implements the same three
methods). Each local collector process owns its env (and, in ``rcan`` mode, the frozen generator, so the
translation cost is paid in parallel with training), runs whole episodes and sends them back.

Episode kinds: ``scripted`` (QT-Opt's scripted exploration; every episode until the first weights arrive),
``policy`` (CEM-greedy with Gaussian noise on the displacement dimensions only: the NOTES' first probe was
hurt by exploration that flipped close/terminate at random) and ``eval`` (greedy, no noise, on the unseen
test objects; reported as the learning curve and never added to the replay buffer). Joint finetuning adds
``real``: noisy on-policy episodes in the domain that stands in for the real world (paper 4.3).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rcan.qtopt.replay import padded_object_pixels

EPISODE_KINDS = ("scripted", "policy", "eval", "real")


def starts_a_grasp(closed: Any, gripper_action: Any) -> Any:
    """Whether an action closes an open gripper (the env closes on gripper > 0): ``closed`` the flag
    before the action (0/1), elementwise over arrays. The last such closing is the grasp that is lifted."""
    return (np.asarray(gripper_action) > 0) & (np.asarray(closed) < 0.5)


def count_grasps(closed: np.ndarray, gripper_actions: np.ndarray) -> int:
    """Closings of an open gripper: the per-step closed flags (T,) before each action and the actions'
    gripper dimension (T,)."""
    return int(np.sum(starts_a_grasp(closed, gripper_actions)))


@dataclass
class Episode:
    """One finished episode, as the trainer stores it."""

    images: np.ndarray
    """(T, C, H, W) uint8: the network's image of the state before each action."""
    states: np.ndarray
    """(T, 2) float32: gripper closed, gripper height (m) before each action."""
    actions: np.ndarray
    """(T, 6) float32: the actions taken (after exploration noise)."""
    rewards: np.ndarray
    """(T,) float32."""
    success: bool
    kind: str
    """``scripted``, ``policy`` or ``eval`` (see the module docstring)."""
    weights_version: int = -1
    """Version of the weights that acted (-1: none yet)."""
    collector: int = 0
    close_height: float = math.nan
    """Gripper height (m) at the episode's last closing (an open gripper commanded closed: the grasp that
    is lifted; NaN if never): a diagnostic. The first closing misleads: an agent may close and reopen high
    above the tray before it goes down."""
    close_distance: float = math.nan
    """x-y distance (m) from the gripper to the nearest object's centre at that moment (privileged; only
    for diagnosing whether the policy aims; the NOTES' second probe closed at random distances)."""
    seconds: float = 0.0
    tool_pixels: np.ndarray | None = None
    """(T, 2) float32: where the fingertips appear in each state image, x and y in [-1, 1] (privileged: the
    label of the auxiliary gripper-keypoint loss, never an input; None from envs that do not report it)."""
    tool_yaws: np.ndarray | None = None
    """(T,) float32: the gripper's yaw (rad) before each action (privileged: the label of the auxiliary
    gripper-yaw loss, never an input; None from envs that do not report it)."""
    finger_pixels: np.ndarray | None = None
    """(T, 4) float32: where each action's move put the two fingertips in that step's image, before any
    closing (privileged: the label of the finger read-out's auxiliary loss; NaN where the env did not
    report it)."""
    object_masks: np.ndarray | None = None
    """(T, H, W // 8) uint8: each state image's object pixels, bit-packed along rows (``np.packbits``;
    privileged: the label of the auxiliary object-map loss; None unless the collector labels objects)."""
    object_pixels: np.ndarray | None = None
    """(T, MAX_OBJECTS, 2) float32: where each object's grasp point appears in each state image, NaN rows
    for absent objects or envs that do not report them (privileged: the label of the object-offset loss)."""
    wall_yaw_signs: np.ndarray | None = None
    """(T,) float32: +1 or -1, which yaw keeps the fingers off the wall or divider nearest to where each
    action's move went (privileged: the label of the wall-yaw read-out's loss; NaN where the env did not
    report it)."""
    branch_steps: np.ndarray | None = None
    """(M,) int: for each counterfactual grasp (``CollectorConfig.grasp_branches``), the step whose state
    it started from (None: no branches)."""
    branch_actions: np.ndarray | None = None
    """(M, 6) float32: the counterfactual grasps' actions (each closes and terminates)."""
    branch_rewards: np.ndarray | None = None
    """(M,) float32: their rewards (-0.05, or 0.95 where the lifted object was held)."""
    branch_fingers: np.ndarray | None = None
    """(M, 4) float32: where each of their moves put the fingertips in the state's image (a label)."""

    @property
    def branches(self) -> int:
        """How many counterfactual grasps came with this episode."""
        return 0 if self.branch_steps is None else len(self.branch_steps)

    def branch_transitions(self) -> list[tuple[int, np.ndarray, float, np.ndarray]]:
        """(step, action, reward, finger_pixels) of each counterfactual grasp."""
        if self.branch_steps is None or self.branch_actions is None:
            return []
        rewards, fingers = self.branch_rewards, self.branch_fingers
        assert rewards is not None and fingers is not None
        return [
            (int(t), self.branch_actions[i], float(rewards[i]), fingers[i])
            for i, t in enumerate(self.branch_steps)
        ]

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def grasps(self) -> int:
        """How many times an open gripper was commanded closed (more than one: the agent reopened and
        tried again, QT-Opt's regrasping)."""
        return count_grasps(self.states[:, 0], self.actions[:, 4])


@dataclass(frozen=True)
class CollectorConfig:
    """What a collector needs to build its env and policy (picklable: it crosses process boundaries)."""

    input_mode: str = "canonical"
    image_size: int = 64
    camera: str = "wide"
    """The env's camera (a name in ``rcan.sim.renderer.CAMERAS``)."""
    num_objects: int = 5
    texture_dir: str | None = None
    generator: str | None = None
    """Generator checkpoint for ``rcan`` mode."""
    network: str = ""
    """QNetConfig as JSON."""
    cem: dict[str, Any] = field(default_factory=dict)
    """CEMConfig fields for acting."""
    scripted_prob: float = 0.3
    """Fraction of episodes run by the scripted policy once weights have arrived."""
    scripted_aim_prob: float = 0.0
    """Share of scripted episodes aimed at a random object (privileged; ``rcan.sim.scripted``)."""
    scripted_wall_yaw_prob: float = 0.0
    """Share of aimed scripted grasps with the oracle's wall-parallel yaw instead of a random one."""
    scripted_retry_prob: float = 0.0
    """Chance that a scripted grasp which holds nothing after its lift reopens and tries again."""
    scripted_lift_steps: int = 1
    """Steps the scripted policy's closed gripper rises before it checks or terminates."""
    eval_prob: float = 0.1
    """Fraction of episodes that are greedy evaluations on the test objects (not for training)."""
    noise_std: float = 0.3
    """Std of the Gaussian noise on dx, dy, dz, dyaw in policy episodes."""
    grasp_branches: int = 0
    """Counterfactual grasps tried at each closing of scripted and policy episodes (``TrainArgs``)."""
    branch_std: float = 0.3
    """Std of the dx, dy noise of those grasps (action units)."""
    branch_aim_prob: float = 0.0
    """Share of those grasps aimed at the nearest object's centre instead (privileged)."""
    real_prob: float = 0.0
    """Fraction of episodes that are on-policy episodes in ``real_domain`` (joint finetuning; 0 otherwise)."""
    real_domain: str = "real"
    """The domain of ``real`` episodes."""
    object_labels: bool = False
    """Record each simulated state image's object pixels (``Episode.object_masks``; ``real`` episodes
    never carry them)."""
    retry_practice_prob: float = 0.0
    """Share of on-policy episodes that practise ``CheckedPolicy``'s regrasp with a never-wrong check
    (``TrainArgs.retry_practice_prob``)."""


class Collector(Protocol):
    """What the trainer needs from a source of experience (local processes or remote workers)."""

    def set_weights(self, weights: Mapping[str, Any], version: int = 0) -> None:
        """Make every collector act with these Q-network weights (tensors or arrays) from now on."""

    def poll(self) -> list[Episode]:
        """Episodes finished since the last call (never blocks)."""

    def close(self) -> None:
        """Stop collecting and release the processes or workers."""


class LocalCollectors:
    """``n`` collector processes (multiprocessing "spawn": no forked torch or pybullet state)."""

    def __init__(self, n: int, config: CollectorConfig, seed: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one collector, got {n}")
        ctx = mp.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._stop = ctx.Event()
        self._weights = [ctx.Queue() for _ in range(n)]
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(i, config, seed, self._weights[i], self._out, self._stop),
                name=f"rcan-collector-{i}",
                daemon=True,
            )
            for i in range(n)
        ]
        for p in self._procs:
            p.start()
        self._closed = False

    def set_weights(self, weights: Mapping[str, Any], version: int = 0) -> None:
        # Copies: the queue pickles in a feeder thread later, while the optimizer updates the parameters in
        # place; arrays sharing their memory would reach the collectors as a mix of two gradient steps.
        arrays = {
            k: (v.detach().cpu().clone().numpy() if torch.is_tensor(v) else np.array(v, copy=True))
            for k, v in weights.items()
        }
        for q in self._weights:
            q.put((int(version), arrays))

    def poll(self) -> list[Episode]:
        out: list[Episode] = []
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                raise RuntimeError(f"a collector failed: {item!r}")
            out.append(item)
        if not out:
            for p in self._procs:
                if p.exitcode is not None and not self._stop.is_set():
                    raise RuntimeError(f"collector process {p.name} died (exit code {p.exitcode})")
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + 30.0
        for p in self._procs:
            while p.is_alive() and time.monotonic() < deadline:
                self._drain()
                p.join(timeout=0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        self._drain()
        for q in [self._out, *self._weights]:
            q.close()
            q.cancel_join_thread()

    def _drain(self) -> None:
        try:
            while True:
                self._out.get_nowait()
        except (queue.Empty, OSError, ValueError):
            pass

    def __enter__(self) -> LocalCollectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineCollectors:
    """One collector inside the trainer's process: each ``poll`` runs one whole episode. No parallelism and
    no process start-up (a spawned collector imports torch and pybullet for seconds): for tests, tiny presets
    and debugging (``--collectors 0``)."""

    def __init__(self, config: CollectorConfig, seed: int) -> None:
        self._runner = EpisodeRunner(config, seed, 0)

    def set_weights(self, weights: Mapping[str, Any], version: int = 0) -> None:
        self._runner.set_weights(weights, version)  # copied into the policy's network

    def poll(self) -> list[Episode]:
        return [self._runner.run_episode()]

    def close(self) -> None:
        self._runner.close()


def _stack_branches(branches: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """An episode's counterfactual grasps as ``Episode`` fields (all None without any)."""
    if not branches:
        return {}
    return {
        "branch_steps": np.concatenate([np.full(len(b[1]), b[0], np.int64) for b in branches]),
        "branch_actions": np.concatenate([b[1] for b in branches]).astype(np.float32),
        "branch_rewards": np.concatenate([b[2] for b in branches]).astype(np.float32),
        "branch_fingers": np.concatenate([b[3] for b in branches]).astype(np.float32),
    }


class RetryPractice:
    """One on-policy episode's regrasp practice with a never-wrong check (simulation only, beyond the paper).

    Why: at test time ``CheckedPolicy`` lifts each grasp, checks it and, when it holds nothing, reopens
    one step lower and hands the attempt back to the agent; an attempt then succeeds only if that second
    closing holds. The agents were never trained on such states (an empty grasp lifted, reopened above
    objects it may have pushed), and measured on the earlier shipped agent's checked attempts, a closing after a
    rejected one held 59% of the time against 73-75% for a first closing. Here, when the agent closes and
    terminates with room for a retry, ``GraspEnv.try_grasps`` judges that closing first; the outcome is
    stored as a one-step terminal transition (a counterfactual grasp of the agent's own action), and if
    it fails the episode goes on as ``CheckedPolicy`` would after a rejection with the default
    ``CheckConfig`` (its ``lift``, ``min_steps_left`` and ``max_retries``): close without ending, rise,
    reopen one step down, and the agent acts again. Every executed step is an
    ordinary transition, so the critic learns the retry states' values from their real outcomes.
    Measured (seed 0, default preset): retries after a rejection held 66% against 63.5%, but first
    closings got worse, 86.5% in all with the check (benchmarks/RESULTS.md, 2026-12-05); off by default."""

    def __init__(self, env: Any) -> None:
        # lazily, as EpisodeRunner imports the agent: collectors' own import stays light
        from rcan.qtopt.grasp_check import LIFT, REOPEN, CheckConfig

        self.env, self.check, self.moves = env, CheckConfig(), (LIFT, REOPEN)
        self.lift_left, self.retries, self.lifting = 0, 0, False

    def intercept(self, a: np.ndarray, step: int) -> tuple[np.ndarray, tuple | None]:
        """The action to execute instead of the agent's ``a`` at 0-based ``step``, and the judged
        counterfactual ``(actions (1, 6), rewards (1,), fingers (1, 4))`` when there was one."""
        c = self.check
        left_at_reopen = self.env.max_steps - step - 1 - c.lift  # steps left, the reopening included
        if a[4] <= 0 or a[5] <= 0 or self.retries >= c.max_retries or left_at_reopen < c.min_steps_left:
            return a, None
        closing = np.asarray(a, np.float32)[None].copy()
        rewards, fingers = self.env.try_grasps(closing)
        if rewards[0] > 0:  # it holds: end the attempt with the agent's own action
            return a, None
        self.retries, self.lift_left, self.lifting = self.retries + 1, c.lift, True
        practised = np.asarray(a, np.float32).copy()
        practised[5] = -1.0  # close, but do not end the attempt
        return practised, (closing, rewards, fingers)

    def next_move(self) -> np.ndarray:
        """The next step of a rejected grasp: rise while lift steps remain, then reopen one step down."""
        lift, reopen = self.moves
        if self.lift_left > 0:
            self.lift_left -= 1
            return lift.copy()
        self.lifting = False
        return reopen.copy()


# -- the collector process ---------------------------------------------------------------------------
def _worker(index: int, config: CollectorConfig, seed: int, weights_q: Any, out_q: Any, stop: Any) -> None:
    """Collect until ``stop`` is set, or until the trainer is gone (killed with SIGKILL or by the OOM killer:
    no one would read the episodes, and an orphan would keep a core busy beside the resumed run)."""
    parent = mp.parent_process()
    try:
        # Ctrl-C reaches the whole process group: only the trainer handles it (and then stops us).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(1)
        runner = EpisodeRunner(config, seed, index)
        while not stop.is_set() and (parent is None or parent.is_alive()):
            runner.drain_weights(weights_q)
            ep = runner.run_episode()
            if not stop.is_set():
                out_q.put(ep)
        if parent is not None and not parent.is_alive():
            out_q.cancel_join_thread()  # no one reads the pipe any more: do not wait to flush it at exit
        runner.close()
    except KeyboardInterrupt:
        pass
    except BaseException as err:  # report instead of dying silently
        out_q.put(RuntimeError(f"collector {index}: {type(err).__name__}: {err}"))


class EpisodeRunner:
    """Runs episodes in one process; also usable in-process (tests, benchmarks)."""

    def __init__(self, config: CollectorConfig, seed: int, index: int = 0) -> None:
        from rcan.qtopt.agent import QTOptPolicy, env_domain
        from rcan.qtopt.cem import CEMConfig
        from rcan.qtopt.network import QNetConfig, QNetwork
        from rcan.sim.grasp_env import GraspEnv
        from rcan.sim.scripted import ScriptedGraspPolicy

        self.config, self.index = config, index
        self.rng = np.random.default_rng([seed, index, 7])
        self.env_kwargs = {
            "domain": env_domain(config.input_mode),
            "image_size": config.image_size,
            "camera": config.camera,
            "num_objects": config.num_objects,
            "texture_dir": config.texture_dir,
        }
        self.env = GraspEnv(object_split="train", label_objects=config.object_labels, **self.env_kwargs)
        self.eval_env: Any = None
        self.real_env: Any = None
        self._make_env = GraspEnv
        generator = None
        if config.input_mode == "rcan":
            from rcan.adapt.inference import load_generator

            if not config.generator:
                raise ValueError("input mode 'rcan' needs a generator")
            generator = load_generator(config.generator)[0]
        net = QNetwork(QNetConfig.from_json(config.network))
        self.policy = QTOptPolicy(
            net, CEMConfig(**config.cem), config.input_mode, generator, seed=int(self.rng.integers(2**31))
        )
        self.scripted = ScriptedGraspPolicy(
            self.rng,
            tray_half=self.env.cell.config.tray_inner_half,
            aim_prob=config.scripted_aim_prob,
            retry_prob=config.scripted_retry_prob,
            lift_steps=config.scripted_lift_steps,
            wall_yaw_prob=config.scripted_wall_yaw_prob,
            max_steps=self.env.max_steps,
        )
        self.version = -1

    def drain_weights(self, weights_q: Any) -> None:
        latest = None
        while True:
            try:
                latest = weights_q.get_nowait()
            except queue.Empty:
                break
        if latest is not None:
            self.set_weights(*latest[::-1])

    def set_weights(self, weights: Mapping[str, Any], version: int = 0) -> None:
        sd = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}
        self.policy.network.load_state_dict(sd)
        self.version = int(version)

    def choose_kind(self) -> str:
        if self.version < 0:
            return "scripted"
        u = self.rng.random()
        c = self.config
        if u < c.eval_prob:
            return "eval"
        if u < c.eval_prob + c.scripted_prob:
            return "scripted"
        return "real" if u < c.eval_prob + c.scripted_prob + c.real_prob else "policy"

    def run_episode(self, kind: str | None = None) -> Episode:
        from rcan.qtopt.agent import obs_state, state_images, with_first_frame

        kind = kind or self.choose_kind()
        env = self.env
        if kind == "eval":
            if self.eval_env is None:
                self.eval_env = self._make_env(object_split="test", **self.env_kwargs)
            env = self.eval_env
        elif kind == "real":
            if self.real_env is None:
                kwargs = {**self.env_kwargs, "domain": self.config.real_domain}
                self.real_env = self._make_env(object_split="train", **kwargs)
            env = self.real_env
        t0 = time.perf_counter()
        obs, info = env.reset(seed=int(self.rng.integers(2**31)))
        self.scripted.reset(info)
        self.policy.reset(info)
        raw, imgs, states, actions, rewards, pixels, yaws, masks, fingers = [], [], [], [], [], [], [], [], []
        walls: list[float] = []
        centres: list[np.ndarray] = []
        branches: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        branching = kind in ("scripted", "policy") and self.config.grasp_branches > 0
        practice = RetryPractice(env) if kind == "policy" and self._practises() else None
        close_h = close_d = math.nan
        done, success = False, False
        while not done:
            state = obs_state(obs)
            pixels.append(info.get("tool_pixel", (math.nan, math.nan)))
            centres.append(padded_object_pixels(info.get("object_pixels")))
            yaws.append(info.get("yaw", math.nan))
            if "object_mask" in info:
                masks.append(np.packbits(info["object_mask"], axis=-1))
            if kind == "scripted":
                raw.append(obs["image"])
                a = self.scripted.act(obs, info)
            elif practice is not None and practice.lifting:
                imgs.append(self.policy.prepare(obs)[0])
                a = practice.next_move()
            else:
                img, _ = self.policy.prepare(obs)
                imgs.append(img)
                a, _ = self.policy.act_prepared(img, state)
                if kind in ("policy", "real") and self.config.noise_std > 0:
                    a = a.copy()
                    a[:4] += self.rng.normal(0.0, self.config.noise_std, 4).astype(np.float32)
                    a = np.clip(a, -1.0, 1.0)
                if practice is not None:
                    a, judged = practice.intercept(a, len(states))
                    if judged is not None:
                        branches.append((len(states), *judged))
            if starts_a_grasp(state[0], a[4]):  # the last such closing is the grasp lifted
                close_h = float(state[1])
                close_d = env.closing_distance(a)
                if branching:
                    alt = self.branch_actions(a, info, env.max_translation)
                    branches.append((len(states), alt, *env.try_grasps(alt)))
            obs, r, done, _, info = env.step(a)
            fingers.append(info.get("finger_pixels", np.full(4, np.nan, np.float32)))
            walls.append(info.get("wall_yaw_sign", math.nan))
            states.append(state)
            actions.append(np.asarray(a, np.float32))
            rewards.append(r)
            if done:
                success = bool(info.get("is_success", False))
        if kind == "scripted":
            images = state_images(np.stack(raw), self.config.input_mode, self.policy.generator)  # one batch
            if self.policy.network.config.first_frame:
                images = with_first_frame(images)
        else:
            images = np.stack(imgs)
        return Episode(
            images=images,
            states=np.stack(states).astype(np.float32),
            actions=np.stack(actions).astype(np.float32),
            rewards=np.asarray(rewards, np.float32),
            success=success,
            kind=kind,
            weights_version=self.version,
            collector=self.index,
            close_height=close_h,
            close_distance=close_d,
            seconds=time.perf_counter() - t0,
            tool_pixels=np.asarray(pixels, np.float32),
            tool_yaws=np.asarray(yaws, np.float32),
            finger_pixels=np.asarray(fingers, np.float32).reshape(-1, 4),
            object_masks=np.stack(masks) if masks and len(masks) == len(rewards) else None,
            object_pixels=np.stack(centres),
            wall_yaw_signs=np.asarray(walls, np.float32),
            **_stack_branches(branches),
        )

    def _practises(self) -> bool:
        """Whether this on-policy episode practises regrasping (``CollectorConfig.retry_practice_prob``)."""
        return self.config.retry_practice_prob > 0 and bool(self.rng.random() < self.config.retry_practice_prob)

    def branch_actions(self, a: np.ndarray, info: Mapping[str, Any], max_translation: float) -> np.ndarray:
        """The ``grasp_branches`` alternatives to a closing action: dx, dy moved by ``branch_std`` noise or,
        a ``branch_aim_prob`` share of them, aimed at the centre of the object nearest to where the action
        closes (privileged ``info``: the commanded position and the objects, 1 cm noise); a random dyaw;
        dz kept; closing and terminating at once."""
        c = self.config
        k = c.grasp_branches
        alt = np.tile(np.asarray(a, np.float32), (k, 1))
        alt[:, :2] += self.rng.normal(0.0, c.branch_std, (k, 2)).astype(np.float32)
        aimed = self.rng.random(k) < c.branch_aim_prob
        if aimed.any():
            tool = np.asarray(info["tool"], np.float64)[:2]
            objects = np.asarray(info["objects_xy"], np.float64).reshape(-1, 2)
            closing = tool + np.clip(a[:2], -1.0, 1.0) * max_translation
            centre = objects[np.argmin(np.linalg.norm(objects - closing, axis=1))]
            goal = centre + self.rng.normal(0.0, 0.01, (int(aimed.sum()), 2))
            alt[aimed, :2] = ((goal - tool) / max_translation).astype(np.float32)
        alt[:, 3] = self.rng.uniform(-1.0, 1.0, k).astype(np.float32)
        alt[:, 4:6] = 1.0
        return np.clip(alt, -1.0, 1.0)

    def close(self) -> None:
        self.env.close()
        for extra in (self.eval_env, self.real_env):
            if extra is not None:
                extra.close()
