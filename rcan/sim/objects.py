"""The graspable-object catalogue and its fixed train/test split.

Two families, both built only from what ``pybullet_data`` ships:

* ``procedural``: the 1,000 random convex-decomposed blobs ``random_urdfs/000..999`` (the kind of
  procedurally generated objects QT-Opt and RCAN train on), loaded at scale 0.7 (median extents about
  8.5 x 6.4 x 2.3 cm; largest extent 6.4-10.6 cm for 90% of them). Test = the 100 whose number ends in 0
  (000, 010, ..., 990); train = the other 900 minus five broken ones (:data:`BROKEN_PROCEDURAL`), i.e. 895.
* ``realistic``: 14 meshes of everyday objects, each scaled so its largest extent is 5-7 cm:

  ======================  ========================================  =====
  name                    source                                    split
  ======================  ========================================  =====
  realistic/duck          duck_vhacd.urdf                           test
  realistic/mug           objects/mug.urdf                          test
  realistic/domino        domino/domino.urdf                        test
  realistic/toy_prism     toys/prism.obj (generated URDF)           test
  realistic/soccerball    soccerball.urdf                           test
  realistic/teddy         teddy_vhacd.urdf                          train
  realistic/lego          lego/lego.urdf                            train
  realistic/jenga         jenga/jenga.urdf                          train
  realistic/cube_small    cube_small.urdf                           train
  realistic/sphere_small  sphere_small.urdf                         train
  realistic/toy_cube      toys/cube.obj (generated URDF)            train
  realistic/toy_cylinder  toys/cylinder.obj (generated URDF)        train
  realistic/bunny         bunny.obj (generated URDF)                train
  realistic/torus         torus/torus_textured.obj (generated URDF) train
  ======================  ========================================  =====

  The split is fixed (about a third held out) so "unseen objects" numbers are comparable across runs.

Meshes without a URDF (``toys/*.obj``, ``bunny.obj``, ``torus``) get a small generated URDF in the cache
(mass 0.1 kg, friction 1.0, centred on the mesh, the obj as visual and collision; the torus collision is
split into 12 convex ring sectors so its hole stays open). :func:`load_object` loads a cached derivative
of each URDF whose visual mesh is the UV-mapped copy from :func:`rcan.sim.meshes.textured_mesh` (so
randomised textures show up) while the collision geometry stays the original file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rcan.sim.meshes import (
    ObjMesh,
    _digest,
    _scale3,
    _source_key,
    atomic_write_text,
    cache_dir,
    pybullet_data_dir,
    read_obj,
    write_obj,
)
from rcan.sim.meshes import textured_mesh as _textured_mesh

if TYPE_CHECKING:
    from pybullet_utils.bullet_client import BulletClient

SPLITS = ("train", "test")
FAMILIES = ("procedural", "realistic", "mixed")
PROCEDURAL_SCALE = 0.7
# Shipped random_urdfs that are not graspable objects (found by scanning all 1000 meshes): 168 has only
# NaN vertices; 295, 297, 602 and 824 are flat specks (largest extent <= 1.2 cm, thinnest <= 1.1 mm).
# None ends in 0, so the test split keeps all 100.
BROKEN_PROCEDURAL = frozenset({168, 295, 297, 602, 824})
# World metres per texture repeat on objects (after scaling).
OBJECT_TEXTURE_PERIOD = 0.05
# TinyRenderer time grows with triangle count, not pixel count: six 6 cm soccer balls (9k triangles each)
# cost 15 ms per 64x64 frame. Visual meshes with more than OBJECT_MAX_FACES polygons are therefore
# simplified with a 4 mm (world) vertex-clustering cell, which is invisible at 64-128 px: soccerball
# 9048 -> 1724 triangles, duck 4212 -> 1263, lego 2463 -> 1121, teddy 2432 -> 1020.
OBJECT_DECIMATE_CELL = 0.004
OBJECT_MAX_FACES = 1500


@dataclass(frozen=True)
class ObjectSpec:
    """One graspable object: where its URDF is and how to scale it for a ~9 cm gripper opening."""

    name: str  # e.g. "procedural/042" or "realistic/duck"
    family: str  # "procedural" | "realistic"
    urdf: Path  # source URDF (in pybullet_data, or generated in the cache for bare meshes)
    scale: float  # globalScaling for loadURDF
    mass: float | None = None  # overrides the URDF mass when the shipped one is unrealistic (kg)


@dataclass(frozen=True)
class _Realistic:
    name: str
    source: str  # URDF, or OBJ (a URDF is generated), relative to pybullet_data
    scale: float
    test: bool
    mass: float | None = None
    rpy: str = "0 0 0"  # rest orientation for generated URDFs


# Scales: 0.06 m / largest extent of the visual mesh x URDF mesh scale, rounded (extents from
# read_obj(...).vertices.ptp(0) * mesh scale): duck 0.083, teddy 0.093, mug 0.122, lego 0.032, jenga 0.150,
# domino 0.051, soccerball 1.00, cube_small 0.050, sphere_small 0.060, toys cube 0.087, cylinder 0.116,
# prism 0.118, bunny 1.98, torus 1.50. The loaded collision AABB adds a few mm of margin.
_REALISTIC: tuple[_Realistic, ...] = (
    _Realistic("duck", "duck_vhacd.urdf", 0.75, True),
    _Realistic("mug", "objects/mug.urdf", 0.5, True, mass=0.15),  # shipped mass is 1 kg
    _Realistic("domino", "domino/domino.urdf", 1.2, True),
    _Realistic("toy_prism", "toys/prism.obj", 0.5, True),
    _Realistic("soccerball", "soccerball.urdf", 0.06, True, mass=0.1),  # shipped mass is 10 kg
    _Realistic("teddy", "teddy_vhacd.urdf", 0.65, False),
    _Realistic("lego", "lego/lego.urdf", 2.0, False),
    _Realistic("jenga", "jenga/jenga.urdf", 0.4, False),
    _Realistic("cube_small", "cube_small.urdf", 1.0, False),
    _Realistic("sphere_small", "sphere_small.urdf", 1.0, False),
    _Realistic("toy_cube", "toys/cube.obj", 0.7, False),
    _Realistic("toy_cylinder", "toys/cylinder.obj", 0.55, False),
    _Realistic("bunny", "bunny.obj", 0.03, False, rpy="1.5708 0 0"),
    _Realistic("torus", "torus/torus_textured.obj", 0.04, False, rpy="1.5708 0 0"),
)


def _check(split: str, family: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def catalogue(split: str, family: str = "mixed") -> list[ObjectSpec]:
    """The objects of ``split`` ("train" | "test") and ``family`` ("procedural" | "realistic" | "mixed")."""
    _check(split, family)
    out: list[ObjectSpec] = []
    if family in ("procedural", "mixed"):
        root = pybullet_data_dir() / "random_urdfs"
        for i in range(1000):
            if (i % 10 == 0) == (split == "test") and i not in BROKEN_PROCEDURAL:
                out.append(ObjectSpec(f"procedural/{i:03d}", "procedural", root / f"{i:03d}" / f"{i:03d}.urdf",
                                      PROCEDURAL_SCALE))
    if family in ("realistic", "mixed"):
        for r in _REALISTIC:
            if r.test == (split == "test"):
                out.append(ObjectSpec(f"realistic/{r.name}", "realistic", _source_urdf(r), r.scale, r.mass))
    return out


def _source_urdf(r: _Realistic) -> Path:
    src = pybullet_data_dir() / r.source
    return src if src.suffix == ".urdf" else _generated_urdf(r.name, src, r.rpy)


def _sector_split(mesh: ObjMesh, n: int = 12) -> ObjMesh:
    """Regroup a ring's faces into ``n`` angular sectors around its thin axis (one convex hull each)."""
    centre = (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    axis = int(np.argmin(np.ptp(mesh.vertices, axis=0)))
    a, b = [k for k in range(3) if k != axis]
    c = mesh.vertices[mesh.faces].mean(axis=1) - centre
    sector = ((np.arctan2(c[:, b], c[:, a]) + np.pi) / (2 * np.pi) * n).astype(int) % n
    order = np.argsort(sector, kind="stable")
    faces, sector = mesh.faces[order], sector[order]
    groups = [(f"sector{k}", int(s), int(e)) for k in range(n)
              for s, e in [(np.searchsorted(sector, k), np.searchsorted(sector, k, side="right"))] if e > s]
    return ObjMesh(mesh.vertices, faces, groups)


def _generated_urdf(name: str, obj: Path, rpy: str) -> Path:
    """A minimal URDF for a bare OBJ: 0.1 kg, friction 1.0, mesh centred on the link origin."""
    key = _digest("generated-urdf", _source_key(obj), rpy)
    out = cache_dir() / "urdf" / "objects" / f"{name}-src-{key}.urdf"
    if out.exists():
        return out
    mesh = read_obj(obj)
    centre = (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    col = obj
    if name == "torus":
        col = out.with_name(f"{name}-collision-{key}.obj")
        write_obj(col, _sector_split(mesh))
    # URDF origins map a mesh point p to R(rpy) p + xyz; put the mesh centre on the link origin.
    roll, pitch, yaw = (float(x) for x in rpy.split())
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rot = np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                    [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                    [-sp, cp * sr, cp * cr]])
    xyz = " ".join(f"{x:.6g}" for x in rot @ -centre)
    text = f"""<?xml version="1.0" ?>
<robot name="{name}">
  <link name="baseLink">
    <contact>
      <lateral_friction value="1.0"/>
      <rolling_friction value="0.0"/>
      <spinning_friction value="0.001"/>
    </contact>
    <inertial>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <mass value="0.1"/>
      <inertia ixx="1" ixy="0" ixz="0" iyy="1" iyz="0" izz="1"/>
    </inertial>
    <visual>
      <origin rpy="{rpy}" xyz="{xyz}"/>
      <geometry>
        <mesh filename="{obj}" scale="1 1 1"/>
      </geometry>
      <material name="white">
        <color rgba="1 1 1 1"/>
      </material>
    </visual>
    <collision>
      <origin rpy="{rpy}" xyz="{xyz}"/>
      <geometry>
        <mesh filename="{col}" scale="1 1 1"/>
      </geometry>
    </collision>
  </link>
</robot>
"""
    atomic_write_text(out, text)
    return out


def _n_faces(obj: Path) -> int:
    with open(obj, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b"f "))


_DERIVED: dict[tuple[ObjectSpec, float, Path], Path] = {}


def textured_urdf(spec: ObjectSpec, texture_period: float = OBJECT_TEXTURE_PERIOD) -> Path:
    """The cached URDF that :func:`load_object` loads: UV'd visual mesh, original collision, absolute paths.

    Inertial and contact blocks are kept (mass replaced by ``spec.mass`` when set); very dense visual
    meshes are simplified (see ``OBJECT_DECIMATE_CELL``). Memoised per process because loading objects is
    the dominant cost of an episode reset.
    """
    memo = (spec, float(texture_period), cache_dir())
    hit = _DERIVED.get(memo)
    if hit is not None and hit.exists():
        return hit
    src = Path(spec.urdf)
    key = _digest("object-urdf", _source_key(src), spec.scale, spec.mass, float(texture_period),
                  OBJECT_DECIMATE_CELL, OBJECT_MAX_FACES)
    out = cache_dir() / "urdf" / "objects" / f"{spec.name.replace('/', '_')}-{key}.urdf"
    if not out.exists():
        tree = ET.parse(src)
        root = tree.getroot()
        for mesh_el in root.iter("mesh"):
            mesh_el.set("filename", str((src.parent / mesh_el.get("filename", "")).resolve()))
        for link in root.iter("link"):
            for mesh_el in link.findall("visual/geometry/mesh"):
                mesh_path = Path(mesh_el.get("filename", ""))
                s = _scale3([float(x) for x in (mesh_el.get("scale") or "1 1 1").split()]) * spec.scale
                cell = OBJECT_DECIMATE_CELL / float(np.abs(s).max()) if _n_faces(mesh_path) > OBJECT_MAX_FACES else None
                mesh_el.set("filename", str(_textured_mesh(mesh_path, s, texture_period, cell)))
            if spec.mass is not None:
                for mass_el in link.findall("inertial/mass"):
                    mass_el.set("value", f"{spec.mass:g}")
        atomic_write_text(out, ET.tostring(root, encoding="unicode"))
    _DERIVED[memo] = out
    return out


def load_object(
    client: BulletClient,
    spec: ObjectSpec,
    position: Sequence[float],
    orientation: Sequence[float],
    texture_period: float = OBJECT_TEXTURE_PERIOD,
) -> int:
    """Load ``spec`` (texturable visual, original collision) at ``position``/``orientation``; returns the body id."""
    urdf = textured_urdf(spec, texture_period)
    return client.loadURDF(str(urdf), list(position), list(orientation), globalScaling=spec.scale)
