from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pybullet
import pytest
from pybullet_utils.bullet_client import BulletClient

from rcan.sim import meshes
from rcan.sim.meshes import ObjMesh, box_project_uv, decimate, read_obj, textured_mesh, write_obj


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("rcan_cache")
        mp.setenv("RCAN_CACHE", str(root))
        yield root


OBJ_TEXT = """# test mesh
mtllib x.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vn 0 0 1
o quad
usemtl m
s off
f 1/1/1 2/2/1 3/3/1 4/4/1

g tri_neg
v 0 0 1
v 1 0 1
v 0 1 1
f -3//1 -2//1 -1//1
f 5/1 6/2 7/3
o
g penta
v 2 0 0
v 3 0 0
v 3 1 0
v 2.5 1.5 0
v 2 1 0
f 8 9 10 11 12
"""


def _sphere(n_lat: int = 40, n_lon: int = 60, r: float = 0.1) -> ObjMesh:
    th = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3) * r
    v = np.vstack([v, [[0, 0, r], [0, 0, -r]]])
    top, bot = len(v) - 2, len(v) - 1
    f = []
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            f += [(a, c, b), (b, c, d)]
    for j in range(n_lon):
        f.append((top, j, (j + 1) % n_lon))
        k = (n_lat - 2) * n_lon
        f.append((bot, k + (j + 1) % n_lon, k + j))
    faces = np.array(f, dtype=np.int64)
    half = len(faces) // 2
    return ObjMesh(v, faces, [("a", 0, half), ("b", half, len(faces))])


def test_read_obj_forms(tmp_path: Path) -> None:
    p = tmp_path / "m.obj"
    p.write_text(OBJ_TEXT)
    m = read_obj(p)
    assert m.vertices.shape == (12, 3) and m.vertices.dtype == np.float64
    assert m.faces.dtype == np.int64
    # quad -> 2, two triangles, pentagon -> 3
    assert len(m.faces) == 7
    assert [g[0] for g in m.groups] == ["quad", "tri_neg", "penta"]
    assert [(g[1], g[2]) for g in m.groups] == [(0, 2), (2, 4), (4, 7)]
    np.testing.assert_array_equal(m.faces[:2], [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(m.faces[2], [4, 5, 6])  # negative indices are relative to the count so far
    np.testing.assert_array_equal(m.faces[3], [4, 5, 6])
    np.testing.assert_array_equal(m.faces[4:], [[7, 8, 9], [7, 9, 10], [7, 10, 11]])


@pytest.mark.parametrize(
    "text",
    ["v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "v 0 0\nf 1 1 1\n", "v 0 0 x\n", "v 0 0 0\nv 1 0 0\nf 1 2\n",
     "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 a 3\n", "v 0 0 0\n", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n"],
)
def test_read_obj_malformed(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad_mesh.obj"
    p.write_text(text)
    with pytest.raises(ValueError, match="bad_mesh.obj"):
        read_obj(p)


def test_box_project_uv() -> None:
    m = _sphere()
    uv = box_project_uv(m)
    assert uv.shape == (len(m.faces) * 3, 2) and uv.dtype == np.float32
    assert np.isfinite(uv).all()
    # A 0.2 m sphere spans at most 4 repeats of a 5 cm period (faces facing an axis project to within
    # r*sqrt(2)/2 of it, so about 2.8); the period is in world units after scaling.
    assert 2.5 < np.ptp(uv[:, 0]) <= 4.01 and 2.5 < np.ptp(uv[:, 1]) <= 4.01
    uv2 = box_project_uv(m, scale=2.0, texture_period=0.05)
    np.testing.assert_allclose(uv2, 2 * uv, rtol=1e-5, atol=1e-6)
    uv3 = box_project_uv(m, scale=(1.0, 1.0, 1.0), texture_period=0.1)
    np.testing.assert_allclose(uv3, uv / 2, rtol=1e-5, atol=1e-6)
    # Each face corner of a flat quad in the z=0 plane gets its (x, y).
    flat = ObjMesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], float), np.array([[0, 1, 2]]))
    np.testing.assert_allclose(box_project_uv(flat, texture_period=1.0), [[0, 0], [1, 0], [1, 1]])


def test_decimate_sphere() -> None:
    m = _sphere()
    cell = 0.02
    d = decimate(m, cell)
    assert len(d.faces) < 0.5 * len(m.faces)
    assert [g[0] for g in d.groups] == ["a", "b"]
    assert d.groups[-1][2] == len(d.faces) and d.faces.max() < len(d.vertices)
    lo, hi = m.vertices.min(0), m.vertices.max(0)
    assert (d.vertices.min(0) >= lo - 1e-12).all() and (d.vertices.max(0) <= hi + 1e-12).all()
    assert (d.vertices.min(0) <= lo + cell).all() and (d.vertices.max(0) >= hi - cell).all()
    # No degenerate triangles, no duplicates.
    f = d.faces
    assert ((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])).all()
    assert len(np.unique(np.sort(f, axis=1), axis=0)) >= len(f) - 2
    # Faces still point outwards (back faces are culled by TinyRenderer).
    t = d.vertices[f]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert (np.einsum("ij,ij->i", n, t.mean(1)) > 0).mean() > 0.97


def test_decimate_kuka_link() -> None:
    src = meshes.pybullet_data_dir() / "kuka_iiwa" / "meshes" / "link_1.obj"
    m = read_obj(src)
    d = decimate(m, meshes.KUKA_DECIMATE_CELL)
    assert 0.1 * len(m.faces) < len(d.faces) < 0.35 * len(m.faces)
    np.testing.assert_allclose(d.vertices.min(0), m.vertices.min(0), atol=meshes.KUKA_DECIMATE_CELL)
    np.testing.assert_allclose(d.vertices.max(0), m.vertices.max(0), atol=meshes.KUKA_DECIMATE_CELL)


def test_write_read_round_trip(tmp_path: Path) -> None:
    m = _sphere(10, 12)
    uv = box_project_uv(m)
    p = tmp_path / "sub" / "out.obj"
    write_obj(p, m, uv)
    text = p.read_text()
    assert text.count("\nvt ") == len(m.faces) * 3
    assert "/" in text.split("\nf ", 1)[1].split()[0]
    assert not [q for q in p.parent.iterdir() if q.name != "out.obj"]  # no temp files left behind
    r = read_obj(p)
    np.testing.assert_allclose(r.vertices, m.vertices, atol=1e-7)
    np.testing.assert_array_equal(r.faces, m.faces)
    assert r.groups == m.groups
    with pytest.raises(ValueError):
        write_obj(p, m, uv[:-1])


def test_cache_dir_env(cache: Path) -> None:
    assert meshes.cache_dir() == cache and cache.is_dir()


def test_textured_mesh_caching(cache: Path) -> None:
    src = meshes.pybullet_data_dir() / "random_urdfs" / "007" / "007.obj"
    a = textured_mesh(src, scale=0.015, texture_period=0.05)
    assert a.is_file() and cache in a.parents
    mtime = a.stat().st_mtime_ns
    b = textured_mesh(src, scale=0.015, texture_period=0.05)
    assert b == a and a.stat().st_mtime_ns == mtime
    m, orig = read_obj(a), read_obj(src)
    assert len(m.faces) == len(orig.faces) and len(m.groups) == len(orig.groups) > 1
    assert a.read_text().count("\nvt ") == 3 * len(m.faces)
    assert textured_mesh(src, scale=0.015, texture_period=0.1) != a
    assert textured_mesh(src, scale=0.015, decimate_cell=1.0) != a


def _mesh_faces(urdf: Path) -> int:
    return sum(len(read_obj(m.get("filename")).faces) for m in ET.parse(urdf).getroot().iter("mesh"))


def test_kuka_visual_urdf(cache: Path) -> None:
    path = meshes.kuka_visual_urdf()
    assert path == meshes.kuka_visual_urdf()
    assert cache in path.parents
    root = ET.parse(path).getroot()
    assert not root.findall(".//collision")
    assert len(root.findall(".//inertial")) == 8
    orig = meshes.pybullet_data_dir() / "kuka_iiwa" / "model.urdf"
    n_orig = sum(len(read_obj(orig.parent / m.get("filename")).faces) for m in ET.parse(orig).getroot().iter("mesh")
                 if m.get("filename").endswith(".obj"))
    assert 0.15 * n_orig < _mesh_faces(path) < 0.3 * n_orig

    client = BulletClient(pybullet.DIRECT)
    try:
        body = client.loadURDF(str(path), useFixedBase=True)
        n = client.getNumJoints(body)
        assert n == 7
        assert all(client.getJointInfo(body, j)[2] == pybullet.JOINT_REVOLUTE for j in range(n))
        for link in range(-1, n):
            assert client.getCollisionShapeData(body, link) == ()
        vis = client.getVisualShapeData(body)
        assert len(vis) == 8
        for v in vis:
            fname = Path(v[4].decode())
            assert cache in fname.parents and fname.is_file()
            assert "\nvt " in fname.read_text()
        # It renders (the arm is in view).
        view = client.computeViewMatrix([1.2, 0, 1.0], [0, 0, 0.4], [0, 0, 1])
        proj = client.computeProjectionMatrixFOV(60, 1, 0.01, 10)
        seg = np.reshape(client.getCameraImage(64, 64, view, proj, renderer=pybullet.ER_TINY_RENDERER)[4], (64, 64))
        assert (seg == body).sum() > 50
    finally:
        client.disconnect()


def test_atomic_write_no_partial(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    meshes.atomic_write_text(p, "a")
    meshes.atomic_write_text(p, "bb")
    assert p.read_text() == "bb"
    assert os.listdir(tmp_path) == ["x.txt"]
