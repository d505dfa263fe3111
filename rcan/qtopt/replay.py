"""Replay buffer of n-step transitions: uint8 images in a numpy ring buffer, saved as a pickle-free npz.

Layout: one slot per environment step: the state image before the action, the action, the n-step
return and discount, the episode's discounted return from that step on (the Monte-Carlo return that
``mc_lower_bound`` training uses as a floor for its targets), and where the fingertips appear in the
image (NaN when unknown; the label of the auxiliary gripper-keypoint loss) and in the next one (NaN at an
episode's last step; the label of the target read-out's move loss), the gripper's yaw (NaN when
unknown; the label of the gripper-yaw loss), and where the objects' grasp points appear (NaN when
unknown; the label of the object-offset loss), and which yaw keeps the fingers off the nearest wall where
the move went (NaN when unknown; the label of the wall-yaw loss). The bootstrap state of slot
i is slot i + k of the same episode, so every image is stored once (the terminal observation is never
needed: there is no bootstrap from it). Episodes are kept contiguous (an episode that would straddle the
end of the ring starts again at slot 0), and the ring is overwritten in increasing order, so a
transition's bootstrap slot, always later in its own episode, is overwritten only after the transition
itself: no transition ever points at a foreign image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rcan.common.atomic import open_atomic

MAX_OBJECTS = 8
"""Object slots per step for ``object_pixels`` (the cell holds 5 to 6 objects; absent slots are NaN)."""
_META_FIELDS = ("capacity", "pos", "filled", "episodes", "steps", "channels", "height", "width")


@dataclass(frozen=True)
class EpisodeSteps:
    """What replay keeps of one finished episode of T steps (the one place that lists it: a new field is
    added here and in :meth:`ReplayBuffer.add_episode`, and every replay backend passes it through).

    images (T, C, H, W) uint8, the state before each action; states (T, 2); actions (T, 6); rewards (T,),
    the last step terminal (GraspEnv's always is); tool_pixels (T, 2), where the fingertips appear in each
    image, or None when unknown (``real`` episodes); tool_yaws (T,), the gripper's yaw (rad) before each
    action, or None when unknown; finger_pixels (T, 4), where each action's move put the two fingertips in
    that step's image before any closing, or None when unknown; object_masks (T, H, ceil(W / 8)) uint8, each image's
object pixels bit-packed along rows (``np.packbits(mask, axis=-1)``), or None when unknown; object_pixels
    (T, MAX_OBJECTS, 2), where each object's grasp point appears in each image (NaN slots for absent
    objects; see :func:`padded_object_pixels`), or None when unknown; wall_yaw_signs (T,), +1 or -1: which yaw
    keeps the fingers off the wall nearest to where each action's move went (``GraspEnv.wall_yaw_sign``),
    or None when unknown."""

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    tool_pixels: np.ndarray | None = None
    object_masks: np.ndarray | None = None
    tool_yaws: np.ndarray | None = None
    finger_pixels: np.ndarray | None = None
    object_pixels: np.ndarray | None = None
    wall_yaw_signs: np.ndarray | None = None


def branch_steps(
    ep: EpisodeSteps, t: int, action: np.ndarray, reward: float, finger_pixels: np.ndarray
) -> EpisodeSteps:
    """A one-step terminal episode: the state of step ``t`` of ``ep`` with another action that ended the
    episode (a counterfactual grasp, ``GraspEnv.try_grasps``), its reward and where its move put the
    fingertips (kept only where ``ep`` has finger labels)."""

    def at(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else x[t : t + 1]

    return EpisodeSteps(
        ep.images[t : t + 1],
        ep.states[t : t + 1],
        np.asarray(action, np.float32).reshape(1, -1),
        np.asarray([reward], np.float32),
        tool_pixels=at(ep.tool_pixels),
        object_masks=at(ep.object_masks),
        tool_yaws=at(ep.tool_yaws),
        finger_pixels=None if ep.finger_pixels is None else np.asarray(finger_pixels, np.float32).reshape(1, 4),
        object_pixels=at(ep.object_pixels),
    )


def padded_object_pixels(pixels: Any) -> np.ndarray:
    """An env's ``info["object_pixels"]`` (N, 2), or None, -> (MAX_OBJECTS, 2) float32, NaN-padded."""
    out = np.full((MAX_OBJECTS, 2), np.nan, np.float32)
    if pixels is not None:
        p = np.asarray(pixels, np.float32).reshape(-1, 2)
        if len(p) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects can be labelled, got {len(p)}")
        out[: len(p)] = p
    return out


def nstep_returns(rewards: np.ndarray, gamma: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an episode that ends in a terminal state after ``len(rewards)`` steps: per step t, the n-step
    return sum_{j<k} gamma^j r_{t+j}, the bootstrap discount (gamma^k, or 0 when the episode ends within n
    steps) and the offset k of the bootstrap state (0 when there is none)."""
    r = np.asarray(rewards, dtype=np.float64)
    t_len = len(r)
    ret = np.zeros(t_len)
    disc = np.zeros(t_len)
    off = np.zeros(t_len, dtype=np.int16)
    for t in range(t_len):
        k = min(n, t_len - t)
        ret[t] = sum(gamma**j * r[t + j] for j in range(k))
        if t + k < t_len:
            disc[t], off[t] = gamma**k, k
    return ret.astype(np.float32), disc.astype(np.float32), off


def mc_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Per step t of a finished episode, its discounted return to the end: sum_j gamma^j r_{t+j}."""
    out = np.zeros(len(rewards))
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out.astype(np.float32)


class ReplayBuffer:
    """Fixed-capacity ring of n-step transitions (see the module docstring for the layout)."""

    def __init__(
        self,
        capacity: int,
        image_shape: tuple[int, int, int],
        gamma: float = 0.9,
        n_step: int = 1,
        object_masks: bool = False,
    ):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.capacity, self.gamma, self.n_step = int(capacity), float(gamma), int(n_step)
        c, h, w = image_shape
        self.images = np.zeros((capacity, c, h, w), np.uint8)
        self.states = np.zeros((capacity, 2), np.float32)
        self.actions = np.zeros((capacity, 6), np.float32)
        self.returns = np.zeros(capacity, np.float32)
        self.mc_returns = np.zeros(capacity, np.float32)
        self.discounts = np.zeros(capacity, np.float32)
        self.tool_pixels = np.full((capacity, 2), np.nan, np.float32)
        self.tool_pixels_after = np.full((capacity, 2), np.nan, np.float32)
        self.tool_yaws = np.full(capacity, np.nan, np.float32)
        self.finger_pixels = np.full((capacity, 4), np.nan, np.float32)
        self.object_pixels = np.full((capacity, MAX_OBJECTS, 2), np.nan, np.float32)
        self.wall_yaw_signs = np.full(capacity, np.nan, np.float32)
        self.offsets = np.zeros(capacity, np.int16)
        self.valid = np.zeros(capacity, bool)
        self.ends = np.zeros(capacity, bool)  # an episode's last step: the one whose reward is the outcome
        # Object masks (bit-packed, 1/24 of an RGB image) only in buffers that keep them.
        self.object_masks = np.zeros((capacity, h, (w + 7) // 8), np.uint8) if object_masks else None
        self.mask_known = np.zeros(capacity, bool) if object_masks else None
        self.pos = self.filled = self.episodes = self.steps = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        """Number of sampleable transitions."""
        return int(self.valid[: self.filled].sum())

    def add_episode(self, ep: EpisodeSteps) -> None:
        """Append one finished episode (its last step terminal)."""
        images, rewards, tool_pixels = ep.images, ep.rewards, ep.tool_pixels
        t_len = len(rewards)
        if t_len == 0:
            return
        if t_len > self.capacity:
            raise ValueError(f"episode of {t_len} steps does not fit a replay of capacity {self.capacity}")
        if images.shape[1:] != self.images.shape[1:] or images.dtype != np.uint8 or len(images) != t_len:
            raise ValueError(
                f"episode images must be uint8 {(t_len, *self.image_shape)}, got {images.dtype} {images.shape}"
            )
        ret, disc, off = nstep_returns(rewards, self.gamma, self.n_step)
        if self.pos + t_len > self.capacity:
            self.pos = 0  # keep episodes contiguous (module docstring)
        s = slice(self.pos, self.pos + t_len)
        self.images[s] = images
        self.states[s] = ep.states
        self.actions[s] = ep.actions
        self.returns[s], self.discounts[s], self.offsets[s] = ret, disc, off
        self.mc_returns[s] = mc_returns(rewards, self.gamma)
        self.tool_pixels[s] = self.tool_pixels_after[s] = np.nan
        if tool_pixels is not None:
            pixels = np.asarray(tool_pixels, np.float32).reshape(t_len, 2)
            self.tool_pixels[s] = pixels
            self.tool_pixels_after[self.pos : self.pos + t_len - 1] = pixels[1:]  # the last step lifts: unknown
        self.tool_yaws[s] = np.nan if ep.tool_yaws is None else np.asarray(ep.tool_yaws, np.float32).reshape(t_len)
        fingers = ep.finger_pixels
        self.finger_pixels[s] = np.nan if fingers is None else np.asarray(fingers, np.float32).reshape(t_len, 4)
        centres, shape = ep.object_pixels, (t_len, MAX_OBJECTS, 2)
        self.object_pixels[s] = np.nan if centres is None else np.asarray(centres, np.float32).reshape(shape)
        signs = ep.wall_yaw_signs
        self.wall_yaw_signs[s] = np.nan if signs is None else np.asarray(signs, np.float32).reshape(t_len)
        if self.object_masks is not None and self.mask_known is not None:
            known = ep.object_masks is not None
            self.mask_known[s] = known
            if known:
                self.object_masks[s] = np.asarray(ep.object_masks, np.uint8).reshape(self.object_masks[s].shape)
        self.valid[s] = True
        self.ends[s] = False
        self.ends[self.pos + t_len - 1] = True
        self.pos += t_len
        self.filled = max(self.filled, self.pos)
        self.episodes += 1
        self.steps += t_len

    def sample(self, batch: int, rng: np.random.Generator, outcomes: float = 0.0) -> dict[str, np.ndarray]:
        """A uniform batch (with ``outcomes`` > 0: that share of it drawn uniformly from episodes' last
        steps, the closings whose target is the observed outcome, while the buffer holds any): images,
        states, actions, returns, discounts, mc_returns, tool_pixels, tool_pixels_after, tool_yaws,
        finger_pixels, object_pixels, wall_yaw_signs, next_images, next_states (for a transition without
        bootstrap, the next fields repeat the state; its discount is 0); from a buffer that keeps object
        masks, also object_masks (B, H, W) uint8 0/1 and mask_known (B,)."""
        idx = np.flatnonzero(self.valid[: self.filled])
        if len(idx) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        n_end = int(round(outcomes * batch))
        ends = idx[self.ends[idx]] if n_end else idx[:0]
        if len(ends) == 0:
            n_end = 0
        i = idx[rng.integers(len(idx), size=batch - n_end)]
        if n_end:
            i = np.concatenate([ends[rng.integers(len(ends), size=n_end)], i])
        j = i + self.offsets[i]
        out = {
            "images": self.images[i],
            "states": self.states[i],
            "actions": self.actions[i],
            "returns": self.returns[i],
            "discounts": self.discounts[i],
            "mc_returns": self.mc_returns[i],
            "tool_pixels": self.tool_pixels[i],
            "tool_pixels_after": self.tool_pixels_after[i],
            "tool_yaws": self.tool_yaws[i],
            "finger_pixels": self.finger_pixels[i],
            "object_pixels": self.object_pixels[i],
            "wall_yaw_signs": self.wall_yaw_signs[i],
            "next_images": self.images[j],
            "next_states": self.states[j],
        }
        if self.object_masks is not None and self.mask_known is not None:
            width = self.images.shape[3]
            out["object_masks"] = np.unpackbits(self.object_masks[i], axis=-1, count=width)
            out["mask_known"] = self.mask_known[i]
        return out

    # -- persistence -------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        n = self.filled
        meta = [self.capacity, self.pos, self.filled, self.episodes, self.steps, *self.image_shape]
        masks = {}
        if self.object_masks is not None and self.mask_known is not None:
            masks = {f"{prefix}object_masks": self.object_masks[:n], f"{prefix}mask_known": self.mask_known[:n]}
        return {
            f"{prefix}meta": np.array(meta, np.int64),
            f"{prefix}config": np.array([self.gamma, self.n_step], np.float64),
            f"{prefix}images": self.images[:n],
            f"{prefix}states": self.states[:n],
            f"{prefix}actions": self.actions[:n],
            f"{prefix}returns": self.returns[:n],
            f"{prefix}discounts": self.discounts[:n],
            f"{prefix}mc_returns": self.mc_returns[:n],
            f"{prefix}tool_pixels": self.tool_pixels[:n],
            f"{prefix}tool_pixels_after": self.tool_pixels_after[:n],
            f"{prefix}tool_yaws": self.tool_yaws[:n],
            f"{prefix}finger_pixels": self.finger_pixels[:n],
            f"{prefix}object_pixels": self.object_pixels[:n],
            f"{prefix}wall_yaw_signs": self.wall_yaw_signs[:n],
            f"{prefix}offsets": self.offsets[:n],
            f"{prefix}valid": self.valid[:n],
            f"{prefix}ends": self.ends[:n],
        } | masks

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> ReplayBuffer:
        try:
            meta = dict(zip(_META_FIELDS, (int(v) for v in arrays[f"{prefix}meta"]), strict=True))
            gamma, n_step = (float(v) for v in arrays[f"{prefix}config"])
            shape = (meta["channels"], meta["height"], meta["width"])
            masks = f"{prefix}object_masks" in arrays
            buf = cls(meta["capacity"], shape, gamma, int(n_step), object_masks=masks)
            n = meta["filled"]
            if masks:
                buf.object_masks[:n] = arrays[f"{prefix}object_masks"]  # type: ignore[index]
                buf.mask_known[:n] = arrays[f"{prefix}mask_known"]  # type: ignore[index]
            for name in ("images", "states", "actions", "returns", "discounts", "offsets", "valid"):
                getattr(buf, name)[:n] = arrays[f"{prefix}{name}"]
            if f"{prefix}mc_returns" in arrays:
                buf.mc_returns[:n] = arrays[f"{prefix}mc_returns"]
            else:  # written before version 0.3: no Monte-Carlo returns; 0 is no floor (targets are >= 0)
                buf.mc_returns[:n] = 0.0
            if f"{prefix}ends" in arrays:  # (older files: unknown, so ``outcomes`` sampling stays uniform)
                buf.ends[:n] = arrays[f"{prefix}ends"]
            labels = ("tool_pixels", "tool_pixels_after", "tool_yaws", "finger_pixels", "object_pixels", "wall_yaw_signs")
            for name in labels:  # (older files: unknown, NaN, no auxiliary loss)
                if f"{prefix}{name}" in arrays:
                    getattr(buf, name)[:n] = arrays[f"{prefix}{name}"]
        except (KeyError, ValueError) as err:
            raise ValueError(f"replay data is incomplete or inconsistent ({err})") from None
        buf.pos, buf.filled, buf.episodes, buf.steps = meta["pos"], n, meta["episodes"], meta["steps"]
        return buf

    def equals(self, other: ReplayBuffer) -> bool:
        """Same contents and counters (for resume checks)."""
        a, b = self.to_arrays(), other.to_arrays()
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def buffers_to_arrays(buffers: Mapping[str, ReplayBuffer]) -> dict[str, np.ndarray]:
    """Named buffers as one flat dict of plain arrays (the npz layout; also what crosses to a Ray actor)."""
    arrays: dict[str, np.ndarray] = {"names": np.array(sorted(buffers), dtype="U32")}
    for name, buf in buffers.items():
        arrays.update(buf.to_arrays(f"{name}/"))
    return arrays


def buffers_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, ReplayBuffer]:
    """Inverse of :func:`buffers_to_arrays`."""
    names = [str(n) for n in arrays["names"]]
    return {n: ReplayBuffer.from_arrays(arrays, f"{n}/") for n in names}


def save_replays(path: str | os.PathLike[str], buffers: Mapping[str, ReplayBuffer]) -> Path:
    """Write named buffers to one uncompressed npz (plain arrays, no pickle), atomically."""
    path = Path(path)
    arrays = buffers_to_arrays(buffers)
    with open_atomic(path) as f:
        np.savez(f, **arrays)
    return path


def load_replays(path: str | os.PathLike[str]) -> dict[str, ReplayBuffer]:
    """Inverse of :func:`save_replays`; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no replay file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return buffers_from_arrays(z)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a readable replay file ({err})") from None


# -- where the trainer gets its batches --------------------------------------------------------------------
Mix = tuple[tuple[str, float], ...]
"""Which buffers a batch comes from: ``((name, fraction), ...)``; see :func:`mixed_sample`."""


def mirror_rows(batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The mirror image (x -> -x) of the transitions at ``rows`` (bool (B,)), in place: images and next
    images flipped left-right, the actions' dx and dyaw negated, the pixel labels' x and the gripper yaws
    negated (the wall-parallel yaw, 0 or 90 degrees, is its own mirror), object masks flipped.

    Why it is a transition of a cell: the cameras sit in the plane x = 0 and look along -y (the image's x
    axis is the world's -x: a world point mirrored in x projects exactly to the flipped pixel), actions
    are world-frame moves, and the parallel gripper is its own mirror at the negated yaw. What does not
    mirror: the arm then reaches in from the right and the canonical light's shadows fall the other way;
    the critic must ignore both, which a closing's judgement, read where the gripper is, can."""
    if not rows.any():
        return batch
    for key in ("images", "next_images", "object_masks"):
        if key in batch:
            batch[key][rows] = batch[key][rows][..., ::-1]
    batch["actions"][rows, 0] *= -1.0
    batch["actions"][rows, 3] *= -1.0
    for key in ("tool_pixels", "tool_pixels_after", "object_pixels"):
        batch[key][rows, ..., 0] *= -1.0
    batch["finger_pixels"][rows, 0] *= -1.0
    batch["finger_pixels"][rows, 2] *= -1.0
    batch["tool_yaws"][rows] *= -1.0
    return batch


def mixed_sample(
    buffers: Mapping[str, ReplayBuffer],
    batch: int,
    mix: Mix,
    rng: np.random.Generator,
    outcomes: float = 0.0,
    mirror: float = 0.0,
) -> dict[str, np.ndarray]:
    """A batch mixed from named buffers. Every buffer of ``mix`` but the last gives ``round(fraction *
    batch)`` rows once it holds a whole batch (none before); the last gives the rest, or, while it is empty,
    the first non-empty buffer of the mix does. QT-Opt's mix is ``(("policy", 0.5), ("scripted", 1))``:
    half on-policy, half scripted exploration; joint finetuning mixes ``real`` and simulated ``policy``.
    Each part has ``outcomes`` of its rows from episodes' last steps (:meth:`ReplayBuffer.sample`); each
    row is mirrored with probability ``mirror`` (:func:`mirror_rows`)."""
    *firsts, (last, _) = mix
    parts, left = [], batch
    for name, fraction in firsts:
        n = min(left, int(round(fraction * batch))) if len(buffers[name]) >= batch else 0
        if n:
            parts.append(buffers[name].sample(n, rng, outcomes))
            left -= n
    if left:
        src = buffers[last]
        if not len(src):
            src = next((buffers[name] for name, _ in mix if len(buffers[name])), src)
        parts.append(src.sample(left, rng, outcomes))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if mirror > 0:
        out = mirror_rows(out, rng.random(batch) < mirror)
    return out


class ReplaySource(Protocol):
    """What the trainer needs from its replay, wherever it lives (in-process, or a Ray actor).

    Why an interface: the local backend keeps the buffers in the trainer's process (exact, seeded resume);
    the Ray backend keeps them in an actor and has Bellman actors compute V(s') for each batch, which then
    carries ``next_values`` (the trainer computes them itself when a batch has none)."""

    def add_episode(self, kind: str, ep: EpisodeSteps) -> None:
        """Append a finished episode to buffer ``kind`` (rewards already offset)."""

    def sample(
        self, batch: int, mix: Mix, rng: np.random.Generator, outcomes: float = 0.0, mirror: float = 0.0
    ) -> dict[str, np.ndarray]:
        """A training batch (:func:`mixed_sample`'s fields, or without ``next_*`` and with ``next_values``)."""

    def sample_plain(self, batch: int, mix: Mix, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of :func:`mixed_sample`'s fields and no Bellman targets, for work that needs only the
        stored transitions (distillation), so a remote replay does not compute unused targets."""

    def sizes(self) -> dict[str, int]:
        """Sampleable transitions per buffer."""

    def buffers(self) -> dict[str, ReplayBuffer]:
        """The buffers by name, for checkpoints (in-process: the live objects; remote: a copy)."""

    def load(self, buffers: Mapping[str, ReplayBuffer]) -> None:
        """Replace the contents (resume from a checkpoint)."""

    def sync_targets(self, target1: Any, target2: Any, version: int) -> None:
        """Offer the current target networks (called every gradient step; sources that compute targets
        themselves decide when to copy them)."""

    def close(self) -> None:
        """Release remote resources."""


class LocalReplay:
    """The default ``ReplaySource``: the buffers in the trainer's process, sampled with the trainer's RNG."""

    def __init__(self, buffers: Mapping[str, ReplayBuffer]) -> None:
        self._buffers = dict(buffers)

    def add_episode(self, kind: str, ep: EpisodeSteps) -> None:
        self._buffers[kind].add_episode(ep)

    def sample(
        self, batch: int, mix: Mix, rng: np.random.Generator, outcomes: float = 0.0, mirror: float = 0.0
    ) -> dict[str, np.ndarray]:
        return mixed_sample(self._buffers, batch, mix, rng, outcomes, mirror)

    def sample_plain(self, batch: int, mix: Mix, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return mixed_sample(self._buffers, batch, mix, rng)

    def sizes(self) -> dict[str, int]:
        return {k: len(b) for k, b in self._buffers.items()}

    def buffers(self) -> dict[str, ReplayBuffer]:
        return self._buffers

    def load(self, buffers: Mapping[str, ReplayBuffer]) -> None:
        self._buffers = dict(buffers)

    def sync_targets(self, target1: Any, target2: Any, version: int) -> None:
        pass  # the trainer computes V(s') itself with its own target networks

    def close(self) -> None:
        pass
