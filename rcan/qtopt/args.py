"""The arguments of a QT-Opt run (``TrainArgs``, presets, validation, resume rules) and what they build:
the network's and CEM's configs and the collectors. The names of a run directory's files live here too, so
that reading a run's arguments (``resolve_args``) does not need the trainer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcan.common.checkpoint import read_metadata
from rcan.common.presets import from_preset
from rcan.qtopt.agent import check_input_mode, image_channels
from rcan.qtopt.cem import CEMConfig
from rcan.qtopt.collectors import Collector, CollectorConfig, InlineCollectors, LocalCollectors
from rcan.qtopt.network import QNetConfig

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "rcan.qtopt_train_state"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.jsonl"
EPISODES_FILE = "episodes.jsonl"
MEMBER_DIR = "members"
"""With ``ensemble_members`` > 1: ``member-<k>.safetensors``, the online network ``k * ensemble_spacing``
of the budget before the end, stored in the final agent file beside the final network."""
STARTUP_FILES = frozenset({CONFIG_FILE, PROGRESS_FILE, EPISODES_FILE, "tb", MEMBER_DIR})
"""All a run may write before its first checkpoint: a folder with only these and no state file is a run
killed before it had anything to resume, and a fresh start takes it over (rather than refuse it for good)."""
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
    """Stop once this many env steps have been collected (on resume: may be raised to train further). Lifted
    (seed 7, 2026-12-07: the full 100 minutes, 338k env steps and 107k gradient steps against ~82k), the
    agent made 88.5% over 30 object sets, inside the default seeds' 86.8-92.3%: the cap costs nothing
    measurable and keeps a run's length steady across hosts."""
    minutes: float = 100.0
    """Stop after this much training wall-clock time, summed over resumes (0: no limit). The default leaves
    room for the distillation (``distill_steps``, ~6 minutes) and the grasp check (``check_grasps``, ~8-12
    minutes) inside 2 hours; the 250k env steps are reached first on a quiet fast host (81-103 minutes),
    not always on a slower one (110 minutes for the eighth seed, 2026-12-06)."""
    budget_minutes: float = 120.0
    """Training and the grasp check together stay within this wall-clock time (0: no overall limit): the
    check's collection stops when the budget, less a minute and a half for its fit, runs out, once it has
    ``CHECK_MIN_GRASPS`` grasps (fewer than ``check_grasps`` then; the check's file says how many). Why:
    on a slower host 110 training minutes and 4,000 check grasps took 122 minutes (the eighth seed),
    over the issue's 2 hours. Needs ``minutes`` > 0 and at least 3 minutes below it."""
    image_size: int = 64
    """Env image side in pixels."""
    first_frame: bool = False
    """Stack the episode's first image on the current one (``QNetConfig.first_frame``): the objects in
    full view, before the arm came down over them."""
    camera: str = "wide"
    """The env's camera (``rcan.sim.renderer.CAMERAS``): ``wide`` (the whole cell; what the shipped generator
    was trained on, so the only choice for ``--input rcan``) or ``tray`` (the same pose zoomed onto the tray:
    1.8x the pixels on the tray for the same image size). Recorded in the agent file, so ``rcan evaluate``
    uses the camera the agent was trained with."""
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
    readout_patch: int = 1
    """The target read-out samples this many points squared around where the move lands, one cell of the
    stride-4 map apart (``QNetConfig.readout_patch``; 1: the landing point alone)."""
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
    wall_yaw_weight: float = 0.0
    """Weight of an auxiliary loss that teaches the read-out which closing yaw keeps the fingers off the
    wall or divider nearest to where a move lands (``QNetConfig.wall_yaw``, which this turns on; needs
    ``gripper_yaw``): cross-entropy at each transition's landing point against the simulator's
    ``wall_yaw_sign`` (training only; ``real`` episodes carry none). The read-out's local head then gets
    the read sign and its alignment with the closing yaw. 0: off. Measured with 1, ``gripper_yaw`` and
    ``scripted_wall_yaw_prob=0.5`` (24 min, seed 0): 39.4% over five object sets; it closes nearer the
    wall-parallel yaw (66-75 of ~100 closings within 30 degrees, against 27 for the earlier shipped agent) but
    aims worse; not adopted (benchmarks/RESULTS.md)."""
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
    over the full default budget (3e-5 over 95k steps, seed 0, 2026-12-06): 86.1% over five object sets
    with its check and 71.4% closing once, against 87.5% and 73.1% constant; not adopted
    (benchmarks/RESULTS.md)."""
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
    view_shifts: int = 5
    """Shifted copies of the image the saved agent averages its Q over when ``rcan evaluate`` runs it
    (test-time augmentation with training's random shift; 1: off). Recorded in the agent file; the
    training run's own episodes act with one view. Five views raised three 24-minute agents by 1.6-6.9
    points over five object sets (docs/agent-log.md)."""
    rerank: int = 16
    """With ``view_shifts`` > 1, the saved agent's CEM searches on the unshifted view alone and re-scores
    its this-many best candidates on all views (0: search on the mean over all views, 4-5x the one-view CEM time).
    Recorded in the agent file. 16: +3.4 to +3.8 points over one view on three agents at 5.8-7.6 ms per step (bench_qtopt.py)."""
    search_critics: int = 0
    """With ``ensemble_members`` > 1 and ``rerank``: the saved agent's CEM searches with its first this-many
    critics and re-scores the ``rerank`` best candidates on all of them (0: searches with all; each critic
    adds about one critic's CEM time). Recorded in the agent file."""
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
    outcome_fraction: float = 0.0
    """Beyond the paper: the share of each buffer's part of a batch drawn from episodes' last steps (the
    closing, or the step that ran out of time), whose target is the observed outcome itself; the rest is
    uniform, as in QT-Opt (0: uniform, where last steps are ~1 in 9). Why: a closing's outcome depends on
    where it closes to ~1 cm (benchmarks/RESULTS.md), and the critic's Q is too flat there to tell a grasp
    that holds from a near miss; more of each batch on those labels might sharpen that judgement, at the
    cost of the bootstrapped steps of the approach. Measured with 0.25 (seed 0, default preset,
    2026-12-05): 83.1% over five object sets with its check, 65.1% closing once (the default seeds:
    84.7-90.0% and 68.8-74.9%); not adopted."""
    mirror_prob: float = 0.0
    """Beyond the paper: the share of each batch's transitions replaced by their mirror image (x -> -x:
    images and next images flipped left-right, dx and dyaw negated, the pixel labels and yaws mirrored;
    ``rcan.qtopt.replay.mirror_rows``), a second cell's worth of closings from the same grasps. Why: the
    closing's judgement is limited by the closings seen, not by capacity (without the random shift the
    dense probe's critic fits its training labels to AUC 0.97 and falls to 0.71 on test objects), and
    the cameras sit in the plane x = 0, so a mirrored state projects exactly to the flipped image (only
    the arm's side and the light's shadows differ from a real frame). Measured with 0.5 (seed 0, default
    preset, 2026-12-06): 84.3% over five object sets with its check, 70.8% closing once (seed 0 without
    it: 87.5% and 73.1%); not adopted."""
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
    scripted_lift_steps: int = 1
    """Steps the scripted policy's closed gripper rises before it terminates, or, with
    ``scripted_retry_prob``, checks whether it holds an object: one 4 cm step shows 47% of the grasps that
    will fail, two 81%, three 96% (benchmarks/RESULTS.md, 2026-12-03). Measured with 2, retries and gamma
    0.97 (seed 0): 28.2% at 24 minutes, 58.6% at 60 over five object sets; not adopted."""
    grasp_branches: int = 0
    """Beyond the paper, simulation only: at each closing of an open gripper in a scripted or on-policy
    episode, also try this many alternative closings from the same state (``GraspEnv.try_grasps``: the
    world saved, the grasp lifted and judged, the world put back) and store each as a one-step terminal
    transition with that state's image. The alternatives are the closing action with its dx, dy moved by
    ``branch_std`` noise and a random dyaw, closing and terminating at once: the same image then carries
    several (aim, yaw) -> outcome pairs, the comparison a critic needs to tell a grasp that will hold from
    a near miss. Each costs ~32 ms of collector time (physics only, nothing rendered); they count as
    simulated grasps in the learning curve. Never in ``real`` episodes (a real cell cannot rewind).
    Measured with 4 (half aimed, ``branch_aim_prob=0.5``) after 24 min: 67.6% on seed 0's objects, 64.9%
    over five object sets (the default: 66.7%, 63.5%); not adopted."""
    branch_std: float = 0.3
    """Std of the noise on dx and dy (action units; 0.3 is ~1.2 cm) of the ``grasp_branches``
    alternatives."""
    branch_aim_prob: float = 0.0
    """Share of the ``grasp_branches`` alternatives that close on the centre of the object nearest to the
    closing (privileged, 1 cm noise, random dyaw) instead of near the closing itself: the same image then
    also shows where the grasp should have been. At the earlier shipped agent's closings, exact aim would lift
    83% against its 67% (55 closings, benchmarks/RESULTS.md)."""
    retry_practice_prob: float = 0.0
    """Beyond the paper, simulation only: the share of on-policy episodes that practise the grasp check's
    regrasp (``rcan.qtopt.grasp_check``) with a never-wrong check. When the agent closes and terminates
    with room for a retry, the simulator judges that closing (``GraspEnv.try_grasps``, stored as a
    one-step terminal transition); if it fails, the gripper closes without ending, rises 3 steps and
    reopens one step down, and the agent goes on from there, as ``rcan evaluate`` does after a rejected
    check. Why: the agents never saw those states in training, and their closing after a rejected one
    held 59% of the time against 73-75% for a first closing. Never in ``real`` episodes. Measured with 1
    (seed 0, default preset, 2026-12-05): 86.5% over five object sets with its check (retries after a
    rejection 66% against 63.5%, but 67.3% closing once against 73.1%: the practice takes env steps from
    first closings); with 0.3: 81.2% (66.1% closing once, 55.5% after a rejection); not adopted."""
    eval_prob: float = 0.1
    """Fraction of episodes that are greedy evaluations on the unseen test objects (never trained on)."""
    noise_std: float = 0.3
    """Exploration noise on dx, dy, dz, dyaw in on-policy episodes. 0.1 at the full budget (seed 5,
    2026-12-07): greedy training success 71% against seed 7's 58%, but 87.9% over 30 object sets with the check,
    inside the default seeds' 86.8-92.3%; not adopted."""
    aug_pad: int = 4
    """DrQ random shift in pixels (0: off). 2 pixels: 56.9% after 24 min against 66.7% (seed 0)."""
    push_every: int = 200
    """Gradient steps between weight pushes to the collectors."""
    log_every: int = 200
    """Gradient steps between TensorBoard/progress logs."""
    checkpoint_minutes: float = 10.0
    """Minutes between checkpoints (and one at the end, and on Ctrl-C/SIGTERM)."""
    keep_snapshots: bool = False
    """Also keep the agent file of every checkpoint, ``RUN/snapshots/agent-<grad steps>.safetensors``
    (~0.4 MB each), for choosing a checkpoint or acting with several (``rcan evaluate --ensemble``)."""
    ensemble_members: int = 3
    """Beyond the paper: critics the trained agent acts with (mean logit; ``QTOptPolicy``): the final
    network and the online networks at the last ``ensemble_members - 1`` points ``ensemble_spacing`` of
    the budget apart before the end, kept in ``RUN/members/`` while training and stored in the final agent
    file (its check is then fitted on the ensemble's grasps). No extra training, a critic's cost more per
    control step each, unless ``distill_steps`` folds them into one network (the default). 1: one critic
    (also the default of joint finetuning). Five members (60-100% of the budget) measured offline on the
    eighth seed's checkpoints, distilled, 30 object sets: 86.7% against 87.0% with three, for 5.5 more
    distillation minutes (2026-12-07)."""
    ensemble_spacing: float = 0.1
    """Budget fraction between ensemble members: with 3 members, the networks at 80%, 90% and 100%."""
    critics: int = 1
    """Beyond the paper: independent critics trained side by side on the same replay (a deep ensemble:
    each its own initialization, target networks and optimizer, taking turns at the gradient steps, so
    each gets ``1/critics`` of them; the collectors act with each in turn, one per weight push). All of
    them, and each one's kept members, go into the final agent file and the distillation. Why: the
    checkpoints of one run are ~10-20 minutes apart on one trajectory, and their ensemble's make-up (3 or
    5 members, 10% or 20% apart) did not matter; independent critics disagree more. Measured (2 critics x
    2 members, seed 0, distilled, 94 minutes in all, 30 object sets): 85.6% against 90.2% for the default
    with the same seed (-4.6 points [-6.3, -2.9] paired by set): each critic, at half the gradient steps
    and half the on-policy data, acts 4-5 points worse in training, and four teachers do not make that
    up (2026-12-07). Not with joint finetuning or the Ray backend (one critic there)."""
    distill_steps: int = 4000
    """Beyond the paper: with ``ensemble_members`` > 1, after training fit a copy of the final network to
    the ensemble's mean logit for this many steps on replay images (``rcan.qtopt.distill``) and save that
    one network as the agent (the ensemble's file stays as ``RUN/agent-ensemble.safetensors``); the check
    is then fitted on its grasps. It acts at one critic's cost. 0: act with the ensemble itself. Measured
    (4,000 steps, ~6 minutes on 2 cores, 30 object sets with the check): the eighth seed 87.0% against
    85.5% (its final critic) and 87.4% (its three-critic ensemble); seed 0 end to end (80.7 training + 6.1
    + 8.2 check minutes, the shipped agent since 2026-12-06) 90.2%, against 86.0% over 15 sets for the
    seed-0 agent shipped before (one critic, 102.5 minutes)."""
    threads: int = 1
    """torch threads of the trainer (the collectors use one each)."""
    backend: str = "local"
    """local: collector processes, replay and targets in this machine's processes; ray: collectors, replay and
    Bellman targets as Ray actors (``pip install 'rcan[ray]'``; see ``rcan.qtopt.ray_backend``)."""
    address: str | None = None
    """With ``backend="ray"``: the Ray cluster to join (``auto``, ``HOST:PORT``); default: start a local Ray."""
    check_grasps: int = 4000
    """After training (never after joint finetuning): fit the agent's grasp check from this many lifted
    grasps by the final agent in simulation (``rcan.qtopt.grasp_check``; ``RUN/check.safetensors``, ~9
    minutes on 2 cores for 4000); evaluation then checks each grasp after lifting it and regrasps when it
    holds nothing. 0: no check (``rcan train-check`` fits one later)."""
    check_lift: int = 3
    """4 cm steps the closed gripper rises before the check looks (2: the check's validation AUC 0.91,
    3: 0.955; the success rates came out alike, 86.1% and 85.7%, benchmarks/RESULTS.md 2026-12-05).
    The reopening rule (5 steps left, 3 retries) is in ``rcan.qtopt.grasp_check.CheckConfig``."""
    check_threshold: float = 0.6
    """The check ends the attempt at or above this success estimate, else reopens."""
    check_confirm: int = 1
    """After an accepted check, rise this many more steps and look again before ending, reopening if the
    grasp has slipped (``rcan.qtopt.grasp_check.CheckConfig.confirm``; the check's grasps are then lifted
    ``check_lift + check_confirm`` steps and it learns both heights). 0: off. The shipped agent with a check
    fitted so: 92.3% against 90.2% over 30 object sets (+2.1 [+1.0, +3.2] paired by set, 2026-12-07)."""
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
    finetune_lr: float = 3e-5
    """Joint finetuning: the Adam learning rate (in place of ``lr`` and its decay). With the training
    rate (3e-4) every agent of the 2026-12-04 Table 1 run lost most of its zero-shot success after the
    first real grasps (RCAN 33% -> 17%, 11% after 278 grasps); with 3e-5 the same RCAN agent reached 45%
    and 43%, the mild one 17% and 17% instead of 7% and 10% (benchmarks/probe_finetune.py)."""
    finetune_learning_starts: int = 0
    """Joint finetuning: env steps (real and simulated) collected by the starting agent before the first
    gradient step, so the first updates do not fit a handful of episodes (0: learn from the first one)."""
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
        "budget_minutes": 0.0,
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
        "check_grasps": 0,
        "ensemble_members": 1,
        "distill_steps": 0,
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
        "budget_minutes": 0.0,
        # 472x472x3 bytes per slot: 20k slots are 13 GB of RAM.
        "scripted_capacity": 5_000,
        "policy_capacity": 15_000,
        "threads": 0,
    },
}

CHECK_MIN_MINUTES = 3.0
"""The least of ``budget_minutes`` that ``minutes`` must leave for the grasp check (collection and fit)."""

RESUMABLE = frozenset(
    {
        "out",
        "resume",
        "env_steps",
        "minutes",
        "budget_minutes",
        "collectors",
        "log_every",
        "checkpoint_minutes",
        "keep_snapshots",
        "threads",
        "generator",
        "backend",
        "address",
        "real_episodes",
        "check_grasps",
        "distill_steps",
        "check_lift",
        "check_threshold",
        "check_confirm",
    }
)
"""Fields that may change on resume (they do not change what the saved state means). ``generator`` is a
path, which may move; the run checks that the file there is the one it was trained with (its fingerprint
in the state)."""


def make_args(preset: str = "default", **overrides: Any) -> TrainArgs:
    """TrainArgs for a preset with keyword overrides (unknown names raise ValueError). Joint finetuning
    acts with one critic unless told otherwise: no snapshot ensemble, nothing to distil."""
    if overrides.get("finetune_from"):
        overrides = {"ensemble_members": 1, "distill_steps": 0, **overrides}
    return _validated(from_preset(TrainArgs, PRESETS, preset, overrides))


def resolve_args(out: str, preset: str | None, resume: bool, overrides: Mapping[str, Any]) -> TrainArgs:
    """Arguments for a CLI call: on ``--resume``, the run's saved arguments with the allowed overrides;
    otherwise the preset's. Raises ValueError/FileNotFoundError with one clear message."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    run = Path(out)
    if resume:
        state = run / STATE_FILE
        if not state.is_file():
            hint = " (stopped before its first checkpoint: start it again without --resume)"
            raise FileNotFoundError(f"nothing to resume: {state} does not exist{hint if run.is_dir() else ''}")
        saved = args_from_json(_read_state_meta(state)["args"])
        if preset is not None and preset != saved.preset:
            raise ValueError(f"{out} was trained with --preset {saved.preset}, not {preset}")
        for key, value in overrides.items():
            if key not in RESUMABLE and value != getattr(saved, key):
                raise ValueError(
                    f"{out} was trained with {key}={getattr(saved, key)!r}; cannot change it on resume"
                )
        return _validated(dataclasses.replace(saved, out=out, resume=True, **overrides))
    if run.exists() and not startup_leftovers(run):
        raise ValueError(f"{out} already exists; pass --resume to continue it or choose a new --out")
    return make_args(preset or "default", out=out, resume=False, **overrides)


def startup_leftovers(run: Path) -> bool:
    """Whether ``run`` is a folder a fresh run may take over: empty, or holding only ``STARTUP_FILES`` and
    no state file (a run killed before its first checkpoint)."""
    return run.is_dir() and all(p.name in STARTUP_FILES for p in run.iterdir())


def _validated(args: TrainArgs) -> TrainArgs:
    check_input_mode(args.input)
    if args.input == "rcan" and not args.generator:
        raise ValueError("--input rcan needs --generator (a trained generator run or file)")
    if args.input != "rcan" and args.generator:
        raise ValueError(f"--generator is only for --input rcan, not {args.input}")
    for name in ("env_steps", "batch_size", "n_step", "image_size", "num_objects", "push_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")
    if not args.checkpoint_minutes > 0:
        raise ValueError(f"checkpoint_minutes must be > 0, got {args.checkpoint_minutes}")
    if args.texture_dir is not None:
        from rcan.sim.textures import ImageFolderTextures

        ImageFolderTextures(args.texture_dir)  # exists, is a folder, holds decodable images: before any work
    if args.collectors < (1 if args.backend == "ray" else 0):
        raise ValueError(f"collectors must be >= 1 (or 0: in the trainer's process, local), got {args.collectors}")
    if not 0.0 <= args.online_fraction <= 1.0 or args.scripted_prob + args.eval_prob > 1.0:
        raise ValueError("online_fraction must be in [0, 1] and scripted_prob + eval_prob <= 1")
    shares = ("scripted_aim_prob", "scripted_retry_prob", "scripted_wall_yaw_prob", "retry_practice_prob")
    for name in (*shares, "outcome_fraction", "mirror_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(args, name)}")
    if args.mirror_prob > 0:
        from rcan.sim.renderer import camera_config

        cam = camera_config(args.camera)
        if cam.eye[0] != 0 or cam.target[0] != 0 or cam.up[0] != 0:
            raise ValueError(
                f"mirror_prob needs a camera in the plane x = 0 (so that a mirrored frame is a frame); "
                f"{args.camera!r} is not"
            )
    from rcan.qtopt.agent import check_rerank, check_search_critics, check_view_shifts

    check_view_shifts(args.view_shifts)
    check_rerank(args.rerank)
    check_search_critics(args.search_critics)
    span = args.ensemble_spacing * (args.ensemble_members - 1)
    if args.ensemble_members < 1 or (args.ensemble_members > 1 and not 0.0 < span < 1.0):
        raise ValueError(
            "ensemble_members must be >= 1, and its members must lie inside the budget: "
            f"0 < ensemble_spacing * (ensemble_members - 1) < 1, got {span:g}"
        )
    if args.critics < 1:
        raise ValueError(f"critics must be >= 1, got {args.critics}")
    if args.critics > 1 and (args.finetune_from or args.backend != "local"):
        raise ValueError("critics > 1 needs the local backend and no joint finetuning (one critic there)")
    if args.distill_steps < 0 or (args.distill_steps > 0 and args.ensemble_members * args.critics < 2):
        raise ValueError(
            "distill_steps must be >= 0, and > 0 only with ensemble_members >= 2 or critics >= 2, "
            f"got {args.distill_steps}"
        )
    if args.scripted_lift_steps < 1:
        raise ValueError(f"scripted_lift_steps must be >= 1, got {args.scripted_lift_steps}")
    if args.grasp_branches < 0 or args.branch_std < 0 or not 0.0 <= args.branch_aim_prob <= 1.0:
        raise ValueError("grasp_branches and branch_std must be >= 0 and branch_aim_prob in [0, 1]")
    if args.lr <= 0 or args.finetune_lr <= 0 or args.lr_final < 0 or args.lr_decay_steps < 1:
        raise ValueError("lr and finetune_lr must be > 0, lr_final >= 0 and lr_decay_steps >= 1")
    if args.object_offset_weight < 0 or args.object_offset_points < 0:
        raise ValueError("object_offset_weight and object_offset_points must be >= 0")
    if args.wall_yaw_weight < 0:
        raise ValueError("wall_yaw_weight must be >= 0")
    for name in ("learning_starts", "finetune_learning_starts"):
        if getattr(args, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(args, name)}")
    if args.object_offset_weight > 0 and not args.target_readout:
        raise ValueError("object_offset_weight needs target_readout (offsets are read where the read-out looks)")
    if args.check_grasps < 0 or (args.check_grasps and args.check_grasps < 10):
        raise ValueError(f"check_grasps must be 0 (no check) or >= 10, got {args.check_grasps}")
    if args.budget_minutes < 0:
        raise ValueError(f"budget_minutes must be >= 0 (0: no overall limit), got {args.budget_minutes}")
    fits_check = args.check_grasps > 0 and not args.finetune_from  # no check after finetuning
    most = args.budget_minutes - CHECK_MIN_MINUTES  # the training minutes that leave the check its room
    if args.budget_minutes > 0 and fits_check and not 0 < args.minutes <= most:
        raise ValueError(
            f"budget_minutes={args.budget_minutes:g} (training and the grasp check together) needs minutes > 0 "
            f"and at most {most:g}, got minutes={args.minutes:g}; "
            "set budget_minutes=0 for no overall limit"
        )
    from rcan.qtopt.grasp_check import CheckConfig

    CheckConfig(lift=args.check_lift, threshold=args.check_threshold, confirm=args.check_confirm)  # range checks
    network_config(args)  # the network's own checks (which options need which)
    if args.real_episodes < 0 or not 0.0 < args.real_fraction < 1.0:
        raise ValueError("real_episodes must be >= 0 and real_fraction in (0, 1)")
    if bool(args.finetune_from) != (args.real_episodes > 0):
        raise ValueError("joint finetuning needs both finetune_from (a trained agent) and real_episodes > 0")
    if args.finetune_continue and not args.finetune_from:
        raise ValueError("finetune_continue is for joint finetuning (with finetune_from)")
    from rcan.sim.renderer import camera_config

    camera_config(str(args.camera))  # a known camera name (a run records its name, never a CameraConfig)
    if args.input == "rcan" and args.camera != "wide":
        raise ValueError("--input rcan needs camera=wide (the view the generators are trained on)")
    if args.input == "rcan" and args.generator and Path(args.generator).exists():  # a missing one: at start
        from rcan.adapt.inference import load_generator

        size = load_generator(args.generator)[1].image_size
        if size != args.image_size:
            raise ValueError(
                f"the generator {args.generator} translates {size}x{size} frames; train with --set "
                f"image_size={size} or a generator trained at {args.image_size}"
            )
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
    "view_shifts": 1,
    "rerank": 0,
    "ensemble_members": 1,
    "distill_steps": 0,
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
        in_channels=image_channels(args.input, args.first_frame),
        first_frame=args.first_frame,
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
        readout_patch=args.readout_patch,
        gripper_yaw=args.gripper_yaw,
        finger_readout=args.finger_readout,
        object_offsets=args.object_offset_weight > 0,
        wall_yaw=args.wall_yaw_weight > 0,
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
        camera=a.camera,
        num_objects=a.num_objects,
        texture_dir=a.texture_dir,
        generator=str(a.generator) if a.generator else None,
        network=network_config(a).to_json(),
        cem=dataclasses.asdict(acting_cem(a)),
        scripted_prob=0.0 if a.finetune_from else a.scripted_prob,
        scripted_aim_prob=a.scripted_aim_prob,
        scripted_retry_prob=a.scripted_retry_prob,
        scripted_lift_steps=a.scripted_lift_steps,
        scripted_wall_yaw_prob=a.scripted_wall_yaw_prob,
        eval_prob=a.eval_prob,
        noise_std=a.noise_std,
        grasp_branches=a.grasp_branches,
        branch_std=a.branch_std,
        branch_aim_prob=a.branch_aim_prob,
        real_prob=a.real_fraction if a.finetune_from else 0.0,
        real_domain=a.real_domain,
        object_labels=a.object_aux_weight > 0,
        retry_practice_prob=a.retry_practice_prob,
    )


def make_collectors(a: TrainArgs, seed: int) -> Collector:
    """The run's collectors on its backend: local processes, or Ray actors (Ray connected by the trainer)."""
    if a.backend == "ray":
        from rcan.qtopt.ray_backend import RayCollectors

        return RayCollectors(a.collectors, collector_config(a), seed)
    if a.collectors == 0:
        return InlineCollectors(collector_config(a), seed)
    return LocalCollectors(a.collectors, collector_config(a), seed)


def learning_rate(args: TrainArgs, grad_steps: int) -> float:
    """The learning rate of gradient step ``grad_steps`` (0-based): ``lr``, or its linear fall to
    ``lr_final`` over ``lr_decay_steps`` steps; ``finetune_lr`` throughout joint finetuning."""
    if args.finetune_from:
        return args.finetune_lr
    if args.lr_final <= 0:
        return args.lr
    frac = min(1.0, grad_steps / args.lr_decay_steps)
    return args.lr + (args.lr_final - args.lr) * frac
