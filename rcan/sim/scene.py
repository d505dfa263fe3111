"""The bin-grasping cell's physics: floor, a tray with a movable divider, graspable objects, the gripper.

This lives in its own PyBullet server and is never rendered. What the camera sees is a ``Stage``
(``stage.py``) in a second, render-only server that copies the poses of the gripper and objects before
each frame: so textures, jitter of tray and arm, reloading the arm at another size, anything a renderer
does can never change the simulation (a seeded rollout is bit-identical with or without rendering).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rcan.sim.bullet import Client, pb
from rcan.sim.gripper import Gripper, GripperGeometry

# Segmentation classes (the paper's five).
BACKGROUND, TRAY, DIVIDER, ROBOT, OBJECT = 0, 1, 2, 3, 4
CLASS_NAMES = ("background", "tray", "divider", "robot", "object")


@dataclass(frozen=True)
class CellConfig:
    """Geometry of the cell in metres. The tray's inner bottom is at z = 0 and centred on the origin."""

    tray_inner_half: tuple[float, float] = (0.20, 0.15)
    tray_wall_height: float = 0.08
    tray_wall_thickness: float = 0.01
    divider_height: float = 0.05
    divider_thickness: float = 0.01
    divider_range: float = 0.10
    """The divider sits across the tray at x ~ U(-divider_range, divider_range) each episode."""
    floor_z: float = -0.01
    visual_scales: tuple[float, ...] = (0.94, 0.97, 1.0, 1.03, 1.06)
    """Sizes of the tray's look copies on the stage; a frame shows one of them (size jitter)."""
    gripper: GripperGeometry = field(default_factory=GripperGeometry)


def tray_boxes(cfg: CellConfig, scale: float = 1.0) -> list[tuple[list[float], list[float]]]:
    """(half extents, centre) of the tray's bottom slab and four walls, scaled about the tray centre."""
    ix, iy = cfg.tray_inner_half
    t, h = cfg.tray_wall_thickness, cfg.tray_wall_height
    boxes = [
        ([ix + t, iy + t, 0.005], [0.0, 0.0, -0.005]),
        ([t / 2, iy + t, h / 2], [ix + t / 2, 0.0, h / 2]),
        ([t / 2, iy + t, h / 2], [-ix - t / 2, 0.0, h / 2]),
        ([ix, t / 2, h / 2], [0.0, iy + t / 2, h / 2]),
        ([ix, t / 2, h / 2], [0.0, -iy - t / 2, h / 2]),
    ]
    return [([e * scale for e in half], [c * scale for c in centre]) for half, centre in boxes]


def divider_half(cfg: CellConfig, scale: float = 1.0) -> list[float]:
    return [cfg.divider_thickness / 2 * scale, cfg.tray_inner_half[1] * scale, cfg.divider_height / 2 * scale]


class Cell:
    """The simulated (collision) side of the cell: static parts once per server, objects per episode."""

    def __init__(self, client: Client, config: CellConfig | None = None) -> None:
        self.client = client
        self.config = cfg = config or CellConfig()
        c = client
        plane = c.createCollisionShape(pb.GEOM_PLANE)
        self.floor_body = c.createMultiBody(0, plane, -1, [0, 0, cfg.floor_z])
        boxes = tray_boxes(cfg)
        tray_col = c.createCollisionShapeArray(
            shapeTypes=[pb.GEOM_BOX] * len(boxes),
            halfExtents=[b[0] for b in boxes],
            collisionFramePositions=[b[1] for b in boxes],
        )
        self.tray_body = c.createMultiBody(0, tray_col, -1, [0, 0, 0])
        div_col = c.createCollisionShape(pb.GEOM_BOX, halfExtents=divider_half(cfg))
        self.divider_body = c.createMultiBody(0, div_col, -1, [0, 0, cfg.divider_height / 2])
        for body in (self.floor_body, self.tray_body, self.divider_body):
            c.changeDynamics(body, -1, lateralFriction=0.6)
        self.gripper = Gripper(c, cfg.gripper)
        self.divider_x = 0.0
        self.object_bodies: list[int] = []
        self.object_names: list[str] = []

    def place_divider(self, x: float) -> None:
        self.divider_x = float(x)
        self.client.resetBasePositionAndOrientation(
            self.divider_body, [self.divider_x, 0.0, self.config.divider_height / 2], [0, 0, 0, 1]
        )

    def clear_objects(self) -> None:
        for body in self.object_bodies:
            self.client.removeBody(body)
        self.object_bodies, self.object_names = [], []

    def inside_tray(self, xy: np.ndarray, margin: float = 0.0) -> bool:
        ix, iy = self.config.tray_inner_half
        return bool(abs(xy[0]) <= ix - margin and abs(xy[1]) <= iy - margin)

    def object_positions(self) -> np.ndarray:
        if not self.object_bodies:
            return np.zeros((0, 3))
        return np.array([self.client.getBasePositionAndOrientation(b)[0] for b in self.object_bodies])

    def object_poses(self) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
        return [self.client.getBasePositionAndOrientation(b) for b in self.object_bodies]

    def box_centre_xy(self, body: int) -> np.ndarray:
        """(2,): the x-y centre of ``body``'s bounding box, where an aimed grasp goes (the AABB's contact
        margin pads every side alike, so the centre is exact)."""
        lo, hi = (np.asarray(v) for v in self.client.getAABB(body))
        return (lo[:2] + hi[:2]) / 2

    def object_min_z(self) -> np.ndarray:
        """Lowest point of each object's bounding box (what "held above a height" is measured on).

        PyBullet's AABB is padded by the contact margin (~2 cm), so this errs low: conservative."""
        return np.array([self.client.getAABB(b)[0][2] for b in self.object_bodies])
