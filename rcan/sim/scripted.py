"""QT-Opt's scripted exploration policy: random x-y over the tray, descend, close, lift, terminate.

It bootstraps the replay buffer before the learned policy is any good (NOTES.md: 15-30% success in the
paper's setting). It is open-loop in x-y: it reads the gripper's commanded position from ``info["tool"]``
(also returned by ``reset``), so it works through vector envs and other processes.
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
        margin: float = 0.03,
    ) -> None:
        self.rng = rng
        self.tray_half = tray_half
        self.max_translation, self.max_rotation = max_translation, max_rotation
        self.noise, self.margin = noise, margin
        self.goal = np.zeros(2)
        self.goal_yaw = 0.0
        self.phase = "move"

    def reset(self, info: dict) -> None:
        ix, iy = self.tray_half
        m = self.margin
        self.goal = self.rng.uniform([-ix + m, -iy + m], [ix - m, iy - m])
        self.goal_yaw = float(self.rng.uniform(-math.pi / 2, math.pi / 2))
        self.phase = "move"

    def act(self, obs: dict, info: dict) -> np.ndarray:
        tool = np.asarray(info["tool"], dtype=float)
        yaw = float(info["yaw"])
        a = np.zeros(6, dtype=np.float32)
        a[4] = -1.0
        a[5] = -1.0
        if self.phase == "move":
            d = (self.goal - tool[:2]) / self.max_translation
            a[:2] = np.clip(d, -1, 1)
            a[3] = np.clip((self.goal_yaw - yaw) / self.max_rotation, -1, 1)
            if np.all(np.abs(d) <= 1.0):
                self.phase = "descend"
        elif self.phase == "descend":
            a[2] = -1.0
            if float(obs["gripper_height"][0]) <= 0.045:
                self.phase = "close"
        elif self.phase == "close":
            a[4] = 1.0
            self.phase = "lift"
        elif self.phase == "lift":
            a[2], a[4] = 1.0, 1.0
            self.phase = "terminate"
        else:
            a[4], a[5] = 1.0, 1.0
        a[:4] += self.rng.normal(0.0, self.noise, 4).astype(np.float32)
        return np.clip(a, -1.0, 1.0)
