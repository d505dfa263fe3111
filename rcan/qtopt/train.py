"""QT-Opt training loop (paper section 3; Kalashnikov et al. 2018), sized for a 2-core CPU.

The trainer process does gradient steps only; collector processes (``rcan.qtopt.collectors``) run the env
and send finished episodes back. Data: a scripted-exploration replay buffer and an on-policy one, sampled
about 50/50 per batch (``online_fraction``) once the on-policy one has data. Targets: clipped double Q with
two target networks, a Polyak average of the online net and a lagged copy of that average,
V(s') = min_i Q_i(s', argmax_a' Q_1(s', a')), the argmax by CEM; n-step returns; no bootstrap from terminal
transitions; targets are clipped to [0, 1] because Q is a sigmoid trained with cross-entropy. DrQ-style
random shifts augment the images. The run's arguments are in ``rcan.qtopt.args``, the targets and
auxiliary losses in ``rcan.qtopt.losses``.

One run directory holds everything:

* ``config.json``: the :class:`TrainArgs` of the run (for people; the checkpoint carries its own copy);
* ``tb/``: TensorBoard scalars (loss, Q values, targets, success of recent episodes per kind, greedy eval
  success on the test objects, diagnostics of where the policy closes the gripper, throughput);
* ``progress.jsonl``: one JSON line per log interval (the learning curve without TensorBoard);
* ``episodes.jsonl``: one JSON line per finished episode (kind, success, length, where it closed);
* ``agent.safetensors``: the Q-network and its config (what ``load_agent`` reads);
* ``snapshots/agent-NNNNNNN.safetensors``: with ``keep_snapshots``, the agent file of every checkpoint
  (named by gradient steps);
* ``members/member-K.safetensors``: with ``ensemble_members`` > 1, the networks the final agent file
  carries as its ensemble members (``member-K-cI.safetensors``: critic I's, with ``critics`` > 1);
* ``agent-ensemble.safetensors``: with ``distill_steps``, the ensemble's agent file; ``agent.safetensors``
  is then the one network distilled from it (``rcan.qtopt.distill``);
* ``train_state.safetensors``: online and target nets, optimizer (each critic's, with ``critics`` > 1),
  counters, RNG states, recent statistics, the name of the replay file that belongs to it;
* ``replay-NNNNNN.npz``: both replay buffers (plain arrays, no pickle).

Kill safety: the replay file is written first under a new name, then the state file that names it (atomic),
then the agent file; older replay files are deleted last. A kill at any point leaves a state file whose
replay file exists. Resume restores exactly the saved state (weights, optimizer, counters, replay contents,
RNG states); episodes that were in flight in the collectors are lost, and since collectors are asynchronous a
resumed run is not bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import math
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rcan.common.atomic import write_text_atomic
from rcan.common.checkpoint import (
    load_optimizer_state,
    load_rng_state,
    load_safetensors,
    optimizer_state_to_tensors,
    rng_state_to_tensors,
    save_safetensors_atomic,
)
from rcan.qtopt.agent import AGENT_FILE, image_channels, save_agent
from rcan.qtopt.args import (
    CONFIG_FILE,
    EPISODES_FILE,
    MEMBER_DIR,
    PROGRESS_FILE,
    STATE_FILE,
    STATE_FORMAT,
    WINDOW,
    TrainArgs,
    acting_cem,
    args_from_json,
    args_to_json,
    learning_rate,
    make_collectors,
    network_config,
    target_cem,
)
from rcan.qtopt.collectors import Collector, Episode
from rcan.qtopt.losses import (
    bellman_targets,
    finger_aux_loss,
    gripper_aux_loss,
    move_aux_loss,
    next_state_values,
    object_aux_loss,
    object_offset_loss,
    shift_images,
    wall_yaw_loss,
    yaw_aux_loss,
)
from rcan.qtopt.network import QNetwork
from rcan.qtopt.replay import (
    EpisodeSteps,
    LocalReplay,
    ReplayBuffer,
    ReplaySource,
    branch_steps,
    load_replays,
    save_replays,
)

LOG_FILES = (EPISODES_FILE, PROGRESS_FILE)
"""The run's append-only logs, cut back to their checkpointed sizes on resume."""
SNAPSHOT_DIR = "snapshots"
"""With ``keep_snapshots``: every checkpoint's agent file, in the run directory."""
ENSEMBLE_AGENT_FILE = "agent-ensemble.safetensors"
"""With ``distill_steps``: the ensemble's agent file, kept beside the distilled one that replaces it."""


# -- the trainer -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Critic:
    """One online critic with its own target networks (Polyak-averaged and lagged) and optimizer."""

    net: QNetwork
    target1: QNetwork
    target2: QNetwork
    opt: torch.optim.Optimizer

    @classmethod
    def new(cls, net: QNetwork, lr: float) -> Critic:
        return cls(
            net,
            copy.deepcopy(net).requires_grad_(False),
            copy.deepcopy(net).requires_grad_(False),
            torch.optim.Adam(net.parameters(), lr=lr),
        )

    def modules(self) -> tuple[tuple[str, QNetwork], ...]:
        return (("net", self.net), ("target1", self.target1), ("target2", self.target2))


def critic_prefix(k: int) -> str:
    """Training-state key prefix of critic ``k`` (the first keeps the one-critic names, so older runs load)."""
    return "" if k == 0 else f"critic{k}."


class Trainer:
    """Owns the networks, optimizer, replay buffers and counters; ``run`` drives collectors and training."""

    def __init__(self, args: TrainArgs) -> None:
        self.args = args
        self.run_dir = Path(args.out)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % 2**32)  # noqa: NPY002 (the legacy global state is saved for exactness)
        # Each critic a fresh initialization from the seeded stream, one after another: a one-critic run
        # draws exactly the random numbers it drew before ``critics`` existed.
        self.critics = [Critic.new(QNetwork(network_config(args)), args.lr) for _ in range(args.critics)]
        shape = (image_channels(args.input, args.first_frame), args.image_size, args.image_size)
        masks = args.object_aux_weight > 0
        replays = {
            "scripted": ReplayBuffer(args.scripted_capacity, shape, args.gamma, args.n_step, masks),
            "policy": ReplayBuffer(args.policy_capacity, shape, args.gamma, args.n_step, masks),
        }
        if args.finetune_from:
            replays["real"] = ReplayBuffer(args.policy_capacity, shape, args.gamma, args.n_step, masks)
        self.replay: ReplaySource
        if args.backend == "ray":  # starts or joins Ray; replay and Bellman targets become actors
            from rcan.qtopt.ray_backend import RayReplay

            self.replay = RayReplay(replays, args)
        else:
            self.replay = LocalReplay(replays)
        self.rng = np.random.default_rng([args.seed, 1])
        self.torch_rng = torch.Generator().manual_seed(args.seed + 1)
        self.grad_steps = 0
        self.env_steps = 0
        self.checkpoint_id = 0
        self.train_seconds = 0.0
        self.counts = dict.fromkeys(("scripted", "policy", "eval", "real"), 0)
        self.recent: dict[str, collections.deque] = {
            k: collections.deque(maxlen=WINDOW)
            for k in ("scripted", "policy", "eval", "real", "close_height", "close_distance", "grasps")
        }
        self.replay_file: str | None = None
        self._episode_rows: list[str] = []
        self.generator_id = ""  # ``--input rcan``: the fingerprint of the frozen generator's file
        if args.generator:
            from rcan.adapt.inference import generator_fingerprint

            self.generator_id = generator_fingerprint(args.generator)
        try:
            if args.resume:
                self.load_checkpoint()
            elif args.finetune_from:
                self._start_from(args.finetune_from)
        except BaseException:
            self.close()  # a Ray replay's actors would outlive a trainer that never started
            raise

    @property
    def net(self) -> QNetwork:
        """The first critic's online network: the one a checkpoint's agent file holds."""
        return self.critics[0].net

    @property
    def target1(self) -> QNetwork:
        return self.critics[0].target1

    @property
    def target2(self) -> QNetwork:
        return self.critics[0].target2

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.critics[0].opt

    def acting_network(self) -> QNetwork:
        """The online network to push to the collectors: the critics take turns, one per push."""
        return self.critics[(self.grad_steps // self.args.push_every) % len(self.critics)].net

    def _start_from(self, agent: str) -> None:
        """Joint finetuning starts from a trained agent: its weights in the online and both target nets
        (``finetune_continue``: the run's whole training state and simulated replay)."""
        from rcan.qtopt.agent import load_network

        if self.args.finetune_continue:
            self._continue_run(Path(agent))
            return
        net, meta = load_network(agent)
        if meta.get("camera", "wide") != self.args.camera:
            raise ValueError(f"{agent} was trained with camera={meta.get('camera', 'wide')}, not {self.args.camera}")
        if net.config != self.net.config or meta.get("input_mode") != self.args.input:
            raise ValueError(
                f"{agent} is a {meta.get('input_mode')!r} agent with another network; cannot finetune it as "
                f"--input {self.args.input} with this preset"
            )
        for target in (self.net, self.target1, self.target2):
            target.load_state_dict(net.state_dict())

    def _continue_run(self, run: Path) -> None:
        """``finetune_continue``: the networks, optimizer and simulated buffers of the training run ``run``."""
        state = run / STATE_FILE
        if not state.is_file():
            raise ValueError(f"finetune_continue needs a training run directory with {STATE_FILE}; got {run}")
        tensors, meta = load_safetensors(state, expect_format=STATE_FORMAT)
        source_args = args_from_json(meta["args"])
        if source_args.critics != 1:
            raise ValueError(f"{run} trained {source_args.critics} critics; finetune_continue continues one")
        if source_args.camera != self.args.camera:
            raise ValueError(f"{run} was trained with camera={source_args.camera}, not {self.args.camera}")
        if network_config(source_args) != network_config(self.args) or source_args.input != self.args.input:
            raise ValueError(
                f"{run} trained a {source_args.input!r} agent with another network; cannot finetune it as "
                f"--input {self.args.input} with this preset"
            )
        self._load_learner(state, tensors, meta)
        name = meta.get("replay_file")
        if not name:
            raise ValueError(f"{state} names no replay file")
        source = load_replays(run / name)
        buffers = self.replay.buffers()
        for kind in ("scripted", "policy"):
            if kind not in source or source[kind].image_shape != buffers[kind].image_shape:
                raise ValueError(f"{run / name} has no {kind!r} buffer of {buffers[kind].image_shape} images")
            buffers[kind] = source[kind]
        self.replay.load(buffers)

    # -- data ---------------------------------------------------------------------------------------
    @property
    def replays(self) -> dict[str, ReplayBuffer]:
        """The replay buffers by name (local backend: the live buffers; Ray: a copy fetched from the actor)."""
        return self.replay.buffers()

    def close(self) -> None:
        """Release the backend's remote parts (Ray actors, and Ray itself if this trainer started it)."""
        self.replay.close()

    def add_episode(self, ep: Episode) -> None:
        self.counts[ep.kind] = self.counts.get(ep.kind, 0) + 1
        row = {
            "episode": sum(self.counts.values()),
            "kind": ep.kind,
            "success": ep.success,
            "steps": ep.length,
            "env_steps": self.env_steps,
            "grad_steps": self.grad_steps,
            "weights": ep.weights_version,
            "close_height": None if math.isnan(ep.close_height) else round(ep.close_height, 4),
            "close_distance": None if math.isnan(ep.close_distance) else round(ep.close_distance, 4),
            "grasps": ep.grasps,
            "branches": ep.branches,
        }
        self._episode_rows.append(json.dumps(row))
        self.recent[ep.kind].append(float(ep.success))
        if ep.kind != "scripted":
            self.recent["grasps"].append(ep.grasps)
            if not math.isnan(ep.close_height):
                self.recent["close_height"].append(ep.close_height)
                self.recent["close_distance"].append(ep.close_distance)
        if ep.kind == "eval":
            return  # test objects: measured, never trained on
        rewards = ep.rewards + np.float32(self.args.reward_offset)
        # Gripper-keypoint labels come from the simulator only: a real robot's episodes give images and
        # rewards (the stand-in "real" domain could label them, but a real cell would need a calibration).
        sim = ep.kind != "real"
        steps = EpisodeSteps(
            ep.images,
            ep.states,
            ep.actions,
            rewards,
            tool_pixels=ep.tool_pixels if sim else None,
            object_masks=ep.object_masks if sim else None,
            tool_yaws=ep.tool_yaws if sim else None,
            finger_pixels=ep.finger_pixels if sim else None,
            object_pixels=ep.object_pixels if sim else None,
            wall_yaw_signs=ep.wall_yaw_signs if sim else None,
        )
        self.replay.add_episode(ep.kind, steps)
        self.env_steps += ep.length
        for t, action, reward, fingers in ep.branch_transitions():
            self.replay.add_episode(ep.kind, branch_steps(steps, t, action, reward + self.args.reward_offset, fingers))

    def batch_mix(self) -> tuple[tuple[str, float], ...]:
        """QT-Opt's half on-policy, half scripted exploration; in joint finetuning, real and simulated
        on-policy data (``real_fraction`` real)."""
        if self.args.finetune_from:
            if self.args.finetune_continue:  # the simulated part: half fresh-and-old on-policy, half scripted
                sim = 1.0 - self.args.real_fraction
                return (("real", self.args.real_fraction), ("policy", sim / 2), ("scripted", 1.0))
            return (("real", self.args.real_fraction), ("policy", 1.0))
        return (("policy", self.args.online_fraction), ("scripted", 1.0))

    def sample(self) -> dict[str, torch.Tensor]:
        a = self.args
        batch = self.replay.sample(a.batch_size, self.batch_mix(), self.rng, a.outcome_fraction, a.mirror_prob)
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def ready(self) -> bool:
        """Whether a batch can be drawn: the warm-up is over and a buffer of the batch mix holds data (a
        finetuning run's collector may deliver a scripted episode before it gets the agent's weights; that
        buffer is not in the finetuning mix)."""
        if self.env_steps < self.learning_starts:
            return False
        sizes = self.replay.sizes()
        return any(sizes.get(name, 0) > 0 for name, _ in self.batch_mix())

    @property
    def learning_starts(self) -> int:
        """Env steps before the first gradient step (``finetune_learning_starts`` when finetuning)."""
        return self.args.finetune_learning_starts if self.args.finetune_from else self.args.learning_starts

    # -- learning -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One gradient step of the critic whose turn it is (``grad_steps`` modulo ``critics``)."""
        a = self.args
        critic = self.critics[self.grad_steps % len(self.critics)]
        own_steps = self.grad_steps // len(self.critics)  # this critic's steps so far
        net = critic.net
        self.replay.sync_targets(critic.target1, critic.target2, self.grad_steps)  # no-op in-process
        batch = self.sample()
        pad = a.aug_pad
        # Buffers keep object masks exactly when object_aux_weight > 0 (and then the network has an object map).
        masks = batch["object_masks"] if a.object_aux_weight > 0 else None
        images, shifts, masks = shift_images(batch["images"], masks, pad, self.torch_rng)
        nxt = batch["discounts"] > 0
        if "next_values" in batch:  # computed by the Ray Bellman actors
            v = batch["next_values"]
        else:
            v = next_state_values(batch, critic.target1, critic.target2, target_cem(a), pad, self.torch_rng)
        y = bellman_targets(batch["returns"], batch["discounts"], v)
        floored = torch.zeros(())
        if a.mc_lower_bound:
            mc = batch["mc_returns"].clamp(0.0, 1.0)
            floored = (mc > y).float().mean()
            y = torch.maximum(y, mc)
        feats = net.features(images)
        logits = net.head(feats, batch["states"], batch["actions"][:, None])[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y)
        aux = torch.zeros(())
        if net.config.gripper_keypoint and a.gripper_aux_weight > 0:
            aux = gripper_aux_loss(net, feats, batch["tool_pixels"], shifts, images.shape[-1])
            loss = loss + a.gripper_aux_weight * aux
        move = torch.zeros(())
        if net.config.target_readout and a.move_aux_weight > 0:
            move = move_aux_loss(
                net, feats, batch["states"], batch["actions"], batch["tool_pixels_after"], shifts, images.shape[-1]
            )
            loss = loss + a.move_aux_weight * move
        yaw = torch.zeros(())
        if net.config.gripper_yaw and a.yaw_aux_weight > 0:
            yaw = yaw_aux_loss(net, feats, batch["tool_yaws"])
            loss = loss + a.yaw_aux_weight * yaw
        finger = torch.zeros(())
        if net.config.finger_readout and a.finger_aux_weight > 0:
            finger = finger_aux_loss(
                net, feats, batch["states"], batch["actions"], batch["finger_pixels"], shifts, images.shape[-1]
            )
            loss = loss + a.finger_aux_weight * finger
        offsets = torch.zeros(())
        if net.config.object_offsets:
            offsets = object_offset_loss(
                net,
                feats,
                batch["object_pixels"],
                batch["tool_pixels_after"],
                shifts,
                images.shape[-1],
                a.object_offset_points,
                self.torch_rng,
            )
            loss = loss + a.object_offset_weight * offsets
        wall = torch.zeros(())
        if net.config.wall_yaw:
            wall = wall_yaw_loss(
                net, feats, batch["wall_yaw_signs"], batch["tool_pixels_after"], shifts, images.shape[-1]
            )
            loss = loss + a.wall_yaw_weight * wall
        obj = torch.zeros(())
        if masks is not None:
            obj = object_aux_loss(net, feats, masks, batch["mask_known"])
            loss = loss + a.object_aux_weight * obj
        critic.opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), a.grad_clip)
        for group in critic.opt.param_groups:
            group["lr"] = learning_rate(a, own_steps)
        critic.opt.step()
        self.grad_steps += 1
        with torch.no_grad():
            for p_t, p in zip(critic.target1.parameters(), net.parameters(), strict=True):
                p_t.lerp_(p, a.tau)
            if (own_steps + 1) % a.lag_every == 0:
                critic.target2.load_state_dict(critic.target1.state_dict())
        q = torch.sigmoid(logits.detach())
        return {
            "loss": float(loss.detach()),
            "q": float(q.mean()),
            "target": float(y.mean()),
            "v_next": float(v[nxt].mean()) if nxt.any() else 0.0,
            "mc_floored": float(floored),
            "gripper_aux": float(aux.detach()),
            "move_aux": float(move.detach()),
            "yaw_aux": float(yaw.detach()),
            "finger_aux": float(finger.detach()),
            "object_aux": float(obj.detach()),
            "offset_aux": float(offsets.detach()),
            "wall_aux": float(wall.detach()),
        }

    # -- checkpoints --------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything but the replay buffers, as safetensors tensors + metadata."""
        tensors: dict[str, torch.Tensor] = {}
        opt_meta: dict[str, str] = {}
        for i, critic in enumerate(self.critics):
            pre = critic_prefix(i)
            for name, net in critic.modules():
                tensors.update({f"{pre}{name}.{k}": v for k, v in net.state_dict().items()})
            opt_t, opt_m = optimizer_state_to_tensors(critic.opt, prefix=f"{pre}opt.")
            tensors.update(opt_t)
            opt_meta.update(opt_m)
        rng_t, rng_m = rng_state_to_tensors()
        tensors.update(rng_t)
        tensors["torch_rng"] = self.torch_rng.get_state()
        meta = {
            "format": STATE_FORMAT,
            "args": args_to_json(self.args),
            "counters": json.dumps(
                {
                    "grad_steps": self.grad_steps,
                    "env_steps": self.env_steps,
                    "checkpoint_id": self.checkpoint_id,
                    "train_seconds": self.train_seconds,
                    "counts": self.counts,
                    "recent": {k: list(v) for k, v in self.recent.items()},
                }
            ),
            "np_rng": json.dumps(self.rng.bit_generator.state),
            "replay_file": self.replay_file or "",
            "log_sizes": json.dumps(self.log_sizes()),
            "generator_id": self.generator_id,
            **opt_meta,
            **rng_m,
        }
        return tensors, meta

    def log_sizes(self) -> dict[str, int]:
        """Bytes of the episode and progress logs now: a checkpoint records them, and a resume cuts the logs
        back to them, so the rows of the stretch a kill threw away are not counted twice."""
        return {name: (self.run_dir / name).stat().st_size for name in LOG_FILES if (self.run_dir / name).is_file()}

    def truncate_logs(self, sizes: Mapping[str, int]) -> None:
        """Cut the logs back to what they held at the checkpoint (``log_sizes``)."""
        for name, size in sizes.items():
            path = self.run_dir / name
            if name in LOG_FILES and path.is_file() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)

    def flush_episode_log(self) -> None:
        if self._episode_rows:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / EPISODES_FILE, "a") as f:
                f.write("\n".join(self._episode_rows) + "\n")
            self._episode_rows.clear()

    def save_checkpoint(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.flush_episode_log()
        self.checkpoint_id += 1
        self.replay_file = f"replay-{self.checkpoint_id:06d}.npz"
        save_replays(self.run_dir / self.replay_file, self.replays)
        tensors, meta = self.state_tensors()
        save_safetensors_atomic(self.run_dir / STATE_FILE, tensors, meta)
        extra = self.agent_metadata()
        members = self.ensemble_members() if self.finished() else []
        save_agent(self.run_dir / AGENT_FILE, self.net, self.args.input, acting_cem(self.args), extra, members)
        if self.args.keep_snapshots:
            snap = self.run_dir / SNAPSHOT_DIR / f"agent-{self.grad_steps:07d}.safetensors"
            snap.parent.mkdir(exist_ok=True)
            save_agent(snap, self.net, self.args.input, acting_cem(self.args), extra)
        # The state file now names the new replay file: older ones (and leftovers of a kill) can go.
        for p in self.run_dir.glob("replay-*.npz"):
            if p.name != self.replay_file:
                p.unlink(missing_ok=True)

    def agent_metadata(self) -> dict[str, str]:
        """What the agent file records beside the weights: provenance and acting settings."""
        extra = {
            "grad_steps": str(self.grad_steps),
            "env_steps": str(self.env_steps),
            "episodes": json.dumps(self.counts),
            "args": args_to_json(self.args),
            "camera": self.args.camera,
            "view_shifts": str(self.args.view_shifts),
            "rerank": str(self.args.rerank),
            "search_critics": str(self.args.search_critics),
        }
        if self.args.generator:
            extra["generator"] = str(Path(self.args.generator).resolve())
            extra["generator_id"] = self.generator_id
        return extra

    def distill_agent(self) -> dict[str, Any]:
        """Replace the finished run's ensemble agent file by one network distilled from it
        (``distill_steps``; the ensemble's file is kept as ``ENSEMBLE_AGENT_FILE``). A resumed finished run
        (whose final checkpoint rewrites the ensemble's file) distils again from its saved replay, with
        random numbers from the run's seed: the same network on every resume (measured on the tiny
        preset), though not bit for bit the first run's, which sampled its replay as held in memory."""
        from rcan.qtopt.agent import load_networks
        from rcan.qtopt.distill import distill

        a, start = self.args, time.monotonic()
        nets, _ = load_networks(self.run_dir / AGENT_FILE)
        if len(nets) < 2:
            raise ValueError(f"{self.run_dir / AGENT_FILE} has no ensemble members to distil")
        extra = self.agent_metadata()
        save_agent(self.run_dir / ENSEMBLE_AGENT_FILE, nets[0], a.input, acting_cem(a), extra, nets[1:])
        rng = np.random.default_rng(a.seed + 104_729)
        bar = tqdm(total=a.distill_steps, desc=f"distil {self.run_dir.name}", unit="step", leave=False)

        def progress(step: int, loss: float, _: QNetwork) -> None:
            bar.update(1)
            if step % 100 == 0:
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

        threads = torch.get_num_threads()
        torch.set_num_threads(max(threads, a.collectors + 1))  # the collectors are done: their cores are free
        try:
            student = distill(
                nets,
                lambda n: self.replay.sample_plain(n, self.batch_mix(), rng),
                a.distill_steps,
                seed=a.seed,
                aug_pad=a.aug_pad,
                on_step=progress,
            )
        finally:
            bar.close()
            torch.set_num_threads(threads)
        extra["distilled"] = json.dumps({"steps": a.distill_steps, "critics": len(nets)})
        save_agent(self.run_dir / AGENT_FILE, student, a.input, acting_cem(a), extra)
        return {"steps": a.distill_steps, "critics": len(nets), "minutes": (time.monotonic() - start) / 60}

    def member_points(self) -> list[tuple[int, float]]:
        """(k, budget fraction) of each ensemble member but the final network, the earliest first."""
        a = self.args
        return [(k, 1.0 - k * a.ensemble_spacing) for k in range(a.ensemble_members - 1, 0, -1)]

    def member_path(self, k: int, critic: int = 0) -> Path:
        """Where ensemble member ``k`` of critic ``critic`` is kept while training."""
        suffix = f"-c{critic}" if critic else ""
        return self.run_dir / MEMBER_DIR / f"member-{k}{suffix}.safetensors"

    def save_member(self, k: int) -> None:
        """Keep every critic's online network as ensemble member ``k`` (overwriting one a resumed run redoes)."""
        for i, critic in enumerate(self.critics):
            path = self.member_path(k, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"grad_steps": str(self.grad_steps)}
            save_agent(path, critic.net, self.args.input, acting_cem(self.args), meta)

    def ensemble_members(self) -> list[QNetwork]:
        """The networks the final agent file holds beside the first critic's: the other critics' final
        networks, then the kept members, the nearest to the end first (each point's critics in order)."""
        from rcan.qtopt.agent import load_network

        nets = [critic.net for critic in self.critics[1:]]
        for k, _ in reversed(self.member_points()):
            for i in range(len(self.critics)):
                path = self.member_path(k, i)
                if not path.is_file():
                    raise FileNotFoundError(
                        f"ensemble member {path} is missing (was {MEMBER_DIR}/ deleted mid-run?)"
                    )
                nets.append(load_network(path)[0])
        return nets

    def _load_learner(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """The online and target networks and the optimizer from a training state."""
        try:
            for i, critic in enumerate(self.critics):
                for name, net in critic.modules():
                    key = f"{critic_prefix(i)}{name}."
                    sd = {k[len(key) :]: v for k, v in tensors.items() if k.startswith(key)}
                    net.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{path}: weights do not match the run's network ({str(err).splitlines()[0]})"
            ) from None
        for i, critic in enumerate(self.critics):
            load_optimizer_state(critic.opt, tensors, meta, prefix=f"{critic_prefix(i)}opt.")

    def load_checkpoint(self) -> None:
        path = self.run_dir / STATE_FILE
        tensors, meta = load_safetensors(path, expect_format=STATE_FORMAT)
        trained_on = meta.get("generator_id", "")  # older checkpoints: not recorded
        if trained_on and trained_on != self.generator_id:
            raise ValueError(
                f"{self.args.generator} is not the generator {self.run_dir} was trained with (its file "
                f"differs: {self.generator_id} against {trained_on}); resume with that generator"
            )
        self._load_learner(path, tensors, meta)
        load_rng_state(tensors, meta)
        self.torch_rng.set_state(tensors["torch_rng"].clone())
        self.rng.bit_generator.state = json.loads(meta["np_rng"])
        c = json.loads(meta["counters"])
        self.grad_steps, self.env_steps = int(c["grad_steps"]), int(c["env_steps"])
        self.checkpoint_id, self.train_seconds = int(c["checkpoint_id"]), float(c["train_seconds"])
        self.counts.update({k: int(v) for k, v in c["counts"].items()})
        for k, values in c["recent"].items():
            self.recent[k] = collections.deque(values, maxlen=WINDOW)
        self.truncate_logs(json.loads(meta.get("log_sizes") or "{}"))  # older checkpoints: no sizes
        self.replay_file = meta.get("replay_file") or None
        if self.replay_file:
            self.replay.load(load_replays(self.run_dir / self.replay_file))

    # -- the loop -----------------------------------------------------------------------------------
    def budget_used(self) -> float:
        """How much of the run's budget is spent, 0-1: the largest of the env-step, time and (when
        finetuning) real-episode fractions, since whichever runs out first ends the run."""
        a = self.args  # validated: env_steps >= 1, and real_episodes >= 1 when finetuning
        parts = [self.env_steps / a.env_steps]
        if a.minutes > 0:
            parts.append(self.train_seconds / (a.minutes * 60))
        if a.finetune_from:
            parts.append(self.counts["real"] / a.real_episodes)
        return min(1.0, max(parts))

    def finished(self) -> bool:
        return self.budget_used() >= 1.0

    def run(self, collectors: Collector | None = None) -> dict[str, Any]:
        """Train until ``env_steps`` or ``minutes``; checkpoints periodically, at the end and on a signal."""
        a = self.args
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / CONFIG_FILE, args_to_json(self.args) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        if not a.resume and self.checkpoint_id == 0:  # a fresh run, maybe over a run killed before its first
            # checkpoint (``STARTUP_FILES``): its logs start empty
            self.truncate_logs(dict.fromkeys(LOG_FILES, 0))
        # From the checkpoint's step on, older events (of a killed stretch or run) are hidden.
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.grad_steps)
        stop = {"flag": False}

        def _on_signal(signum: int, frame: Any) -> None:
            stop["flag"] = True

        old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        own = collectors is None
        # A resumed run gets fresh collector seeds, so it does not replay the episodes it already has.
        coll = collectors or make_collectors(a, seed=a.seed * 1_000_003 + self.checkpoint_id)
        pushed = -1
        if a.finetune_from:  # a trained agent acts from the first episode: no scripted warm-up
            coll.set_weights(self.net.state_dict(), self.grad_steps)
            pushed = self.grad_steps
        last_ckpt = time.monotonic()
        t_last, s_last, g_last = time.monotonic(), self.env_steps, self.grad_steps
        stats: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
        bar = tqdm(
            total=1000,
            initial=round(1000 * self.budget_used()),
            desc=f"train-agent {self.run_dir.name}",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
        )
        # Members whose point lies behind a resumed run's checkpoint were kept before it.
        members_due = [(k, f) for k, f in self.member_points() if f > self.budget_used()]
        try:
            tick = time.monotonic()
            while not stop["flag"] and not self.finished():
                try:
                    episodes = coll.poll()
                except RuntimeError:
                    if stop["flag"]:
                        break  # collectors may go down with the same signal
                    raise
                for ep in episodes:
                    self.add_episode(ep)
                trained = False
                if self.ready():
                    if pushed < 0:
                        coll.set_weights(self.acting_network().state_dict(), self.grad_steps)
                        pushed = self.grad_steps
                    budget = a.utd * (self.env_steps - self.learning_starts) + 1
                    if self.grad_steps < budget:
                        for k, v in self.train_step().items():
                            stats[k].append(v)
                        trained = True
                        if self.grad_steps - pushed >= a.push_every:
                            coll.set_weights(self.acting_network().state_dict(), self.grad_steps)
                            pushed = self.grad_steps
                        if self.grad_steps % a.log_every == 0:
                            now = time.monotonic()
                            self._log(
                                writer, stats, now - t_last, self.env_steps - s_last, self.grad_steps - g_last
                            )
                            t_last, s_last, g_last = now, self.env_steps, self.grad_steps
                            stats.clear()
                            bar.set_postfix_str(self._bar_postfix(), refresh=False)
                if not trained:
                    time.sleep(0.01)
                now = time.monotonic()
                self.train_seconds += now - tick
                tick = now
                while members_due and self.budget_used() >= members_due[0][1]:
                    self.save_member(members_due.pop(0)[0])
                done = round(1000 * self.budget_used())
                if done > bar.n:
                    bar.update(done - bar.n)
                if now - last_ckpt >= a.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
                    tick = last_ckpt
        finally:
            bar.close()
            if own:
                coll.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        self.save_checkpoint()
        writer.flush()
        writer.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "grad_steps": self.grad_steps,
            "env_steps": self.env_steps,
            "episodes": dict(self.counts),
            "minutes": self.train_seconds / 60,
            "recent_success": {k: _mean(self.recent[k]) for k in ("scripted", "policy", "eval", "real")},
            "agent": str(self.run_dir / AGENT_FILE),
            "finished": self.finished(),
        }

    def _bar_postfix(self) -> str:
        """The progress bar's figures: data and updates so far, and greedy success on test objects."""
        text = f"{self.env_steps} env steps, {self.grad_steps} grad steps"
        if self.recent["eval"]:
            text += f", eval success {100 * _mean(self.recent['eval']):.0f}%"
        return text

    def _log(
        self, writer: Any, stats: Mapping[str, list[float]], seconds: float, d_env: int, d_grad: int
    ) -> None:
        step = self.grad_steps
        row: dict[str, Any] = {
            "grad_steps": step,
            "env_steps": self.env_steps,
            "episodes": sum(self.counts.values()),
            "minutes": round(self.train_seconds / 60, 3),
        }
        for k, v in stats.items():
            row[k] = float(np.mean(v))
            writer.add_scalar(f"train/{k}", row[k], step)
        for kind in ("scripted", "policy", "eval", "real"):
            if self.recent[kind]:
                row[f"success_{kind}"] = _mean(self.recent[kind])
                writer.add_scalar(f"success/{kind}_recent", row[f"success_{kind}"], step)
        row["eval_episodes"] = self.counts.get("eval", 0)
        for k in ("close_height", "close_distance", "grasps"):
            if self.recent[k]:
                row[k] = _mean(self.recent[k])
                writer.add_scalar(f"diagnostics/{k}", row[k], step)
        if seconds > 0:
            row["grad_steps_per_s"] = d_grad / seconds
            row["env_steps_per_s"] = d_env / seconds
            writer.add_scalar("perf/grad_steps_per_s", row["grad_steps_per_s"], step)
            writer.add_scalar("perf/env_steps_per_s", row["env_steps_per_s"], step)
        row["utd_actual"] = step / max(1, self.env_steps - self.learning_starts)
        writer.add_scalar("data/env_steps", self.env_steps, step)
        with open(self.run_dir / PROGRESS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.flush_episode_log()


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def train(args: TrainArgs) -> dict[str, Any]:
    """Run (or resume) training as described by ``args``; returns a summary."""
    if args.input == "rcan" and args.generator:
        from rcan.adapt.inference import resolve_generator_path

        args = dataclasses.replace(args, generator=str(resolve_generator_path(args.generator)))
    trainer = Trainer(args)
    try:
        summary = trainer.run()
        if args.distill_steps > 0 and summary["finished"] and not args.finetune_from:
            summary["distill"] = trainer.distill_agent()
    finally:
        trainer.close()
    if args.check_grasps > 0 and not args.finetune_from and summary["finished"]:
        from rcan.qtopt.grasp_check import fit_check, fit_minutes

        deadline = None  # when the check's collection must stop to keep the whole run in budget_minutes
        if args.budget_minutes > 0:
            spent = summary["minutes"] + summary.get("distill", {}).get("minutes", 0.0)
            left = args.budget_minutes - spent - fit_minutes(args.check_confirm)
            deadline = time.time() + max(0.0, left) * 60.0
        summary["check"] = fit_check(
            summary["agent"],
            grasps=args.check_grasps,
            lift=args.check_lift,
            jobs=max(1, args.collectors + 1),
            seed=args.seed,
            generator=args.generator,
            threshold=args.check_threshold,
            deadline=deadline,
            confirm=args.check_confirm,
        )
    return summary


__all__ = ["Trainer", "train"]
