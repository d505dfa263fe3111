from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pybullet
import pytest
from PIL import Image
from pybullet_utils.bullet_client import BulletClient

from rcan.sim import meshes, objects
from rcan.sim.objects import ObjectSpec, catalogue, load_object


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("rcan_cache")
        mp.setenv("RCAN_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def client(cache: Path):
    c = BulletClient(pybullet.DIRECT)
    yield c
    c.disconnect()


def test_catalogue_split() -> None:
    ptrain, ptest = catalogue("train", "procedural"), catalogue("test", "procedural")
    assert len(ptrain) == 900 - len(objects.BROKEN_PROCEDURAL) and len(ptest) == 100
    assert not {f"procedural/{i:03d}" for i in objects.BROKEN_PROCEDURAL} & {s.name for s in ptrain}
    assert all(s.name.endswith("0") for s in ptest) and not any(s.name.endswith("0") for s in ptrain)
    assert all(s.family == "procedural" and s.scale == 0.7 and s.urdf.is_file() for s in ptrain + ptest)
    rtrain, rtest = catalogue("train", "realistic"), catalogue("test", "realistic")
    assert {s.name for s in rtest} == {f"realistic/{n}" for n in ("duck", "mug", "domino", "toy_prism", "soccerball")}
    assert len(rtrain) >= 9
    for split in ("train", "test"):
        mixed = catalogue(split)
        assert {s.name for s in mixed} == {s.name for s in catalogue(split, "procedural") + catalogue(split, "realistic")}
    names = lambda specs: {s.name for s in specs}  # noqa: E731
    assert not names(catalogue("train")) & names(catalogue("test"))
    assert len(names(catalogue("train"))) == len(catalogue("train"))


@pytest.mark.parametrize("split,family", [("val", "mixed"), ("train", "toys")])
def test_catalogue_bad_args(split: str, family: str) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        catalogue(split, family)


def _max_extent(client, body: int) -> float:
    lo, hi = client.getAABB(body)
    return float(np.max(np.subtract(hi, lo)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_realistic_objects_load_and_size(client, cache: Path, split: str) -> None:
    for spec in catalogue(split, "realistic"):
        body = load_object(client, spec, [0, 0, 0.2], [0, 0, 0, 1])
        try:
            ext = _max_extent(client, body)
            assert 0.04 <= ext <= 0.08, (spec.name, ext)
            assert 0 < client.getDynamicsInfo(body, -1)[0] <= 0.2, spec.name
            assert client.getCollisionShapeData(body, -1), spec.name
            for v in client.getVisualShapeData(body):
                if v[2] == pybullet.GEOM_MESH:
                    fname = Path(v[4].decode())
                    assert cache in fname.parents and "\nvt " in fname.read_text(), spec.name
        finally:
            client.removeBody(body)


def test_procedural_sample_loads(client, cache: Path) -> None:
    specs = catalogue("train", "procedural")[::97] + catalogue("test", "procedural")[::33]
    for spec in specs:
        body = load_object(client, spec, [0, 0, 0.2], [0, 0, 0, 1])
        ext = _max_extent(client, body)
        client.removeBody(body)
        assert 0.03 <= ext <= 0.16, (spec.name, ext)


def test_derived_urdf_keeps_collision_and_is_cached(cache: Path) -> None:
    spec = catalogue("test", "realistic")[0]  # duck: visual duck.obj, collision duck_vhacd.obj
    path = objects.textured_urdf(spec)
    assert cache in path.parents and path == objects.textured_urdf(spec)
    root = ET.parse(path).getroot()
    vis = root.find(".//visual/geometry/mesh").get("filename")
    col = root.find(".//collision/geometry/mesh").get("filename")
    assert cache in Path(vis).parents
    assert Path(col) == (meshes.pybullet_data_dir() / "duck_vhacd.obj").resolve()
    assert root.find(".//contact/lateral_friction") is not None
    assert root.find(".//inertial/mass") is not None


def _textured_render(client, urdf_or_spec, tex: int) -> np.ndarray:
    if isinstance(urdf_or_spec, ObjectSpec):
        body = load_object(client, urdf_or_spec, [0, 0, 0], [0, 0, 0, 1])
    else:
        body = client.loadURDF(str(urdf_or_spec), [0, 0, 0], [0, 0, 0, 1], globalScaling=0.7)
    try:
        client.changeVisualShape(body, -1, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1])
        view = client.computeViewMatrix([0.09, -0.07, 0.1], [0, 0, 0], [0, 0, 1])
        proj = client.computeProjectionMatrixFOV(60, 1, 0.01, 2)
        img = client.getCameraImage(64, 64, view, proj, renderer=pybullet.ER_TINY_RENDERER)
        rgb = np.reshape(img[2], (64, 64, 4))[:, :, :3].astype(np.int64)
        seg = np.reshape(img[4], (64, 64))
        pix = rgb[seg == body]
        assert len(pix) > 200
        return pix
    finally:
        client.removeBody(body)


def test_texture_shows_through_uvs(client, cache: Path, tmp_path: Path) -> None:
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, :, 0] = 255
    for k in range(0, 64, 16):
        stripes[:, k : k + 8] = (0, 255, 0)
    png = tmp_path / "stripes.png"
    Image.fromarray(stripes).save(png)
    tex = client.loadTexture(str(png))
    spec = catalogue("train", "procedural")[0]

    def hues(pix: np.ndarray) -> tuple[float, float]:
        return float((pix[:, 0] > pix[:, 1]).mean()), float((pix[:, 1] > pix[:, 0]).mean())

    pix = _textured_render(client, spec, tex)
    red, green = hues(pix)
    assert red > 0.25 and green > 0.25, (red, green)
    assert len(np.unique(pix, axis=0)) > 8
    # Control: the shipped mesh has no UVs, so the same texture comes out as one flat colour.
    red0, green0 = hues(_textured_render(client, spec.urdf, tex))
    assert min(red0, green0) < 0.15, (red0, green0)
