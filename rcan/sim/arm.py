"""The Kuka IIWA arm, posed kinematically to follow the gripper, for the camera only.

It lives on the render-only stage (never simulated). Size jitter (paper 4.1) reloads it at another
``globalScaling`` (~2 ms) rather than keeping hidden copies: TinyRenderer's shadow pass draws every
triangle in the scene, hidden or not (~1 ms per extra arm copy per frame at 64x64).

The joint angles come from inverse kinematics on a separate, never-reloaded, unscaled copy in a private
server, always started from the same rest pose: PyBullet's IK keeps per-body state that a reloaded body
can inherit, which made frames depend on what had been rendered before. Uniform scaling about the base
leaves joint angles unchanged, so the unscaled solution for the scaled-back target poses any size.
"""

from __future__ import annotations

import math

import numpy as np

from rcan.sim.bullet import Client, new_client
from rcan.sim.meshes import kuka_visual_urdf

ARM_SCALES = (0.95, 1.0, 1.05)
ARM_BASE = (-0.62, 0.0, -0.01)
EE_LINK = 6
FLANGE_LENGTH = 0.045  # from the link-7 frame to the flange face where the gripper's palm is mounted
_REST = [0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0]
_LOWER = [-2.96, -2.09, -2.96, -2.09, -2.96, -2.09, -3.05]
_UPPER = [2.96, 2.09, 2.96, 2.09, 2.96, 2.09, 3.05]


class KinematicArm:
    """One visual-only Kuka whose joints follow a target flange pose by IK."""

    def __init__(self, client: Client, base: tuple[float, float, float] = ARM_BASE, ik_iterations: int = 40) -> None:
        self.client = client
        self.base = np.asarray(base, dtype=float)
        self.ik_iterations = ik_iterations
        self._urdf = str(kuka_visual_urdf())
        self.body = -1
        self.scale = 0.0
        self._last_pose: tuple | None = None
        self._load(1.0)
        self.num_links = client.getNumJoints(self.body) + 1  # base + one per joint
        self._ik = new_client()
        self._ik_body = self._ik.loadURDF(self._urdf, self.base.tolist(), [0, 0, 0, 1], useFixedBase=True)

    def close(self) -> None:
        if self._ik is not None:
            self._ik.disconnect()
            self._ik = None

    def _load(self, scale: float) -> None:
        c = self.client
        if self.body >= 0:
            c.removeBody(self.body)
        self.body = c.loadURDF(self._urdf, self.base.tolist(), [0, 0, 0, 1], useFixedBase=True, globalScaling=scale)
        self.scale = scale
        self._last_pose = None

    def pose(self, scale_index: int, offset: np.ndarray, palm_top: np.ndarray, yaw: float) -> int:
        """Show the arm at size ``ARM_SCALES[scale_index]`` from a jittered base, flange on the palm."""
        scale = ARM_SCALES[scale_index]
        if scale != self.scale:
            self._load(scale)
        key = (scale, tuple(np.round(offset, 9)), tuple(np.round(palm_top, 9)), round(yaw, 9))
        if key == self._last_pose:  # e.g. the canonical twin of a randomized frame: same pose
            return self.body
        c, body, ik = self.client, self.body, self._ik
        c.resetBasePositionAndOrientation(body, (self.base + offset).tolist(), [0, 0, 0, 1])
        flange = np.asarray(palm_top, dtype=float) + np.array([0.0, 0.0, FLANGE_LENGTH * scale])
        target = self.base + (flange - (self.base + offset)) / scale  # the same pose for the unscaled arm
        orn = ik.getQuaternionFromEuler([math.pi, 0.0, yaw + math.pi / 2])
        for j, q0 in enumerate(_REST):  # start IK from the same pose every time: history-free frames
            ik.resetJointState(self._ik_body, j, q0)
        q = ik.calculateInverseKinematics(
            self._ik_body,
            EE_LINK,
            target.tolist(),
            orn,
            lowerLimits=_LOWER,
            upperLimits=_UPPER,
            jointRanges=[u - lo for u, lo in zip(_UPPER, _LOWER, strict=True)],
            restPoses=_REST,
            maxNumIterations=self.ik_iterations,
            residualThreshold=1e-4,
        )
        for j in range(7):
            c.resetJointState(body, j, q[j])
        self._last_pose = key
        return body
