"""Check a grasp before ending the attempt, and regrasp when it holds nothing (beyond the paper).

Why. The paper credits much of QT-Opt's 96% to regrasping: "the policy detects when there is no object in
the closed gripper, and ... re-opens it" (section 6). Our agents learn at gamma 0.9 with a -0.05 step
penalty, where one closing per attempt is return-optimal (``benchmarks/probe_retry_value.py``): they close
and terminate at once and an attempt succeeds only if that closing does (73-75%). The protocol's success
rate does not charge for steps, and an attempt has 20 where the agents use ~9.

Acting (``CheckedPolicy``). When the agent's greedy action closes and terminates, the gripper closes
without terminating and rises ``lift`` steps (4 cm each); the *check* then estimates the chance that
terminating there succeeds. At or above ``threshold`` the attempt ends; below it the gripper reopens, moves
one step down and the agent takes over again (at most ``max_retries`` times, and only while at least
``min_steps_left`` steps remain). On the attempt's last step, if the gripper is still open, it closes
where the critic likes a closing best (``last_close``: an attempt that ends open has failed). The wrapper
counts steps itself: it reads nothing from the simulator.

The check (``fit_check``) is a copy of the agent's critic fitted to the outcome of terminating at the lifted
state, for the action "terminate here" (binary cross-entropy, random shifts, the critic's weights as the
start). Its data are lifted grasps the agent itself makes in simulation on *training* objects, in its
training domain, labelled by the simulator's success: the check sees exactly what the agent sees. Measured
on the earlier shipped agent over five object sets (benchmarks/RESULTS.md, 2026-12-05): 73.1% acting as trained,
87.5% with its fitted check (3 steps up, threshold 0.6), 88.4-89.0% with a privileged one (a finger
touching an object), 88.2% with one that is never wrong (``benchmarks/probe_oracle_check.py``); the
critic as trained judges lifted states poorly (it rarely saw them), hence the fitted copy.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rcan.common.atomic import fsync_dir, write_json_atomic
from rcan.common.checkpoint import load_safetensors, load_weights_strict, save_safetensors_atomic
from rcan.qtopt.agent import check_view_shifts, shifted_views
from rcan.qtopt.network import QNetConfig, QNetwork

CHECK_FILE = "check.safetensors"
CHECK_DATA_FILE = "check_data.h5"
CHECK_FORMAT = "rcan.grasp_check"
REOPEN_DECISIONS = ("reopen", "early-reopen", "late-reopen", "confirm-reopen")
"""The ``CheckedPolicy.decisions`` that reopen the gripper for another grasp."""
TERMINATE_HERE = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)
"""The action the check scores: no move, gripper closed, end the attempt."""
CHECK_MIN_GRASPS = 1000
"""With a deadline (``fit_check``), the fewest lifted grasps collected before the collection may stop."""
CHECK_FIT_MINUTES = 1.5
"""What fitting the check on the collected grasps takes at most (0.9 minutes for 4,000 on 2 cores), per
height it learns: the part of a time budget the collection leaves (``fit_minutes``)."""
LIFT = np.array([0, 0, 1, 0, 1, -1], dtype=np.float32)
REOPEN = np.array([0, 0, -1, 0, -1, -1], dtype=np.float32)


@dataclass(frozen=True)
class CheckConfig:
    """How ``CheckedPolicy`` checks (stored in the check file; each can be overridden when acting)."""

    lift: int = 3
    """4 cm steps the closed gripper rises before the check (the state the check network was fitted on)."""
    threshold: float = 0.6
    """End the attempt when the check's success estimate is at least this; otherwise reopen."""
    min_steps_left: int = 5
    """Reopen only if at least this many of the attempt's steps remain, the reopening included (else end
    the attempt as it is). The earlier shipped agent with its check: 87.5% with 5, 84.5% with 3 (a late reopening
    of a grasp the check wrongly rejects has no time to recover; with a privileged check 3 was better,
    89.0% against 88.4%)."""
    max_retries: int = 3
    """Reopen at most this many times per attempt."""
    max_steps: int = 20
    """The attempt's step limit (the env's ``max_steps``)."""
    early_threshold: float = 0.0
    """Also check after each lift step before the last, and reopen at once below this estimate (0: off;
    needs a check fitted on every lift level, ``fit_check(all_levels=True)``): a plainly empty grasp
    then costs fewer of the attempt's steps. Measured on the earlier shipped agent: 85.9% (0.1) and 84.7% (0.2)
    against 87.5% off, over five object sets, judging from the first step up (``early_from`` 1)."""
    early_from: int = 1
    """The first lift step after which ``early_threshold`` judges (1: after every step up before the
    last). After one step (4 cm) a grasp that will slip still looks held, so early checks there err."""
    late_threshold: float = 0.0
    """With fewer than ``min_steps_left`` steps left (too few for another checked grasp) but at least
    ``late_min_steps_left``, still reopen below this estimate; the agent's next closing then ends the
    attempt unchecked (0: off). A plainly empty grasp fails anyway, so a last unchecked grasp can only
    add successes; a wrongly rejected good grasp is what it risks. Measured on the earlier shipped agent (0.3,
    4 steps left): 86.1% against 87.5% off, over five object sets."""
    late_min_steps_left: int = 4
    """The fewest steps left, the reopening included, for a late reopening (the reopening, then at
    least a descent and a closing)."""
    views: int = 1
    """Average the check's logit over this many shifted copies of the image (1: the image alone). Measured
    on the test objects' checks (``benchmarks/score_check.py``): AUC 0.936 -> 0.936 (earlier shipped agent) and
    0.944 -> 0.952 (fifth seed) with 5 views; not a lever, since a never-wrong check adds 1-2 points."""
    close_by: int = 0
    """If the agent has not closed the open gripper for a checked grasp by this step of the attempt
    (1-based; 0: off), take the best closing the critic sees from there instead of its move (CEM over the
    moves with close and end held on), then lift and check it as usual. Why: 5-7% of the earlier shipped agent's
    attempts close too late for a retry or not at all (hovering near the floor). Measured on the earlier shipped
    agent over five object sets (2026-12-06): 85.1% (10) and 85.9% (9) against 87.5% off: the forced
    closings also pre-empt closings the agent was still aiming; off by default."""
    last_close: bool = True
    """On the attempt's last step with the gripper open, take the best closing (one search, in place of the
    agent's own): an attempt that ends with the gripper open has failed, a closing there may hold
    something. Measured on the earlier shipped agent over 15 object sets (2026-12-06): 86.0% against 85.1% without
    (102 such closings, 35 held)."""
    empty_opening: float = 0.0
    """Read the gripper's opening (``obs["gripper_opening"]``, its position encoder) after each lift step:
    below this gap (m) nothing is between the fingers, the grasp has certainly failed, and the gripper
    reopens at once, whatever the check says and while at least ``late_min_steps_left`` steps remain (0:
    off). Why: an empty grasp then costs fewer of the attempt's steps, and the check can no longer accept
    one. After the closing step itself the fingers are still closing, so the first reading is after one
    lift step."""

    confirm: int = 0
    """After an accepted check, rise this many more 4 cm steps and check again before ending (0: off), when
    more than ``min_steps_left`` steps would be left at that second look; below ``threshold`` there, the
    grasp has slipped on the way up and the gripper reopens for another grasp. Needs a check fitted up to
    ``lift + confirm`` steps (``fit_check(confirm=...)``, ``rcan train-check --confirm``). Why: a third of
    the shipped agent's failures were grasps accepted 12 cm up and lost in the final lift to 30 cm, while
    most accepted attempts have steps to spare. Measured on the shipped agent over 30 object sets
    (2026-12-07): with a check fitted for one more step, 92.3% against 90.2% (+2.1 [+1.0, +3.2] paired by
    set; 90 grasps reopened after the second look, 66 of those attempts succeeded); with a privileged
    second look instead (``benchmarks/probe_confirm_lift.py``) 91.3% (an object's lowest point above
    6 cm) and 92.0% (the simulator's own judgement)."""

    def __post_init__(self) -> None:
        if self.lift < 0 or self.min_steps_left < 1 or self.max_retries < 0 or self.max_steps < 1:
            raise ValueError(f"bad grasp check settings: {self}")
        check_view_shifts(self.views)
        if not 1 <= self.early_from <= max(1, self.lift):
            raise ValueError(f"the check's early_from must be a lift step in [1, lift], got {self}")
        if self.late_min_steps_left < 2:
            raise ValueError(f"late_min_steps_left must be >= 2 (reopen, then close), got {self}")
        if self.confirm < 0:
            raise ValueError(f"the check's confirm is a number of lift steps (0: off), got {self.confirm}")
        if self.close_by < 0:
            raise ValueError(f"the check's close_by is a step of the attempt (0: off), got {self.close_by}")
        if not 0.0 <= self.empty_opening < 0.1:
            raise ValueError(f"the check's empty_opening is a gap in metres in [0, 0.1), got {self.empty_opening}")
        for name in ("threshold", "early_threshold", "late_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"the check's {name} must be in [0, 1], got {getattr(self, name)}")


@torch.no_grad()
def check_probability(check: QNetwork, image: np.ndarray, state: np.ndarray, views: int = 1) -> float:
    """The check's estimate that terminating now succeeds, for one prepared state (image (C, H, W) uint8):
    the sigmoid of its mean logit over ``views`` shifted copies of the image (``rcan.qtopt.agent``'s
    ``VIEW_SHIFTS``, as the critic averages when it acts)."""
    images = shifted_views(torch.from_numpy(image)[None], views)
    states = torch.from_numpy(state)[None].expand(views, -1)
    logits = check(images, states, torch.from_numpy(TERMINATE_HERE)[None].expand(views, -1))
    return float(torch.sigmoid(logits.mean()))


class CheckedPolicy:
    """A greedy policy (``QTOptPolicy``) that checks each grasp before ending the attempt; see the module
    docstring. Anything else (``network``, ``camera``, ``cem``, ...) is the wrapped policy's."""

    def __init__(self, policy: Any, check: QNetwork, config: CheckConfig | None = None) -> None:
        self.policy, self.check, self.config = policy, check.eval(), config or CheckConfig()
        self.checks: list[float] = []
        """This attempt's check estimates, in order (a retry follows each one below the threshold)."""
        self.decisions: list[str] = []
        """What each of ``checks`` decided (same order): ``accept`` (end the attempt, or rise for the second
        look, ``confirm``, whose decisions are ``confirm`` (end) or ``confirm-reopen``), ``reopen`` (retry),
        ``end`` (below the threshold but no room or retries left: end anyway), ``late-reopen`` (a last
        unchecked retry, ``late_threshold``); early checks (``early_threshold``) ``early-reopen`` or
        ``early-pass`` (lift on)."""
        self.check_steps: list[int] = []
        """The attempt's step (1-based) at which each of ``checks`` was made: how much room each decision had."""
        self.empty_reopens = 0
        """This attempt's reopenings on an empty gripper (``CheckConfig.empty_opening``)."""
        self.forced_closings = 0
        """This attempt's closings taken for the agent (``CheckConfig.close_by`` and ``last_close``)."""
        self._phase, self._lift_left, self._step, self._retries = "act", 0, 0, 0
        self._force_rng = torch.Generator().manual_seed(0)  # the agent's own stream stays as it was

    def __getattr__(self, name: str) -> Any:
        if name == "policy":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.policy, name)

    def reset(self, info: Mapping[str, Any] | None = None) -> None:
        self.policy.reset(info)
        self.checks, self.decisions, self.empty_reopens, self.forced_closings = [], [], 0, 0
        self.check_steps = []
        self._phase, self._lift_left, self._step, self._retries = "act", 0, 0, 0

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray:
        self._step += 1
        return self._act(obs, info)

    def _act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None) -> np.ndarray:
        c, left = self.config, self.config.max_steps - (self._step - 1)  # steps left, this one included
        if self._phase == "confirm":  # an accepted grasp rising further for a second look
            if self._lift_left > 0:
                self._lift_left -= 1
                return LIFT.copy()
            p = self._look(obs)
            if p >= c.threshold or self._retries >= c.max_retries:
                self.decisions.append("confirm")
                self._phase = "end"
                return TERMINATE_HERE.copy()
            self.decisions.append("confirm-reopen")
            return self._reopen()
        if self._phase == "lift":
            lifted = self._lift_left < c.lift  # at least one step up: the encoder may judge
            if lifted and self._empty(obs) and left >= c.late_min_steps_left and self._retries < c.max_retries:
                self.empty_reopens += 1
                return self._reopen()
            if self._lift_left > 0:
                early = c.early_threshold > 0 and c.lift - self._lift_left >= c.early_from
                if early and left >= c.min_steps_left and self._retries < c.max_retries:
                    p = self._look(obs)
                    self.decisions.append("early-reopen" if p < c.early_threshold else "early-pass")
                    if p < c.early_threshold:
                        return self._reopen()
                self._lift_left -= 1
                return LIFT.copy()
            p = self._look(obs)
            room = left >= c.min_steps_left or (left >= c.late_min_steps_left and p < c.late_threshold)
            if p >= c.threshold or self._retries >= c.max_retries or not room:
                self.decisions.append("accept" if p >= c.threshold else "end")
                second_look = c.confirm > 0 and p >= c.threshold and self._retries < c.max_retries
                if second_look and left - c.confirm > c.min_steps_left:  # room to reopen after the look
                    self._phase, self._lift_left = "confirm", c.confirm - 1
                    return LIFT.copy()
                self._phase = "end"
                return TERMINATE_HERE.copy()
            self.decisions.append("reopen" if left >= c.min_steps_left else "late-reopen")
            return self._reopen()
        if self._phase == "end":
            return TERMINATE_HERE.copy()
        if c.last_close and left == 1 and self._can_close(obs):
            # the last step with the gripper open: the best closing, one search as on any other step (the
            # agent's own choice there is a closing too, or a certain failure)
            a = self._best_closing(obs)
        else:
            a = np.asarray(self.policy.act(obs, info), dtype=np.float32).copy()
            # no grasp lifted yet: every lift ends in a decision or a reopening
            first_pending = not self.decisions and self._retries == 0
            late_first = c.close_by > 0 and first_pending and self._step >= c.close_by
            if a[4] <= 0 and late_first and self._can_close(obs):  # the agent would not close yet
                a = self._best_closing(obs)
        if a[5] > 0 and a[4] > 0 and self._retries < c.max_retries and left > c.lift + 1:
            a[5] = -1.0  # close, but do not end the attempt before the check
            self._phase, self._lift_left = "lift", c.lift
        return a

    def _look(self, obs: Mapping[str, Any]) -> float:
        """The check's estimate here, recorded with the attempt's step (``checks``, ``check_steps``)."""
        p = check_probability(self.check, *self.policy.prepare(obs), views=self.config.views)
        self.checks.append(p)
        self.check_steps.append(self._step)
        return p

    def _can_close(self, obs: Mapping[str, Any]) -> bool:
        """Whether a closing may be taken for the agent (``close_by``, ``last_close``): only with the gripper
        open (closing a closed gripper grasps nothing new) and a policy that can search with held action
        dimensions."""
        if not hasattr(self.policy, "act_prepared"):
            return False
        return float(np.asarray(obs.get("gripper_closed", 1.0)).reshape(-1)[0]) <= 0.5

    def _best_closing(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The closing (close and end) the critic rates best from here, by CEM over the moves."""
        image, state = self.policy.prepare(obs)
        best = self.policy.act_prepared(image, state, fixed={4: 1.0, 5: 1.0}, generator=self._force_rng)
        self.forced_closings += 1
        return np.asarray(best[0], dtype=np.float32)

    def _reopen(self) -> np.ndarray:
        """Open the gripper (moving one step down) and hand back to the agent: one more retry."""
        self._phase, self._retries = "act", self._retries + 1
        return REOPEN.copy()

    def _empty(self, obs: Mapping[str, Any]) -> bool:
        """Whether the encoder says the closed fingers hold nothing (always False with the reading off)."""
        if self.config.empty_opening <= 0:
            return False
        if "gripper_opening" not in obs:
            raise KeyError("empty_opening needs obs['gripper_opening'] (the gripper's opening, m)")
        return float(np.asarray(obs["gripper_opening"]).reshape(-1)[0]) < self.config.empty_opening


FIXED_SETTINGS = ("lift", "max_steps")
"""``CheckConfig`` fields an evaluation may not override: the lift the check network was fitted at, and the
env's step limit."""


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(value)
    return v in ("true", "1", "yes")


def parse_check_settings(pairs: list[str]) -> dict[str, int | float | bool]:
    """``KEY=VALUE`` strings (``rcan evaluate --check-set``) as ``CheckConfig`` overrides, typed by the
    field; one clear error for an unknown or fixed field or a value of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(CheckConfig)}
    out: dict[str, int | float | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--check-set takes KEY=VALUE with KEY one of {', '.join(fields)}; got {pair!r}")
        if key in FIXED_SETTINGS:
            raise ValueError(f"--check-set cannot change {key!r} (fixed when the check was fitted)")
        kind, noun = {
            "int": (int, "an integer"),
            "bool": (_parse_bool, "true or false"),
        }.get(getattr(fields[key].type, "__name__", fields[key].type), (float, "a number"))
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"--check-set {key} needs {noun}, got {value!r}") from None
    CheckConfig(**out)  # the ranges
    return out


def check_path(agent_path: str | os.PathLike[str]) -> Path:
    """Where an agent's check lives: ``check.safetensors`` beside its agent file."""
    p = Path(agent_path)
    return (p if p.is_dir() else p.parent) / CHECK_FILE


def save_check(
    path: str | os.PathLike[str], net: QNetwork, config: CheckConfig, extra: Mapping[str, str]
) -> Path:
    metadata = {
        "format": CHECK_FORMAT,
        "version": "1",
        "network": net.config.to_json(),
        "check": json.dumps(dataclasses.asdict(config), sort_keys=True),
        **extra,
    }
    return save_safetensors_atomic(path, net.state_dict(), metadata)


def load_check(path: str | os.PathLike[str]) -> tuple[QNetwork, CheckConfig, dict[str, str]]:
    """The check network (eval mode), its settings and the file's metadata; one clear error if broken."""
    tensors, metadata = load_safetensors(path, expect_format=CHECK_FORMAT)
    try:
        net = QNetwork(QNetConfig.from_json(metadata["network"]))
        config = CheckConfig(**json.loads(metadata["check"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} has broken grasp-check metadata ({err})") from None
    load_weights_strict(net, tensors, Path(path))
    return net.eval(), config, metadata


def with_check(policy: Any, agent_path: str | os.PathLike[str], **overrides: Any) -> Any:
    """``policy`` wrapped in ``CheckedPolicy`` if the agent has a check (``overrides``: CheckConfig
    fields to act with instead of the file's, None keeps the file's), else ``policy`` as it is."""
    path = check_path(agent_path)
    if not path.is_file():
        return policy
    net, config, _ = load_check(path)
    if net.config.in_channels != policy.network.config.in_channels or (
        net.config.image_size != policy.network.config.image_size
    ):
        raise ValueError(f"{path} does not take the images of the agent beside it")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("confirm", 0) > config.confirm:
        raise ValueError(
            f"{path} was fitted for a second look up to {config.confirm} steps after the check; "
            f"confirm={changes['confirm']} needs a check fitted for it (rcan train-check --confirm)"
        )
    return CheckedPolicy(policy, net, dataclasses.replace(config, **changes))


# --------------------------------------------------------------------------------------------- fitting


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them (one message, not one traceback each)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collect(job: tuple[str, int, int, int, int, str | None, bool, float | None, int]) -> dict[str, np.ndarray]:
    """``n`` lifted grasps by the agent on training objects (a new object set every 20 attempts): the
    prepared state after ``lift`` steps up, and whether terminating there succeeded. An attempt whose
    agent has not closed and terminated while ``lift`` + 2 steps remain closes there (so every attempt
    yields one grasp, whatever the agent). With a ``deadline`` (``time.time()``), stops there once it has
    ``n_min`` grasps. ``index`` is the job's place in the pool (its progress bar's row, its grasps' ids);
    ``worker`` seeds its agent and scenes."""
    from tqdm.auto import tqdm

    from rcan.qtopt.agent import env_domain, load_agent
    from rcan.qtopt.evaluate import make_eval_env

    agent, lift, n, index, worker, generator, all_levels, deadline, n_min = job
    torch.set_num_threads(1)
    parent = mp.parent_process()  # None when run in the fitting process itself (one job)
    policy = load_agent(agent, generator=generator, seed=worker)
    domain = env_domain(policy.input_mode)
    rng = np.random.default_rng([worker, 77])
    images, states, labels, levels, grasp_ids = [], [], [], [], []
    env = None
    try:
        with tqdm(
            total=n, desc=f"lifted grasps ({index})", unit="grasp", position=index, leave=False
        ) as bar:
            while (got := len(set(grasp_ids))) < n:
                if deadline is not None and time.time() >= deadline and got >= n_min:
                    break  # out of time: fewer grasps
                if parent is not None and not parent.is_alive():
                    break  # the fitting process was killed: no one will read these grasps
                if env is None or got % 20 == 0:
                    if env is not None:
                        env.close()
                    env = make_eval_env(
                        domain,
                        int(rng.integers(2**31)),
                        policy.network.config.image_size,
                        camera=policy.camera,
                        objects="train",
                    )
                obs, info = env.reset(seed=int(rng.integers(2**31)))
                policy.reset(info)
                done, lifting = False, -1
                seen: list[tuple[np.ndarray, np.ndarray, int]] = []  # (image, state, lifts done)
                while not done:
                    if lifting == 0:
                        seen.append((*policy.prepare(obs), lift))
                        obs, _, done, _, info = env.step(TERMINATE_HERE)
                        for image, state, level in seen:
                            images.append(image)
                            states.append(state)
                            levels.append(level)
                            grasp_ids.append(index * 10_000_000 + len(labels))  # unique across the jobs
                        labels.extend([bool(info["is_success"])] * len(seen))
                        bar.update(1)
                        break
                    if lifting > 0:
                        if all_levels and lifting < lift:
                            seen.append((*policy.prepare(obs), lift - lifting))
                        a, lifting = LIFT.copy(), lifting - 1
                    else:
                        a = np.asarray(policy.act(obs, info), dtype=np.float32).copy()
                        left = env.max_steps - int(info.get("step", 0))
                        if (a[5] > 0 and a[4] > 0) or left == lift + 2:  # its closing, or the last chance
                            a[4], a[5], lifting = 1.0, -1.0, lift
                    obs, _, done, _, info = env.step(a)
    finally:
        if env is not None:
            env.close()
    return {
        "images": np.stack(images),
        "states": np.stack(states).astype(np.float32),
        "labels": np.array(labels),
        "levels": np.array(levels, np.int16),
        "grasps": np.array(grasp_ids, np.int64),
    }


def save_check_data(path: Path, data: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Path:
    """The lifted grasps as HDF5 (chunked, compressed), written atomically."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            n = len(data["labels"])
            f.create_dataset(
                "images",
                data=data["images"],
                chunks=(min(n, 64), *data["images"].shape[1:]),
                compression="gzip",
                compression_opts=4,
            )
            for key in ("states", "labels", "levels", "grasps"):
                f.create_dataset(key, data=data[key])
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if the write failed
    fsync_dir(path.parent)
    return path


def load_check_data(path: Path, expect: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The lifted grasps of an earlier fit, if ``path`` holds them for the same settings (else None); a
    file that is not a valid check dataset is an error, never silently replaced."""
    import h5py

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if any(f.attrs.get(k) != v for k, v in expect.items()):
                return None
            data = {k: f[k][()] for k in ("images", "states", "labels", "levels", "grasps")}
    except (OSError, KeyError) as err:
        raise ValueError(
            f"{path} is not a readable grasp-check dataset ({err}); delete it to collect again"
        ) from None
    n = len(data["labels"])
    if data["images"].ndim != 4 or any(len(data[k]) != n for k in data) or data["states"].shape != (n, 2):
        raise ValueError(f"{path} has inconsistent shapes; delete it to collect again")
    return data


def _shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels (replicate padding), one per image."""
    b, c, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    out = torch.empty(b, c, h, w)
    for i, (dx, dy) in enumerate(torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


@torch.no_grad()
def check_scores(check: QNetwork, images: torch.Tensor, states: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The check's success estimates (eval mode) for prepared states, ``batch`` at a time."""
    check.eval()
    act = torch.from_numpy(TERMINATE_HERE)
    out = [
        check(images[i : i + batch], states[i : i + batch], act.expand(len(images[i : i + batch]), -1))
        for i in range(0, len(images), batch)
    ]
    return torch.sigmoid(torch.cat(out)).numpy()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Chance that a random positive scores above a random negative (ties half); NaN without both."""
    labels = np.asarray(labels, bool)
    pos, neg = np.asarray(scores)[labels][:, None], np.asarray(scores)[~labels][None, :]
    if not pos.size or not neg.size:
        return float("nan")
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def split_check_rows(
    data: Mapping[str, np.ndarray], lift: int, collect_lift: int, all_levels: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the collected grasps for fitting: ``(train, val_all, val, fitted)``. A fifth of the grasps is
    held out whole (a grasp's heights never straddle the split); ``fitted`` marks the heights learned
    (``lift`` and ``collect_lift``, or all with ``all_levels``), ``val`` the held-out rows at ``lift``, where
    the check's first look judges."""
    n = len(data["labels"])
    ids = np.unique(data["grasps"])
    held_out = np.random.default_rng(seed).permutation(ids)[: max(1, len(ids) // 5)]
    in_val = np.isin(data["grasps"], held_out)
    fitted = np.ones(n, bool) if all_levels else np.isin(data["levels"], [lift, collect_lift])
    val_all = np.flatnonzero(in_val & fitted)
    return np.flatnonzero(~in_val & fitted), val_all, val_all[data["levels"][val_all] == lift], fitted


def train_check(
    net: QNetwork,
    data: Mapping[str, np.ndarray],
    train: np.ndarray,
    val: np.ndarray,
    epochs: int = 12,
    lr: float = 1e-4,
    seed: int = 0,
) -> tuple[float, list[dict[str, float]]]:
    """Fit ``net`` (a copy of the critic) in place to the grasps' outcomes on rows ``train``, with +-2 pixel
    shifts, and keep the epoch with the best AUC on rows ``val``. Returns that AUC and the per-epoch
    history."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(data["images"])
    states = torch.from_numpy(data["states"]).float()
    labels = torch.from_numpy(data["labels"].astype(np.float32))
    act = torch.from_numpy(TERMINATE_HERE)
    y_val = data["labels"][val].astype(bool)

    def val_auc() -> float:
        return auc(check_scores(net, images[val], states[val]), y_val)

    history: list[dict[str, float]] = [{"epoch": 0, "val_auc": val_auc()}]
    best = (history[0]["val_auc"], {k: v.clone() for k, v in net.state_dict().items()})
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    for epoch in range(1, epochs + 1):
        net.train()
        total = 0.0
        order = rng.permutation(train)
        for i in range(0, len(order), 32):
            rows = order[i : i + 32]
            logits = net(_shift(images[rows], 2, gen), states[rows], act.expand(len(rows), -1))
            loss = F.binary_cross_entropy_with_logits(logits, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        history.append({"epoch": epoch, "val_auc": val_auc(), "loss": total / max(1, len(train))})
        if history[-1]["val_auc"] > best[0]:
            best = (history[-1]["val_auc"], {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[1])
    return best[0], history


def fit_minutes(confirm: int = 0) -> float:
    """The part of a time budget ``fit_check`` leaves for fitting: one height, or two with a second look."""
    return CHECK_FIT_MINUTES * (2 if confirm > 0 else 1)


def fit_check(
    agent: str | os.PathLike[str],
    grasps: int = 4000,
    lift: int = 3,
    epochs: int = 12,
    lr: float = 1e-4,
    jobs: int = 2,
    seed: int = 0,
    generator: str | None = None,
    threshold: float = 0.6,
    all_levels: bool = False,
    early_threshold: float = 0.0,
    deadline: float | None = None,
    min_grasps: int = CHECK_MIN_GRASPS,
    confirm: int = 0,
) -> dict[str, Any]:
    """Collect ``grasps`` lifted grasps with the agent (``jobs`` processes), fit the check and write
    ``check.safetensors``, ``check_data.h5`` and ``check.json`` beside the agent file. Returns the summary.
    A rerun with the same settings reuses the collected grasps (a kill loses at most the collection).
    ``all_levels``: also learn from the states after each lift step before the last (same label), so the
    check can judge early (``CheckConfig.early_threshold``, stored as ``early_threshold``). ``deadline``
    (``time.time()``): the collection stops there once it has ``min_grasps`` (a training run's overall
    budget, ``TrainArgs.budget_minutes``); the grasps it got are stored as their own count. ``confirm``: the
    grasps rise ``lift + confirm`` steps and the check learns the states at ``lift`` and at ``lift +
    confirm`` steps (every level with ``all_levels``), so it can also look again after the extra steps
    (``CheckConfig.confirm``); its validation stays at ``lift``."""
    from rcan.qtopt.agent import load_network, resolve_agent_path

    if grasps < 10 or lift < 0 or epochs < 1 or jobs < 1 or min_grasps < 1 or confirm < 0:
        raise ValueError(
            "the check needs grasps >= 10, lift >= 0, epochs >= 1, jobs >= 1, min_grasps >= 1 and confirm >= 0"
        )
    if early_threshold > 0 and not all_levels:  # the early heights must be learned, not only collected
        raise ValueError("an early threshold needs a check fitted on every lift level (all_levels)")
    # The settings it will store, refused now rather than after minutes of collection and fitting.
    CheckConfig(lift=lift, threshold=threshold, early_threshold=early_threshold, confirm=confirm)
    collect_lift = lift + confirm
    collect_every_level = all_levels or confirm > 0  # the second look's height and the first's
    agent_file = resolve_agent_path(agent)
    out = agent_file.parent
    net, _ = load_network(agent_file)  # the critic: the check's start (and a clear error for a bad file)
    t0 = time.time()
    expect = {
        "agent_mtime": agent_file.stat().st_mtime_ns,
        "lift": collect_lift,
        "grasps": grasps,
        "seed": seed,
        "all_levels": int(collect_every_level),
    }
    data = load_check_data(out / CHECK_DATA_FILE, expect)
    if data is None:
        per = [grasps // jobs + (w < grasps % jobs) for w in range(jobs)]
        floor = [min(n, -(-min(min_grasps, grasps) // jobs)) for n in per]  # each worker's share of the minimum
        args = [  # (..., the job's index, its seed, ...)
            (str(agent_file), collect_lift, n, w, seed * 1000 + w, generator, collect_every_level, deadline, f)
            for w, (n, f) in enumerate(zip(per, floor, strict=True))
        ]
        if jobs == 1:
            parts = [_collect(args[0])]
        else:
            with mp.get_context("spawn").Pool(jobs, initializer=_ignore_sigint) as pool:
                parts = pool.map(_collect, args)
                pool.close()  # let the workers exit by themselves (leaving the block would terminate them)
                pool.join()
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        got = len(np.unique(data["grasps"]))
        # Stored as the count it holds: a rerun asking for the full count collects again.
        save_check_data(out / CHECK_DATA_FILE, data, {**expect, "grasps": got})
    collect_s = time.time() - t0

    train, val_all, val, fitted = split_check_rows(data, lift, collect_lift, all_levels, seed)
    best_auc, history = train_check(net, data, train, val, epochs=epochs, lr=lr, seed=seed)
    config = CheckConfig(lift=lift, threshold=threshold, early_threshold=early_threshold, confirm=confirm)
    images, states = torch.from_numpy(data["images"][val_all]), torch.from_numpy(data["states"][val_all])
    all_scores, y_all = check_scores(net, images, states.float()), data["labels"][val_all].astype(bool)
    levels = data["levels"][val_all]
    s, y_val = all_scores[levels == lift], y_all[levels == lift]  # the rows of ``val``
    fitted_levels = np.unique(data["levels"][fitted])
    by_level = {str(k): auc(all_scores[levels == k], y_all[levels == k]) for k in fitted_levels}
    n = len(np.unique(data["grasps"]))
    summary = {
        "agent": str(agent_file),
        "grasps": n,
        "grasps_asked": grasps,
        "success_if_terminated": float(data["labels"][data["levels"] == collect_lift].mean()),
        "val_auc": best_auc,
        "val_auc_by_lift_step": by_level,
        "failures_caught": float((s[~y_val] < threshold).mean()) if (~y_val).any() else float("nan"),
        "successes_reopened": float((s[y_val] < threshold).mean()) if y_val.any() else float("nan"),
        "collect_minutes": collect_s / 60,
        "minutes": (time.time() - t0) / 60,
        "config": dataclasses.asdict(config),
        "history": history,
    }
    save_check(out / CHECK_FILE, net, config, {"val_auc": f"{best_auc:.4f}", "grasps": str(n)})
    write_json_atomic(out / "check.json", summary)
    return summary
