"""Tests for rcan.sim.textures: determinism, cache behaviour and input validation of texture sources."""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from rcan.sim.textures import (
    PHOTO_NAMES,
    ImageFolderTextures,
    PhotoTextures,
    ProceduralTextures,
    TextureSource,
    cache_dir,
)


@pytest.fixture(autouse=True)
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RCAN_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def photos() -> PhotoTextures:
    return PhotoTextures()


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _save(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------------------------------------- cache


def test_cache_dir_from_env(cache: pathlib.Path) -> None:
    assert not cache.exists()
    assert cache_dir() == cache
    assert cache.is_dir()


def test_cache_dir_default(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RCAN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "rcan"
    assert (tmp_path / ".cache" / "rcan").is_dir()


# ----------------------------------------------------------------------------------------- procedural


@pytest.mark.parametrize("resolution", [4, 17, 64, 128])
def test_procedural_shape_dtype(resolution: int) -> None:
    tex = ProceduralTextures(size=50, resolution=resolution)
    for i in range(50):
        img = tex.image(i)
        assert img.shape == (resolution, resolution, 3)
        assert img.dtype == np.uint8


def test_procedural_deterministic_across_instances_and_order() -> None:
    a, b = ProceduralTextures(), ProceduralTextures()
    order = [7, 3, 4095, 0, 3]
    first = {i: a.image(i) for i in order}
    second = {i: b.image(i) for i in reversed(order)}
    for i in order:
        np.testing.assert_array_equal(first[i], second[i])
    # The bank size does not change what an index means.
    np.testing.assert_array_equal(ProceduralTextures(size=8).image(3), a.image(3))


def test_procedural_seed_and_resolution_change_the_bank() -> None:
    base = ProceduralTextures(seed=0)
    other = ProceduralTextures(seed=1)
    assert sum(np.array_equal(base.image(i), other.image(i)) for i in range(20)) == 0
    assert base.name == "procedural-s0-r64"
    assert other.name != base.name
    assert ProceduralTextures(resolution=32).name != base.name


def test_procedural_first_5000_distinct_and_not_flat() -> None:
    tex = ProceduralTextures()
    images = [tex.image(i) for i in range(5000)]
    assert len({_digest(img) for img in images}) == 5000
    flat = sum(float(img.std()) < 2.0 for img in images)
    assert flat < 50, f"{flat} of 5000 textures are (nearly) flat"


def test_procedural_negative_index_wraps_and_out_of_range_raises() -> None:
    tex = ProceduralTextures(size=10)
    np.testing.assert_array_equal(tex.image(-1), tex.image(9))
    for bad in (10, -11, 10**9):
        with pytest.raises(IndexError, match="out of range"):
            tex.image(bad)
        with pytest.raises(IndexError):
            tex.path(bad)
    with pytest.raises(TypeError):
        tex.image(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "size must be >= 1"),
        ({"size": -5}, "size must be >= 1"),
        ({"resolution": 3}, "resolution must be >= 4"),
        ({"resolution": 0}, "resolution must be >= 4"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_procedural_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProceduralTextures(**kwargs)


def test_path_writes_png_equal_to_image(cache: pathlib.Path) -> None:
    tex = ProceduralTextures(size=100)
    for i in (0, 42, 99):
        p = tex.path(i)
        assert p.is_file() and p.suffix == ".png"
        assert p.parent == cache / "textures" / tex.name
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), tex.image(i))
    assert not [q for q in p.parent.iterdir() if ".tmp." in q.name]


def test_path_second_call_does_not_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    tex = ProceduralTextures(size=10)
    p = tex.path(3)
    old = time.time_ns() - 10**10
    os.utime(p, ns=(old, old))

    def fail(index: int) -> np.ndarray:
        raise AssertionError("texture regenerated although it is cached")

    monkeypatch.setattr(tex, "_make", fail)
    assert tex.path(3) == p
    assert p.stat().st_mtime_ns == old
    # A fresh instance (another process, say) finds the same file.
    assert ProceduralTextures(size=10).path(3) == p


def test_path_concurrent_writers() -> None:
    tex = ProceduralTextures(size=16)
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(tex.path, [i % 4 for i in range(64)]))
    assert len(set(paths)) == 4
    for p in set(paths):
        with Image.open(p) as im:
            np.testing.assert_array_equal(np.asarray(im), tex.image(int(p.stem)))
    assert sorted(q.name for q in paths[0].parent.iterdir()) == [f"{i:06d}.png" for i in range(4)]


# --------------------------------------------------------------------------------------- image folder


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "my_textures"
    d.mkdir()
    # Wide image: red centre square, blue side bands; the centre crop must keep only red.
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :, 2] = 255
    wide[:, 10:30] = (255, 0, 0)
    _save(d / "a.png", wide)
    _save(d / "B.JPG", np.full((50, 30), 128, np.uint8))  # greyscale, tall
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    _save(d / "c.png", rgba)
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    _save(d / "sub" / "ignored.png", wide)
    return d


def test_folder_happy_path(folder: pathlib.Path, cache: pathlib.Path) -> None:
    tex = ImageFolderTextures(folder, resolution=8)
    assert len(tex) == 3
    assert [p.name for p in tex.files] == ["B.JPG", "a.png", "c.png"]  # sorted by name
    for i in range(len(tex)):
        img = tex.image(i)
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
        with Image.open(tex.path(i)) as im:
            np.testing.assert_array_equal(np.asarray(im), img)
    grey, wide, green = tex.image(0), tex.image(1), tex.image(2)
    assert np.all(np.abs(grey.astype(int) - 128) <= 2)
    assert wide[..., 0].min() >= 250 and wide[..., 2].max() <= 5  # centre crop: red only
    assert np.all(green == (0, 200, 0))
    assert tex.name.startswith("folder-") and tex.name.endswith("-r8")
    assert tex.path(0).parent == cache / "textures" / tex.name


def test_folder_name_depends_on_folder_and_contents(folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    name = ImageFolderTextures(folder).name
    assert ImageFolderTextures(str(folder)).name == name  # str or Path, stable
    other = tmp_path / "other"
    other.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (other / p.name).write_bytes(p.read_bytes())
    assert ImageFolderTextures(other).name != name
    _save(folder / "d.png", np.zeros((4, 4, 3), np.uint8))
    assert ImageFolderTextures(folder).name != name
    assert ImageFolderTextures(folder, resolution=32).name != ImageFolderTextures(folder).name


def test_folder_16_bit_png_keeps_its_levels(tmp_path: pathlib.Path, cache: pathlib.Path) -> None:
    """PIL's convert("RGB") clips 16-bit grey at 255 (a near-white texture); the levels must be scaled."""
    d = tmp_path / "deep"
    d.mkdir()
    Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))).save(d / "ramp.png")
    img = ImageFolderTextures(d, resolution=8).image(0)
    assert img[..., 0].min() < 40 and img[..., 0].max() > 215 and abs(float(img.mean()) - 127.5) < 15


def test_folder_missing_dir(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="does not exist") as info:
        ImageFolderTextures(missing)
    assert str(missing) in str(info.value)


def test_folder_not_a_dir(tmp_path: pathlib.Path) -> None:
    f = _save(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="is not a directory") as info:
        ImageFolderTextures(f)
    assert str(f) in str(info.value)


@pytest.mark.parametrize("content", [[], ["readme.txt"]])
def test_folder_without_images(tmp_path: pathlib.Path, content: list[str]) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    for name in content:
        (d / name).write_text("hello")
    with pytest.raises(ValueError, match="no image files") as info:
        ImageFolderTextures(d)
    assert str(d) in str(info.value)


@pytest.mark.parametrize("payload", [b"", b"this is not a png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_folder_corrupt_file(folder: pathlib.Path, payload: bytes) -> None:
    bad = folder / "broken.png"
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match="cannot decode texture image") as info:
        ImageFolderTextures(folder)
    assert str(bad) in str(info.value)


def test_folder_truncated_jpeg(folder: pathlib.Path) -> None:
    good = folder / "photo.jpg"
    _save(good, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot decode texture image") as info:
        ImageFolderTextures(folder)
    assert "photo.jpg" in str(info.value)


# --------------------------------------------------------------------------------------------- photos


def test_photo_textures(photos: PhotoTextures) -> None:
    assert len(photos.photo_names) >= 10  # these all ship inside the scikit-image wheel
    assert set(photos.photo_names) <= set(PHOTO_NAMES)
    assert len(photos) == len(photos.photo_names) * 16
    images = [photos.image(i) for i in range(len(photos))]
    assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for img in images)
    digests = {_digest(img) for img in images}
    assert len(digests) == len(photos)
    procedural = ProceduralTextures()
    assert digests.isdisjoint(_digest(procedural.image(i)) for i in range(len(photos)))


def test_photo_textures_deterministic_and_configurable(photos: PhotoTextures) -> None:
    again = PhotoTextures()
    assert again.name == photos.name
    for i in (0, 17, len(photos) - 1):
        np.testing.assert_array_equal(again.image(i), photos.image(i))
    small = PhotoTextures(resolution=16, crops_per_photo=2, seed=5)
    assert len(small) == 2 * len(photos.photo_names)
    assert small.image(0).shape == (16, 16, 3)
    assert small.name != photos.name
    # Greyscale photos come out as RGB with equal channels.
    grey = PhotoTextures(crops_per_photo=1)
    img = grey.image(grey.photo_names.index("camera"))
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    with Image.open(photos.path(5)) as im:
        np.testing.assert_array_equal(np.asarray(im), photos.image(5))
    with pytest.raises(IndexError):
        photos.image(len(photos))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"resolution": 2}, "resolution"), ({"crops_per_photo": 0}, "crops_per_photo"), ({"seed": -3}, "seed")],
)
def test_photo_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PhotoTextures(**kwargs)


def test_all_sources_satisfy_protocol(folder: pathlib.Path, photos: PhotoTextures) -> None:
    for source in (ProceduralTextures(size=4), ImageFolderTextures(folder), photos):
        assert isinstance(source, TextureSource)
        assert isinstance(source.name, str) and "/" not in source.name


def test_speed_report() -> None:
    """Not an assertion on speed (machines differ); prints ms per texture for a look with ``-s``."""
    tex = ProceduralTextures()
    start = time.perf_counter()
    for i in range(500):
        tex.image(i)
    print(f"\nprocedural 64x64: {(time.perf_counter() - start) / 500 * 1e3:.3f} ms per texture")
