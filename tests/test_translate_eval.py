"""Using a generator: `rcan translate` on user images and `rcan eval-generator` metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rcan.adapt.evaluate import mean_iou, psnr
from rcan.adapt.inference import save_generator
from rcan.adapt.networks import define_G
from rcan.cli import main


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator.safetensors"
    save_generator(path, define_G("tiny"), step=0)
    return path


def test_translate_images_and_folders(tmp_path, generator, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(src / "wide.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(src / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "grey.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code = main(["translate", str(src), str(tmp_path / "grey.png"), "--generator", str(generator), "--out", str(out)])
    assert code == 1  # one broken file, reported; the rest written
    err = capsys.readouterr().err
    assert "broken.png" in err and "not a readable image" in err
    for stem in ("wide", "photo", "grey"):
        rgb = np.asarray(Image.open(out / f"{stem}_canonical.png"))
        seg = np.asarray(Image.open(out / f"{stem}_segmentation.png"))
        depth = np.asarray(Image.open(out / f"{stem}_depth.png"))
        size = define_G("tiny").config.image_size
        assert rgb.shape == (size, size, 3) and seg.shape == (size, size) and seg.max() <= 4
        assert depth.dtype == np.uint16


def test_translate_all_good_exits_zero(tmp_path, generator):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["translate", str(tmp_path / "a.png"), "--generator", str(generator), "--out", str(tmp_path / "o")]) == 0


def test_translate_bad_generator(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "fake.safetensors").write_bytes(b"not a checkpoint")
    assert main(["translate", str(tmp_path / "a.png"), "--generator", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert main(["translate", str(tmp_path / "a.png"), "--generator", str(tmp_path / "fake.safetensors"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2


def test_metrics():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    assert psnr(a, a) > 90
    b = a.copy()
    b[:] = 255
    assert psnr(a, b) == pytest.approx(0.0)
    seg = np.zeros((1, 4, 4), np.uint8)
    seg[0, :2] = 1
    miou, per = mean_iou(seg, seg)
    assert miou == 1.0 and per[0] == per[1] == 1.0 and np.isnan(per[2])


def test_eval_generator_small(tmp_path, generator):
    out = tmp_path / "eval"
    assert main(["eval-generator", "--generator", str(generator), "--out", str(out), "--frames", "6"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for d in ("heavy", "real"):
        m = metrics["domains"][d]
        assert 0 <= m["segmentation_miou"] <= 1 and m["depth_rmse_m"] >= 0
        assert m["identity_rgb_psnr"] > 0
    assert (out / "figure3.png").stat().st_size > 0
