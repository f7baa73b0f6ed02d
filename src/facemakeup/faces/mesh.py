"""3D fit of one face: dense mesh, head pose and SH lighting (Face-MakeUpV2's physical channel).

Face-MakeUpV2 fits DECA (FLAME) to the reference and renders its shape under its own SH light as
the ShadingNet's input. DECA needs a registration and does not install offline, so the default
here is mediapipe's 468-point face-landmark network (Apache-2.0, Kartynnik et al. 2019, "Real-time
Facial Surface Geometry from Monocular Video"), behind the small ``FaceFitter`` interface that a
DECA (or 3DDFA_V2) fitter can implement to replace it.

Conventions (every ``FaceFit``):

* vertices: ``x, y`` in pixels of the photo (x right, y down) and ``depth`` in the same pixel
  units, growing toward the viewer (relative: 0 near the centre of the head);
* normals, pose axes and SH lighting in the camera frame **x right, y up, z toward the viewer**;
* pose: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` maps the face's own axes (x from the subject's
  right to left eye, y from chin to forehead, z out of the face) to the camera frame. Radians.
  Positive yaw turns the face toward the image's right (the subject's left); positive pitch tilts it
  down; positive roll turns it counter-clockwise as seen in the image. A frontal, upright face is
  (0, 0, 0). Mirroring the photo negates yaw and roll and keeps pitch;
* lighting: 9x3 SH (``lighting.SH_BASIS``), least squares over the visible skin pixels (lips,
  eyes and brows excluded), constant albedo 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import FitError
from .lighting import estimate_sh
from .render import interpolate, raster_pixels


@dataclass(frozen=True, eq=False)
class FaceFit:
    """A fitted 3D face (see the module docstring for the conventions).

    Attributes:
        vertices: ``(N, 3)`` float32 ``[x, y, depth]`` pixels of the photo.
        triangles: ``(M, 3)`` int32 vertex indices, wound counter-clockwise seen from outside.
        normals: ``(N, 3)`` float32 unit vertex normals, camera frame.
        rotation: ``(3, 3)`` float64 face-to-camera rotation.
        pose: ``{"yaw", "pitch", "roll"}`` radians.
        sh: ``(9, 3)`` float64 SH lighting.
        visible: ``(N,)`` bool, vertices of triangles seen by the camera (z-buffer) inside the photo.
        skin: ``(N,)`` bool, skin vertices; the lighting is fit on triangles made of skin vertices only.
        fitter: name of the model that produced it.

    A fit read back by ``from_json`` from JSON written without the mesh has ``vertices``,
    ``triangles``, ``normals``, ``visible`` and ``skin`` set to ``None`` (pose, rotation and
    lighting only; ``render.shading_map`` then raises ``ValueError``).
    """

    vertices: np.ndarray | None = field(repr=False)
    triangles: np.ndarray | None = field(repr=False)
    normals: np.ndarray | None = field(repr=False)
    rotation: np.ndarray = field(repr=False)
    pose: dict
    sh: np.ndarray = field(repr=False)
    visible: np.ndarray | None = field(repr=False)
    skin: np.ndarray | None = field(repr=False)
    fitter: str

    @property
    def has_mesh(self) -> bool:
        """Whether the mesh (vertices, triangles, normals, visibility, skin) is present."""
        return self.vertices is not None

    def to_json(self, mesh: bool = False) -> dict:
        """JSON-ready dict: ``fitter``, ``pose`` (radians), ``rotation`` (3x3), ``sh`` (9x3, rows in
        ``lighting.SH_BASIS`` order), ``sh_basis``; with ``mesh=True`` also ``mesh`` (vertices,
        triangles, normals, visible, skin as nested lists). Floats are written exactly (float32
        values survive the round trip bit for bit)."""
        from .lighting import SH_BASIS

        out = {"fitter": self.fitter, "pose": dict(self.pose), "rotation": np.asarray(self.rotation).tolist(),
               "sh": np.asarray(self.sh).tolist(), "sh_basis": list(SH_BASIS)}
        if mesh and self.has_mesh:
            out["mesh"] = {"vertices": self.vertices.tolist(), "triangles": self.triangles.tolist(),
                           "normals": self.normals.tolist(), "visible": self.visible.tolist(), "skin": self.skin.tolist()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "FaceFit":
        """The inverse of ``to_json``.

        Raises:
            ValueError: ``sh_basis`` differs from ``lighting.SH_BASIS`` (coefficients in another order).
        """
        from .lighting import SH_BASIS

        if tuple(data.get("sh_basis", SH_BASIS)) != SH_BASIS:
            raise ValueError(f"SH coefficients in the order {data['sh_basis']}, expected {list(SH_BASIS)}")
        m = data.get("mesh")
        arr = (lambda key, dtype: np.asarray(m[key], dtype=dtype)) if m else (lambda key, dtype: None)
        return cls(vertices=arr("vertices", np.float32), triangles=arr("triangles", np.int32), normals=arr("normals", np.float32),
                   rotation=np.asarray(data["rotation"], np.float64), pose={k: float(v) for k, v in data["pose"].items()},
                   sh=np.asarray(data["sh"], np.float64), visible=arr("visible", bool), skin=arr("skin", bool),
                   fitter=data["fitter"])


class FaceFitter(Protocol):
    """What a 3D face model must offer to drive the physical channel (mediapipe here; DECA, 3DDFA_V2...).

    ``fit(image, bbox, kps)`` takes the ``(H, W, 3)`` uint8 RGB photo, one face's ``[x0, y0, x1, y1]``
    box and its ``(5, 2)`` keypoints, and returns a ``FaceFit`` in the conventions of this module
    (``fit_from_vertices`` finishes one from vertices and a rotation), or raises ``FitError``.
    """

    name: str

    def fit(self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray | None = None) -> FaceFit: ...


# ---------------------------------------------------------------------------- geometry helpers
def rotation_to_euler(rotation: np.ndarray) -> dict:
    """``{"yaw", "pitch", "roll"}`` (radians) of ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``; yaw in [-pi/2, pi/2]."""
    r = np.asarray(rotation, dtype=np.float64)
    return {
        "yaw": float(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))),
        "pitch": float(np.arctan2(r[2, 1], r[2, 2])),
        "roll": float(np.arctan2(r[1, 0], r[0, 0])),
    }


def euler_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(yaw) @ Rx(pitch)``, the inverse of ``rotation_to_euler``."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rz @ ry @ rx


def vertex_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of a mesh whose triangles wind counter-clockwise from outside.

    Args:
        points: ``(N, 3)`` camera-frame positions. triangles: ``(M, 3)``.

    Returns:
        ``(N, 3)`` float64 unit normals (zero for unused vertices).
    """
    a, b, c = (points[triangles[:, i]] for i in range(3))
    face_n = np.cross(b - a, c - a)  # length = 2 * area
    corners = np.asarray(triangles).reshape(-1)  # each triangle's normal goes to its three vertices
    normals = np.stack([np.bincount(corners, np.repeat(face_n[:, c], 3), minlength=len(points)) for c in range(3)], axis=1)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def orient_outward(points: np.ndarray, triangles: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Triangles re-wound so each normal points away from ``centre`` (a point inside the head)."""
    a, b, c = (points[triangles[:, i]] for i in range(3))
    n = np.cross(b - a, c - a)
    flip = np.einsum("ij,ij->i", n, (a + b + c) / 3 - centre) < 0
    out = triangles.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


# ---------------------------------------------------------------------------- mediapipe
#: Symmetric landmark pairs (subject's right, subject's left) of mediapipe's 468-point mesh:
#: outer and inner eye corners, mouth corners, cheeks at the face oval.
_PAIRS = ((33, 263), (133, 362), (61, 291), (234, 454))
#: Forehead top and chin of the face oval.
_FOREHEAD, _CHIN = 10, 152


@functools.cache
def mediapipe_topology() -> tuple[np.ndarray, np.ndarray]:
    """Triangles and skin mask of mediapipe's face mesh.

    Triangles are the 3-cliques of mediapipe's ``FACEMESH_TESSELATION`` edge set (854 for its
    1,322 edges over 468 vertices; winding is fixed per fit). Skin excludes the vertices of the
    lips, eyes and eyebrows contours.

    Returns:
        ``(triangles (M, 3) int32, skin (468,) bool)``.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc

    edges = {tuple(sorted(e)) for e in fmc.FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    tris = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]})
    skin = np.ones(468, dtype=bool)
    for group in (fmc.FACEMESH_LIPS, fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE, fmc.FACEMESH_LEFT_EYEBROW, fmc.FACEMESH_RIGHT_EYEBROW):
        for a, b in group:
            skin[a] = skin[b] = False
    return np.array(tris, dtype=np.int32), skin


class MediaPipeFitter:
    """``FaceFitter`` on mediapipe's face-landmark network (468 landmarks with depth, Apache-2.0).

    mediapipe's own face-mesh graph first runs its short-range face detector, which misses profile
    and partly covered faces. Here the landmark network (``face_landmark.tflite`` shipped in the
    mediapipe wheel, run with LiteRT) reads the region of interest our detection gives, built as
    mediapipe builds it from its detector: the detection box's centre, side ``roi_scale`` x the
    box's larger side, rotated so the eyes are level, resampled to 192 x 192, RGB in [0, 1]. Its
    landmarks (crop pixels; z in the same units, smaller = closer) are mapped back to the photo.
    A second pass re-reads the face in the region the first pass's landmarks give (their box, eyes
    level by landmarks 33 and 263), as mediapipe's tracking does between video frames; it cuts the
    pose's disagreement between a photo and its mirror image (1.4 -> 1.0 degrees median yaw).

    Args:
        roi_scale: region side / larger side of the detection box (mediapipe: 1.5).
        min_presence: minimum face-presence probability of the landmark network.
        refine: extra passes from the previous pass's landmarks.
        threads: LiteRT threads.
    """

    name = "mediapipe-face-landmark-468"
    input_size = 192

    def __init__(self, roi_scale: float = 1.5, min_presence: float = 0.5, refine: int = 1, threads: int = 2):
        import os

        import mediapipe
        from ai_edge_litert.interpreter import Interpreter

        path = os.path.join(os.path.dirname(mediapipe.__file__), "modules", "face_landmark", "face_landmark.tflite")
        self._net = Interpreter(model_path=path, num_threads=threads)
        self._net.allocate_tensors()
        self._input = self._net.get_input_details()[0]["index"]
        outputs = self._net.get_output_details()
        self._landmarks = next(o["index"] for o in outputs if o["shape"][-1] == 1404)
        self._presence = next(o["index"] for o in outputs if o["shape"][-1] == 1)
        self.roi_scale = roi_scale
        self.min_presence = min_presence
        self.refine = refine

    def landmarks(self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray | None = None) -> np.ndarray:
        """``(468, 3)`` landmarks ``[x, y, depth]`` in photo pixels (depth toward the viewer).

        Args:
            image: ``(H, W, 3)`` uint8 RGB. bbox: ``[x0, y0, x1, y1]`` detection box.
            kps: ``(5, 2)`` keypoints (the eyes set the ROI's rotation); ``None`` = upright.

        Raises:
            FitError: the network's face-presence probability is below ``min_presence``.
        """
        import cv2

        x0, y0, x1, y1 = (float(v) for v in bbox)
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        angle = 0.0 if kps is None else float(np.arctan2(kps[1][1] - kps[0][1], kps[1][0] - kps[0][0]))
        scale = self.input_size / (max(x1 - x0, y1 - y0) * self.roi_scale)  # crop pixels per photo pixel
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        to_crop = np.array([[c, s, 0.0], [-s, c, 0.0]])  # rotate by -angle and scale, about the centre
        to_crop[:, 2] = self.input_size / 2 - to_crop[:, :2] @ centre
        crop = cv2.warpAffine(image, to_crop, (self.input_size, self.input_size), flags=cv2.INTER_LINEAR, borderValue=0)
        self._net.set_tensor(self._input, cv2.divide(crop, 255.0, dtype=cv2.CV_32F)[None])  # (1, 192, 192, 3) in [0, 1]
        self._net.invoke()
        presence = float(1 / (1 + np.exp(-self._net.get_tensor(self._presence).reshape(-1)[0])))
        if presence < self.min_presence:
            raise FitError(f"the 3D face mesh sees no face in the box {np.round(bbox).astype(int).tolist()} (presence {presence:.2f})")
        lm = self._net.get_tensor(self._landmarks).reshape(468, 3).astype(np.float64)  # crop pixels
        back = cv2.invertAffineTransform(to_crop)
        xy = lm[:, :2] @ back[:, :2].T + back[:, 2]
        return np.concatenate([xy, -lm[:, 2:3] / scale], axis=1)  # depth: toward the viewer, photo pixels

    def fit(self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray | None = None) -> FaceFit:
        """Fit the face in ``bbox`` (with its keypoints ``kps``) of the ``(H, W, 3)`` uint8 RGB ``image``.

        Raises:
            FitError: no face in the region, or too few visible skin pixels for the lighting fit.
        """
        verts = self.landmarks(image, bbox, kps)
        for _ in range(self.refine):
            eyes = np.zeros((5, 2))
            eyes[:2] = verts[[33, 263], :2]  # outer eye corners, image-left first, like the detector's kps
            verts = self.landmarks(image, np.concatenate([verts[:, :2].min(axis=0), verts[:, :2].max(axis=0)]), eyes)
        triangles, skin = mediapipe_topology()
        return fit_from_vertices(image, verts, triangles, skin, _axes_rotation(verts), self.name)


def _axes_rotation(verts: np.ndarray) -> np.ndarray:
    """Face-to-camera rotation from mediapipe landmarks: x from symmetric pairs, y chin -> forehead."""
    cam = np.stack([verts[:, 0], -verts[:, 1], verts[:, 2]], axis=1)
    x = np.mean([cam[left] - cam[right] for right, left in _PAIRS], axis=0)
    x /= np.linalg.norm(x)
    y = cam[_FOREHEAD] - cam[_CHIN]
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)  # columns: the face's axes in the camera frame


def fit_from_vertices(image: np.ndarray, verts: np.ndarray, triangles: np.ndarray, skin: np.ndarray,
                      rotation: np.ndarray, fitter: str, min_pixels: int = 100, raster_size: int = 192) -> FaceFit:
    """Normals, visibility and SH lighting for a mesh already placed in the photo.

    Any ``FaceFitter`` that produces vertices in photo pixels (``[x, y, depth toward viewer]``),
    triangles, a skin mask and a rotation can finish here. The lighting is fit to every raster
    pixel covered by a visible skin triangle (z-buffer), with the Phong-interpolated normal there:
    denser and steadier than the vertices alone.

    The mesh is rasterised with its larger side at ``raster_size`` pixels (never above the photo's
    own resolution), and the photo region under it is area-averaged to the same grid
    (``cv2.INTER_AREA``): mediapipe's mesh comes from a 192 px crop, so a finer raster adds time,
    not information (a 1024 px face took ~25x longer to rasterise at full resolution).

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        verts: ``(N, 3)`` ``[x, y, depth]`` photo pixels (depth toward the viewer).
        triangles: ``(M, 3)`` vertex indices. skin: ``(N,)`` bool skin vertices.
        rotation: ``(3, 3)`` face-to-camera rotation. fitter: the model's name.
        min_pixels: fewest visible skin raster pixels accepted.
        raster_size: larger side of the raster in pixels.

    Raises:
        FitError: fewer than ``min_pixels`` visible skin pixels inside the photo.
    """
    import cv2

    cam = np.stack([verts[:, 0], -verts[:, 1], verts[:, 2]], axis=1)
    size = np.ptp(cam[:, :2], axis=0).max()
    centre = cam.mean(axis=0) - rotation[:, 2] * 0.5 * size  # inside the head, behind the face
    triangles = orient_outward(cam, triangles, centre)
    normals = vertex_normals(cam, triangles)

    # rasterise the face where it lies in the photo, on a grid of at most raster_size pixels a side
    h, w = image.shape[:2]
    x0, y0 = np.clip(np.floor(verts[:, :2].min(axis=0)).astype(int), 0, [w, h])
    x1, y1 = np.clip(np.ceil(verts[:, :2].max(axis=0)).astype(int), 0, [w, h])
    scale = min(1.0, raster_size / max(int(x1 - x0), int(y1 - y0), 1))  # raster pixels per photo pixel
    rh, rw = max(int(round((y1 - y0) * scale)), 1), max(int(round((x1 - x0) * scale)), 1)
    _, ys, xs, tid, w = raster_pixels((verts[:, :2] - [x0, y0]) * scale, verts[:, 2] * scale, triangles, rh, rw)
    seen = np.zeros(len(triangles), dtype=bool)
    seen[tid] = True
    visible = np.zeros(len(verts), dtype=bool)
    visible[triangles[seen].reshape(-1)] = True
    keep = np.flatnonzero(np.take(skin[triangles].all(axis=1), tid))  # pixels of skin triangles
    if len(keep) < min_pixels:
        raise FitError(f"only {len(keep)} visible skin pixels: too few for the lighting fit")
    n = interpolate(np.take(w, keep, axis=0), np.take(triangles, np.take(tid, keep), axis=0), normals)
    n /= np.sqrt(np.einsum("pc,pc->p", n, n))[:, None]
    region = image[y0:y1, x0:x1]
    if (rh, rw) != region.shape[:2]:
        region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
    colours = np.take(region.reshape(-1, 3), np.take(ys, keep) * rw + np.take(xs, keep), axis=0) / 255.0
    sh = estimate_sh(n, colours)
    return FaceFit(
        vertices=verts.astype(np.float32), triangles=triangles.astype(np.int32), normals=normals.astype(np.float32),
        rotation=rotation, pose=rotation_to_euler(rotation), sh=sh, visible=visible, skin=skin, fitter=fitter,
    )
