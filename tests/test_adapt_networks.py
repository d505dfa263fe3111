"""Generator and discriminator: shapes, output ranges, configs, the generator file and translate_batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rcan.adapt.inference import load_generator, save_generator, translate_batch
from rcan.adapt.networks import (
    GENERATOR_PRESETS,
    DiscriminatorConfig,
    GeneratorConfig,
    count_parameters,
    define_D,
    define_G,
    generator_config,
    images_to_input,
    output_to_images,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("preset,size", [("tiny", 32), ("tiny", 64), ("default", 64), ("pix2pix", 64)])
def test_generator_shapes_and_ranges(preset, size):
    torch.manual_seed(0)
    G = define_G(preset)
    x = torch.rand(2, 3, size, size) * 2 - 1
    out = G(x)
    assert out.rgb.shape == (2, 3, size, size)
    assert out.segmentation.shape == (2, 5, size, size)
    assert out.depth.shape == (2, 1, size, size)
    assert out.rgb.abs().max() <= 1.0
    assert (out.depth > 0).all()
    out.rgb.mean().backward()  # differentiable end to end


def test_odd_sizes_upsample_to_exact_skip_shapes():
    G = define_G({"channels": [8, 8, 8], "blocks": 0, "head_channels": 4, "image_size": 32})
    out = G(torch.zeros(1, 3, 59, 59))  # 59 -> 30 -> 15 -> 8, decoded back to 59
    assert out.rgb.shape == (1, 3, 59, 59)


def test_paper_preset_config_and_shapes():
    cfg = generator_config("paper")
    assert cfg.image_size == 472 and len(cfg.channels) == 6
    G = define_G("paper")
    assert 3e6 < count_parameters(G) < 1e7
    with torch.no_grad():
        out = G(torch.zeros(1, 3, 472, 472))
    assert out.rgb.shape == (1, 3, 472, 472) and out.segmentation.shape == (1, 5, 472, 472)


def test_default_is_small_and_pix2pix_is_the_29m_unet():
    assert count_parameters(define_G("default")) < 1_000_000
    assert 28_000_000 < count_parameters(define_G("pix2pix")) < 30_000_000


@pytest.mark.parametrize("preset,size,n_out", [("tiny", 32, 3), ("default", 64, 3), ("pix2pix", 64, 1)])
def test_discriminator_scales(preset, size, n_out):
    D = define_D(preset)
    logits = D(torch.zeros(2, 3, size, size))
    assert len(logits) == n_out
    for i, t in enumerate(logits):
        assert t.shape[:2] == (2, 1)
        if preset != "pix2pix":  # each scale halves the patch grid
            assert t.shape[-1] == logits[0].shape[-1] // 2**i


def test_instance_norm_is_groupnorm_per_channel():
    """make_norm('instance') must compute exactly InstanceNorm2d(affine=True)."""
    from rcan.adapt.networks import make_norm

    x = torch.randn(3, 6, 9, 7)
    gn, inorm = make_norm("instance", 6), torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
        inorm.weight.copy_(gn.weight)
        inorm.bias.copy_(gn.bias)
    torch.testing.assert_close(gn(x), inorm(x), atol=1e-5, rtol=1e-5)


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown preset"):
        define_G("huge")
    with pytest.raises(ValueError, match="unknown GeneratorConfig fields"):
        define_G({"chanels": [8]})
    with pytest.raises(ValueError, match="blocks"):
        GeneratorConfig(channels=(8, 16), blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="too small"):
        GeneratorConfig(channels=(8,) * 7, blocks=0, image_size=64)
    with pytest.raises(ValueError, match="norm"):
        DiscriminatorConfig(norm="layer")
    with pytest.raises(TypeError):
        define_D(3)


def test_image_conversion_round_trip():
    imgs = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = images_to_input(imgs)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(output_to_images(x), imgs)
    with pytest.raises(ValueError):
        images_to_input(imgs.astype(np.float32))


def test_generator_file_round_trip_and_translate(tmp_path):
    torch.manual_seed(0)
    cfg = dataclasses.replace(GENERATOR_PRESETS["tiny"], image_size=32)
    G = define_G(cfg).eval()
    save_generator(tmp_path / "generator.safetensors", G, step=12)
    G2, cfg2 = load_generator(tmp_path)  # a run directory works as well as the file
    assert cfg2 == cfg and G2.step == 12 and not G2.training
    imgs = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    res = translate_batch(G2, imgs, batch_size=2)
    assert res["rgb"].shape == (5, 32, 32, 3) and res["rgb"].dtype == np.uint8
    assert res["segmentation"].shape == (5, 32, 32) and res["segmentation"].max() < 5
    assert res["depth"].shape == (5, 32, 32) and res["depth"].dtype == np.float32
    with torch.no_grad():
        ref = G(images_to_input(imgs))
    assert np.array_equal(res["rgb"], output_to_images(ref.rgb))
    np.testing.assert_allclose(res["depth"], ref.depth[:, 0].numpy() * cfg.depth_scale, rtol=1e-6)
    with pytest.raises(ValueError, match="trained on 32x32"):
        translate_batch(G2, np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing")


def test_load_generator_rejects_foreign_and_broken_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "g.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="no rcan metadata"):
        load_generator(path)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "rcan.generator", "config": "{}"})
    with pytest.raises(ValueError, match="do not match"):
        load_generator(path)


def test_pix2pix_refuses_sizes_its_levels_cannot_halve():
    from rcan.adapt.networks import Pix2PixUnetConfig

    with pytest.raises(ValueError, match="multiple of 2\\*\\*num_downs = 64"):
        Pix2PixUnetConfig(image_size=96)
    assert Pix2PixUnetConfig(image_size=128).image_size == 128
