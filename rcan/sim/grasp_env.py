"""``rcan/Grasp-v0``: closed-loop, vision-based bin grasping as in QT-Opt and RCAN (paper 4.3, 5.1).

Task. Five objects (procedural shapes and realistic meshes from ``pybullet_data``, a fixed train/test
split) are dropped into a tray whose divider is placed at random. A two-finger gripper starts above the
tray; at each of at most ``max_steps`` (20) steps the agent moves it and opens or closes it. When the agent
terminates, or the step limit is reached, the gripper lifts; the episode is a success if an object is then
held above ``success_height`` (object's lowest point, metres above the tray bottom).

Observation (dict): ``image`` uint8 HxWx3 from a fixed over-the-shoulder camera in the env's visual
domain (``camera``: a name from ``rcan.sim.renderer.CAMERAS``, ``wide`` by default, or a ``CameraConfig``);
``gripper_closed`` 0/1; ``gripper_height`` (1,) float32, fingertips above the tray bottom (m);
``gripper_opening`` (1,) float32, the gap between the fingers (m), as a real gripper's position encoder
reports it (proprioception, not privileged; the learned critic does not take it, the grasp check can).

Action: Box(-1, 1, (6,)) = (dx, dy, dz, dyaw, gripper, terminate); displacements scale to
``max_translation`` metres and ``max_rotation`` radians per step; gripper > 0 closes, <= 0 opens;
terminate > 0 ends the episode. Reward: -0.05 per step, +1 on success at the last step.
``terminated`` is True at the end whichever way it came (the lift and its outcome are the episode's
terminal event; time is not observed). ``info["is_success"]`` on the last step; ``info["tool_pixel"]``:
where the fingertips appear in the returned image (privileged, for auxiliary losses); ``step``'s info also has
``finger_pixels`` (4,): where the two fingertips were, in the step's *input* image, once the move was done
and before any closing or lift (x1, y1, x2, y2; privileged, the label of the finger read-out), and
``wall_yaw_sign``, which yaw keeps the fingers off the wall or divider nearest to where the move went
(see ``wall_yaw_sign()``; privileged, the label of the wall-yaw read-out); every info
also has ``objects_xy`` (N, 2), where the objects are (privileged, for scripted exploration), and
``holding``, whether the closed fingers touch an object (privileged, see ``holding()``), ``divider_x``,
where the divider stands (privileged), and ``object_pixels`` (N, 2), where each object's grasp point
appears in the returned image (privileged, see ``object_pixels()``); with
``label_objects=True``, ``info["object_mask"]``: bool HxW, the returned image's pixels that show an object
(from the same render's segmentation; privileged, for auxiliary losses).

Randomness: the physics (objects, divider, start pose) comes from ``self.np_random``; looks come from
separate generators derived per episode, so the visual domain and any rendering never change the
physics. Randomizations per domain: see ``rcan.sim.domains``. Per-episode looks by default
(``restyle_every_step=True`` draws a new look every step, as the paper does for RCAN's data).

Counterfactual grasps (privileged, simulation only): ``try_grasps(actions)`` judges alternative last
actions from the current state (close, lift, check) and puts the world back, so training data can hold
several (aim, yaw) -> outcome pairs for one image. PyBullet's ``restoreState`` keeps poses, velocities and
joints exactly but not the solver's warm-start caches: an episode with the same seed and the same calls is
reproducible, yet differs from the same episode without them.

Rendering costs: ``render_observation=False`` skips the observation image (all zeros) for policies that
never look at it, such as the scripted one while recording pairs; ``render()`` returns the current frame; ``render_pair()`` returns a
randomized frame and its canonical twin with depth and segmentation, without changing the simulation.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rcan.sim.arm import ARM_SCALES
from rcan.sim.bullet import new_client
from rcan.sim.domains import BANK, DOMAINS, PHOTO, FrameStyle, canonical_twin, sample_style
from rcan.sim.objects import ObjectSpec, catalogue, load_object
from rcan.sim.renderer import CameraConfig, Renderer, camera_config
from rcan.sim.scene import OBJECT, Cell, CellConfig
from rcan.sim.scripted import wall_parallel_yaw
from rcan.sim.stage import Stage
from rcan.sim.textures import ImageFolderTextures, PhotoTextures, ProceduralTextures, TextureSource

OBJECT_SPLITS = ("train", "test")
GRASP_POINT_HEIGHT = 0.02
"""Metres above the tray bottom of the points ``object_pixels`` projects: about where a gripper closing
on the floor has its fingertips' centre (the agents' median closing height is ~2.2 cm)."""
OBJECT_FAMILIES = ("procedural", "realistic", "mixed")


class GraspEnv(gym.Env):
    """Bin grasping with a Kuka IIWA cell in PyBullet; see the module docstring for the full spec."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(
        self,
        domain: str = "canonical",
        image_size: int = 64,
        object_split: str = "train",
        object_family: str = "mixed",
        num_objects: int = 5,
        max_steps: int = 20,
        texture_dir: str | None = None,
        texture_bank_size: int = 8192,
        texture_resolution: int = 64,
        pair_domain: str = "heavy",
        restyle_every_step: bool = False,
        max_translation: float = 0.04,
        max_rotation: float = math.radians(15.0),
        success_height: float = 0.12,
        substeps: int = 10,
        time_step: float = 1.0 / 120.0,
        render_mode: str | None = "rgb_array",
        render_observation: bool = True,
        camera: CameraConfig | str | None = None,
        cell: CellConfig | None = None,
        rebuild_every: int = 100,
        label_objects: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("domain", domain, DOMAINS)
        _check_choice("pair_domain", pair_domain, DOMAINS)
        _check_choice("object_split", object_split, OBJECT_SPLITS)
        _check_choice("object_family", object_family, OBJECT_FAMILIES)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        for name, value, low in (
            ("image_size", image_size, 8),
            ("num_objects", num_objects, 1),
            ("max_steps", max_steps, 1),
            ("substeps", substeps, 1),
            ("rebuild_every", rebuild_every, 1),
        ):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if image_size > 1024:
            raise ValueError(f"image_size must be <= 1024, got {image_size}")
        # Physical scales: a zero time step (no physics: objects hang where they were dropped and count as
        # lifted), a NaN move or a negative success height would run and give wrong results without an error.
        for name, value, low, high in (
            ("max_translation", max_translation, 0.0, 0.2),
            ("max_rotation", max_rotation, 0.0, math.pi),
            ("success_height", success_height, 0.0, 0.3),
            ("time_step", time_step, 0.0, 0.1),
        ):
            if not isinstance(value, (int, float, np.floating)) or not low < float(value) <= high:
                raise ValueError(f"{name} must be a number in ({low}, {high}], got {value!r}")
        if label_objects and not render_observation:
            raise ValueError("label_objects needs render_observation=True (the mask comes from the frame)")
        self.domain, self.pair_domain = domain, pair_domain
        self.image_size, self.num_objects, self.max_steps = int(image_size), int(num_objects), int(max_steps)
        self.object_split, self.object_family = object_split, object_family
        self.restyle_every_step = restyle_every_step
        self.label_objects = bool(label_objects)
        self.max_translation, self.max_rotation = float(max_translation), float(max_rotation)
        self.success_height, self.substeps = float(success_height), int(substeps)
        self.render_mode = render_mode
        self.render_observation = bool(render_observation)
        self.objects: list[ObjectSpec] = catalogue(object_split, object_family)

        bank: TextureSource
        if texture_dir is not None:
            bank = ImageFolderTextures(texture_dir, resolution=texture_resolution)
        else:
            bank = ProceduralTextures(size=texture_bank_size, resolution=texture_resolution)
        self.textures: dict[str, TextureSource] = {BANK: bank, PHOTO: PhotoTextures(resolution=texture_resolution)}

        self._world_args = (time_step, cell, camera_config(camera))
        self.rebuild_every = int(rebuild_every)
        self._episodes_in_world = 0
        self.client = self.render_client = None
        self._build_world()

        s = self.image_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (s, s, 3), dtype=np.uint8),
                "gripper_closed": spaces.Discrete(2),
                "gripper_height": spaces.Box(-0.05, 1.0, (1,), dtype=np.float32),
                "gripper_opening": spaces.Box(0.0, self.cell.gripper.geometry.max_opening, (1,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (6,), dtype=np.float32)
        self._style: FrameStyle | None = None
        self._step = 0
        self._episode_key = 0
        self._look_rng = np.random.default_rng(0)
        self._pair_rng = np.random.default_rng(0)
        self._pair_arm_scale = len(ARM_SCALES) // 2
        self.z_min, self.z_max, self.z_start = 0.005, 0.30, 0.24

    # -- Gymnasium API ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"domain"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the env takes 'domain'")
        if "domain" in options:
            self.set_domain(options["domain"])
        if self._episodes_in_world >= self.rebuild_every:
            self._build_world()
        self._episodes_in_world += 1
        rng = self.np_random
        self._episode_key = int(rng.integers(2**62))
        self._look_rng = np.random.default_rng([self._episode_key, 0])
        self._pair_rng = np.random.default_rng([self._episode_key, 1])
        # The arm's size jitter is drawn once per episode: switching sizes reloads the arm (~2 ms a frame).
        self._pair_arm_scale = int(np.random.default_rng([self._episode_key, 2]).integers(len(ARM_SCALES)))
        self._populate(rng)
        ix, iy = self.cell.config.tray_inner_half
        start = np.array([rng.uniform(-0.3 * ix, 0.3 * ix), rng.uniform(-0.3 * iy, 0.3 * iy), self.z_start])
        self.cell.gripper.teleport(start, float(rng.uniform(-math.pi / 2, math.pi / 2)))
        self._target = start.copy()
        self._yaw = self.cell.gripper.target_yaw
        self._step = 0
        self._style = None  # a new episode's looks never carry over from the last one
        self._style = self._sample_style(self.domain, self._look_rng)
        info = self._info()
        info["tool_pixel"] = self.tool_pixel()
        info["object_pixels"] = self.object_pixels()
        return self._observation(info), info

    def step(self, action: np.ndarray):
        if self._style is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (6,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 6 finite numbers, got {action!r}")
        a = np.clip(a, -1.0, 1.0)
        fingers = self._move_and_close(a)
        wall_yaw_sign = self.wall_yaw_sign(self._target[:2])
        done = bool(a[5] > 0) or self._step >= self.max_steps
        reward = -0.05
        info = self._info()
        if done:
            success = self._lift_and_check()
            reward += float(success)
            info["is_success"] = success
        if self.restyle_every_step:
            self._style = self._sample_style(self.domain, self._look_rng)
        info["tool_pixel"] = self.tool_pixel()
        info["object_pixels"] = self.object_pixels()
        info["finger_pixels"] = fingers
        info["wall_yaw_sign"] = wall_yaw_sign
        return self._observation(info), reward, done, False, info

    def try_grasps(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Privileged, simulation only: the outcome of each of K alternative last actions (K, 6) from the
        current state, every pose, velocity and joint put back exactly after each (PyBullet ``saveState``
        / ``restoreState`` plus the gripper's commands; not the solver's warm-start caches, see the module
        docstring); the episode goes on from there. Each
        action must end the episode (terminate > 0) and close the gripper (gripper > 0): the lift decides
        its outcome and nothing is rendered. Returns the rewards (K,) (what ``step`` would have returned)
        and the ``finger_pixels`` (K, 4) of each move. Why: a closing's outcome is what the critic must
        learn to predict, and one image can then carry several (aim, yaw) -> outcome pairs."""
        if self._style is None:
            raise RuntimeError("call reset() before try_grasps()")
        acts = np.clip(np.asarray(actions, dtype=np.float64).reshape(-1, 6), -1.0, 1.0)
        if not np.all(np.isfinite(acts)) or np.any(acts[:, 4] <= 0) or np.any(acts[:, 5] <= 0):
            raise ValueError("try_grasps needs finite actions that close the gripper and terminate")
        g = self.cell.gripper
        saved = self.client.saveState()
        kept = (self._target.copy(), self._yaw, self._step, g.snapshot())
        rewards = np.zeros(len(acts), np.float32)
        fingers = np.zeros((len(acts), 4), np.float32)
        try:
            for i, a in enumerate(acts):
                fingers[i] = self._move_and_close(a)
                rewards[i] = -0.05 + float(self._lift_and_check())
                self.client.restoreState(saved)
                self._target, self._yaw, self._step = kept[0].copy(), kept[1], kept[2]
                g.restore(kept[3])
        finally:
            self.client.removeState(saved)
        return rewards, fingers

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._style is None:
            raise RuntimeError("call reset() before render()")
        return self._render(self._style).rgb

    def close(self) -> None:
        self._close_world()

    # -- extras ----------------------------------------------------------------------------------------
    def set_domain(self, domain: str) -> None:
        """Change the visual domain; takes effect at the next reset."""
        _check_choice("domain", domain, DOMAINS)
        self.domain = domain

    def render_pair(self, domain: str | None = None) -> dict[str, np.ndarray]:
        """A freshly randomized frame and its canonical twin, with canonical depth and segmentation.

        Objects keep the randomized frame's textures in the canonical frame, and the jitter of tray, arm
        and camera is shared (paper 4.1). Draws from a per-episode generator of its own, so the physics,
        the observations and later pairs do not depend on whether or how often this is called.
        """
        if self._style is None:
            raise RuntimeError("call reset() before render_pair()")
        domain = domain or self.pair_domain
        _check_choice("domain", domain, DOMAINS)
        style = self._sample_style(domain, self._pair_rng)
        if style.jitter.arm_scale is not None:
            style = replace(style, jitter=replace(style.jitter, arm_scale=self._pair_arm_scale))
        randomized = self._render(style).rgb
        canon = self._render(canonical_twin(style), aux=True)
        return {
            "randomized": randomized,
            "canonical": canon.rgb,
            "segmentation": canon.segmentation,
            "depth": canon.depth,
        }

    def render_style(self, style: FrameStyle, aux: bool = False):
        """Render the current scene with an explicit style (for figures and tests)."""
        return self._render(style, aux=aux)

    def sample_style(self, domain: str, rng: np.random.Generator) -> FrameStyle:
        return self._sample_style(domain, rng)

    @property
    def episode_objects(self) -> list[str]:
        return [s.name for s in self._episode_objects]

    def gripper_state(self) -> dict[str, Any]:
        """Privileged state for scripted policies and diagnostics (not part of the observation)."""
        g = self.cell.gripper
        return {
            "tool": g.tool_position(),
            "target": self._target.copy(),
            "yaw": self._yaw,
            "closed": g.closed,
            "step": self._step,
        }

    def tool_pixel(self) -> np.ndarray:
        """Where the fingertips' centre appears in the current observation: (x, y) in [-1, 1], x to the right,
        y downwards (privileged: an auxiliary training label, never an input; also in ``info``)."""
        return self.project(self.cell.gripper.tool_position()[None])[0].astype(np.float32)

    def object_positions(self) -> np.ndarray:
        return self.cell.object_positions()

    def object_pixels(self) -> np.ndarray:
        """(N, 2) float32: where each object's grasp point appears in the current observation (x, y in
        [-1, 1], as ``tool_pixel``): the centre of its bounding box in x-y, at ``GRASP_POINT_HEIGHT``, the
        height at which fingertips close on the tray's floor, so that a gripper closing right on the object
        has ``tool_pixel`` there (privileged: an auxiliary training label, never an input; also in ``info``)."""
        if not self.cell.object_bodies:
            return np.zeros((0, 2), np.float32)
        xy = np.array([self.cell.box_centre_xy(b) for b in self.cell.object_bodies])
        points = np.c_[xy, np.full(len(xy), GRASP_POINT_HEIGHT)]
        return self.project(points).astype(np.float32)

    def commanded_point(self, action: np.ndarray) -> np.ndarray:
        """Privileged diagnostic: the (3,) position (m) that ``action`` commands the fingertips to."""
        return self._move_target(np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0))

    def wall_parallel_yaw(self, xy: np.ndarray) -> float:
        """Privileged: the yaw (0 or pi/2) whose fingers close parallel to the wall or divider nearest to world
        point ``xy`` in this episode's cell (``rcan.sim.scripted.wall_parallel_yaw``, the oracle's yaw)."""
        return wall_parallel_yaw(np.asarray(xy, np.float64), self.cell.config.tray_inner_half, self.cell.divider_x)

    def wall_yaw_sign(self, xy: np.ndarray) -> float:
        """Privileged: +1.0 where the wall-parallel yaw at world point ``xy`` is 0 (the nearest wall or the
        divider runs along y), -1.0 where it is 90 degrees. A closing yaw psi is aligned with it as far as
        ``sign * cos(2 psi)`` is near 1. Also in ``step``'s info (``wall_yaw_sign``, at the point the move
        commanded: a training label)."""
        return 1.0 if self.wall_parallel_yaw(xy) == 0.0 else -1.0

    def commanded_yaw(self, action: np.ndarray) -> float:
        """Privileged diagnostic: the yaw (rad) that ``action`` turns the gripper to (as ``step`` does)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        return float(np.clip(self._yaw + a[3] * self.max_rotation, -math.pi, math.pi))

    def closing_distance(self, action: np.ndarray) -> float:
        """Privileged diagnostic: the x-y distance (m) from where ``action`` takes the gripper's commanded
        position to the nearest object's centre (whether a policy aims; never an observation)."""
        point = self.commanded_point(action)[:2]
        return float(np.min(np.linalg.norm(self.object_positions()[:, :2] - point, axis=1)))

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> where they appear in the current observation, (N, 2) in [-1, 1] (x to the
        right, y downwards; as ``tool_pixel``). For diagnostics and drawings."""
        if self._style is None:
            raise RuntimeError("call reset() before tool_pixel() or project()")
        return self.renderer.project(self._style, np.asarray(points, dtype=np.float64).reshape(-1, 3))

    def sim_state(self) -> np.ndarray:
        """Positions and orientations of every dynamic body plus finger joints (for determinism checks)."""
        c = self.client
        parts = []
        for body in [self.cell.gripper.body, *self.cell.object_bodies]:
            pos, orn = c.getBasePositionAndOrientation(body)
            parts.extend(pos)
            parts.extend(orn)
        parts.extend(self.cell.gripper.finger_positions())
        return np.array(parts, dtype=np.float64)

    # -- internals -------------------------------------------------------------------------------------
    def _build_world(self) -> None:
        """(Re)create the two servers: the physics, and a render-only stage that copies its poses (see
        scene.py). PyBullet never frees the collision shapes of a removed body, so loading five objects per
        episode grows a server by ~2.5 MB an episode (measured); a fresh pair every ``rebuild_every``
        episodes bounds that. A seeded episode is the same in a fresh world as in a used one (tested)."""
        self._close_world()
        time_step, cell, camera = self._world_args
        self.client = c = new_client()
        c.setGravity(0, 0, -9.81)
        c.setPhysicsEngineParameter(fixedTimeStep=time_step, numSolverIterations=50, deterministicOverlappingPairs=1)
        self.cell = Cell(c, cell)
        self.render_client = new_client()
        self.stage = Stage(self.render_client, self.cell.config)
        self.renderer = Renderer(self.stage, camera, self.textures)
        self._episodes_in_world = 0

    def _close_world(self) -> None:
        if getattr(self, "stage", None) is not None:
            self.stage.close()
            self.stage = None
        for name in ("client", "render_client"):
            client = getattr(self, name, None)
            if client is not None:
                client.disconnect()
                setattr(self, name, None)

    def _sample_style(self, domain: str, rng: np.random.Generator) -> FrameStyle:
        style = sample_style(
            domain,
            rng,
            n_objects=len(self.cell.object_bodies),
            bank_size=len(self.textures[BANK]),
            photo_size=len(self.textures[PHOTO]),
            n_arm=self.stage.arm.num_links,
            n_tray_scales=len(self.cell.config.visual_scales),
            n_arm_scales=len(ARM_SCALES),
        )
        if domain == "canonical" and self._style is not None and domain == self.domain:
            # The canonical domain keeps its episode's object textures when restyled.
            style = replace(style, objects=self._style.objects)
        return style

    def _populate(self, rng: np.random.Generator) -> None:
        cell = self.cell
        cell.clear_objects()
        r = cell.config.divider_range
        cell.place_divider(float(rng.uniform(-r, r)))
        idx = rng.choice(len(self.objects), size=self.num_objects, replace=len(self.objects) < self.num_objects)
        self._episode_objects = [self.objects[i] for i in idx]
        ix, iy = cell.config.tray_inner_half
        self.cell.gripper.teleport(np.array([0.0, 0.0, 0.6]), 0.0)
        for k, spec in enumerate(self._episode_objects):
            pos = [rng.uniform(-ix + 0.05, ix - 0.05), rng.uniform(-iy + 0.05, iy - 0.05), 0.04 + 0.03 * k]
            orn = self.client.getQuaternionFromEuler(rng.uniform(-math.pi, math.pi, 3).tolist())
            body = load_object(self.client, spec, pos, orn)
            cell.object_bodies.append(body)
            cell.object_names.append(spec.name)
        self.stage.load_objects(self._episode_objects)
        self._simulate(60)
        # Anything that bounced out of the tray goes back in at a random place.
        for body in cell.object_bodies:
            pos = self.client.getBasePositionAndOrientation(body)[0]
            if not cell.inside_tray(np.asarray(pos[:2]), margin=0.01) or pos[2] < -0.005:
                p = [rng.uniform(-ix + 0.05, ix - 0.05), rng.uniform(-iy + 0.05, iy - 0.05), 0.08]
                self.client.resetBasePositionAndOrientation(body, p, [0, 0, 0, 1])
                self.client.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0])
                self._simulate(30)

    def _simulate(self, n: int) -> None:
        for _ in range(n):
            self.client.stepSimulation()

    def _move_and_close(self, a: np.ndarray) -> np.ndarray:
        """A step's physics up to the lift: move, then close or open in place. Returns where the moved
        fingertips are in this step's input image, before any closing (``finger_pixels``, a label)."""
        g = self.cell.gripper
        target = self._move_target(a)
        yaw = self.commanded_yaw(a)
        for k in range(1, self.substeps + 1):
            g.drive_towards(target, yaw, k / self.substeps)
            self.client.stepSimulation()
        self._target, self._yaw = target, yaw
        fingers = self.project(g.fingertip_positions()).reshape(-1).astype(np.float32)
        close = bool(a[4] > 0)
        if close != g.closed:
            g.set_closed(close)
            self._simulate(self.substeps)  # let the fingers finish closing (or opening) in place
        self._step += 1
        return fingers

    def _lift_and_check(self) -> bool:
        g = self.cell.gripper
        if not g.closed:
            return False
        start = self._target.copy()
        top = start.copy()
        top[2] = max(start[2], 0.3)
        n = 4 * self.substeps
        for k in range(1, n + 1):
            g.drive_towards(start + (top - start) * k / n, self._yaw, 1.0)
            self.client.stepSimulation()
        self._simulate(self.substeps // 2)
        self._target = top
        return bool(np.any(self.cell.object_min_z() > self.success_height))

    def _move_target(self, a: np.ndarray) -> np.ndarray:
        """Where an action in [-1, 1]^6 moves the commanded position: inside the tray, between z limits."""
        ix, iy = self.cell.config.tray_inner_half
        target = self._target + a[:3] * self.max_translation
        target[0] = np.clip(target[0], -ix + 0.01, ix - 0.01)
        target[1] = np.clip(target[1], -iy + 0.01, iy - 0.01)
        target[2] = np.clip(target[2], self.z_min, self.z_max)
        return target

    def _render(self, style: FrameStyle, aux: bool = False):
        self.stage.sync(self.cell)
        return self.renderer.render(style, self.image_size, aux=aux)

    def _info(self) -> dict[str, Any]:
        """Privileged state for scripted policies and logging; never an input to a learned agent."""
        return {
            "tool": self._target.astype(np.float32),
            "yaw": float(self._yaw),
            "step": self._step,
            "objects_xy": self.object_positions()[:, :2].astype(np.float32),
            "divider_x": float(self.cell.divider_x),
            "holding": self.holding(),
        }

    def holding(self) -> bool:
        """Privileged: the gripper is closed and a finger touches an object: a cheap proxy for "an object
        is held", for scripted exploration that retries an empty grasp. Measured on 200 aimed scripted
        grasps, after the closing and a 4 cm lift: no later success was missed, and 23 of 59 failures were
        also flagged (objects touched but lost during the lift). Requiring both fingers' contact missed 17 of
        141 successes."""
        g = self.cell.gripper
        if not g.closed:
            return False
        return any(
            self.client.getContactPoints(bodyA=g.body, bodyB=body, linkIndexA=link)
            for body in self.cell.object_bodies
            for link in (0, 1)
        )

    def _observation(self, info: dict[str, Any]) -> dict[str, Any]:
        """The observation; with ``label_objects``, also ``info["object_mask"]`` from the same render."""
        g = self.cell.gripper
        if self.render_observation:
            frame = self._render(self._style, aux=self.label_objects)
            image = frame.rgb
            if self.label_objects:
                info["object_mask"] = frame.segmentation == OBJECT
        else:  # a privileged policy that never looks (e.g. while recording pairs) saves a frame per step
            image = np.zeros(self.observation_space["image"].shape, dtype=np.uint8)
        height = np.array([g.tool_position()[2]], dtype=np.float32)
        height = np.clip(height, -0.05, 1.0)
        opening = np.array([g.opening()], dtype=np.float32)
        return {"image": image, "gripper_closed": int(g.closed), "gripper_height": height, "gripper_opening": opening}


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
