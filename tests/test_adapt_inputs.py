"""Bad user input to the generator's commands gets one clear message, never a traceback or lost outputs:
paired data files (`rcan train-generator --data X.npz`) and photos (`rcan translate`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rcan.adapt.inference import save_generator
from rcan.adapt.networks import define_G
from rcan.adapt.pairs import load_arrays, validate_arrays
from rcan.cli import main


def pairs(n: int = 4, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "randomized": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "canonical": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "segmentation": rng.integers(0, 5, (n, size, size), dtype=np.uint8),
        "depth": rng.uniform(0.3, 2.0, (n, size, size)).astype(np.float32),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "npy"])
def test_unreadable_npz_is_one_value_error(tmp_path, kind):
    path = tmp_path / "pairs.npz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.savez(path, **pairs())
        path.write_bytes(path.read_bytes()[:300])
    else:  # a single array saved with np.save, then renamed
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match=str(path.name)):
        load_arrays(str(path))


def test_good_npz_round_trips(tmp_path):
    path = tmp_path / "pairs.npz"
    np.savez(path, **pairs())
    assert validate_arrays(load_arrays(str(path))) == (4, 16)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("segmentation", 5, "segmentation ids"), ("segmentation", -1, "segmentation ids"), ("depth", np.nan, "NaN")],
)
def test_out_of_range_labels_are_refused_before_training(key, value, message):
    arrays = pairs()
    if value == -1:
        arrays[key] = arrays[key].astype(np.int16)
    arrays[key][1, 2, 3] = value
    with pytest.raises(ValueError, match=message):
        validate_arrays(arrays)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator.safetensors"
    save_generator(path, define_G("tiny"), step=0)
    return path


def test_translate_keeps_every_output_when_names_collide(tmp_path, generator):
    """`a/foo.png`, `a/foo_2.png` and `b/foo.png` give three distinct sets of outputs, none overwritten."""
    for folder, name, value in [("a", "foo", 10), ("a", "foo_2", 120), ("b", "foo", 250)]:
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(tmp_path / folder / f"{name}.png")
    out = tmp_path / "out"
    assert main(["translate", str(tmp_path / "a"), str(tmp_path / "b"), "--generator", str(generator), "--out", str(out)]) == 0
    canon = sorted(p.name for p in out.glob("*_canonical.png"))
    assert len(canon) == 3, canon


def test_translate_reports_a_decompression_bomb_and_goes_on(tmp_path, generator, monkeypatch, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "huge.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2x the limit: PIL refuses it
    out = tmp_path / "out"
    code = main(["translate", str(tmp_path / "huge.png"), str(tmp_path / "small.png"), "--generator", str(generator), "--out", str(out)])
    assert code == 1
    assert "huge.png" in capsys.readouterr().err
    assert (out / "small_canonical.png").is_file()
