"""The Q-network: Q(s, a) = sigmoid(logit), s = (image, gripper_closed, gripper_height), a in [-1, 1]^6.

Why this shape (QT-Opt's critic, shrunk for a CPU): the image tower runs once per state and its feature map
is shared by every action candidate; the action and the gripper state are embedded into a vector that is
broadcast-added to the feature map, so the layers after the fusion can relate "where the action takes the
gripper" to "where things are" at every location. Coordinate channels (at the input and again at the fusion)
make position explicit, which the NOTES' probes lacked when their policies failed to aim. The post-fusion
head is the only part that runs per candidate, so it is kept very cheap: relu(feature map + embedding), a
1x1 conv, then an FC over the whole 8x8 map (a learned spatial read-out: which places matter for which
actions). The fused map has only 16 channels because the tiled (B, K, C, 8, 8) tensor is memory-bound on a
CPU: 16 channels make CEM-based targets for a batch of 32 about 3x cheaper than 32 (measured).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTION_DIM = 6
STATE_DIM = 2
HEIGHT_SCALE = 10.0
"""Gripper height (metres) is multiplied by this before the embedding, so 0..0.3 m spans 0..3."""
OFFSET_RANGE = 1.5
"""Object offsets are read (and taught) up to this many fused-map cells on each axis (12 pixels at 64x64):
the read-out needs them precise near an object, and only their direction farther away."""


@dataclass(frozen=True)
class QNetConfig:
    """Architecture of :class:`QNetwork` (stored in checkpoints' metadata, so a file rebuilds its model)."""

    in_channels: int = 3
    """Image channels: 3 for a domain's RGB, 6 for RCAN's concat(G(x), x)."""
    image_size: int = 64
    """Square image side the network is built for."""
    channels: tuple[int, ...] = (16, 32, 32)
    """Image tower conv widths (each conv followed by ReLU)."""
    strides: tuple[int, ...] = (2, 2, 2)
    """Image tower conv strides (first conv 5x5, the rest 3x3)."""
    fuse_channels: int = 16
    """Channels of the fused feature map (a last linear 3x3 conv, plus the 2 coordinate channels)."""
    head_channels: int = 16
    """Width of the per-candidate 1x1 conv after the fusion."""
    embed_hidden: int = 64
    """Hidden width of the action+state MLP."""
    fc_hidden: int = 64
    """Hidden width of the final FC layer."""
    coord_channels: bool = True
    """Add x/y coordinate channels to the input image and to the fused feature map."""
    keypoints: int = 0
    """Spatial-softmax keypoints of the fused map (x, y each) fed to the action/state MLP, so the action
    pathway sees *where* things are (0: off). In a supervised probe of "does this move take the gripper
    over an object", 16 keypoints learned that relation fastest (benchmarks/RESULTS.md)."""
    gripper_keypoint: bool = False
    """Locate the gripper: a spatial softmax over a 1x1 conv of the fused map gives its image position g,
    fed to the action/state MLP and appended to the fused map as two channels of each cell's offset from g,
    so "the move takes the gripper to this cell" is a local comparison of the action's embedding with those
    channels. Trained by the auxiliary loss of ``TrainArgs.gripper_aux_weight`` (labels from the simulator
    at training time only) and by the Q loss; the agent itself only ever sees the image."""

    object_map: bool = False
    """Predict which cells of the fused map show an object (a 1x1 conv; ``object_logits``), trained by the
    auxiliary loss of ``TrainArgs.object_aux_weight`` against the simulator's segmentation, so the tower
    learns where the objects are from every frame, not only from the rare rewards. Training only: the
    prediction is not an input of the Q head."""

    target_readout: bool = False
    """Beyond QT-Opt: also read the image where the action takes the gripper. A small MLP maps the move
    (dx, dy, dz), the height and the located gripper g to the image position p the gripper will reach
    (taught by ``TrainArgs.move_aux_weight`` against where the simulator shows the fingertips after the
    step); the finer stride-4 feature map and the fused map are sampled (bilinear) at p, and an MLP over
    those features, the action and the state adds its logit to the global head's. The same weights judge
    every place, so "closing on an object here" learned at one place counts everywhere (translation
    equivariance the global FC read-out lacks). Needs ``gripper_keypoint`` and two or more tower convs."""

    readout_levels: int = 1
    """How many of the tower's finer maps the target read-out samples besides the fused map: 1 = the
    stride-4 map (the input of the last strided conv), 2 = also the stride-2 map before it (finer detail
    where the fingers close, receptive field 5 pixels), up to the number of tower convs (the last level is
    the image itself with its coordinate channels)."""

    readout_patch: int = 1
    """The target read-out samples a ``readout_patch`` x ``readout_patch`` grid of points around where the
    move lands, one cell of the finest sampled map apart (1: the landing point alone), and its local head
    gets all of them: the layout around the landing point (where the object lies relative to it, a wall
    beside it) and not one blurred sample, so that a 2 cm miss can look different from a centred grasp.
    Odd; not with ``finger_readout``."""

    gripper_yaw: bool = False
    """Read the gripper's yaw from the image: a linear map of both maps sampled at the located gripper
    gives (cos 2 psi, sin 2 psi) (the two-finger gripper looks the same turned by 180 degrees), taught by
    ``TrainArgs.yaw_aux_weight`` against the simulator's yaw. Each candidate's rotation (``yaw_step`` per
    unit of dyaw) turns it into the yaw the fingers will close at, which the target read-out's local head
    gets beside the features where they close: QT-Opt's state has no yaw, so without this the critic must
    find the fingers' angle in the image on its own. Needs ``target_readout``."""
    yaw_step: float = math.radians(15.0)
    """Radians of yaw per unit of the action's dyaw (the env's ``max_rotation``)."""

    finger_readout: bool = False
    """Also read the image where each move puts the two fingertips: the move MLP (which then also gets the
    gripper's closed flag and the yaw the fingers will have) predicts, beside the gripper's image position
    p, the half-span d of the fingers in the image (taught by ``TrainArgs.finger_aux_weight`` against where
    the simulator shows the fingertips once the move is done); the maps are sampled at p + d and p - d too,
    and the local head gets their sum and absolute difference (the fingers are interchangeable). Whether a
    finger lands on the object, on the divider or beside it decides most near misses. Needs
    ``gripper_yaw``."""

    global_pool: int = 1
    """The global head (the per-candidate 1x1 conv and FC) sees the fused map average-pooled by this
    factor, while the gripper keypoint, the read-out and the object offsets use it at full size. With
    strides (2, 2, 1) and 2, the read-out samples a 16x16 fused map (finer object positions: 2.1 against
    2.8 px RMS in a supervised probe, benchmarks/RESULTS.md) while the per-candidate head, most of a
    gradient step's cost, stays at 8x8."""
    object_offsets: bool = False
    """Beyond QT-Opt: read, where the target read-out samples the maps, the offset from that point to the
    nearest object's grasp point (in fused-map cells, clipped to ``OFFSET_RANGE``): a linear map of the
    sampled features, taught by ``TrainArgs.object_offset_weight`` against the simulator's object
    positions (training only) at the moves' landing points and at points around and between the objects.
    The read-out's local head gets the offset at each candidate's landing point as two more inputs, so
    "close right on an object" is a function of two numbers it is given, not one it must discover from
    the rewards. Needs ``target_readout``."""

    wall_yaw: bool = False
    """Beyond QT-Opt: read, where each move lands, which closing yaw keeps the fingers off the nearest wall
    or divider (a linear map of the sampled features to the logit of ``GraspEnv.wall_yaw_sign`` = +1: yaw
    0, taught by ``TrainArgs.wall_yaw_weight`` against the simulator's label at the moves' landing points,
    training only), and give the read-out's local head the read sign w in [-1, 1] and its alignment with
    the yaw the fingers will close at, w * cos(2 psi). Why: an agent's closing yaw decides a grasp nearly
    as much as its aim (exact aim lifts 89% of objects at the wall-parallel yaw, 60-62% at 60 degrees
    off it), and the earlier shipped agent closes no nearer that yaw than at random (benchmarks/RESULTS.md,
    2026-12-03); with this the critic is given "how aligned" as one number instead of having to find
    the product of a wall's direction and the gripper's yaw from rewards alone. Needs ``gripper_yaw``."""

    first_frame: bool = False
    """Beyond QT-Opt (as in Levine et al. 2016's grasping network): the image input is the current image
    with the episode's first image stacked on its channels (``in_channels`` doubles). At the start the
    gripper is high and the tray is in full view; near the closing the arm and gripper hide part of the
    object under the fingers (about 30% of its pixels, benchmarks/RESULTS.md), which the first image
    still shows."""

    def __post_init__(self) -> None:
        if self.global_pool < 1:
            raise ValueError(f"global_pool must be >= 1, got {self.global_pool}")
        if self.object_offsets and not self.target_readout:
            raise ValueError("object_offsets needs target_readout")
        if self.finger_readout and not self.gripper_yaw:
            raise ValueError("finger_readout needs gripper_yaw (the fingers' direction comes from the read yaw)")
        if self.wall_yaw and not self.gripper_yaw:
            raise ValueError("wall_yaw needs gripper_yaw (the alignment is with the yaw read from the image)")
        if self.gripper_yaw and not self.target_readout:
            raise ValueError("gripper_yaw needs target_readout (the read-out's local head uses the yaw)")
        if self.target_readout and (not self.gripper_keypoint or len(self.channels) < 2):
            raise ValueError(
                "target_readout needs gripper_keypoint (the read-out starts from the located gripper) "
                "and at least two tower convs"
            )
        if self.readout_patch < 1 or self.readout_patch % 2 == 0:
            raise ValueError(f"readout_patch must be an odd number >= 1, got {self.readout_patch}")
        if self.readout_patch > 1 and self.finger_readout:
            raise ValueError("readout_patch > 1 does not combine with finger_readout")
        if not 1 <= self.readout_levels <= len(self.channels):
            raise ValueError(f"readout_levels must be in 1..{len(self.channels)}, got {self.readout_levels}")
        allowed = (6, 12) if self.first_frame else (3, 6)
        if self.in_channels not in allowed:
            raise ValueError(f"in_channels must be one of {allowed}, got {self.in_channels}")
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError("channels and strides must be non-empty and of equal length")
        if self.fuse_channels < 4:
            raise ValueError(f"fuse_channels must be >= 4, got {self.fuse_channels}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.keypoints < 0:
            raise ValueError(f"keypoints must be >= 0, got {self.keypoints}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> QNetConfig:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Q-network config fields: {', '.join(sorted(unknown))}")
        for key in ("channels", "strides"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def _coords(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None]  # (1, 2, h, w)


def _cell_centres(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, h, w): x and y of each cell's centre in image coordinates [-1, 1] (those of ``tool_pixel``)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None]


def _soft_argmax(heat: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) scores, (1, 2, h, w) cell coordinates -> (B, K, 2): expected (x, y) under each channel's
    softmax over the map."""
    prob = torch.softmax(heat.flatten(2), dim=-1).view_as(heat)
    return torch.stack([(prob * grid[:, 0:1]).sum((2, 3)), (prob * grid[:, 1:2]).sum((2, 3))], dim=-1)


def _state_features(states: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 2) gripper closed, height (m) -> the network's state input: closed, height * HEIGHT_SCALE."""
    s = states.to(dtype)
    return torch.stack([s[:, 0], s[:, 1] * HEIGHT_SCALE], dim=-1)


def turn_yaw_vector(u: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """(..., 2) vectors (cos 2 psi, sin 2 psi) and (...) angles (rad) -> the vectors of psi + angle."""
    c, s = torch.cos(2.0 * turn), torch.sin(2.0 * turn)
    return torch.stack([u[..., 0] * c - u[..., 1] * s, u[..., 0] * s + u[..., 1] * c], dim=-1)


def action_features(actions: torch.Tensor) -> torch.Tensor:
    """The raw action plus the env's two thresholds (close if > 0, terminate if > 0) as 0/1 features:
    the env acts on their signs, so the network should not have to learn the step from the raw value."""
    return torch.cat([actions, (actions[..., 4:6] > 0).to(actions.dtype)], dim=-1)


class QNetwork(nn.Module):
    """Q(s, a) logits; ``features`` once per state, ``head`` per (state, action candidate)."""

    def __init__(self, config: QNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or QNetConfig()
        cin = config.in_channels + (2 if config.coord_channels else 0)
        layers: list[nn.Module] = []
        for i, (cout, stride) in enumerate(zip(config.channels, config.strides, strict=True)):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU(inplace=True)]
            cin = cout
        fused = config.fuse_channels
        extra = (2 if config.coord_channels else 0) + (2 if config.gripper_keypoint else 0)
        # Linear (no ReLU): the embedding is added to this pre-activation map, then the ReLU fuses them.
        layers.append(nn.Conv2d(cin, fused - extra, 3, 1, 1))
        self.tower = nn.Sequential(*layers)
        if config.gripper_keypoint:
            self.gripper_conv = nn.Conv2d(fused - 2, 1, 1)
        kp = config.keypoints
        where = 2 * kp + (2 if config.gripper_keypoint else 0)  # image positions fed to the embedding
        if kp:
            self.keypoint_conv = nn.Conv2d(fused, kp, 1)
        if where:
            self.embed = nn.Sequential(
                nn.Linear(ACTION_DIM + 2 + STATE_DIM + where, config.embed_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.embed_hidden, config.embed_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.embed_hidden, fused),
            )
        else:
            self.embed = nn.Sequential(
                nn.Linear(ACTION_DIM + 2 + STATE_DIM, config.embed_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.embed_hidden, fused),
            )
        if config.object_map:
            self.object_conv = nn.Conv2d(fused, 1, 1)
        hc = config.head_channels
        self.head_convs = nn.Sequential(nn.Conv2d(fused, hc, 1), nn.ReLU(inplace=True))
        # The read-out's finer maps: the inputs of the last ``readout_levels`` tower convs, finest first,
        # each with its channels and its scale relative to the fused map.
        self._fine_convs: list[int] = []
        self._fine_channels: list[int] = []
        self._fine_scales: list[int] = []
        if config.target_readout:
            n = len(config.channels)
            cin0 = config.in_channels + (2 if config.coord_channels else 0)
            for j in range(n - config.readout_levels, n):
                self._fine_convs.append(j)
                self._fine_channels.append(config.channels[j - 1] if j > 0 else cin0)
                self._fine_scales.append(math.prod(int(v) for v in config.strides[j:]))
            fine_total = sum(self._fine_channels)
            fingers = config.finger_readout
            self.move_net = nn.Sequential(  # (dx, dy, dz, height, g[, closed, closing yaw]) -> dp[, d]
                nn.Linear(3 + 1 + 2 + (3 if fingers else 0), config.embed_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.embed_hidden, 4 if fingers else 2),
            )
            sampled = (fine_total + fused) * (3 if fingers else config.readout_patch**2)
            local_in = sampled + ACTION_DIM + 2 + STATE_DIM + (2 if config.gripper_yaw else 0)
            if config.object_offsets:
                self.offset_head = nn.Linear(fine_total + fused, 2)
                local_in += 2
            if config.gripper_yaw:
                self.yaw_head = nn.Linear(fine_total + fused, 2)
            if config.wall_yaw:
                self.wall_head = nn.Linear(fine_total + fused, 1)
                local_in += 2
            self.local_head = nn.Sequential(
                nn.Linear(local_in, config.fc_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.fc_hidden, config.fc_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(config.fc_hidden, 1),
            )
        with torch.no_grad():
            fmap = self.features(torch.zeros(1, config.in_channels, config.image_size, config.image_size))
            self.feature_shape = tuple(fmap.shape[1:])
            pooled = self._global(fmap)
            if pooled.shape[-1] * self.config.global_pool != fmap.shape[-1]:
                cells = fmap.shape[-1]
                raise ValueError(f"global_pool {config.global_pool} does not divide the {cells}-cell fused map")
            flat = self.head_convs(pooled).numel()
        self.fc = nn.Sequential(
            nn.Linear(flat, config.fc_hidden), nn.ReLU(inplace=True), nn.Linear(config.fc_hidden, 1)
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Image tower: (B, C, H, W) uint8 or float in [0, 255] -> (B, F, h, w) feature map (+ coords)."""
        x = images.float() * (1.0 / 255.0) - 0.5
        if self.config.coord_channels:
            x = torch.cat(
                [x, _coords(x.shape[2], x.shape[3], x.device, x.dtype).expand(x.shape[0], -1, -1, -1)], 1
            )
        fine: list[torch.Tensor] = []
        if self.config.target_readout:  # keep the finer maps (the inputs of the read-out's tower convs)
            keep = {2 * j for j in self._fine_convs}  # each conv is followed by its ReLU in the Sequential
            for i, layer in enumerate(self.tower):
                if i in keep:
                    fine.append(x)
                x = layer(x)
            f = x
        else:
            f = self.tower(x)
        if self.config.coord_channels:
            f = torch.cat(
                [f, _coords(f.shape[2], f.shape[3], f.device, f.dtype).expand(f.shape[0], -1, -1, -1)], 1
            )
        if self.config.gripper_keypoint:
            centres = _cell_centres(f.shape[2], f.shape[3], f.device, f.dtype)
            g = _soft_argmax(self.gripper_conv(f), centres)[:, 0]  # (B, 2), in tool_pixel's coordinates
            f = torch.cat([f, centres - g[:, :, None, None]], 1)
        packed = [f]  # the finer maps go beside the fused map (space-to-depth): a state stays one tensor
        for m, scale in zip(fine, self._fine_scales, strict=True):
            if m.shape[-1] != f.shape[-1] * scale or m.shape[-2] != f.shape[-2] * scale:
                raise ValueError(f"image size {images.shape[-1]} does not divide into the tower's strides")
            packed.append(F.pixel_unshuffle(m, scale))
        return torch.cat(packed, 1) if fine else f

    def _main(self, feats: torch.Tensor) -> torch.Tensor:
        """The fused map (coordinate and gripper-offset channels last) of a ``features`` tensor."""
        return feats[:, : self.config.fuse_channels] if self.config.target_readout else feats

    def _global(self, feats: torch.Tensor) -> torch.Tensor:
        """The fused map as the global head sees it (average-pooled by ``global_pool``)."""
        main = self._main(feats)
        p = self.config.global_pool
        return F.avg_pool2d(main, p) if p > 1 else main

    def _fine(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """The read-out's finer maps packed by ``features`` (``target_readout`` networks only)."""
        maps, start = [], self.config.fuse_channels
        for c, scale in zip(self._fine_channels, self._fine_scales, strict=True):
            width = c * scale * scale
            maps.append(F.pixel_shuffle(feats[:, start : start + width], scale))
            start += width
        return maps

    def _sample_maps(self, feats: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The finer maps and the fused map, all sampled (bilinear) at ``grid`` (B, H', W', 2) image
        positions in [-1, 1] -> (B, C_fine + F, H', W')."""
        return torch.cat(
            [
                F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)
                for m in (*self._fine(feats), self._main(feats))
            ],
            dim=1,
        )

    def _sample_points(self, feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The maps sampled at image points (B, M, 2) in [-1, 1] -> (B, M, C_fine + F)."""
        return self._sample_maps(feats, points[:, :, None, :]).permute(0, 2, 3, 1)[:, :, 0]

    def move_pixels(self, feats: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Where each candidate move takes the gripper in the image: feats (B, F, h, w), states (B, 2),
        actions (B, K, 6) -> (B, K, 2), x and y in [-1, 1] (``target_readout`` networks only)."""
        return self._move(feats, states, actions)[0]

    def finger_pixels(self, feats: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Where each candidate move puts the two fingertips in the image (before any closing): (B, K, 2, 2),
        the fingers in either order (``finger_readout`` networks only)."""
        if not self.config.finger_readout:
            raise ValueError("this network has no finger read-out")
        p, d = self._move(feats, states, actions)
        return torch.stack([p + d, p - d], dim=2)

    def _closing_yaws(self, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, K, 2): the yaw vector the fingers will have after each candidate's rotation."""
        b, k = actions.shape[:2]
        u = self.gripper_yaw_vector(feats)[:, None, :].expand(b, k, 2)
        return turn_yaw_vector(u, actions[..., 3] * self.config.yaw_step)

    def _move(
        self, feats: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, yaws: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gripper's image position p after each move (B, K, 2) and, with ``finger_readout``, the
        fingertips' half-span d (B, K, 2) (else None); ``yaws``: ``_closing_yaws`` if already computed."""
        if not self.config.target_readout:
            raise ValueError("this network has no target read-out")
        b, k = actions.shape[:2]
        g = self.gripper_coords(feats)
        s = _state_features(states, actions.dtype)
        parts = [actions[..., :3], s[:, None, 1:2].expand(b, k, 1), g[:, None].expand(b, k, 2)]
        if self.config.finger_readout:
            yaws = self._closing_yaws(feats, actions) if yaws is None else yaws
            parts += [s[:, None, 0:1].expand(b, k, 1), yaws]
        out = self.move_net(torch.cat(parts, dim=-1))
        p = g[:, None] + out[..., :2]
        return p, (out[..., 2:] if self.config.finger_readout else None)

    def object_offsets(self, feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w), image points (B, M, 2) in [-1, 1] -> (B, M, 2): the offset from each point to the
        nearest object's grasp point, in fused-map cells, as read from the maps there (unclipped: the
        loss clips its labels; ``object_offsets`` networks only)."""
        if not self.config.object_offsets:
            raise ValueError("this network does not read object offsets")
        return self.offset_head(self._sample_points(feats, points))

    def wall_yaw_logits(self, feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w), image points (B, M, 2) in [-1, 1] -> (B, M): the logit that the wall-parallel yaw
        at each point is 0 rather than 90 degrees (``wall_yaw`` networks only)."""
        if not self.config.wall_yaw:
            raise ValueError("this network does not read the wall-parallel yaw")
        return self.wall_head(self._sample_points(feats, points))[..., 0]

    def gripper_yaw_vector(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) -> (B, 2): the gripper's (cos 2 psi, sin 2 psi) read where the gripper is located
        (``gripper_yaw`` networks only)."""
        if not self.config.gripper_yaw:
            raise ValueError("this network does not read the gripper's yaw")
        grid = self.gripper_coords(feats)[:, None, None, :]  # (B, 1, 1, 2)
        v = self.yaw_head(self._sample_maps(feats, grid)[:, :, 0, 0])
        return v / (v.norm(dim=1, keepdim=True) + 1e-6)

    def _local_logits(self, feats: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The target read-out's logits (B, K): features sampled where each move takes the gripper."""
        b, k = actions.shape[:2]
        # the yaw the fingers will close at: today's turned by the candidate's dyaw
        yaws = self._closing_yaws(feats, actions) if self.config.gripper_yaw else None
        p, d = self._move(feats, states, actions, yaws)
        if d is None:  # the landing point, or a patch of points around it (the centre first)
            grid = p[:, :, None, :] + self._patch_offsets(feats).to(p.dtype)  # (B, K, P, 2)
        else:
            grid = torch.stack([p, p + d, p - d], dim=2)  # (B, K, 3, 2)
        sampled = self._sample_maps(feats, grid).permute(0, 2, 3, 1)  # (B, K, P or 3, C)
        if d is None:
            sampled = sampled.flatten(2)
        else:  # the centre, and the two fingertips in a form that does not depend on their order
            f1, f2 = sampled[:, :, 1], sampled[:, :, 2]
            sampled = torch.cat([sampled[:, :, 0], f1 + f2, (f1 - f2).abs()], dim=-1)
        s = _state_features(states, actions.dtype)[:, None].expand(b, k, STATE_DIM)
        parts = [sampled, action_features(actions), s]
        if yaws is not None:
            parts.append(yaws)
        if self.config.object_offsets:  # the offset read at the landing point (the centre's features)
            centre = sampled[..., : self.offset_head.in_features]
            parts.append(self.offset_head(centre).clamp(-OFFSET_RANGE, OFFSET_RANGE))
        if self.config.wall_yaw and yaws is not None:  # the sign read at the landing point, and the alignment
            w = torch.tanh(0.5 * self.wall_head(sampled[..., : self.wall_head.in_features]))  # 2 sigmoid - 1
            parts += [w, w * yaws[..., 0:1]]
        z = torch.cat(parts, dim=-1)
        return self.local_head(z)[..., 0]

    def _patch_offsets(self, feats: torch.Tensor) -> torch.Tensor:
        """(P, 2) offsets in image units of the read-out's sample points around the landing point, the
        centre first, one cell of the finest sampled map apart (``readout_patch``)."""
        n = self.config.readout_patch
        side = feats.shape[-1] * (self._fine_scales[0] if self._fine_scales else 1)
        steps = (torch.arange(n, dtype=feats.dtype, device=feats.device) - n // 2) * (2.0 / side)
        grid = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), dim=-1).reshape(-1, 2)
        centre = (n * n) // 2
        order = [centre] + [i for i in range(n * n) if i != centre]
        return grid[order]

    def gripper_coords(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) fused map -> (B, 2): the located gripper (x, y in [-1, 1]), read back from the
        offset channels (``gripper_keypoint`` networks only)."""
        if not self.config.gripper_keypoint:
            raise ValueError("this network has no gripper keypoint")
        centres = _cell_centres(feats.shape[2], feats.shape[3], feats.device, feats.dtype)
        main = self._main(feats)
        return centres[0, :, 0, 0] - main[:, -2:, 0, 0]

    def object_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) fused map -> (B, h, w) logits that a cell shows an object (``object_map`` only)."""
        if not self.config.object_map:
            raise ValueError("this network has no object map")
        return self.object_conv(self._main(feats))[:, 0]

    def keypoint_coords(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) -> (B, 2K): the expected x and y (in [-1, 1]) of each keypoint's softmax over the map."""
        heat = self.keypoint_conv(self._main(feats))
        xy = _soft_argmax(heat, _coords(heat.shape[2], heat.shape[3], heat.device, heat.dtype))
        return torch.cat([xy[..., 0], xy[..., 1]], dim=1)

    def head(
        self, feats: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, chunk: int = 256
    ) -> torch.Tensor:
        """Logits for K candidates per state: feats (B, F, h, w), states (B, 2), actions (B, K, 6) -> (B, K).

        The feature map is tiled across candidates by broadcasting, never recomputed. Large batches run in
        chunks of about ``chunk`` candidates: the tiled tensor then stays in cache (several times faster)."""
        b, k = actions.shape[0], actions.shape[1]
        step = max(1, chunk // max(k, 1))
        if b > step:
            return torch.cat(
                [
                    self.head(feats[i : i + step], states[i : i + step], actions[i : i + step], chunk)
                    for i in range(0, b, step)
                ]
            )
        s = _state_features(states, actions.dtype)
        parts = [action_features(actions), s[:, None, :].expand(b, k, STATE_DIM)]
        if self.config.keypoints:
            kp = self.keypoint_coords(feats)
            parts.append(kp[:, None, :].expand(b, k, kp.shape[1]))
        if self.config.gripper_keypoint:
            g = self.gripper_coords(feats)
            parts.append(g[:, None, :].expand(b, k, 2))
        z = torch.cat(parts, dim=-1)
        e = self.embed(z)  # (B, K, F)
        main = self._global(feats)
        x = torch.relu(main[:, None] + e[..., None, None])  # (B, K, F, h, w)
        x = self.head_convs(x.reshape(b * k, *main.shape[1:]))
        logits = self.fc(x.flatten(1)).view(b, k)
        if self.config.target_readout:
            logits = logits + self._local_logits(feats, states, actions)
        return logits

    def forward(self, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Logits; actions (B, 6) -> (B,), actions (B, K, 6) -> (B, K)."""
        single = actions.ndim == 2
        a = actions[:, None] if single else actions
        out = self.head(self.features(images), states, a)
        return out[:, 0] if single else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: QNetwork) -> tuple[int, int]:
    """Multiply-accumulates (tower per state, head per candidate), counted with forward hooks."""
    per: dict[str, int] = {"tower": 0, "head": 0}
    part = ["tower"]

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            per[part[0]] += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            per[part[0]] += (
                out[0].numel() * mod.in_features if out.ndim == 1 else out.shape[-1] * mod.in_features
            )

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        c = model.config
        with torch.no_grad():
            f = model.features(torch.zeros(1, c.in_channels, c.image_size, c.image_size))
            part[0] = "head"
            model.head(f, torch.zeros(1, STATE_DIM), torch.zeros(1, 1, ACTION_DIM))
    finally:
        for h in handles:
            h.remove()
    return per["tower"], per["head"]


def random_shift(
    images: torch.Tensor, pad: int, generator: torch.Generator | None = None, return_shifts: bool = False
) -> Any:
    """DrQ's augmentation: replicate-pad by ``pad`` pixels and crop back at a random offset per image.
    With ``return_shifts``, also the (B, 2) float pixel shifts (x, y) by which the content moved."""
    b, _, h, w = images.shape
    if pad <= 0:
        return (images, torch.zeros(b, 2)) if return_shifts else images
    x = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    shifts = (pad - off.flip(1)).float()  # off is (row, column); content moves by pad - off
    # One slice copy per image: ~3x faster than gathering rows then columns with index tensors.
    out = torch.empty(b, x.shape[1], h, w, dtype=x.dtype)
    for i, (r, c) in enumerate(off.tolist()):
        out[i] = x[i, :, r : r + h, c : c + w]
    return (out, shifts) if return_shifts else out
