"""The trained grasping policy as an object others can use, and the agent file (``agent.safetensors``).

``QTOptPolicy`` turns an env observation into the network's state (RGB, or RCAN's concat(G(x), x)) and
picks the greedy action by CEM. The agent file holds the Q-network's weights; its metadata holds the network
config, the input mode and the CEM settings, so ``load_agent`` needs no other file (for an ``rcan`` agent
it also needs the generator: passed in, found beside the agent file, or at the path recorded at training).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rcan.common.checkpoint import load_safetensors, load_weights_strict, save_safetensors_atomic
from rcan.qtopt import INPUT_MODES
from rcan.qtopt.cem import CEMConfig, cem_maximize
from rcan.qtopt.network import QNetConfig, QNetwork

AGENT_FILE = "agent.safetensors"
AGENT_FORMAT = "rcan.qtopt_agent"
GENERATOR_FILE = "generator.safetensors"


def env_domain(input_mode: str) -> str:
    """The training env's visual domain for an input mode (RCAN trains on heavy randomization)."""
    check_input_mode(input_mode)
    return "heavy" if input_mode == "rcan" else input_mode


def image_channels(input_mode: str, first_frame: bool = False) -> int:
    """Channels of the network's image: 3 (RGB) or 6 (RCAN's concat(G(x), x)), twice that with the
    episode's first image stacked on (``QNetConfig.first_frame``)."""
    check_input_mode(input_mode)
    return (6 if input_mode == "rcan" else 3) * (2 if first_frame else 1)


def with_first_frame(images: np.ndarray) -> np.ndarray:
    """An episode's state images (T, C, H, W) -> (T, 2C, H, W): each stacked with the episode's first."""
    return np.concatenate([images, np.broadcast_to(images[:1], images.shape)], axis=1)


def check_input_mode(input_mode: str) -> None:
    if input_mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {input_mode!r}; choose one of {', '.join(INPUT_MODES)}")


def state_images(images: np.ndarray, input_mode: str, generator: nn.Module | None = None) -> np.ndarray:
    """Env images (N, H, W, 3) uint8 -> network images (N, C, H, W) uint8; in ``rcan`` mode the channels
    are concat(G(x), x) (paper 4.3), translated in one batch."""
    images = np.asarray(images)
    if input_mode == "rcan":
        if generator is None:
            raise ValueError("input mode 'rcan' needs a generator")
        from rcan.adapt.inference import translate_batch

        images = np.concatenate([translate_batch(generator, images)["rgb"], images], axis=-1)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def obs_state(obs: Mapping[str, Any]) -> np.ndarray:
    """The non-image state: (gripper_closed, gripper_height in metres); one clear error if either is
    missing or not one finite number."""
    values = []
    for key in ("gripper_closed", "gripper_height"):
        if key not in obs:
            raise ValueError(f"the observation has no {key!r} (the agent's state: gripper_closed 0/1, gripper_height m)")
        v = np.asarray(obs[key], dtype=np.float64).reshape(-1)
        if v.size != 1 or not np.isfinite(v[0]):
            raise ValueError(f"obs[{key!r}] must be one finite number, got {obs[key]!r}")
        values.append(v[0])
    return np.array(values, np.float32)


def check_obs_image(image: Any, size: int) -> np.ndarray:
    """The observation's image as the agent takes it, (size, size, 3) uint8 RGB, or one clear error: a
    camera frame of another size or type would otherwise give wrong actions or a shape error deep inside
    the network (a float image in [0, 1] would silently read as almost black)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"obs['image'] must be uint8 RGB (0-255), got dtype {a.dtype}")
    if a.shape != (size, size, 3):
        raise ValueError(
            f"obs['image'] must be {size}x{size}x3 (the agent's training size, seen from its training camera), "
            f"got shape {a.shape}"
        )
    return a


VIEW_SHIFTS = ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2), (2, 2), (-2, -2), (2, -2), (-2, 2))
"""Pixel shifts (x, y) of the image for test-time averaging, inside the +-4 pixels of training's DrQ shift."""


def check_view_shifts(n: int) -> None:
    """Refuse a number of shifted views that ``VIEW_SHIFTS`` does not have."""
    if not 1 <= n <= len(VIEW_SHIFTS):
        raise ValueError(f"view_shifts must be in 1..{len(VIEW_SHIFTS)}, got {n}")


def check_rerank(m: int) -> None:
    """Refuse a negative number of re-ranked candidates."""
    if m < 0:
        raise ValueError(f"rerank must be >= 0, got {m}")


def check_search_critics(n: int) -> None:
    """Refuse a negative number of searching critics."""
    if n < 0:
        raise ValueError(f"search_critics must be >= 0, got {n}")


def shifted_views(images: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (n * B, C, H, W), view-major: the images moved by the first ``n`` of
    ``VIEW_SHIFTS`` (replicate padding, as training's random shift pads), the unshifted ones first."""
    if n == 1:
        return images
    pad = max(max(abs(x), abs(y)) for x, y in VIEW_SHIFTS[:n])
    h, w = images.shape[-2:]
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    return torch.cat([padded[..., pad - y : pad - y + h, pad - x : pad - x + w] for x, y in VIEW_SHIFTS[:n]])


class QTOptPolicy:
    """Greedy QT-Opt policy: ``reset(info)`` per episode, ``act(obs, info) -> action (6,) float32``."""

    def __init__(
        self,
        network: QNetwork,
        cem: CEMConfig | None = None,
        input_mode: str = "canonical",
        generator: nn.Module | None = None,
        seed: int = 0,
        camera: str = "wide",
        view_shifts: int = 1,
        ensemble: Sequence[QNetwork] = (),
        rerank: int = 0,
        search_critics: int = 0,
    ) -> None:
        check_input_mode(input_mode)
        for other in ensemble:
            c, o = network.config, other.config
            if (o.in_channels, o.image_size, o.first_frame) != (c.in_channels, c.image_size, c.first_frame):
                raise ValueError("ensemble members must take the same images (channels, size, first frame)")
        check_view_shifts(view_shifts)
        check_rerank(rerank)
        check_search_critics(search_critics)
        need = image_channels(input_mode, network.config.first_frame)
        if network.config.in_channels != need:
            raise ValueError(
                f"input mode {input_mode!r} needs a {need}-channel network, got {network.config.in_channels}"
            )
        if input_mode == "rcan" and generator is None:
            raise ValueError("input mode 'rcan' needs a generator (pass --generator)")
        self.network = network.eval()
        self.networks = [network, *(n.eval() for n in ensemble)]
        """Every critic acted with: Q is their mean logit (an ensemble; just ``network`` by default)."""
        self.cem = cem or CEMConfig()
        self.input_mode = input_mode
        self.generator = generator
        self.camera = camera
        """The env camera the agent was trained with (``rcan.sim.renderer.CAMERAS``)."""
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.view_shifts = view_shifts
        """Test-time augmentation: Q is the mean logit over this many shifted copies of the image (1: off)."""
        self.rerank = rerank
        """With ``view_shifts`` > 1: 0 searches on the mean over all views; M > 0 searches on the unshifted
        view alone and re-scores the M best candidates it scored on all views (about the cost of one view)."""
        self.search_critics = search_critics
        """With an ensemble and ``rerank`` M > 0: N > 0 searches with the first N critics alone and re-scores
        the M best candidates on all of them (a search's cost is mostly its 128 heads per critic); 0: all."""
        self._first: np.ndarray | None = None

    def reset(self, info: Mapping[str, Any] | None = None) -> None:
        """A new episode: forget its first image (kept only with ``QNetConfig.first_frame``)."""
        self._first = None

    def prepare(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(network image (C, H, W) uint8, state (2,)) for one observation; with ``first_frame``, the first
        observation since ``reset`` is kept and stacked on every later one."""
        if "image" not in obs:
            raise ValueError("the observation has no 'image'")
        rgb = check_obs_image(obs["image"], self.network.config.image_size)
        image = state_images(rgb[None], self.input_mode, self.generator)[0]
        if self.network.config.first_frame:
            if self._first is None:
                self._first = image
            image = np.concatenate([image, self._first], axis=0)
        return image, obs_state(obs)

    @torch.no_grad()
    def act_prepared(
        self,
        image: np.ndarray,
        state: np.ndarray,
        fixed: Mapping[int, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, float]:
        """Greedy action by CEM for a prepared state, and its Q value (a success probability estimate).
        ``fixed``: action dimensions held at given values while the others are searched (e.g. {4: 1, 5: 1}:
        the best closing that ends the attempt, wherever the critic would rather move). ``generator``: draw
        CEM's samples from it instead of the policy's own (an extra search then leaves the policy's stream
        of random numbers, and so its other actions, as they would have been)."""
        hold = list((fixed or {}).items())
        for dim, _ in hold:
            if not 0 <= dim < 6:
                raise ValueError(f"fixed action dimensions are 0..5, got {dim}")
        views = shifted_views(torch.from_numpy(image)[None], self.view_shifts)
        nets = self.networks[: self.search_critics] if self.rerank and self.search_critics else self.networks
        rerank = self.rerank if len(views) > 1 or len(nets) < len(self.networks) else 0
        searched = 1 if rerank else len(views)  # re-ranking searches on the unshifted view only
        feats = [net.features(views[:searched]) for net in nets]  # each tower once per view
        s1 = torch.from_numpy(state)[None]
        scored: list[tuple[torch.Tensor, torch.Tensor]] = []  # what the search scored, for re-ranking

        def score(c: torch.Tensor, feats: list[torch.Tensor] = feats, nets: list[QNetwork] = nets) -> torch.Tensor:
            if hold:
                c = c.clone()
                for dim, value in hold:
                    c[..., dim] = value
            m = len(feats[0])
            s, cm = s1.expand(m, -1), c.expand(m, -1, -1)
            logits = [net.head(f, s, cm).mean(0, keepdim=True) for net, f in zip(nets, feats, strict=True)]
            out = torch.stack(logits).mean(0)
            if rerank:
                scored.append((c[0], out[0]))
            return out

        a, logit = cem_maximize(score, 1, self.cem, generator=generator or self.torch_rng)
        if rerank:
            cands = torch.cat([c for c, _ in scored])
            top = cands[torch.cat([q for _, q in scored]).topk(min(self.rerank, len(cands))).indices]
            feats_all = [
                torch.cat([feats[i], net.features(views[1:])]) if i < len(nets) else net.features(views)
                for i, net in enumerate(self.networks)
            ]
            q = score(top[None], feats_all, self.networks)[0]
            best = int(q.argmax())
            a, logit = top[best : best + 1], q[best : best + 1]
        a = a.clone()
        for dim, value in hold:  # CEM returns its sampled candidate; the score saw the held values
            a[:, dim] = value
        return a[0].numpy().astype(np.float32), float(torch.sigmoid(logit[0]))

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray:
        return self.act_prepared(*self.prepare(obs))[0]


MEMBER_PREFIX = "member"
"""Tensor names ``member<i>.<name>`` in an agent file: the weights of its ensemble members (i = 1, 2, ...)."""


def save_agent(
    path: str | os.PathLike[str],
    network: QNetwork,
    input_mode: str,
    cem: CEMConfig,
    extra: Mapping[str, str] | None = None,
    members: Sequence[QNetwork] = (),
) -> Path:
    """Weights + everything needed to rebuild the policy, atomically. ``members``: more critics of the same
    config stored in the same file (``member<i>.*``); the policy acts on the mean logit of all of them."""
    for m in members:
        if m.config != network.config:
            raise ValueError("ensemble members must have the agent's network config")
    metadata = {
        "format": AGENT_FORMAT,
        "version": "1",
        "network": network.config.to_json(),
        "input_mode": input_mode,
        "cem": json.dumps(cem.__dict__, sort_keys=True),
        **(extra or {}),
        "members": str(len(members)),
    }
    tensors = dict(network.state_dict())
    for i, m in enumerate(members, 1):
        tensors.update({f"{MEMBER_PREFIX}{i}.{k}": v for k, v in m.state_dict().items()})
    return save_safetensors_atomic(path, tensors, metadata)


def resolve_agent_path(path: str | os.PathLike[str]) -> Path:
    """A run (or asset) directory means its ``agent.safetensors``; a file path is used as is."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / AGENT_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no agent checkpoint at {p} (train one with 'rcan train-agent')")
    return p


def load_network(path: str | os.PathLike[str]) -> tuple[QNetwork, dict[str, str]]:
    """The Q-network of an agent file (eval mode) and the file's metadata (its ensemble members, if it
    has any, are left out: ``load_networks``)."""
    nets, metadata = load_networks(path)
    return nets[0], metadata


def load_networks(path: str | os.PathLike[str]) -> tuple[list[QNetwork], dict[str, str]]:
    """Every Q-network of an agent file (eval mode), its own first, then its ensemble members."""
    p = resolve_agent_path(path)
    tensors, metadata = load_safetensors(p, expect_format=AGENT_FORMAT)
    try:
        config = QNetConfig.from_json(metadata["network"])
    except (KeyError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{p} has a broken network config ({err})") from None
    n = _int_metadata(metadata, "members", 0, p)
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(n + 1)]
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        number = head.removeprefix(MEMBER_PREFIX)
        i = int(number) if head.startswith(MEMBER_PREFIX) and number.isdigit() else 0
        if i > n:
            raise ValueError(f"{p} has weights of ensemble member {i} but records {n} members")
        groups[i][rest if i else key] = value
    nets = []
    for i, group in enumerate(groups):
        net = QNetwork(config)
        load_weights_strict(net, group, f"{p} (member {i})" if i else p)
        nets.append(net.eval())
    return nets, metadata


def _int_metadata(metadata: Mapping[str, str], key: str, default: int, path: str | os.PathLike[str]) -> int:
    try:
        return int(metadata.get(key, str(default)))
    except ValueError:
        raise ValueError(f"{path}: broken {key} {metadata[key]!r}") from None


def load_agent(
    path: str | os.PathLike[str],
    generator: str | os.PathLike[str] | nn.Module | None = None,
    cem: CEMConfig | None = None,
    seed: int = 0,
    view_shifts: int | None = None,
    ensemble: Sequence[str | os.PathLike[str]] = (),
    rerank: int | None = None,
    search_critics: int | None = None,
) -> QTOptPolicy:
    """Rebuild the greedy policy from an agent file or a directory holding one. ``view_shifts``,
    ``rerank`` and ``search_critics`` (see ``QTOptPolicy``): None takes the file's own (1, 0 and 0 if it
    has none). The policy acts on the mean logit of the file's critics (its own and its ensemble members, if it has any) and of those
    of the agents in ``ensemble`` (same input mode and camera)."""
    nets, metadata = load_networks(path)
    net, members = nets[0], nets[1:]
    if view_shifts is None:
        view_shifts = _int_metadata(metadata, "view_shifts", 1, path)
    if rerank is None:
        rerank = _int_metadata(metadata, "rerank", 0, path)
    if search_critics is None:
        search_critics = _int_metadata(metadata, "search_critics", 0, path)
    for other in ensemble:
        more, meta = load_networks(other)
        for key, default in (("input_mode", "canonical"), ("camera", "wide")):
            if meta.get(key, default) != metadata.get(key, default):
                raise ValueError(f"ensemble member {other} has another {key} than {path}")
        members.extend(more)
    mode = metadata.get("input_mode", "canonical")
    check_input_mode(mode)
    if cem is None:
        try:
            cem = CEMConfig(**json.loads(metadata["cem"])) if "cem" in metadata else CEMConfig()
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: broken CEM config ({err})") from None
    gen_model = None
    if mode == "rcan":
        gen_model = _resolve_generator(resolve_agent_path(path), generator, metadata)
    camera = metadata.get("camera", "wide")
    return QTOptPolicy(
        net,
        cem,
        mode,
        gen_model,
        seed=seed,
        camera=camera,
        view_shifts=view_shifts,
        ensemble=members,
        rerank=rerank,
        search_critics=search_critics,
    )


def _resolve_generator(agent: Path, generator: Any, metadata: Mapping[str, str]) -> nn.Module:
    from rcan.adapt.inference import load_generator

    if isinstance(generator, nn.Module):
        return generator.eval()
    if generator is not None:  # the caller's choice
        return load_generator(generator)[0]
    from rcan.adapt.inference import generator_fingerprint

    trained_on = metadata.get("generator_id", "")  # agents before 2026-12-07 do not record it
    changed = []
    for candidate in (agent.parent / GENERATOR_FILE, metadata.get("generator")):
        if candidate and Path(candidate).exists():
            if trained_on and generator_fingerprint(candidate) != trained_on:
                changed.append(str(candidate))
                continue
            return load_generator(candidate)[0]
    if changed:
        raise ValueError(
            f"{agent} was trained on another generator than the one now at {' and '.join(changed)} (its file "
            "changed since: a resumed or retrained generator run?); pass --generator to use it anyway"
        )
    raise FileNotFoundError(
        f"{agent} is an 'rcan' agent: pass --generator, or put {GENERATOR_FILE} beside the agent file"
    )
