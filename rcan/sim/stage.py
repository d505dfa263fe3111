"""The cell as the camera sees it, in a render-only PyBullet server that is never stepped.

It holds the looks of the floor, tray and divider (several tray sizes for size jitter), copies of the
gripper and of the episode's objects whose poses are copied from the physics ``Cell`` before each frame,
and the kinematic Kuka arm. Nothing here can influence the physics, which lives in another server.
"""

from __future__ import annotations

from rcan.sim.arm import KinematicArm
from rcan.sim.bullet import Client, pb
from rcan.sim.gripper import build_gripper_body
from rcan.sim.objects import ObjectSpec, load_object
from rcan.sim.scene import (
    BACKGROUND,
    DIVIDER,
    OBJECT,
    ROBOT,
    TRAY,
    Cell,
    CellConfig,
    divider_half,
    tray_boxes,
)


class Stage:
    """Look-only copies of everything visible; ``sync`` copies the dynamic poses from a ``Cell``."""

    def __init__(self, client: Client, config: CellConfig) -> None:
        self.client = client
        self.config = cfg = config
        c = client
        floor_vis = c.createVisualShape(pb.GEOM_BOX, halfExtents=[0.9, 0.9, 0.005])
        self.floor = c.createMultiBody(0, -1, floor_vis, [0, 0, cfg.floor_z - 0.005])
        self.trays: list[int] = []
        self.dividers: list[int] = []
        for s in cfg.visual_scales:
            bx = tray_boxes(cfg, s)
            vis = c.createVisualShapeArray(
                shapeTypes=[pb.GEOM_BOX] * len(bx),
                halfExtents=[b[0] for b in bx],
                visualFramePositions=[b[1] for b in bx],
            )
            self.trays.append(c.createMultiBody(0, -1, vis, [0, 0, 0]))
            dvis = c.createVisualShape(pb.GEOM_BOX, halfExtents=divider_half(cfg, s))
            self.dividers.append(c.createMultiBody(0, -1, dvis, [0, 0, cfg.divider_height / 2 * s]))
        self.gripper = build_gripper_body(c, cfg.gripper)
        self.arm = KinematicArm(c)
        self.objects: list[int] = []
        self.divider_x = 0.0

    def load_objects(self, specs: list[ObjectSpec]) -> None:
        """Replace the object copies by copies of ``specs`` (poses come with the next ``sync``)."""
        for body in self.objects:
            self.client.removeBody(body)
        self.objects = [load_object(self.client, spec, [0, 0, -5.0], [0, 0, 0, 1]) for spec in specs]

    def sync(self, cell: Cell) -> None:
        """Copy the gripper's and objects' poses (and the divider's place) from the physics cell."""
        c, pc = self.client, cell.client
        pos, orn = pc.getBasePositionAndOrientation(cell.gripper.body)
        c.resetBasePositionAndOrientation(self.gripper, pos, orn)
        for j, q in enumerate(cell.gripper.finger_positions()):
            c.resetJointState(self.gripper, j, q)
        for body, (pos, orn) in zip(self.objects, cell.object_poses(), strict=True):
            c.resetBasePositionAndOrientation(body, pos, orn)
        self.divider_x = cell.divider_x

    def close(self) -> None:
        self.arm.close()

    def segmentation_classes(self) -> dict[int, int]:
        """Body unique id -> segmentation class for every body that can appear in an image."""
        lut = {self.floor: BACKGROUND, self.gripper: ROBOT, self.arm.body: ROBOT}
        lut.update({b: TRAY for b in self.trays})
        lut.update({b: DIVIDER for b in self.dividers})
        lut.update({b: OBJECT for b in self.objects})
        return lut
