"""A floating two-finger parallel gripper: the physical end effector of the cell.

Why floating: driving the Kuka's own gripper through inverse kinematics every substep grasped an object
it was aimed at only 10-45% of the time (fingertips 2-4 cm off target); a palm moved by a fixed constraint
with two prismatic fingers grasped 88% of aimed attempts at ~3x the speed (NOTES.md). The Kuka arm is still
in the picture: it is posed kinematically to follow the palm, for rendering only (see ``arm.py``).

Frame: the palm's local z points up, the fingers close along the palm's local y axis. The *tool point*
(what the policy moves and ``gripper_height`` measures) is the centre between the fingertips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcan.sim.bullet import Client, pb


@dataclass(frozen=True)
class GripperGeometry:
    """Dimensions in metres; defaults give a 9.5 cm opening for ~3-9 cm objects."""

    palm_half: tuple[float, float, float] = (0.02, 0.055, 0.012)
    finger_half: tuple[float, float, float] = (0.011, 0.006, 0.035)
    max_opening: float = 0.095
    palm_mass: float = 0.6
    finger_mass: float = 0.05
    finger_friction: float = 2.0
    finger_force: float = 100.0
    finger_speed: float = 0.6
    drive_force: float = 400.0

    @property
    def tip_below_palm(self) -> float:
        """Distance from the palm centre down to the fingertips (the tool point's height offset)."""
        return self.palm_half[2] + 2 * self.finger_half[2]

    @property
    def finger_travel(self) -> float:
        return self.max_opening / 2


def build_gripper_body(client: Client, g: GripperGeometry) -> int:
    """The palm + two prismatic fingers as one multibody (also used, never simulated, as the look copy)."""
    palm_col = client.createCollisionShape(pb.GEOM_BOX, halfExtents=g.palm_half)
    palm_vis = client.createVisualShape(pb.GEOM_BOX, halfExtents=g.palm_half)
    fing_col = client.createCollisionShape(pb.GEOM_BOX, halfExtents=g.finger_half)
    fing_vis = client.createVisualShape(pb.GEOM_BOX, halfExtents=g.finger_half)
    y_open = g.max_opening / 2 + g.finger_half[1]
    z_f = -(g.palm_half[2] + g.finger_half[2])
    return client.createMultiBody(
        baseMass=g.palm_mass,
        baseCollisionShapeIndex=palm_col,
        baseVisualShapeIndex=palm_vis,
        basePosition=[0, 0, 1.0],
        linkMasses=[g.finger_mass, g.finger_mass],
        linkCollisionShapeIndices=[fing_col, fing_col],
        linkVisualShapeIndices=[fing_vis, fing_vis],
        linkPositions=[[0, y_open, z_f], [0, -y_open, z_f]],
        linkOrientations=[[0, 0, 0, 1], [0, 0, 0, 1]],
        linkInertialFramePositions=[[0, 0, 0], [0, 0, 0]],
        linkInertialFrameOrientations=[[0, 0, 0, 1], [0, 0, 0, 1]],
        linkParentIndices=[0, 0],
        linkJointTypes=[pb.JOINT_PRISMATIC, pb.JOINT_PRISMATIC],
        linkJointAxis=[[0, -1, 0], [0, 1, 0]],
    )


class Gripper:
    """Palm + two prismatic fingers, moved by a fixed constraint whose target is interpolated per substep."""

    def __init__(self, client: Client, geometry: GripperGeometry | None = None) -> None:
        self.client = client
        self.geometry = g = geometry or GripperGeometry()
        self.body = build_gripper_body(client, g)
        for joint in (0, 1):
            client.changeDynamics(self.body, joint, lateralFriction=g.finger_friction, spinningFriction=0.002)
            client.changeDynamics(self.body, joint, jointLowerLimit=0.0, jointUpperLimit=g.finger_travel)
        client.changeDynamics(self.body, -1, lateralFriction=g.finger_friction)

        self.constraint = client.createConstraint(
            self.body, -1, -1, -1, pb.JOINT_FIXED, [0, 0, 0], [0, 0, 0], [0, 0, 1.0]
        )
        self.closed = False
        self._target_pos = np.array([0.0, 0.0, 1.0])
        self._target_yaw = 0.0

    # -- state -------------------------------------------------------------------------------------
    def palm_pose(self) -> tuple[np.ndarray, float]:
        """Current palm position (3,) and yaw (rad)."""
        pos, orn = self.client.getBasePositionAndOrientation(self.body)
        yaw = self.client.getEulerFromQuaternion(orn)[2]
        return np.asarray(pos), float(yaw)

    def tool_position(self) -> np.ndarray:
        pos, _ = self.palm_pose()
        return pos - np.array([0.0, 0.0, self.geometry.tip_below_palm])

    def fingertip_positions(self) -> np.ndarray:
        """(2, 3): the lowest centre point of each finger, in world coordinates (where each fingertip lands)."""
        down = np.array([0.0, 0.0, self.geometry.finger_half[2]])
        return np.array([self.client.getLinkState(self.body, j)[0] for j in (0, 1)]) - down

    def finger_positions(self) -> tuple[float, float]:
        return tuple(self.client.getJointState(self.body, j)[0] for j in (0, 1))  # type: ignore[return-value]

    def opening(self) -> float:
        """The gap between the fingers (m): what a parallel gripper's position encoder reports (0 when closed
        on nothing, the object's width when closed on one; ``max_opening`` when open)."""
        g = self.geometry
        return float(np.clip(g.max_opening - sum(self.finger_positions()), 0.0, g.max_opening))

    @property
    def target_tool(self) -> np.ndarray:
        return self._target_pos - np.array([0.0, 0.0, self.geometry.tip_below_palm])

    @property
    def target_yaw(self) -> float:
        return self._target_yaw

    def snapshot(self) -> tuple[np.ndarray, float, bool]:
        """The commands PyBullet's ``saveState`` does not keep: the constraint's target and the fingers'."""
        return self._target_pos.copy(), self._target_yaw, self.closed

    def restore(self, snap: tuple[np.ndarray, float, bool]) -> None:
        """Re-issue the commands of a ``snapshot`` (after ``restoreState`` has put the bodies back)."""
        pos, yaw, closed = snap
        self._target_pos, self._target_yaw, self.closed = pos.copy(), float(yaw), bool(closed)
        self._drive(self._target_pos, self._target_yaw)
        self._command_fingers()

    # -- control -----------------------------------------------------------------------------------
    def teleport(self, tool_pos: np.ndarray, yaw: float, closed: bool = False) -> None:
        """Place the gripper instantly (episode start); fingers open unless ``closed``."""
        palm = np.asarray(tool_pos, dtype=float) + np.array([0.0, 0.0, self.geometry.tip_below_palm])
        orn = self.client.getQuaternionFromEuler([0.0, 0.0, yaw])
        self.client.resetBasePositionAndOrientation(self.body, palm.tolist(), orn)
        self.client.resetBaseVelocity(self.body, [0, 0, 0], [0, 0, 0])
        q = self.geometry.finger_travel if closed else 0.0
        for j in (0, 1):
            self.client.resetJointState(self.body, j, q, 0.0)
        self._target_pos, self._target_yaw = palm, float(yaw)
        self.closed = closed
        self._drive(palm, yaw)
        self._command_fingers()

    def set_closed(self, closed: bool) -> None:
        self.closed = bool(closed)
        self._command_fingers()

    def drive_towards(self, tool_pos: np.ndarray, yaw: float, fraction: float) -> None:
        """Set the constraint target a ``fraction`` of the way from the last target to the new one."""
        palm = np.asarray(tool_pos, dtype=float) + np.array([0.0, 0.0, self.geometry.tip_below_palm])
        pos = self._target_pos + fraction * (palm - self._target_pos)
        yaw_i = self._target_yaw + fraction * (yaw - self._target_yaw)
        self._drive(pos, yaw_i)
        if fraction >= 1.0:
            self._target_pos, self._target_yaw = palm, float(yaw)

    def _drive(self, palm: np.ndarray, yaw: float) -> None:
        orn = self.client.getQuaternionFromEuler([0.0, 0.0, yaw])
        self.client.changeConstraint(self.constraint, palm.tolist(), orn, maxForce=self.geometry.drive_force)

    def _command_fingers(self) -> None:
        g = self.geometry
        q = g.finger_travel if self.closed else 0.0
        for j in (0, 1):
            self.client.setJointMotorControl2(
                self.body, j, pb.POSITION_CONTROL, targetPosition=q, force=g.finger_force, maxVelocity=g.finger_speed
            )
