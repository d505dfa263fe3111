"""Texturable (and lighter) copies of the meshes pybullet_data ships, kept in an on-disk cache.

Why this exists: the simulator renders with PyBullet's TinyRenderer and randomises appearance by putting
arbitrary textures on objects and arm links (``changeVisualShape(..., textureUniqueId=...)``). The shipped
``random_urdfs/NNN/NNN.obj`` and ``kuka_iiwa/meshes/link_*.obj`` have no texture coordinates, so a texture
shows as a single flat colour. We therefore derive copies with box-projected (tri-planar) UVs, and for the
Kuka also simplify the dense link meshes (~15k triangles in total) by vertex clustering, which makes a
64x64 TinyRenderer frame several times cheaper while the arm still reads as the arm at 64-128 px.

Every derived file lives under :func:`cache_dir`, is named by a hash of its source (path, size, mtime) and
of the processing parameters, and is written atomically (temp file in the same directory + ``os.replace``),
so concurrent worker processes can share one cache without locks.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pybullet_data

from rcan.common.atomic import write_text_atomic

# Bump when the processing below changes, so stale cache entries are not reused.
_PROCESS_VERSION = 1

# Vertex-clustering cell (metres) for the Kuka link meshes. Tuned by eye and by TinyRenderer time: 2.5 cm
# keeps 21% of the triangles (14758 -> 3102; 64x64 frame 4.8 -> 1.35 ms) and the arm keeps its silhouette
# and joint housings at 64x64-256x256 (1.5 cm: 44%, 2 cm: 28%; 3 cm starts to look lumpy).
KUKA_DECIMATE_CELL = 0.025

ScaleLike = float | Sequence[float]


def cache_dir() -> Path:
    """Root of the on-disk cache: ``$RCAN_CACHE`` if set, else ``~/.cache/rcan`` (created if missing)."""
    root = Path(os.environ.get("RCAN_CACHE") or Path.home() / ".cache" / "rcan")
    root.mkdir(parents=True, exist_ok=True)
    return root


def pybullet_data_dir() -> Path:
    """Directory of the ``pybullet_data`` package (the source of all meshes and URDFs)."""
    return Path(pybullet_data.getDataPath())


@dataclass
class ObjMesh:
    """A triangle mesh as read from an OBJ: positions, triangles and the ``o``/``g`` parts.

    ``groups`` holds ``(name, face_start, face_end)`` ranges into ``faces``; multi-part meshes (e.g. the
    convex decompositions in ``random_urdfs``) must keep their parts because PyBullet builds one convex hull
    per part.
    """

    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (M, 3) int64, 0-based
    groups: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.groups and len(self.faces):
            self.groups = [("default", 0, len(self.faces))]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers never see a partial file (temp file + ``os.replace``)."""
    write_text_atomic(path, text)


def read_obj(path: str | Path) -> ObjMesh:
    """Read positions, faces (fan-triangulated) and ``o``/``g`` groups of a Wavefront OBJ.

    Normals, texture coordinates, materials and smoothing groups are ignored: we recompute what we need.
    Raises ``ValueError`` naming the file and line on malformed content.
    """
    path = Path(path)
    verts: list[tuple[float, float, float]] = []
    faces: list[tuple[int, int, int]] = []
    groups: list[tuple[str, int, int]] = []
    cur_name = "default"
    cur_start = 0

    def close_group() -> None:
        if len(faces) > cur_start:
            groups.append((cur_name, cur_start, len(faces)))

    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            parts = raw.split()
            if not parts or parts[0].startswith("#"):
                continue
            key = parts[0]
            try:
                if key == "v":
                    if len(parts) < 4:
                        raise ValueError("vertex needs 3 coordinates")
                    verts.append((float(parts[1]), float(parts[2]), float(parts[3])))
                elif key == "f":
                    if len(parts) < 4:
                        raise ValueError("face needs at least 3 vertices")
                    n = len(verts)
                    idx = []
                    for tok in parts[1:]:
                        i = int(tok.split("/", 1)[0])
                        if i < 0:
                            i += n
                        else:
                            i -= 1
                        if not 0 <= i < n:
                            raise ValueError(f"vertex index {tok!r} out of range (have {n} vertices)")
                        idx.append(i)
                    for k in range(1, len(idx) - 1):  # fan triangulation of polygons
                        faces.append((idx[0], idx[k], idx[k + 1]))
                elif key in ("o", "g"):
                    close_group()
                    cur_name = " ".join(parts[1:]) or "default"
                    cur_start = len(faces)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: malformed OBJ line {raw.strip()!r}: {exc}") from None
    close_group()
    if not faces:
        raise ValueError(f"{path}: OBJ has no faces")
    v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(v).all():
        raise ValueError(f"{path}: OBJ has non-finite vertex coordinates")
    return ObjMesh(v, np.asarray(faces, dtype=np.int64).reshape(-1, 3), groups)


def _scale3(scale: ScaleLike) -> np.ndarray:
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,)).copy()
    if not (np.isfinite(s).all() and (s != 0).all()):
        raise ValueError(f"scale must be finite and non-zero, got {scale!r}")
    return s


def box_project_uv(mesh: ObjMesh, scale: ScaleLike = 1.0, texture_period: float = 0.05) -> np.ndarray:
    """Per-face-corner UVs by box (tri-planar) projection, shape ``(M*3, 2)`` float32.

    Each face is projected onto the plane orthogonal to the dominant axis of its normal, so any shape gets a
    texture with little stretching and the same density everywhere. ``scale`` is the (possibly per-axis)
    mesh scale the file will be loaded with and ``texture_period`` is in world metres after that scale: one
    texture repeat spans ``texture_period`` on the rendered object.
    """
    if texture_period <= 0:
        raise ValueError(f"texture_period must be > 0, got {texture_period}")
    v = mesh.vertices * _scale3(scale)
    tri = v[mesh.faces]  # (M, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    axis = np.argmax(np.abs(normal), axis=1)  # (M,)
    # The two in-plane coordinates for a dominant axis 0 (x) -> (y, z), 1 (y) -> (x, z), 2 (z) -> (x, y).
    plane = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # (M, 2)
    uv = np.take_along_axis(tri, np.repeat(plane[:, None, :], 3, axis=1), axis=2)  # (M, 3, 2)
    return (uv / texture_period).reshape(-1, 2).astype(np.float32)


def _cluster_positions(pts: np.ndarray, faces: np.ndarray, cluster: np.ndarray, n_c: int) -> np.ndarray:
    """Representative point per cluster that best keeps the surrounding face planes (quadric error).

    Plain averaging rounds off edges and shrinks thin parts; minimising the summed squared distance to the
    planes of the faces touching the cluster (Lindstrom 2000) keeps corners and flat sides. A small pull
    towards the mean regularises flat/degenerate clusters, and the result is clipped to the cluster's own
    bounding box so a vertex never leaves its cell.
    """
    counts = np.bincount(cluster, minlength=n_c).astype(np.float64)
    mean = np.stack([np.bincount(cluster, weights=pts[:, k], minlength=n_c) for k in range(3)], 1) / counts[:, None]
    tri = pts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    ok = area2 > 0
    n = np.zeros_like(cross)
    n[ok] = cross[ok] / area2[ok, None]
    d = -np.einsum("ij,ij->i", n, tri[:, 0])
    qa = area2[:, None, None] * n[:, :, None] * n[:, None, :]  # (F, 3, 3)
    qb = (area2 * d)[:, None] * n  # (F, 3)
    a = np.zeros((n_c, 3, 3))
    b = np.zeros((n_c, 3))
    for k in range(3):  # every face constrains the clusters of its three corners
        np.add.at(a, cluster[faces[:, k]], qa)
        np.add.at(b, cluster[faces[:, k]], qb)
    lam = 1e-3 * np.trace(a, axis1=1, axis2=2)[:, None] / 3 + 1e-12
    x = np.linalg.solve(a + lam[:, :, None] * np.eye(3), (lam * mean - b)[:, :, None])[:, :, 0]
    lo = np.full((n_c, 3), np.inf)
    hi = np.full((n_c, 3), -np.inf)
    np.minimum.at(lo, cluster, pts)
    np.maximum.at(hi, cluster, pts)
    return np.clip(x, lo, hi)


def decimate(mesh: ObjMesh, cell: float) -> ObjMesh:
    """Vertex-clustering simplification: snap vertices to a ``cell``-sized grid and merge each cell.

    Each merged vertex goes where it best keeps the nearby face planes (see :func:`_cluster_positions`),
    faces that collapse or duplicate another are dropped, and faces keep their facing. Parts
    (groups) are simplified separately so they stay separate. Cheap and robust; good enough for meshes that
    are only ever seen at 64-128 px.
    """
    if not cell > 0:
        raise ValueError(f"cell must be > 0, got {cell}")
    origin = mesh.vertices.min(axis=0)
    out_v: list[np.ndarray] = []
    out_f: list[np.ndarray] = []
    out_g: list[tuple[str, int, int]] = []
    n_v = n_f = 0
    for name, start, end in mesh.groups:
        faces = mesh.faces[start:end]
        used, local = np.unique(faces, return_inverse=True)
        local = local.reshape(-1, 3)
        keys = np.floor((mesh.vertices[used] - origin) / cell).astype(np.int64)
        _, cluster = np.unique(keys, axis=0, return_inverse=True)
        cluster = cluster.reshape(-1)
        pts = mesh.vertices[used]
        centres = _cluster_positions(pts, local, cluster, int(cluster.max()) + 1)
        f = cluster[local]
        keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
        f, orig = f[keep], local[keep]
        if len(f):
            # TinyRenderer culls back faces, so a face that clustering turned over would leave a hole:
            # give it back the winding of the face it came from.
            n_old = np.cross(pts[orig[:, 1]] - pts[orig[:, 0]], pts[orig[:, 2]] - pts[orig[:, 0]])
            t = centres[f]
            n_new = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
            flip = np.einsum("ij,ij->i", n_old, n_new) < 0
            f[flip] = f[flip][:, ::-1]
            # Drop duplicates with the same winding (rotate each triangle to start at its smallest index).
            r = np.argmin(f, axis=1)
            canon = np.take_along_axis(f, (r[:, None] + np.arange(3)) % 3, axis=1)
            _, first = np.unique(canon, axis=0, return_index=True)
            f = f[np.sort(first)]
        if not len(f):
            continue
        # Drop clusters no surviving face uses.
        alive, f = np.unique(f, return_inverse=True)
        f = f.reshape(-1, 3)
        out_v.append(centres[alive])
        out_f.append(f + n_v)
        out_g.append((name, n_f, n_f + len(f)))
        n_v += len(alive)
        n_f += len(f)
    if not out_f:
        raise ValueError(f"decimate: cell {cell} collapses the whole mesh")
    return ObjMesh(np.concatenate(out_v), np.concatenate(out_f).astype(np.int64), out_g)


def write_obj(path: str | Path, mesh: ObjMesh, uv: np.ndarray | None = None) -> None:
    """Write ``mesh`` as OBJ (``v``, ``vt``, ``f v/vt`` and one ``o`` per group), atomically.

    ``uv`` is per face corner, ``(M*3, 2)``, as returned by :func:`box_project_uv`. No normals are written:
    PyBullet then uses flat face normals, which is what a decimated mesh should look like anyway.
    """
    m = len(mesh.faces)
    lines = ["# written by rcan.sim.meshes"]
    lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in mesh.vertices.tolist()]
    f1 = mesh.faces + 1
    if uv is not None:
        uv = np.asarray(uv)
        if uv.shape != (m * 3, 2):
            raise ValueError(f"uv must have shape ({m * 3}, 2), got {uv.shape}")
        lines += [f"vt {u:.6g} {w:.6g}" for u, w in uv.tolist()]
        t1 = np.arange(1, m * 3 + 1).reshape(m, 3)
        face_lines = [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f1.tolist(), t1.tolist(), strict=True)]
    else:
        face_lines = [f"f {a} {b} {c}" for a, b, c in f1.tolist()]
    for name, start, end in mesh.groups:
        lines.append(f"o {name}")
        lines += face_lines[start:end]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _source_key(src: Path) -> str:
    st = src.stat()
    return f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr((_PROCESS_VERSION, *parts)).encode()).hexdigest()[:16]


def textured_mesh(
    src: str | Path,
    scale: ScaleLike = 1.0,
    texture_period: float = 0.05,
    decimate_cell: float | None = None,
) -> Path:
    """Path of the cached UV'd (and optionally decimated) copy of the OBJ ``src``, created on first use.

    ``scale`` is the scale the mesh will be rendered at (URDF mesh scale times ``globalScaling``), so that
    ``texture_period`` is in world metres; ``decimate_cell`` is in the OBJ's own units.
    """
    src = Path(src)
    s = tuple(float(x) for x in _scale3(scale))
    key = _digest(_source_key(src), s, float(texture_period), decimate_cell)
    out = cache_dir() / "meshes" / f"{src.stem}-{key}.obj"
    if out.exists():
        return out
    mesh = read_obj(src)
    if decimate_cell:
        mesh = decimate(mesh, decimate_cell)
    write_obj(out, mesh, box_project_uv(mesh, s, texture_period))
    return out


def _mesh_scale(mesh_el: ET.Element) -> np.ndarray:
    return np.array([float(x) for x in (mesh_el.get("scale") or "1 1 1").split()], dtype=np.float64)


def kuka_visual_urdf(decimate_cell: float | None = KUKA_DECIMATE_CELL, texture_period: float = 0.05) -> Path:
    """A visual-only Kuka iiwa URDF in the cache: textured (and decimated) link meshes, no collision shapes.

    Our simulator uses the arm only for looks (a separate floating gripper does the physics), so collision
    elements are dropped; inertials and joints are kept, so it loads with ``useFixedBase=True`` and has the
    7 revolute joints of ``kuka_iiwa/model.urdf``.
    """
    src = pybullet_data_dir() / "kuka_iiwa" / "model.urdf"
    key = _digest(_source_key(src), decimate_cell, float(texture_period))
    out = cache_dir() / "urdf" / f"kuka_iiwa_visual-{key}.urdf"
    if out.exists():
        return out
    tree = ET.parse(src)
    for link in tree.getroot().iter("link"):
        for col in link.findall("collision"):
            link.remove(col)
        for mesh_el in link.findall("visual/geometry/mesh"):
            mesh_src = (src.parent / mesh_el.get("filename", "")).resolve()
            mesh_el.set(
                "filename", str(textured_mesh(mesh_src, _mesh_scale(mesh_el), texture_period, decimate_cell))
            )
    atomic_write_text(out, ET.tostring(tree.getroot(), encoding="unicode"))
    return out
