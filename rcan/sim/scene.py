"""The bin-grasping cell: floor, a tray with a movable divider, graspable objects and the gripper.

Physics and looks are kept apart on purpose. The tray, divider and floor that objects collide with have
no visual shapes; what the camera sees of them are visual-only twins (no collision shape, collision
filter off). That lets a renderer move, scale and re-texture the twins for one frame (the paper's jitter
of tray position and size, section 4.1) without touching the simulation: a seeded rollout gives
bit-identical states whether or not anything was rendered.
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
    """Pre-built visual twins of the tray at these sizes; a renderer shows one of them per frame."""
    gripper: GripperGeometry = field(default_factory=GripperGeometry)


def _tray_boxes(cfg: CellConfig, scale: float = 1.0) -> list[tuple[list[float], list[float]]]:
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


def _divider_half(cfg: CellConfig, scale: float = 1.0) -> list[float]:
    return [cfg.divider_thickness / 2 * scale, cfg.tray_inner_half[1] * scale, cfg.divider_height / 2 * scale]


class Cell:
    """Builds the static parts once per physics server and owns per-episode object loading."""

    def __init__(self, client: Client, config: CellConfig | None = None) -> None:
        self.client = client
        self.config = cfg = config or CellConfig()
        c = client
        # -- physics (collision only, invisible) -------------------------------------------------------
        # TinyRenderer draws a body's collision shapes when it has no visual shape, and its shadow pass
        # ignores alpha: so physics bodies get a speck of a visual far below the floor, hidden.
        speck = c.createVisualShape(pb.GEOM_SPHERE, radius=1e-3, visualFramePosition=[0, 0, -20.0])
        plane = c.createCollisionShape(pb.GEOM_PLANE)
        self.floor_body = c.createMultiBody(0, plane, speck, [0, 0, cfg.floor_z])
        boxes = _tray_boxes(cfg)
        tray_col = c.createCollisionShapeArray(
            shapeTypes=[pb.GEOM_BOX] * len(boxes),
            halfExtents=[b[0] for b in boxes],
            collisionFramePositions=[b[1] for b in boxes],
        )
        self.tray_body = c.createMultiBody(0, tray_col, speck, [0, 0, 0])
        div_col = c.createCollisionShape(pb.GEOM_BOX, halfExtents=_divider_half(cfg))
        self.divider_body = c.createMultiBody(0, div_col, speck, [0, 0, cfg.divider_height / 2])
        for body in (self.floor_body, self.tray_body, self.divider_body):
            c.changeDynamics(body, -1, lateralFriction=0.6)
            c.changeVisualShape(body, -1, rgbaColor=[1, 1, 1, 0])
        # -- looks (visual only, no collision) ---------------------------------------------------------
        floor_vis = c.createVisualShape(pb.GEOM_BOX, halfExtents=[0.9, 0.9, 0.005])
        self.floor_visual = self._visual_body(floor_vis, [0, 0, cfg.floor_z - 0.005])
        self.tray_visuals: list[int] = []
        self.divider_visuals: list[int] = []
        for s in cfg.visual_scales:
            bx = _tray_boxes(cfg, s)
            vis = c.createVisualShapeArray(
                shapeTypes=[pb.GEOM_BOX] * len(bx),
                halfExtents=[b[0] for b in bx],
                visualFramePositions=[b[1] for b in bx],
            )
            self.tray_visuals.append(self._visual_body(vis, [0, 0, 0]))
            dvis = c.createVisualShape(pb.GEOM_BOX, halfExtents=_divider_half(cfg, s))
            self.divider_visuals.append(self._visual_body(dvis, [0, 0, cfg.divider_height / 2 * s]))
        self.gripper = Gripper(c, cfg.gripper)
        self.divider_x = 0.0
        self.object_bodies: list[int] = []
        self.object_names: list[str] = []

    def _visual_body(self, visual_shape: int, position: list[float]) -> int:
        body = self.client.createMultiBody(0, -1, visual_shape, position)
        self.client.setCollisionFilterGroupMask(body, -1, 0, 0)
        return body

    # -- episode ---------------------------------------------------------------------------------------
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

    def object_min_z(self) -> np.ndarray:
        """Lowest point of each object's bounding box (what "held above a height" is measured on)."""
        return np.array([self.client.getAABB(b)[0][2] for b in self.object_bodies])

    def segmentation_classes(self) -> dict[int, int]:
        """Body unique id -> segmentation class for every body that can appear in an image."""
        lut = {self.floor_visual: BACKGROUND, self.gripper.body: ROBOT}
        lut.update({b: TRAY for b in self.tray_visuals})
        lut.update({b: DIVIDER for b in self.divider_visuals})
        lut.update({b: OBJECT for b in self.object_bodies})
        return lut
