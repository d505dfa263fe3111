"""RCAN's generator G(x) -> (canonical RGB, segmentation logits, depth) and discriminator D(x).

The paper's appendix (architectures) is not public; NOTES.md lists what independent re-implementations
agree on. Ours follows that and is sized for a CPU at 64x64:

* Generator: a U-Net. Each encoder level starts with a stride-2 3x3 conv (so the very first conv already
  halves the resolution), then ``blocks[i]`` 3x3 convs; every conv is followed by instance norm and ReLU.
  The decoder upsamples bilinearly, concatenates the encoder's skip and applies a 3x3 conv. A last stage
  at full resolution also sees the input image itself (objects keep their randomized textures in the
  canonical domain, so fine detail must be copied through), and three separate heads produce RGB (tanh,
  [-1, 1]), 5 segmentation logits, and depth.
* Depth: the head predicts depth / ``depth_scale`` (metres / 2.0) through a softplus: positive and
  unbounded above, so neither the tray (~0.3 to 1.2 m) nor the far plane (3 m) sits in a saturated range.
* Discriminator: unconditional (D(x) = logit that x is a canonical image, paper eq. 3), multi-scale: one
  PatchGAN per scale on the image at full, 1/2 and 1/4 resolution, each returning a map of logits.

For comparison, ``define_G("pix2pix")`` and ``define_D("pix2pix")`` build the standard pix2pix U-Net
(``UnetGenerator``: 4x4 stride-2 convs, batch norm, LeakyReLU/ReLU, transposed convs, dropout) with 6
levels for 64x64, and its 70x70 PatchGAN; the U-Net's 9 output channels are split into the same three heads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 5
DEPTH_SCALE = 2.0
INITIAL_DEPTH_M = 0.7
NORMS = ("instance", "batch")


class GeneratorOutput(NamedTuple):
    """G's three outputs, NCHW float: rgb in [-1, 1], segmentation logits, depth in metres / depth_scale."""

    rgb: torch.Tensor
    segmentation: torch.Tensor
    depth: torch.Tensor


# -- configs -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the RCAN generator (stored in the checkpoint's metadata to rebuild the model)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    """Channels per encoder level; level i runs at 1/2**(i+1) of the input resolution."""
    blocks: tuple[int, ...] = (0, 1, 1, 1)
    """Extra stride-1 3x3 convs per encoder level after its strided conv (one number per level)."""
    head_channels: int = 16
    """Channels of the full-resolution features shared by the three heads."""
    head_hidden: int = 0
    """If > 0, each head has its own 3x3 conv of this width and a 1x1 output conv; else one 3x3 conv."""
    num_classes: int = NUM_CLASSES
    """Segmentation classes (background, tray, divider, robot, object)."""
    depth_scale: float = DEPTH_SCALE
    """The depth head predicts depth in metres divided by this."""
    image_size: int = 64
    """Resolution the model is trained for (the network is fully convolutional; inputs are checked)."""
    arch: str = "rcan"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        blocks = self.blocks
        if isinstance(blocks, int):
            blocks = (blocks,) * len(self.channels)
        object.__setattr__(self, "blocks", tuple(int(b) for b in blocks))
        if self.arch != "rcan":
            raise ValueError(f"GeneratorConfig.arch must be 'rcan', got {self.arch!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        if len(self.blocks) != len(self.channels) or min(self.blocks) < 0:
            raise ValueError(f"blocks needs one int >= 0 per level ({len(self.channels)}), got {self.blocks}")
        if self.head_channels < 1 or self.head_hidden < 0 or self.num_classes < 2 or self.depth_scale <= 0:
            raise ValueError("need head_channels >= 1, head_hidden >= 0, num_classes >= 2, depth_scale > 0")
        if self.image_size < 2 ** (len(self.channels) + 1):  # instance norm needs >= 2x2 at the bottom
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} levels "
                f"(needs >= {2 ** (len(self.channels) + 1)})"
            )


@dataclass(frozen=True)
class Pix2PixUnetConfig:
    """The standard pix2pix ``UnetGenerator`` (Isola et al.), output split into RGB/segmentation/depth."""

    num_downs: int = 6
    """Down-sampling levels; 6 takes 64x64 to 1x1 (pix2pix's unet_256 uses 8 for 256x256)."""
    ngf: int = 64
    norm: str = "batch"
    use_dropout: bool = True
    num_classes: int = NUM_CLASSES
    depth_scale: float = DEPTH_SCALE
    image_size: int = 64
    arch: str = "pix2pix_unet"

    def __post_init__(self) -> None:
        if self.num_downs < 5:
            raise ValueError("the pix2pix U-Net needs num_downs >= 5")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.image_size < 2**self.num_downs or self.image_size % 2**self.num_downs:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**num_downs = {2**self.num_downs} "
                f"(each of the {self.num_downs} levels halves it)"
            )


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale unconditional PatchGAN, or pix2pix's single-scale 70x70 PatchGAN (arch='pix2pix_patch')."""

    ndf: int = 16
    """Channels of the first conv of each scale's discriminator (doubling per strided layer, capped at 8x)."""
    n_layers: int = 2
    """Stride-2 4x4 convs per scale."""
    num_scales: int = 3
    """Full, 1/2, 1/4 resolution for 3."""
    norm: str = "instance"
    in_channels: int = 3
    arch: str = "multiscale"

    def __post_init__(self) -> None:
        if self.arch not in ("multiscale", "pix2pix_patch"):
            raise ValueError(f"unknown discriminator arch {self.arch!r}")
        if self.num_scales < 1 or self.n_layers < 1 or self.ndf < 1:
            raise ValueError("ndf, num_scales and n_layers must be >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


GENERATOR_PRESETS: dict[str, GeneratorConfig | Pix2PixUnetConfig] = {
    "tiny": GeneratorConfig(channels=(8, 16, 32), blocks=(0, 0, 0), head_channels=8),
    "default": GeneratorConfig(channels=(16, 32, 64, 128), blocks=(0, 1, 1, 1), head_channels=16),
    # 472x472 as in the paper: two more levels (down to 15x15), wider, per-head hidden convs.
    "paper": GeneratorConfig(
        channels=(32, 64, 128, 256, 256, 256),
        blocks=(0, 1, 1, 1, 1, 1),
        head_channels=32,
        head_hidden=32,
        image_size=472,
    ),
    "pix2pix": Pix2PixUnetConfig(),
}

DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "tiny": DiscriminatorConfig(ndf=8, n_layers=2),
    "default": DiscriminatorConfig(ndf=16, n_layers=2),
    "paper": DiscriminatorConfig(ndf=64, n_layers=3),
    "pix2pix": DiscriminatorConfig(ndf=64, n_layers=3, num_scales=1, norm="batch", arch="pix2pix_patch"),
}

_G_CLASSES: dict[str, type] = {"rcan": GeneratorConfig, "pix2pix_unet": Pix2PixUnetConfig}
_D_CLASSES: dict[str, type] = {"multiscale": DiscriminatorConfig, "pix2pix_patch": DiscriminatorConfig}


def generator_config(
    spec: str | dict[str, Any] | GeneratorConfig | Pix2PixUnetConfig,
) -> GeneratorConfig | Pix2PixUnetConfig:
    """A generator config from a preset name, a dict of fields (``arch`` picks the class) or a config."""
    return _config(spec, GENERATOR_PRESETS, _G_CLASSES, "rcan")


def discriminator_config(spec: str | dict[str, Any] | DiscriminatorConfig) -> DiscriminatorConfig:
    """A discriminator config from a preset name, a dict of fields or a config."""
    return _config(spec, DISCRIMINATOR_PRESETS, _D_CLASSES, "multiscale")


def _config(spec: Any, presets: dict[str, Any], classes: dict[str, type], default_arch: str) -> Any:
    if isinstance(spec, tuple(classes.values())):
        return spec
    if isinstance(spec, str):
        if spec not in presets:
            raise ValueError(f"unknown preset {spec!r}; choose from {', '.join(presets)}")
        return presets[spec]
    if isinstance(spec, dict):
        arch = spec.get("arch", default_arch)
        if arch not in classes:
            raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(classes)}")
        cls = classes[arch]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**spec)
    raise TypeError(f"expected a preset name, dict or config, got {type(spec).__name__}")


def config_to_json(config: Any) -> str:
    """Serialize a config dataclass (tuples become lists) for safetensors metadata or JSON files."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


# -- building blocks -----------------------------------------------------------------------------------
def make_norm(name: str, channels: int) -> nn.Module:
    """Instance norm (with learned scale and shift) or batch norm.

    Instance norm is built as GroupNorm with one channel per group: the same function as
    ``nn.InstanceNorm2d(affine=True)`` (per example and channel, statistics over H and W, eps 1e-5) but
    5-10x faster on CPU for small maps.
    """
    if name == "instance":
        return nn.GroupNorm(channels, channels)
    if name == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {name!r}")


class ConvNormReLU(nn.Sequential):
    """3x3 conv (no bias: the norm's shift replaces it), instance norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            make_norm("instance", cout),
            nn.ReLU(inplace=True),
        )


class RCANGenerator(nn.Module):
    """U-Net encoder-decoder with three heads; see the module docstring for the design.

    Computes in channels-last memory format (on this CPU: 20-40% faster convolutions and 5-8x faster
    bilinear upsampling than NCHW); inputs and outputs are ordinary NCHW tensors.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.encoder = nn.ModuleList()
        prev = 3
        for c, n in zip(ch, config.blocks, strict=True):
            layers = [ConvNormReLU(prev, c, stride=2)] + [ConvNormReLU(c, c) for _ in range(n)]
            self.encoder.append(nn.Sequential(*layers))
            prev = c
        # decoder[i] fuses level i+1 (upsampled) with the skip from level i
        self.decoder = nn.ModuleList(ConvNormReLU(ch[i + 1] + ch[i], ch[i]) for i in range(len(ch) - 1))
        self.top = ConvNormReLU(ch[0] + 3, config.head_channels)
        k, hc, hh = config.num_classes, config.head_channels, config.head_hidden
        self.out_channels = (3, k, 1)
        self.heads: nn.Module
        if hh > 0:
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Conv2d(hc, hh, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hh, c, 1))
                for c in self.out_channels
            )
        else:
            # The three heads' 3x3 output convs stacked into one conv: the same function as three separate
            # convs (no weight is shared between heads), at a third of the per-call overhead.
            self.heads = nn.Conv2d(hc, sum(self.out_channels), 3, padding=1)
        # Start the depth head at a typical camera-to-tray distance instead of softplus(0) * 2 = 1.39 m.
        depth_bias = self.heads[2][-1].bias if hh > 0 else self.heads.bias[-1:]
        with torch.no_grad():
            depth_bias.fill_(math.log(math.expm1(INITIAL_DEPTH_M / config.depth_scale)))
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        h = x
        for level in self.encoder:
            h = level(h)
            skips.append(h)
        for i in range(len(self.decoder) - 1, -1, -1):
            skip = skips[i]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = self.decoder[i](torch.cat([h, skip], dim=1))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        h = self.top(torch.cat([h, x], dim=1))
        if isinstance(self.heads, nn.ModuleList):
            rgb, seg, depth = (head(h).contiguous() for head in self.heads)
        else:
            rgb, seg, depth = self.heads(h).contiguous().split(self.out_channels, dim=1)
        return GeneratorOutput(torch.tanh(rgb), seg, F.softplus(depth))


class _UnetSkipBlock(nn.Module):
    """pix2pix's ``UnetSkipConnectionBlock``: down, submodule, up, then concatenation with the input."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        layers: list[nn.Module]
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv]  # pix2pix ends with Tanh; our heads apply theirs
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, make_norm(norm, outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [
                downrelu,
                downconv,
                make_norm(norm, inner_nc),
                submodule,
                uprelu,
                upconv,
                make_norm(norm, outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class Pix2PixUnetGenerator(nn.Module):
    """pix2pix ``UnetGenerator(3, 9, num_downs, ngf)`` with its 9 channels split into our three heads."""

    def __init__(self, config: Pix2PixUnetConfig) -> None:
        super().__init__()
        self.config = config
        norm, ngf, drop = config.norm, config.ngf, config.use_dropout
        self.out_channels = (3, config.num_classes, 1)
        block = _UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(config.num_downs - 5):
            block = _UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=drop)
        block = _UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = _UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = _UnetSkipBlock(ngf, ngf * 2, submodule=block, norm=norm)
        out_nc = sum(self.out_channels)
        self.model = _UnetSkipBlock(out_nc, ngf, input_nc=3, submodule=block, outermost=True, norm=norm)
        _pix2pix_init(self)

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        rgb, seg, depth = self.model(x).split(self.out_channels, dim=1)
        return GeneratorOutput(torch.tanh(rgb), seg, F.softplus(depth))


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4x4 convs, then two stride-1 convs down to one logit per patch."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, norm: str, kernel_tail: int = 3) -> None:
        super().__init__()
        use_bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(nf_prev, nf, 4, stride=2, padding=1, bias=use_bias),
                make_norm(norm, nf),
                nn.LeakyReLU(0.2, True),
            ]
        nf_prev, nf = nf, ndf * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(nf_prev, nf, kernel_tail, stride=1, padding=1, bias=use_bias),
            make_norm(norm, nf),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(nf, 1, kernel_tail, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MultiScaleDiscriminator(nn.Module):
    """One PatchGAN per scale; the image is average-pooled by 2 between scales. Returns a list of logit maps."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "pix2pix_patch":  # pix2pix's NLayerDiscriminator: 4x4 tail convs, N(0, 0.02) init
            d = PatchDiscriminator(
                config.in_channels, config.ndf, config.n_layers, config.norm, kernel_tail=4
            )
            self.scales = nn.ModuleList([d])
            _pix2pix_init(self)
        else:
            self.scales = nn.ModuleList(
                PatchDiscriminator(config.in_channels, config.ndf, config.n_layers, config.norm)
                for _ in range(config.num_scales)
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(d(x))
        return outs


def _pix2pix_init(module: nn.Module) -> None:
    """pix2pix's 'normal' init: conv weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# -- factories -----------------------------------------------------------------------------------------
def define_G(spec: str | dict[str, Any] | GeneratorConfig | Pix2PixUnetConfig = "default") -> nn.Module:
    """Build a generator from a preset name (tiny, default, paper, pix2pix), a dict of fields or a config.

    The module has a ``config`` attribute and maps a float NCHW batch in [-1, 1] to a
    :class:`GeneratorOutput` (rgb, segmentation logits, depth / depth_scale).
    """
    config = generator_config(spec)
    if isinstance(config, Pix2PixUnetConfig):
        return Pix2PixUnetGenerator(config)
    return RCANGenerator(config)


def define_D(spec: str | dict[str, Any] | DiscriminatorConfig = "default") -> MultiScaleDiscriminator:
    """Build a discriminator from a preset name (tiny, default, paper, pix2pix), a dict of fields or a config.

    The module maps a float NCHW batch of RGB images in [-1, 1] to a list of logit maps, one per scale.
    """
    return MultiScaleDiscriminator(discriminator_config(spec))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters())


# -- image conversion ----------------------------------------------------------------------------------
def images_to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW in [-1, 1] (the generator's and discriminator's input)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def output_to_images(rgb: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (rounded)."""
    x = ((rgb.detach().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
