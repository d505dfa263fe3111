"""Turns a ``FrameStyle`` into pixels with PyBullet's TinyRenderer (CPU, no display needed).

It draws the render-only ``Stage`` (a server of its own), so nothing done here reaches the physics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcan.sim.arm import ARM_SCALES
from rcan.sim.bullet import pb
from rcan.sim.domains import BANK, PHOTO, FrameStyle, Look
from rcan.sim.scene import BACKGROUND
from rcan.sim.stage import Stage
from rcan.sim.textures import TextureSource

HIDDEN = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class CameraConfig:
    """A fixed camera above one long side of the tray, looking down at 45 degrees across the arm's reach.

    The arm enters the picture from the left, as it does past the shoulder in the paper's cell. An earlier
    pose nearer the arm's base (eye (-0.34, 0.24, 0.50), fov 50) put the arm between the camera and the
    gripper in about a third of the frames where a scripted grasp closes: a classifier of grasp success
    from the closing frame reached AUC 0.64 there and 0.82 with this pose (benchmarks/RESULTS.md)."""

    eye: tuple[float, float, float] = (0.0, 0.55, 0.55)
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov: float = 42.0
    near: float = 0.05
    far: float = 3.0


CAMERAS: dict[str, CameraConfig] = {
    "wide": CameraConfig(),
    "tray": CameraConfig(target=(0.0, 0.0, 0.02), fov=32.0),
}
"""Named cameras. ``wide`` (the default; the shipped generator and agent see it): the whole cell, the tray
filling the middle of the frame; at 64x64 about 1.1 pixels per cm across the tray and 0.76 along it.
``tray``: the same pose zoomed onto the tray (fov 32), its walls at the frame's edges: 1.46 and 1.02
pixels per cm (1.8x the pixels on the tray for the same image size), and the arm hides about as much of
the object under the fingers at closing (measured in benchmarks/RESULTS.md)."""


def camera_config(camera: CameraConfig | str | None) -> CameraConfig:
    """A camera from its name in :data:`CAMERAS` (None: ``wide``) or as given."""
    if camera is None:
        return CAMERAS["wide"]
    if isinstance(camera, CameraConfig):
        return camera
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; choose one of {', '.join(CAMERAS)}")
    return CAMERAS[camera]


@dataclass
class Frame:
    rgb: np.ndarray
    depth: np.ndarray | None = None
    segmentation: np.ndarray | None = None


class Renderer:
    """Applies a FrameStyle to the cell and renders RGB (and optionally depth and segmentation)."""

    def __init__(self, stage: Stage, camera: CameraConfig, sources: dict[str, TextureSource]) -> None:
        self.stage, self.client, self.arm, self.camera = stage, stage.client, stage.arm, camera
        self.sources = sources
        self._texture_ids: dict[tuple[str, int], int] = {}
        self._proj = self.client.computeProjectionMatrixFOV(camera.fov, 1.0, camera.near, camera.far)

    def texture_id(self, ref: tuple[str, int]) -> int:
        """TinyRenderer texture id for (source, index), loaded from the source's PNG on first use."""
        tid = self._texture_ids.get(ref)
        if tid is None:
            source = self.sources[ref[0]]
            tid = self.client.loadTexture(str(source.path(ref[1] % len(source))))
            self._texture_ids[ref] = tid
        return tid

    def _apply(self, body: int, link: int, look: Look) -> None:
        tex = self.texture_id(look.texture) if look.texture is not None else -1
        self.client.changeVisualShape(body, link, rgbaColor=list(look.rgba), textureUniqueId=tex)

    def _hide(self, body: int) -> None:
        # Alpha 0 skips the colour pass; the shadow pass ignores alpha, so move it far out of view too.
        self.client.changeVisualShape(body, -1, rgbaColor=HIDDEN)
        self.client.resetBasePositionAndOrientation(body, [0.0, 0.0, -1000.0], [0, 0, 0, 1])

    def apply_style(self, style: FrameStyle) -> None:
        c, st, j = self.client, self.stage, style.jitter
        self._apply(st.floor, -1, style.floor)
        scales = st.config.visual_scales
        tray_index = len(scales) // 2 if j.tray_scale is None else j.tray_scale
        arm_index = len(ARM_SCALES) // 2 if j.arm_scale is None else j.arm_scale
        for i, (tray, div) in enumerate(zip(st.trays, st.dividers, strict=True)):
            if i != tray_index:
                self._hide(tray)
                self._hide(div)
        tray, div, scale = st.trays[tray_index], st.dividers[tray_index], scales[tray_index]
        ox, oy = j.tray_offset
        c.resetBasePositionAndOrientation(tray, [ox, oy, 0.0], [0, 0, 0, 1])
        hz = st.config.divider_height / 2 * scale
        c.resetBasePositionAndOrientation(div, [st.divider_x * scale + ox, oy, hz], [0, 0, 0, 1])
        self._apply(tray, -1, style.tray)
        self._apply(div, -1, style.divider)
        for link, look in zip((-1, 0, 1), style.gripper, strict=True):
            self._apply(st.gripper, link, look)
        for body, look in zip(st.objects, style.objects, strict=True):
            self._apply(body, -1, look)
        # The arm: one size, posed to meet the palm.
        pos, orn = c.getBasePositionAndOrientation(st.gripper)
        palm_top = np.asarray(pos) + np.array([0.0, 0.0, st.config.gripper.palm_half[2]])
        yaw = c.getEulerFromQuaternion(orn)[2]
        body = self.arm.pose(arm_index, np.asarray(j.arm_offset), palm_top, yaw)
        for link, look in zip(range(-1, self.arm.num_links - 1), style.arm, strict=False):
            self._apply(body, link, look)

    def view_matrix(self, style: FrameStyle) -> list[float]:
        cam, j = self.camera, style.jitter
        eye = np.add(cam.eye, j.camera_eye_offset)
        target = np.add(cam.target, j.camera_target_offset)
        return self.client.computeViewMatrix(eye.tolist(), target.tolist(), list(cam.up))

    def project(self, style: FrameStyle, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> image coordinates (N, 2) in [-1, 1] (x to the right, y downwards, pixel
        centres of a size-S image at -1 + (2i + 1) / S), as seen in a frame rendered with ``style``."""
        view = np.asarray(self.view_matrix(style), dtype=np.float64).reshape(4, 4).T  # column-major lists
        proj = np.asarray(self._proj, dtype=np.float64).reshape(4, 4).T
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        clip = (proj @ view @ np.c_[p, np.ones(len(p))].T).T
        ndc = clip[:, :2] / clip[:, 3:4]
        return np.stack([ndc[:, 0], -ndc[:, 1]], axis=1)

    def render(self, style: FrameStyle, size: int, aux: bool = False) -> Frame:
        """Render ``style`` at ``size`` x ``size``; ``aux`` adds depth (metres) and segmentation classes."""
        self.apply_style(style)
        L = style.light
        flags = 0 if aux else pb.ER_NO_SEGMENTATION_MASK
        _, _, rgba, zbuf, seg = self.client.getCameraImage(
            size,
            size,
            self.view_matrix(style),
            self._proj,
            lightDirection=list(L.direction),
            lightColor=list(L.color),
            lightDistance=L.distance,
            shadow=int(L.shadow),
            lightAmbientCoeff=L.ambient,
            lightDiffuseCoeff=L.diffuse,
            lightSpecularCoeff=L.specular,
            renderer=pb.ER_TINY_RENDERER,
            flags=flags,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3]
        if style.effects is not None:
            rgb = style.effects.apply(np.ascontiguousarray(rgb), np.random.default_rng(style.effects_seed))
        frame = Frame(rgb=np.ascontiguousarray(rgb))
        if aux:
            z = np.asarray(zbuf, dtype=np.float32).reshape(size, size)
            near, far = self.camera.near, self.camera.far
            frame.depth = (far * near / (far - (far - near) * z)).astype(np.float32)
            frame.segmentation = self._classes(np.asarray(seg, dtype=np.int64).reshape(size, size))
        return frame

    def _classes(self, body_ids: np.ndarray) -> np.ndarray:
        lut_map = self.stage.segmentation_classes()
        lut = np.full(max(max(lut_map), int(body_ids.max(initial=0))) + 2, BACKGROUND, dtype=np.uint8)
        for body, cls in lut_map.items():
            lut[body] = cls
        return lut[np.where(body_ids < 0, lut.size - 1, body_ids)]


__all__ = ["BANK", "PHOTO", "CameraConfig", "Frame", "Renderer"]
