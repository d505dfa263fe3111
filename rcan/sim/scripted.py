"""QT-Opt's scripted exploration policy: random x-y over the tray, descend, close, lift, terminate.

It bootstraps the replay buffer before the learned policy is any good (NOTES.md: 15-30% success in the
paper's setting). It is open-loop in x-y: it reads the gripper's commanded position from ``info["tool"]``
(also returned by ``reset``), so it works through vector envs and other processes.

``aim_prob`` (beyond the paper, simulation only): the share of episodes whose goal is a random object's
centre (``info["objects_xy"]`` from ``reset``, privileged) plus Gaussian noise of ``aim_noise`` metres,
instead of a random point; the yaw stays random. Random points over a tray with five objects mostly
land on the floor, so the learner sees few grasps that closed on an object; aimed episodes give it the
contrast of closing on an object versus beside it, at the same closing heights and yaws.

``wall_yaw_prob`` (beyond the paper, simulation only): the share of aimed goals whose yaw closes the
fingers parallel to the nearest wall or divider (``info["divider_x"]``, privileged; the oracle's yaw)
instead of a random yaw, so the replay holds grasps of one object at good and bad yaws.

``retry_prob`` (beyond the paper, simulation only): after the lift that follows a closing, if no finger
touches an object (``info["holding"]``, privileged), the policy reopens and goes for a new goal with this
probability, while at least ``retry_steps`` steps remain. A learned agent can only learn to regrasp (QT-Opt's
emergent retries) from data where an empty grasp was followed by reopening; the paper's scripted policy
never reopens and the learned policy's exploration noise never flips the gripper. ``lift_steps``: how many
steps the closed gripper rises before that check (and before terminating). One 4 cm step shows 47% of the
grasps that will fail (no finger on an object any more), two 81%, three 96% (aimed scripted grasps on test
objects, ``benchmarks/RESULTS.md`` 2026-12-03).
"""

from __future__ import annotations

import math

import numpy as np


class ScriptedGraspPolicy:
    """Stateful per episode; call ``reset(info)`` at each episode start, then ``act(obs, info)``."""

    def __init__(
        self,
        rng: np.random.Generator,
        tray_half: tuple[float, float] = (0.20, 0.15),
        max_translation: float = 0.04,
        max_rotation: float = math.radians(15.0),
        noise: float = 0.05,
        margin: float = 0.05,
        hover: float = 0.10,
        aim_prob: float = 0.0,
        aim_noise: float = 0.01,
        retry_prob: float = 0.0,
        max_steps: int = 20,
        retry_steps: int = 6,
        wall_yaw_prob: float = 0.0,
        lift_steps: int = 1,
    ) -> None:
        if not 0.0 <= aim_prob <= 1.0 or aim_noise < 0:
            raise ValueError(f"aim_prob must be in [0, 1] and aim_noise >= 0, got {aim_prob}, {aim_noise}")
        for name, value in (("retry_prob", retry_prob), ("wall_yaw_prob", wall_yaw_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if int(lift_steps) != lift_steps or lift_steps < 1:
            raise ValueError(f"lift_steps must be an integer >= 1, got {lift_steps}")
        self.wall_yaw_prob = float(wall_yaw_prob)
        self.lift_steps = int(lift_steps)
        self._lifted = 0
        self.rng = rng
        self.aim_prob, self.aim_noise = float(aim_prob), float(aim_noise)
        self.retry_prob, self.max_steps, self.retry_steps = float(retry_prob), int(max_steps), int(retry_steps)
        self.aimed = False
        self.tray_half = tray_half
        self.max_translation, self.max_rotation = max_translation, max_rotation
        self.noise, self.margin, self.hover = noise, margin, hover
        self.goal = np.zeros(2)
        self.goal_yaw = 0.0
        self.phase = "move"
        self._last_height = math.inf

    def reset(self, info: dict) -> None:
        self._new_goal(info, first=True)

    def _new_goal(self, info: dict, first: bool = False) -> None:
        """A goal for the next grasp: a random point, or a random object's centre in an aimed episode
        (decided at the episode's first goal; the draws keep the order of the paper's policy)."""
        ix, iy = self.tray_half
        m = self.margin
        self.goal = self.rng.uniform([-ix + m, -iy + m], [ix - m, iy - m])
        if first:
            self.aimed = self.aim_prob > 0 and self.rng.random() < self.aim_prob
        if self.aimed:
            if "objects_xy" not in info:
                raise KeyError("aimed exploration needs info['objects_xy'] from the env")
            objects = np.asarray(info["objects_xy"], dtype=float).reshape(-1, 2)
            target = objects[self.rng.integers(len(objects))] + self.rng.normal(0.0, self.aim_noise, 2)
            self.goal = np.clip(target, [-ix + 0.01, -iy + 0.01], [ix - 0.01, iy - 0.01])
        self.goal_yaw = float(self.rng.uniform(-math.pi / 2, math.pi / 2))
        if self.aimed and self.wall_yaw_prob > 0 and self.rng.random() < self.wall_yaw_prob:
            if "divider_x" not in info:
                raise KeyError("wall-parallel yaws need info['divider_x'] from the env")
            self.goal_yaw = wall_parallel_yaw(self.goal, self.tray_half, float(info["divider_x"]))
        self.phase = "move"
        self._last_height = math.inf

    def _retry(self, info: dict) -> bool:
        """Reopen after an empty lift? Only with ``retry_prob``, no object touched, and steps to spare."""
        if self.retry_prob <= 0 or info.get("holding", True):
            return False
        return self.max_steps - int(info.get("step", self.max_steps)) >= self.retry_steps and bool(
            self.rng.random() < self.retry_prob
        )

    def act(self, obs: dict, info: dict) -> np.ndarray:
        tool = np.asarray(info["tool"], dtype=float)
        yaw = float(info["yaw"])
        a = np.zeros(6, dtype=np.float32)
        a[4] = -1.0
        a[5] = -1.0
        if self.phase == "move":
            # Travel and descend at once, but stay above the objects until over the goal.
            d = (self.goal - tool[:2]) / self.max_translation
            a[:2] = np.clip(d, -1, 1)
            a[2] = np.clip((self.hover - tool[2]) / self.max_translation, -1, 1)
            a[3] = np.clip((self.goal_yaw - yaw) / self.max_rotation, -1, 1)
            if np.all(np.abs(d) <= 1.0):
                self.phase = "descend"
        elif self.phase == "descend":
            a[2] = -1.0
            a[3] = np.clip((self.goal_yaw - yaw) / self.max_rotation, -1, 1)
            height = float(obs["gripper_height"][0])
            # Close at the bottom, or where the fingers came to rest on something.
            if height <= 0.045 or height > self._last_height - 0.005:
                self.phase = "close"
            self._last_height = height
        elif self.phase == "close":
            a[4] = 1.0
            self.phase, self._lifted = "lift", 0
        elif self.phase == "lift":
            a[2], a[4] = 1.0, 1.0
            self._lifted += 1
            if self._lifted >= self.lift_steps:
                self.phase = "check"
        elif self.phase == "check" and self._retry(info):
            self._new_goal(info)  # reopen and go for another grasp: the first move step, with the gripper open
            return self.act(obs, info)
        else:
            a[4], a[5] = 1.0, 1.0
        a[:4] += self.rng.normal(0.0, self.noise, 4).astype(np.float32)
        return np.clip(a, -1.0, 1.0)


def wall_parallel_yaw(xy: np.ndarray, tray_half: tuple[float, float], divider_x: float) -> float:
    """The yaw whose fingers close parallel to the wall or divider nearest to ``xy``, so that neither
    finger lands on it (the oracle's choice)."""
    ix, iy = tray_half
    to_x_obstacle = min(ix - abs(xy[0]), abs(xy[0] - divider_x))
    to_y_wall = iy - abs(xy[1])
    # yaw 0 closes along world y (fingers side by side in y), which suits walls/divider that run along y.
    return 0.0 if to_x_obstacle < to_y_wall else math.pi / 2


def oracle_grasp(cell, body: int) -> tuple[np.ndarray, float]:
    """A privileged aim at object ``body``: its bounding-box centre, with the fingers closing parallel
    to the nearest wall or the divider, so they do not land on it. For physics checks and baselines."""
    xy = cell.box_centre_xy(body)
    return xy, wall_parallel_yaw(xy, cell.config.tray_inner_half, cell.divider_x)
