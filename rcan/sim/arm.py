"""The Kuka IIWA arm, posed kinematically to follow the floating gripper, for the camera only.

The arm never collides (its URDF has no collision shapes and its collision filter is off) and its joints
are set by inverse kinematics just before a frame is rendered, so it cannot change the simulation. A few
copies at different sizes are loaded once; a renderer shows one (the paper's arm size jitter) and hides
the others (alpha 0, which TinyRenderer skips at no cost).
"""

from __future__ import annotations

import math

import numpy as np

from rcan.sim.bullet import Client
from rcan.sim.meshes import kuka_visual_urdf

ARM_SCALES = (0.95, 1.0, 1.05)
ARM_BASE = (-0.62, 0.0, -0.01)
EE_LINK = 6
FLANGE_LENGTH = 0.045  # from the link-7 frame to the flange face where the gripper's palm is mounted
_REST = [0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0]


class KinematicArm:
    """Kuka copies (one per scale) whose joints follow a target flange pose by IK."""

    def __init__(self, client: Client, base: tuple[float, float, float] = ARM_BASE, ik_passes: int = 1) -> None:
        self.client = client
        self.ik_passes = ik_passes
        self.base = np.asarray(base, dtype=float)
        urdf = str(kuka_visual_urdf())
        self.bodies: list[int] = []
        for s in ARM_SCALES:
            body = client.loadURDF(urdf, self.base.tolist(), [0, 0, 0, 1], useFixedBase=True, globalScaling=s)
            for link in range(-1, client.getNumJoints(body)):
                client.setCollisionFilterGroupMask(body, link, 0, 0)
            for j, q in enumerate(_REST):
                client.resetJointState(body, j, q)
            self.bodies.append(body)
        self.num_links = client.getNumJoints(self.bodies[0]) + 1  # base + one per joint
        self.lower = [-2.96, -2.09, -2.96, -2.09, -2.96, -2.09, -3.05]
        self.upper = [2.96, 2.09, 2.96, 2.09, 2.96, 2.09, 3.05]

    def pose(self, scale_index: int, offset: np.ndarray, palm_top: np.ndarray, yaw: float) -> int:
        """Place copy ``scale_index`` at the jittered base and solve IK so its flange meets the palm."""
        body = self.bodies[scale_index]
        c = self.client
        c.resetBasePositionAndOrientation(body, (self.base + offset).tolist(), [0, 0, 0, 1])
        scale = ARM_SCALES[scale_index]
        target = np.asarray(palm_top, dtype=float) + np.array([0.0, 0.0, FLANGE_LENGTH * scale])
        orn = c.getQuaternionFromEuler([math.pi, 0.0, yaw + math.pi / 2])
        for j, q0 in enumerate(_REST):  # start IK from the same pose every time: history-free frames
            c.resetJointState(body, j, q0)
        for _ in range(self.ik_passes):  # each pass restarts from the last solution, tightening the fit
            q = c.calculateInverseKinematics(
                body,
                EE_LINK,
                target.tolist(),
                orn,
                lowerLimits=self.lower,
                upperLimits=self.upper,
                jointRanges=[u - lo for u, lo in zip(self.upper, self.lower, strict=True)],
                restPoses=_REST,
                maxNumIterations=40,
                residualThreshold=1e-4,
            )
            for j in range(7):
                c.resetJointState(body, j, q[j])
        return body
