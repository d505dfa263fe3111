"""QT-Opt training loop (paper section 3; Kalashnikov et al. 2018), sized for a 2-core CPU.

The trainer process does gradient steps only; collector processes (``rcan.qtopt.collectors``) run the env
and send finished episodes back. Data: a scripted-exploration replay buffer and an on-policy one, sampled
about 50/50 per batch (``online_fraction``) once the on-policy one has data. Targets: clipped double Q with
two target networks, a Polyak average of the online net and a lagged copy of that average,
V(s') = min_i Q_i(s', argmax_a' Q_1(s', a')), the argmax by CEM; n-step returns; no bootstrap from terminal
transitions; targets are clipped to [0, 1] because Q is a sigmoid trained with cross-entropy. DrQ-style
random shifts augment the images.

One run directory holds everything:

* ``config.json``: the :class:`TrainArgs` of the run (for people; the checkpoint carries its own copy);
* ``tb/``: TensorBoard scalars (loss, Q values, targets, success of recent episodes per kind, greedy eval
  success on the test objects, diagnostics of where the policy closes the gripper, throughput);
* ``progress.jsonl``: one JSON line per log interval (the learning curve without TensorBoard);
* ``episodes.jsonl``: one JSON line per finished episode (kind, success, length, where it closed);
* ``agent.safetensors``: the Q-network and its config (what ``load_agent`` reads);
* ``train_state.safetensors``: online and target nets, optimizer, counters, RNG states, recent statistics,
  the name of the replay file that belongs to it;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rcan.common.checkpoint import (
    load_optimizer_state,
    load_rng_state,
    load_safetensors,
    optimizer_state_to_tensors,
    read_metadata,
    rng_state_to_tensors,
    save_safetensors_atomic,
)
from rcan.common.presets import from_preset
from rcan.qtopt import INPUT_MODES
from rcan.qtopt.agent import AGENT_FILE, check_input_mode, image_channels, save_agent
from rcan.qtopt.cem import CEMConfig, cem_maximize
from rcan.qtopt.collectors import Collector, CollectorConfig, Episode, InlineCollectors, LocalCollectors
from rcan.qtopt.network import OFFSET_RANGE, QNetConfig, QNetwork, random_shift
from rcan.qtopt.replay import (
    EpisodeSteps,
    LocalReplay,
    ReplayBuffer,
    ReplaySource,
    load_replays,
    save_replays,
)

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "rcan.qtopt_train_state"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.jsonl"
EPISODES_FILE = "episodes.jsonl"
WINDOW = 100
"""Episodes in the "recent" success rates."""


@dataclass
class TrainArgs:
    """Arguments of ``rcan train-agent``. Defaults are the ``default`` preset (64x64, 2 hours on 2 cores)."""

    input: str = "canonical"
    """Input mode: canonical, mild, medium, heavy (that domain's images) or rcan (concat(G(x), x), x heavy)."""
    out: str = "runs/agent"
    """Run directory (config, TensorBoard logs, checkpoints, replay)."""
    preset: str = "default"
    """Name of the preset these arguments started from (tiny, default, paper); informational."""
    resume: bool = False
    """Continue the run in ``out`` from its checkpoint (required if ``out`` exists)."""
    generator: str | None = None
    """Generator run directory or file for ``--input rcan`` (frozen; runs in the collector processes)."""
    seed: int = 0
    """Seeds weight init, sampling, augmentation and the collectors' envs."""
    collectors: int = 1
    """Collector processes (each one env). With 2 cores, 1 collector + the trainer keeps both busy. 0: one
    collector inside the trainer's process, taking turns with it (tests, tiny runs, debugging)."""
    env_steps: int = 250_000
    """Stop once this many env steps have been collected (on resume: may be raised to train further)."""
    minutes: float = 120.0
    """Stop after this much training wall-clock time, summed over resumes (0: no limit)."""
    image_size: int = 64
    """Env image side in pixels."""
    num_objects: int = 5
    """Objects per tray during training."""
    texture_dir: str | None = None
    """Folder of textures for the randomized domains (default: procedural textures)."""
    channels: tuple[int, ...] = (16, 32, 32)
    """Image tower widths (see ``QNetConfig``)."""
    strides: tuple[int, ...] = (2, 2, 2)
    """Image tower strides."""
    fuse_channels: int = 16
    """Channels of the fused feature map."""
    head_channels: int = 16
    """Per-candidate 1x1 conv width."""
    fc_hidden: int = 64
    """Final FC width."""
    coord_channels: bool = True
    """Coordinate channels at the input and at the fusion (for learning where to grasp)."""
    keypoints: int = 0
    """Spatial-softmax keypoints fed to the action/state embedding (see ``QNetConfig``; 0: off)."""
    gripper_keypoint: bool = True
    """Locate the gripper in the image and give every cell of the fused map its offset from it (see
    ``QNetConfig.gripper_keypoint``), so aiming becomes a local comparison. With ``mc_lower_bound``: 42.2%
    after 25 minutes against 32.4% without it and 31.4% with neither after 53 (benchmarks/RESULTS.md)."""
    gripper_aux_weight: float = 1.0
    """Weight of the auxiliary loss that teaches the gripper keypoint where the fingertips are (squared
    error in units of feature-map cells; labels from the simulator, stored in the replay; rows without a
    label are skipped). Only with ``gripper_keypoint``."""
    target_readout: bool = True
    """Also read the image where each move takes the gripper (``QNetConfig.target_readout``): a local head,
    the same at every place, adds its logit to the global one. Needs ``gripper_keypoint``. With
    ``scripted_aim_prob=0.5``: 66.7% [57.1, 75.1] after 24 min, the first agent that aims (its training log: closes 3.1-3.3
    cm from an object's centre vs 5-7 cm), against 32-48% without (benchmarks/RESULTS.md)."""
    readout_levels: int = 1
    """How many finer tower maps the target read-out samples (``QNetConfig.readout_levels``): 1 = the
    stride-4 map, 2 = also the stride-2 map (finer detail where the fingers close). Measured with 2: 59.8%
    after 24 min (seed 0), ~25% fewer gradient steps, no closer aim; not adopted."""
    move_aux_weight: float = 1.0
    """Weight of the auxiliary loss that teaches the target read-out where a move takes the gripper
    (squared error in fused-map cells against where the simulator shows the fingertips after the step,
    moved with the image's random shift; the last step of an episode has no label). Only with
    ``target_readout``."""
    gripper_yaw: bool = False
    """Read the gripper's yaw from the image and give the read-out the yaw each candidate closes at
    (``QNetConfig.gripper_yaw``; labels from the simulator, training only). Needs ``target_readout``.
    After 24 min (seed 0): 57.8% against 66.7% without; ~20% fewer gradient steps (benchmarks/RESULTS.md)."""
    yaw_aux_weight: float = 1.0
    """Weight of the auxiliary loss that teaches the yaw read-out (squared error of the (cos 2 psi,
    sin 2 psi) vector; rows without a label are skipped). Only with ``gripper_yaw``."""
    finger_readout: bool = False
    """Also read the image where each move puts the two fingertips (``QNetConfig.finger_readout``; labels
    from the simulator, training only). Needs ``gripper_yaw``. After 24 min (seed 0): 44.1%, slower to
    learn (9 against 13 gradient steps/s); its plateau is not measured (benchmarks/RESULTS.md)."""
    finger_aux_weight: float = 1.0
    """Weight of the auxiliary loss that teaches the finger read-out where the fingertips land (squared
    error in fused-map cells of the predicted half-span, the fingers in either order; rows without a label
    are skipped). Only with ``finger_readout``."""
    object_aux_weight: float = 0.0
    """Weight of an auxiliary loss that teaches the fused map which cells show an object (cross-entropy
    against the fraction of each cell's pixels that the simulator's segmentation marks as object, moved
    with the image's random shift; ``QNetConfig.object_map``). The collectors then record object masks
    (bit-packed, in the replay) for simulated episodes; never for ``real`` ones. 0: off."""
    global_pool: int = 1
    """Average-pool the fused map by this factor for the global head only (``QNetConfig.global_pool``):
    with ``strides=2,2,1`` and 2, a 16x16 map for the read-out at the global head's 8x8 cost. Measured
    with object offsets (24 min, seed 0): 56.9%, its object read-out finer (2.2 against 3.1 px) but its
    aim no closer; not adopted (benchmarks/RESULTS.md)."""
    object_offset_weight: float = 0.0
    """Weight of an auxiliary loss that teaches the read-out the offset from a point to the nearest
    object's grasp point (``QNetConfig.object_offsets``, which this turns on; needs ``target_readout``):
    squared error in fused-map cells, labels clipped to ``OFFSET_RANGE``, at each transition's landing
    point and at ``object_offset_points`` more points (half around random objects, half anywhere), all
    moved with the image's random shift; labels from the simulator (training only; ``real`` episodes
    carry none). 0: off. Measured with 1 (24 min, seed 0): 60.8% against 66.7% without; not adopted
    (benchmarks/RESULTS.md)."""
    object_offset_points: int = 6
    """Extra points per image at which the object-offset loss is taught (besides the landing point)."""
    batch_size: int = 32
    """Transitions per gradient step."""
    lr: float = 3e-4
    """Adam learning rate (the first, with ``lr_final``)."""
    lr_final: float = 0.0
    """With a value > 0: the learning rate falls linearly from ``lr`` to this over ``lr_decay_steps``
    gradient steps, then stays (a function of the step count, so a resumed run continues it exactly).
    0: a constant ``lr``. Measured (3e-5 over 15k steps, 24 min, seed 0): 60.8% against 66.7% constant;
    not adopted (benchmarks/RESULTS.md)."""
    lr_decay_steps: int = 15_000
    """Gradient steps over which the learning rate falls to ``lr_final``."""
    grad_clip: float = 10.0
    """Gradient norm clip (0: off)."""
    gamma: float = 0.9
    """Discount."""
    reward_offset: float = 0.05
    """Added to every env reward before learning. The env pays -0.05 per step; with a sigmoid Q, targets
    below 0 are clipped, so early in an episode almost every target would be 0 and actions would be
    indistinguishable (the NOTES' first probe had Q far below the true returns). With 0.05 the learned reward
    is 1 for a success and 0 otherwise, and gamma still rewards fast grasps."""
    n_step: int = 3
    """n-step returns (shorter credit paths from the final grasp back to the aim)."""
    mc_lower_bound: bool = True
    """Floor each target at the transition's Monte-Carlo return (the episode's discounted return from that
    step on): y = max(y_TD, G_t). Q*(s, a) >= Q^pi(s, a) for the policy that collected the data, so a
    successful episode labels the moves that led to its grasp at once, instead of through many rounds of
    bootstrapping from target networks that start out knowing nothing. Optimistic where success is luck."""
    tau: float = 0.005
    """Polyak rate of the first target network."""
    lag_every: int = 1000
    """Gradient steps between copies of the Polyak target into the second (lagged) target network."""
    cem_samples: int = 64
    """CEM candidates per iteration when acting."""
    cem_elites: int = 6
    """CEM elites when acting."""
    cem_iterations: int = 2
    """CEM iterations when acting."""
    target_cem_samples: int = 32
    """CEM candidates per iteration for V(s'): the per-candidate head dominates a gradient step's cost, and
    32 x 2 halves it against 64 x 2 (measured; the paper's value is affordable with more cores)."""
    target_cem_iterations: int = 2
    """CEM iterations for V(s')."""
    utd: float = 1.0
    """At most this many gradient steps per collected env step (an upper bound: if the collectors are
    faster than the trainer, the ratio is lower; ``progress.jsonl`` logs the actual one)."""
    learning_starts: int = 3000
    """Env steps of scripted exploration before the first gradient step and the first on-policy episode."""
    scripted_capacity: int = 100_000
    """Slots (env steps) of the scripted-exploration replay buffer."""
    policy_capacity: int = 150_000
    """Slots of the on-policy replay buffer."""
    online_fraction: float = 0.5
    """Fraction of each batch drawn from the on-policy buffer (QT-Opt's ~50/50 mix)."""
    scripted_prob: float = 0.3
    """Fraction of episodes after ``learning_starts`` run by the scripted policy (none in joint finetuning,
    which learns from on-policy episodes only)."""
    scripted_aim_prob: float = 0.5
    """Beyond the paper, simulation only: the share of scripted episodes aimed at a random object's centre
    (privileged object positions, 1 cm noise, random yaw) instead of a random point (see
    ``rcan.sim.scripted``). The agent never sees positions; this only changes which grasps fill the replay.
    Alone it did not help (35.3% after 24 min, inside the seed spread); with ``target_readout``: 66.7%."""
    scripted_wall_yaw_prob: float = 0.0
    """Beyond the paper, simulation only: the share of aimed scripted grasps whose yaw closes the fingers
    parallel to the nearest wall or the divider (privileged; the oracle's yaw: 80% success against 71%
    with a random yaw for the scripted policy alone) instead of a random yaw, so the replay holds grasps
    at good and bad yaws next to each other (see ``rcan.sim.scripted``). Measured with 0.5 after 24 min:
    70.6% (seed 0) and 57.8% (seed 1), against 66.7% and 62.7% for the default; not adopted."""
    scripted_retry_prob: float = 0.0
    """Beyond the paper, simulation only: after a scripted grasp's lift, if the fingers touch no object
    (privileged), reopen and go for another goal with this probability while 6 or more steps remain (see
    ``rcan.sim.scripted``). Without it the replay never shows an empty grasp followed by a reopening, so
    the agent cannot learn QT-Opt's retries: every agent so far closes once and terminates. Measured with 1:
    61.8% after 24 min (seed 0), and the agent reopened in only 5 of 102 attempts; not adopted."""
    eval_prob: float = 0.1
    """Fraction of episodes that are greedy evaluations on the unseen test objects (never trained on)."""
    noise_std: float = 0.3
    """Exploration noise on dx, dy, dz, dyaw in on-policy episodes."""
    aug_pad: int = 4
    """DrQ random shift in pixels (0: off). 2 pixels: 56.9% after 24 min against 66.7% (seed 0)."""
    push_every: int = 200
    """Gradient steps between weight pushes to the collectors."""
    log_every: int = 200
    """Gradient steps between TensorBoard/progress logs."""
    checkpoint_minutes: float = 10.0
    """Minutes between checkpoints (and one at the end, and on Ctrl-C/SIGTERM)."""
    threads: int = 1
    """torch threads of the trainer (the collectors use one each)."""
    backend: str = "local"
    """local: collector processes, replay and targets in this machine's processes; ray: collectors, replay and
    Bellman targets as Ray actors (``pip install 'rcan[ray]'``; see ``rcan.qtopt.ray_backend``)."""
    address: str | None = None
    """With ``backend="ray"``: the Ray cluster to join (``auto``, ``HOST:PORT``); default: start a local Ray."""
    finetune_from: str | None = None
    """Joint finetuning (paper 4.3): start from this trained agent (run directory or agent file: its weights
    become the online and both target networks; fresh optimizer and replay) and learn from on-policy episodes
    in ``real_domain`` mixed with simulated on-policy ones. Use with ``real_episodes``."""
    real_episodes: int = 0
    """Joint finetuning: stop once this many on-policy episodes in ``real_domain`` (the budget of "real"
    grasps) have been collected (on resume: may be raised to finetune further). 0: ordinary training."""
    real_domain: str = "real"
    """The visual domain that stands in for the real world during joint finetuning."""
    real_fraction: float = 0.5
    """Joint finetuning: the fraction of episodes run in ``real_domain`` (the rest are simulated on-policy
    episodes in the training domain) and of each batch drawn from them."""
    finetune_continue: bool = False
    """Joint finetuning from a run directory: carry on that run's training instead of restarting it: its
    online and both target networks, its optimizer state and its simulated replay (scripted and on-policy),
    so the simulated half of each batch draws on all the agent learned from, not only on a few fresh
    episodes, and the first updates are not a fresh Adam's full-size steps (off: the agent's weights only,
    fresh optimizer and replay)."""


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: a few dozen env steps, a tiny network, for tests.
    "tiny": {
        "env_steps": 60,
        "minutes": 0.0,
        "channels": (8, 8),
        "strides": (4, 2),
        "fuse_channels": 8,
        "head_channels": 4,
        "fc_hidden": 8,
        "batch_size": 8,
        "cem_samples": 16,
        "cem_elites": 4,
        "cem_iterations": 1,
        "target_cem_samples": 8,
        "target_cem_iterations": 1,
        "learning_starts": 20,
        "scripted_capacity": 400,
        "policy_capacity": 400,
        "eval_prob": 0.0,
        "utd": 0.5,
        "push_every": 5,
        "log_every": 5,
        "lag_every": 10,
    },
    "default": {},
    # The paper's camera resolution and QT-Opt's widths and CEM; for a machine with many cores and RAM.
    "paper": {
        "image_size": 472,
        "channels": (64, 64, 64, 64, 64),
        "strides": (2, 2, 2, 2, 2),
        "fuse_channels": 64,
        "head_channels": 64,
        "fc_hidden": 64,
        "lr": 1e-4,
        "target_cem_samples": 64,
        "collectors": 8,
        "env_steps": 10_000_000,
        "minutes": 0.0,
        # 472x472x3 bytes per slot: 20k slots are 13 GB of RAM.
        "scripted_capacity": 5_000,
        "policy_capacity": 15_000,
        "threads": 0,
    },
}

RESUMABLE = frozenset(
    {
        "out",
        "resume",
        "env_steps",
        "minutes",
        "collectors",
        "log_every",
        "checkpoint_minutes",
        "threads",
        "generator",
        "backend",
        "address",
        "real_episodes",
    }
)
"""Fields that may change on resume (they do not change what the saved state means)."""


def make_args(preset: str = "default", **overrides: Any) -> TrainArgs:
    """TrainArgs for a preset with keyword overrides (unknown names raise ValueError)."""
    return _validated(from_preset(TrainArgs, PRESETS, preset, overrides))


def resolve_args(out: str, preset: str | None, resume: bool, overrides: Mapping[str, Any]) -> TrainArgs:
    """Arguments for a CLI call: on ``--resume``, the run's saved arguments with the allowed overrides;
    otherwise the preset's. Raises ValueError/FileNotFoundError with one clear message."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    run = Path(out)
    if resume:
        state = run / STATE_FILE
        if not state.is_file():
            raise FileNotFoundError(f"nothing to resume: {state} does not exist")
        saved = args_from_json(_read_state_meta(state)["args"])
        if preset is not None and preset != saved.preset:
            raise ValueError(f"{out} was trained with --preset {saved.preset}, not {preset}")
        for key, value in overrides.items():
            if key not in RESUMABLE and value != getattr(saved, key):
                raise ValueError(
                    f"{out} was trained with {key}={getattr(saved, key)!r}; cannot change it on resume"
                )
        return _validated(dataclasses.replace(saved, out=out, resume=True, **overrides))
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise ValueError(f"{out} already exists; pass --resume to continue it or choose a new --out")
    return make_args(preset or "default", out=out, resume=False, **overrides)


def _validated(args: TrainArgs) -> TrainArgs:
    check_input_mode(args.input)
    if args.input == "rcan" and not args.generator:
        raise ValueError("--input rcan needs --generator (a trained generator run or file)")
    if args.input != "rcan" and args.generator:
        raise ValueError(f"--generator is only for --input rcan, not {args.input}")
    for name in ("env_steps", "batch_size", "n_step", "image_size", "num_objects"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")
    if args.collectors < (1 if args.backend == "ray" else 0):
        raise ValueError(f"collectors must be >= 1 (or 0: in the trainer's process, local), got {args.collectors}")
    if not 0.0 <= args.online_fraction <= 1.0 or args.scripted_prob + args.eval_prob > 1.0:
        raise ValueError("online_fraction must be in [0, 1] and scripted_prob + eval_prob <= 1")
    for name in ("scripted_aim_prob", "scripted_retry_prob", "scripted_wall_yaw_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(args, name)}")
    if args.finger_readout and not args.gripper_yaw:
        raise ValueError("finger_readout needs gripper_yaw (the fingers' direction comes from the read yaw)")
    if args.gripper_yaw and not args.target_readout:
        raise ValueError("gripper_yaw needs target_readout (the read-out's local head uses the yaw)")
    if args.target_readout and not args.gripper_keypoint:
        raise ValueError("target_readout needs gripper_keypoint (the read-out starts from the located gripper)")
    if args.lr <= 0 or args.lr_final < 0 or args.lr_decay_steps < 1:
        raise ValueError("lr must be > 0, lr_final >= 0 and lr_decay_steps >= 1")
    if args.object_offset_weight < 0 or args.object_offset_points < 0:
        raise ValueError("object_offset_weight and object_offset_points must be >= 0")
    if args.object_offset_weight > 0 and not args.target_readout:
        raise ValueError("object_offset_weight needs target_readout (offsets are read where the read-out looks)")
    if args.real_episodes < 0 or not 0.0 < args.real_fraction < 1.0:
        raise ValueError("real_episodes must be >= 0 and real_fraction in (0, 1)")
    if bool(args.finetune_from) != (args.real_episodes > 0):
        raise ValueError("joint finetuning needs both finetune_from (a trained agent) and real_episodes > 0")
    if args.finetune_continue and not args.finetune_from:
        raise ValueError("finetune_continue is for joint finetuning (with finetune_from)")
    if args.finetune_from:
        from rcan.sim.domains import DOMAINS

        if args.real_domain not in DOMAINS:
            raise ValueError(f"unknown real_domain {args.real_domain!r}; choose one of {', '.join(DOMAINS)}")
        if args.eval_prob + args.real_fraction > 1.0:
            raise ValueError("joint finetuning needs eval_prob + real_fraction <= 1")
    from rcan.qtopt.ray_backend import check_backend

    if args.backend == "local" and args.address:  # e.g. a Ray run resumed with --backend local
        args = dataclasses.replace(args, address=None)
    check_backend(args.backend, args.address)  # a missing Ray is reported here, before any work
    return args


def args_to_json(args: TrainArgs) -> str:
    return json.dumps(dataclasses.asdict(args), sort_keys=True)


LEGACY_DEFAULTS: dict[str, Any] = {
    "mc_lower_bound": False,
    "gripper_keypoint": False,
    "finetune_continue": False,
    "target_readout": False,
    "scripted_aim_prob": 0.0,
    "gripper_yaw": False,
    "finger_readout": False,
}
"""Values of fields added after runs were saved without them: what those runs did (the defaults changed)."""


def args_from_json(text: str) -> TrainArgs:
    d = json.loads(text)
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    d = {k: v for k, v in d.items() if k in names}
    for k, v in LEGACY_DEFAULTS.items():
        d.setdefault(k, v)
    for key in ("channels", "strides"):
        if key in d:
            d[key] = tuple(d[key])
    return TrainArgs(**d)


def _read_state_meta(state: Path) -> dict[str, str]:
    meta = read_metadata(state)
    if meta.get("format") != STATE_FORMAT or "args" not in meta:
        raise ValueError(f"{state} is not an rcan agent training state")
    return meta


def network_config(args: TrainArgs) -> QNetConfig:
    return QNetConfig(
        in_channels=image_channels(args.input),
        image_size=args.image_size,
        channels=tuple(args.channels),
        strides=tuple(args.strides),
        fuse_channels=args.fuse_channels,
        head_channels=args.head_channels,
        fc_hidden=args.fc_hidden,
        coord_channels=args.coord_channels,
        keypoints=args.keypoints,
        gripper_keypoint=args.gripper_keypoint,
        object_map=args.object_aux_weight > 0,
        target_readout=args.target_readout,
        readout_levels=args.readout_levels,
        gripper_yaw=args.gripper_yaw,
        finger_readout=args.finger_readout,
        object_offsets=args.object_offset_weight > 0,
        global_pool=args.global_pool,
    )


def acting_cem(args: TrainArgs) -> CEMConfig:
    return CEMConfig(args.cem_samples, args.cem_elites, args.cem_iterations)


def target_cem(args: TrainArgs) -> CEMConfig:
    return CEMConfig(
        args.target_cem_samples, min(args.cem_elites, args.target_cem_samples), args.target_cem_iterations
    )


def collector_config(a: TrainArgs) -> CollectorConfig:
    """What each collector process needs to build its env and policy."""
    return CollectorConfig(
        input_mode=a.input,
        image_size=a.image_size,
        num_objects=a.num_objects,
        texture_dir=a.texture_dir,
        generator=str(a.generator) if a.generator else None,
        network=network_config(a).to_json(),
        cem=dataclasses.asdict(acting_cem(a)),
        scripted_prob=0.0 if a.finetune_from else a.scripted_prob,
        scripted_aim_prob=a.scripted_aim_prob,
        scripted_retry_prob=a.scripted_retry_prob,
        scripted_wall_yaw_prob=a.scripted_wall_yaw_prob,
        eval_prob=a.eval_prob,
        noise_std=a.noise_std,
        real_prob=a.real_fraction if a.finetune_from else 0.0,
        real_domain=a.real_domain,
        object_labels=a.object_aux_weight > 0,
    )


def make_collectors(a: TrainArgs, seed: int) -> Collector:
    """The run's collectors on its backend: local processes, or Ray actors (Ray connected by the trainer)."""
    if a.backend == "ray":
        from rcan.qtopt.ray_backend import RayCollectors

        return RayCollectors(a.collectors, collector_config(a), seed)
    if a.collectors == 0:
        return InlineCollectors(collector_config(a), seed)
    return LocalCollectors(a.collectors, collector_config(a), seed)


# -- the math --------------------------------------------------------------------------------------------
@torch.no_grad()
def clipped_double_q_values(
    target1: QNetwork,
    target2: QNetwork,
    images: torch.Tensor,
    states: torch.Tensor,
    cem: CEMConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """V(s') = min(Q1(s', a*), Q2(s', a*)) as probabilities, a* = CEM argmax of Q1 (QT-Opt, paper eq. 1)."""
    f1 = target1.features(images)
    a_star, logit1 = cem_maximize(
        lambda c: target1.head(f1, states, c), images.shape[0], cem, generator=generator
    )
    logit2 = target2.head(target2.features(images), states, a_star[:, None])[:, 0]
    return torch.minimum(torch.sigmoid(logit1), torch.sigmoid(logit2))


def bellman_targets(
    returns: torch.Tensor, discounts: torch.Tensor, next_values: torch.Tensor
) -> torch.Tensor:
    """y = R_n + gamma^k V(s_{t+k}) (discount 0 = terminal: no bootstrap), clipped to the sigmoid's [0, 1]."""
    return (returns + discounts * next_values).clamp(0.0, 1.0)


def next_state_values(
    batch: Mapping[str, torch.Tensor],
    target1: QNetwork,
    target2: QNetwork,
    cem: CEMConfig,
    aug_pad: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The target computation of a batch: V(s') per row (0 where there is no bootstrap), next images randomly
    shifted. One function for the trainer (local backend) and the Ray Bellman actors."""
    nxt = batch["discounts"] > 0
    v = torch.zeros(len(batch["discounts"]))
    if nxt.any():
        next_images = random_shift(batch["next_images"][nxt], aug_pad, generator)
        v[nxt] = clipped_double_q_values(
            target1, target2, next_images, batch["next_states"][nxt], cem, generator
        )
    return v


def gripper_aux_loss(
    net: QNetwork, feats: torch.Tensor, tool_pixels: torch.Tensor, shifts: torch.Tensor, width: int
) -> torch.Tensor:
    """Squared distance, in feature-map cells, between the located gripper and where the simulator says the
    fingertips are (moved by the same random shift as the image); rows without a label count for nothing."""
    label = tool_pixels + shifts * (2.0 / width)
    known = torch.isfinite(label).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0  # image units -> cells
    err = (net.gripper_coords(feats[known]) - label[known]) * cells
    return (err**2).sum(dim=1).mean()


def move_aux_loss(
    net: QNetwork,
    feats: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    tool_pixels_after: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Squared distance, in fused-map cells, between where the target read-out expects the action to take
    the gripper and where the simulator shows the fingertips after the step, in the shifted image's
    coordinates (the shift moves the whole image); rows without a label count for nothing."""
    label = tool_pixels_after + shifts * (2.0 / width)
    known = torch.isfinite(label).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0
    pred = net.move_pixels(feats[known], states[known], actions[known][:, None])[:, 0]
    return (((pred - label[known]) * cells) ** 2).sum(dim=1).mean()


def finger_aux_loss(
    net: QNetwork,
    feats: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    finger_pixels: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Squared distance, in fused-map cells, between where the finger read-out expects the action to put
    the two fingertips and where the simulator shows them once the move is done (before any closing), in
    the shifted image's coordinates; the fingers in the order that fits better (they are interchangeable);
    rows without a label count for nothing."""
    label = finger_pixels.view(-1, 2, 2) + shifts[:, None] * (2.0 / width)
    known = torch.isfinite(label).flatten(1).all(dim=1)
    if not known.any():
        return torch.zeros(())
    cells = feats.shape[-1] / 2.0
    pred = net.finger_pixels(feats[known], states[known], actions[known][:, None])[:, 0]  # (N, 2, 2)
    lab = label[known]
    same = ((pred - lab) ** 2).sum(dim=(1, 2))
    swapped = ((pred - lab.flip(1)) ** 2).sum(dim=(1, 2))
    return (torch.minimum(same, swapped) * cells**2).mean()


def yaw_aux_loss(net: QNetwork, feats: torch.Tensor, yaws: torch.Tensor) -> torch.Tensor:
    """Squared error between the read yaw vector and (cos 2 psi, sin 2 psi) of the simulator's yaw (a random
    shift does not turn the image); rows without a label count for nothing."""
    known = torch.isfinite(yaws)
    if not known.any():
        return torch.zeros(())
    label = torch.stack([torch.cos(2 * yaws[known]), torch.sin(2 * yaws[known])], dim=1)
    return ((net.gripper_yaw_vector(feats[known]) - label) ** 2).sum(dim=1).mean()


def learning_rate(args: TrainArgs, grad_steps: int) -> float:
    """The learning rate of gradient step ``grad_steps`` (0-based): ``lr``, or its linear fall to
    ``lr_final`` over ``lr_decay_steps`` steps."""
    if args.lr_final <= 0:
        return args.lr
    frac = min(1.0, grad_steps / args.lr_decay_steps)
    return args.lr + (args.lr_final - args.lr) * frac


def offset_points(
    centres: torch.Tensor, landing: torch.Tensor, extra: int, spread: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, O, 2) object grasp points (NaN: absent), (B, 2) landing points (NaN: unknown) -> (B, 1 + extra, 2)
    points at which to teach object offsets: the landing point, ``extra // 2`` around random objects (normal
    noise of std ``spread`` image units), the rest uniform over the image; NaN where there is no such point."""
    b = centres.shape[0]
    near = extra // 2
    weights = torch.isfinite(centres).all(dim=-1).float() + 1e-12  # a row without objects draws NaN slots
    parts = [landing[:, None]]
    if near:
        pick = torch.multinomial(weights, near, replacement=True, generator=generator)
        chosen = torch.gather(centres, 1, pick[..., None].expand(b, near, 2))
        parts.append(chosen + spread * torch.randn(b, near, 2, generator=generator))
    if extra - near:
        parts.append(torch.rand(b, extra - near, 2, generator=generator) * 2.0 - 1.0)
    return torch.cat(parts, dim=1)


def nearest_offsets(points: torch.Tensor, centres: torch.Tensor, cells: float, limit: float) -> torch.Tensor:
    """(B, M, 2) points, (B, O, 2) grasp points (NaN: absent) -> (B, M, 2): from each point to the nearest
    grasp point, in cells (``cells`` per image unit), clipped to +-``limit``; NaN where a row has none."""
    diff = centres[:, None] - points[:, :, None]  # (B, M, O, 2)
    dist = (diff**2).sum(-1).nan_to_num(float("inf"))
    idx = dist.argmin(dim=-1)  # (B, M)
    near = torch.gather(diff, 2, idx[..., None, None].expand(*idx.shape, 1, 2))[:, :, 0]
    none = torch.isinf(dist.min(dim=-1).values)
    return (near * cells).clamp(-limit, limit).masked_fill(none[..., None], float("nan"))


def object_offset_loss(
    net: QNetwork,
    feats: torch.Tensor,
    object_pixels: torch.Tensor,
    landing: torch.Tensor,
    shifts: torch.Tensor,
    width: int,
    extra: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Squared error, in fused-map cells, of the offsets the read-out reads to the nearest object's grasp
    point, at the landing points and ``extra`` more points per image (:func:`offset_points`), all in the
    shifted image's coordinates; points without a label count for nothing."""
    move = shifts * (2.0 / width)
    centres = object_pixels + move[:, None]
    h = feats.shape[-1]
    points = offset_points(centres, landing + move, extra, 2.0 / h, generator)
    label = nearest_offsets(points, centres, h / 2.0, OFFSET_RANGE)
    known = torch.isfinite(label).all(dim=-1) & torch.isfinite(points).all(dim=-1)  # (B, M)
    if not known.any():
        return torch.zeros(())
    pred = net.object_offsets(feats, points.nan_to_num(0.0))
    return ((pred - label.nan_to_num(0.0)) ** 2).sum(-1)[known].mean()


def shift_images(
    images: torch.Tensor, masks: torch.Tensor | None, pad: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DrQ's random shift of a batch of images, and of their object masks (B, H, W) by the same offsets
    (one more channel through the same crop); returns images, the (B, 2) shifts and the shifted masks."""
    if masks is None:
        images, shifts = random_shift(images, pad, generator, return_shifts=True)
        return images, shifts, None
    out, shifts = random_shift(torch.cat([images, masks[:, None].to(images.dtype)], 1), pad, generator, True)
    return out[:, :-1], shifts, out[:, -1]


def object_aux_loss(net: QNetwork, feats: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the predicted object map and the fraction of each cell's pixels that show an
    object (``masks`` (B, H, W) 0/1, already shifted with the images); rows without a mask count for nothing."""
    if not known.any():
        return torch.zeros(())
    h, w = feats.shape[-2:]
    frac = F.adaptive_avg_pool2d(masks[known][:, None].float(), (h, w))[:, 0]
    return F.binary_cross_entropy_with_logits(net.object_logits(feats[known]), frac)


# -- the trainer -----------------------------------------------------------------------------------------
class Trainer:
    """Owns the networks, optimizer, replay buffers and counters; ``run`` drives collectors and training."""

    def __init__(self, args: TrainArgs) -> None:
        self.args = args
        self.run_dir = Path(args.out)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % 2**32)  # noqa: NPY002 (the legacy global state is saved for exactness)
        self.net = QNetwork(network_config(args))
        self.target1 = copy.deepcopy(self.net).requires_grad_(False)
        self.target2 = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=args.lr)
        shape = (image_channels(args.input), args.image_size, args.image_size)
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
        if args.resume:
            self.load_checkpoint()
        elif args.finetune_from:
            self._start_from(args.finetune_from)

    def _start_from(self, agent: str) -> None:
        """Joint finetuning starts from a trained agent: its weights in the online and both target nets
        (``finetune_continue``: the run's whole training state and simulated replay)."""
        from rcan.qtopt.agent import load_network

        if self.args.finetune_continue:
            self._continue_run(Path(agent))
            return
        net, meta = load_network(agent)
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
        )
        self.replay.add_episode(ep.kind, steps)
        self.env_steps += ep.length

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
        batch = self.replay.sample(self.args.batch_size, self.batch_mix(), self.rng)
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def ready(self) -> bool:
        return self.env_steps >= self.learning_starts and sum(self.replay.sizes().values()) > 0

    @property
    def learning_starts(self) -> int:
        """Env steps before the first gradient step (none when finetuning an already trained agent)."""
        return 0 if self.args.finetune_from else self.args.learning_starts

    # -- learning -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        a = self.args
        self.replay.sync_targets(self.target1, self.target2, self.grad_steps)  # no-op in-process
        batch = self.sample()
        pad = a.aug_pad
        # Buffers keep object masks exactly when object_aux_weight > 0 (and then the network has an object map).
        masks = batch["object_masks"] if a.object_aux_weight > 0 else None
        images, shifts, masks = shift_images(batch["images"], masks, pad, self.torch_rng)
        nxt = batch["discounts"] > 0
        if "next_values" in batch:  # computed by the Ray Bellman actors
            v = batch["next_values"]
        else:
            v = next_state_values(batch, self.target1, self.target2, target_cem(a), pad, self.torch_rng)
        y = bellman_targets(batch["returns"], batch["discounts"], v)
        floored = torch.zeros(())
        if a.mc_lower_bound:
            mc = batch["mc_returns"].clamp(0.0, 1.0)
            floored = (mc > y).float().mean()
            y = torch.maximum(y, mc)
        feats = self.net.features(images)
        logits = self.net.head(feats, batch["states"], batch["actions"][:, None])[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y)
        aux = torch.zeros(())
        if self.net.config.gripper_keypoint and a.gripper_aux_weight > 0:
            aux = gripper_aux_loss(self.net, feats, batch["tool_pixels"], shifts, images.shape[-1])
            loss = loss + a.gripper_aux_weight * aux
        move = torch.zeros(())
        if self.net.config.target_readout and a.move_aux_weight > 0:
            move = move_aux_loss(
                self.net, feats, batch["states"], batch["actions"], batch["tool_pixels_after"], shifts, images.shape[-1]
            )
            loss = loss + a.move_aux_weight * move
        yaw = torch.zeros(())
        if self.net.config.gripper_yaw and a.yaw_aux_weight > 0:
            yaw = yaw_aux_loss(self.net, feats, batch["tool_yaws"])
            loss = loss + a.yaw_aux_weight * yaw
        finger = torch.zeros(())
        if self.net.config.finger_readout and a.finger_aux_weight > 0:
            finger = finger_aux_loss(
                self.net, feats, batch["states"], batch["actions"], batch["finger_pixels"], shifts, images.shape[-1]
            )
            loss = loss + a.finger_aux_weight * finger
        offsets = torch.zeros(())
        if self.net.config.object_offsets:
            offsets = object_offset_loss(
                self.net,
                feats,
                batch["object_pixels"],
                batch["tool_pixels_after"],
                shifts,
                images.shape[-1],
                a.object_offset_points,
                self.torch_rng,
            )
            loss = loss + a.object_offset_weight * offsets
        obj = torch.zeros(())
        if masks is not None:
            obj = object_aux_loss(self.net, feats, masks, batch["mask_known"])
            loss = loss + a.object_aux_weight * obj
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), a.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(a, self.grad_steps)
        self.opt.step()
        self.grad_steps += 1
        with torch.no_grad():
            for p_t, p in zip(self.target1.parameters(), self.net.parameters(), strict=True):
                p_t.lerp_(p, a.tau)
            if self.grad_steps % a.lag_every == 0:
                self.target2.load_state_dict(self.target1.state_dict())
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
        }

    # -- checkpoints --------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything but the replay buffers, as safetensors tensors + metadata."""
        tensors: dict[str, torch.Tensor] = {}
        for name, net in (("net", self.net), ("target1", self.target1), ("target2", self.target2)):
            tensors.update({f"{name}.{k}": v for k, v in net.state_dict().items()})
        opt_t, opt_m = optimizer_state_to_tensors(self.opt, prefix="opt.")
        rng_t, rng_m = rng_state_to_tensors()
        tensors.update(opt_t)
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
            **opt_m,
            **rng_m,
        }
        return tensors, meta

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
        extra = {
            "grad_steps": str(self.grad_steps),
            "env_steps": str(self.env_steps),
            "episodes": json.dumps(self.counts),
            "args": args_to_json(self.args),
        }
        if self.args.generator:
            extra["generator"] = str(Path(self.args.generator).resolve())
        save_agent(self.run_dir / AGENT_FILE, self.net, self.args.input, acting_cem(self.args), extra)
        # The state file now names the new replay file: older ones (and leftovers of a kill) can go.
        for p in self.run_dir.glob("replay-*.npz"):
            if p.name != self.replay_file:
                p.unlink(missing_ok=True)

    def _load_learner(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """The online and target networks and the optimizer from a training state."""
        try:
            for name, net in (("net", self.net), ("target1", self.target1), ("target2", self.target2)):
                sd = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
                net.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{path}: weights do not match the run's network ({str(err).splitlines()[0]})"
            ) from None
        load_optimizer_state(self.opt, tensors, meta, prefix="opt.")

    def load_checkpoint(self) -> None:
        path = self.run_dir / STATE_FILE
        tensors, meta = load_safetensors(path, expect_format=STATE_FORMAT)
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
        self.replay_file = meta.get("replay_file") or None
        if self.replay_file:
            self.replay.load(load_replays(self.run_dir / self.replay_file))

    # -- the loop -----------------------------------------------------------------------------------
    def finished(self) -> bool:
        a = self.args
        if a.finetune_from and self.counts["real"] >= a.real_episodes:
            return True
        return self.env_steps >= a.env_steps or (a.minutes > 0 and self.train_seconds >= a.minutes * 60)

    def run(self, collectors: Collector | None = None) -> dict[str, Any]:
        """Train until ``env_steps`` or ``minutes``; checkpoints periodically, at the end and on a signal."""
        a = self.args
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(args_to_json(self.args) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.grad_steps or None)
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
                        coll.set_weights(self.net.state_dict(), self.grad_steps)
                        pushed = self.grad_steps
                    budget = a.utd * (self.env_steps - self.learning_starts) + 1
                    if self.grad_steps < budget:
                        for k, v in self.train_step().items():
                            stats[k].append(v)
                        trained = True
                        if self.grad_steps - pushed >= a.push_every:
                            coll.set_weights(self.net.state_dict(), self.grad_steps)
                            pushed = self.grad_steps
                        if self.grad_steps % a.log_every == 0:
                            now = time.monotonic()
                            self._log(
                                writer, stats, now - t_last, self.env_steps - s_last, self.grad_steps - g_last
                            )
                            t_last, s_last, g_last = now, self.env_steps, self.grad_steps
                            stats.clear()
                if not trained:
                    time.sleep(0.01)
                now = time.monotonic()
                self.train_seconds += now - tick
                tick = now
                if now - last_ckpt >= a.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
                    tick = last_ckpt
        finally:
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
        }

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
        return trainer.run()
    finally:
        trainer.close()


__all__ = [
    "INPUT_MODES",
    "PRESETS",
    "TrainArgs",
    "Trainer",
    "bellman_targets",
    "clipped_double_q_values",
    "make_args",
    "make_collectors",
    "next_state_values",
    "resolve_args",
    "train",
]
