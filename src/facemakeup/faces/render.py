"""A small triangle rasteriser (OpenCV fills + numpy barycentrics) and the renders built on it.

No rendering library fits CPU-only CI here (pytorch3d, nvdiffrast and pyrender need a GPU, a
compiler toolchain of their own or an OpenGL context), and the face mesh has under a thousand
non-interpenetrating triangles, so filling them far to near with OpenCV and interpolating in numpy
does the job in a few milliseconds.

Coordinates: vertices are ``(x, y)`` pixels of the target raster (pixel centres at ``i + 0.5``)
and a depth that grows *toward the viewer* (larger = closer).
"""

from __future__ import annotations

import numpy as np

from .lighting import shade


def raster_pixels(xy: np.ndarray, depth: np.ndarray, triangles: np.ndarray, height: int, width: int):
    """The covered pixels of a triangle mesh with hidden-surface removal, as pixel lists.

    Triangles are filled with OpenCV (``cv2.fillConvexPoly``, 1/16 pixel precision) far to near by
    their mean depth (painter's algorithm: exact for meshes whose triangles do not interpenetrate,
    as a face mesh seen from outside); then the barycentric weights of the pixel centres are
    computed for the pixels each triangle won (weights are affine in the pixel position, so per
    triangle ``w_k = c_k0 + c_k1 * x + c_k2 * y``).

    Args:
        xy: ``(N, 2)`` float vertex positions in pixels (x right, y down; pixel ``i`` spans [i, i+1)).
        depth: ``(N,)`` float vertex depth, larger = closer to the viewer.
        triangles: ``(M, 3)`` int vertex indices (either winding).
        height, width: raster size in pixels.

    Returns:
        ``(tri_id, ys, xs, tid, weights)``: ``(H, W)`` int32 index of the visible triangle (-1 =
        background); ``(P,)`` int64 rows and columns of the covered pixels (row-major order);
        ``(P,)`` int32 their triangles (``tri_id[ys, xs]``); ``(P, 3)`` float64 barycentric
        weights of their triangle's vertices (clipped to the triangle at its edges, summing to 1).
    """
    import cv2

    xy = np.asarray(xy, dtype=np.float64)
    triangles = np.asarray(triangles)
    tri_id = np.full((height, width), -1, dtype=np.int32)
    fixed = np.round((xy - 0.5) * 16).astype(np.int32)  # cv2 puts pixel centres on integers; 4 fractional bits
    order = np.argsort(np.asarray(depth, dtype=np.float64)[triangles].mean(axis=1), kind="stable")  # far to near
    fill, line8 = cv2.fillConvexPoly, cv2.LINE_8
    for t, poly in zip(order.tolist(), list(fixed[triangles[order]])):
        fill(tri_id, poly, t, line8, 4)
    covered = np.flatnonzero(tri_id >= 0)  # row-major; np.take: gathers several times faster than fancy indexing
    ys, xs = np.divmod(covered, width)
    tid = np.take(tri_id, covered)
    a, b, c = (xy[triangles[:, k]] for k in range(3))  # (M, 2) each
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    area = np.where(np.abs(area) < 1e-12, 1e-12, area)
    coef = np.stack([  # (6, M): w0 = coef0 + coef1 x + coef2 y, w1 = coef3 + coef4 x + coef5 y
        b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0], b[:, 1] - c[:, 1], c[:, 0] - b[:, 0],
        c[:, 0] * a[:, 1] - c[:, 1] * a[:, 0], c[:, 1] - a[:, 1], a[:, 0] - c[:, 0],
    ]) / area
    k = np.take(coef, tid, axis=1)  # (6, P): planes, so every step below runs on contiguous rows
    px, py = xs + 0.5, ys + 0.5
    w = np.empty((3, len(tid)))
    w[0] = k[0] + k[1] * px + k[2] * py
    w[1] = k[3] + k[4] * px + k[5] * py
    np.subtract(1.0, w[0], out=w[2])
    w[2] -= w[1]
    w = w.T  # (P, 3) view
    edge = np.flatnonzero((w[:, 0] < 0) | (w[:, 1] < 0) | (w[:, 2] < 0))  # centres just outside their triangle: onto it
    if len(edge):
        we = np.clip(w[edge], 0.0, None)
        w[edge] = we / np.maximum(we.sum(axis=1, keepdims=True), 1e-12)
    return tri_id, ys, xs, tid, w


def interpolate(weights: np.ndarray, corners: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex ``values`` at pixels.

    Args:
        weights: ``(P, 3)`` barycentric weights (``raster_pixels``).
        corners: ``(P, 3)`` vertex indices of each pixel's triangle.
        values: ``(N,)`` or ``(N, C)`` per-vertex values.

    Returns:
        ``(P,)`` or ``(P, C)`` float64 (a column-major array: computed one channel at a time).
    """
    planar = np.ascontiguousarray(np.asarray(values, dtype=np.float64).T)  # (C, N) or (N,)
    out = np.take(planar, corners[:, 0], axis=-1) * weights[:, 0]
    for k in (1, 2):
        out += np.take(planar, corners[:, k], axis=-1) * weights[:, k]
    return out.T


def render_shading(xy, depth, triangles, vertex_normals, sh: np.ndarray, height: int, width: int, grey: bool = True) -> np.ndarray:
    """Lambertian render of a mesh under SH lighting, on black.

    Args:
        xy, depth, triangles: the mesh in raster pixels (see ``raster_pixels``).
        vertex_normals: ``(N, 3)`` unit normals, camera frame (x right, y up, z toward the viewer).
        sh: ``(9, 3)`` SH coefficients (``lighting.SH_BASIS`` order).
        height, width: output size.
        grey: average the three channels (the ShadingNet's grey shading map).

    Returns:
        ``(H, W)`` (grey) or ``(H, W, 3)`` float64 in [0, 1]; 0 off the mesh.
    """
    tri_id, ys, xs, tid, w = raster_pixels(xy, depth, triangles, height, width)
    n = interpolate(w, np.take(np.asarray(triangles), tid, axis=0), np.asarray(vertex_normals, dtype=np.float64))
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    out = np.zeros((height, width, 3))
    out[ys, xs] = np.clip(shade(n, sh), 0.0, 1.0)
    return out.mean(axis=2) if grey else out


def render_sphere(sh: np.ndarray, size: int = 128) -> np.ndarray:
    """A unit sphere lit by ``sh`` (seen along -z, x right, y up), RGB in [0, 1] on black.

    Returns:
        ``(size, size, 3)`` float64.
    """
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)
    r2 = x * x + y * y
    inside = r2 <= 1
    normals = np.stack([x, y, np.sqrt(np.clip(1 - r2, 0, None))], axis=-1)
    out = np.zeros((size, size, 3))
    out[inside] = np.clip(shade(normals[inside], sh), 0, 1)
    return out


def shading_map(fit, kps: np.ndarray, sh: np.ndarray | None = None, crop_factor: float = 5.0,
                height: int = 512, width: int = 512, box=None) -> np.ndarray:
    """The ShadingNet's input: the fitted face rendered grey on black in the shading crop.

    The crop is the square around the 5 keypoints expanded by ``crop_factor`` (Face-MakeUpV2 demo:
    5), widened to the output's aspect ratio, at the pipeline's resolution.

    Args:
        fit: a ``FaceFit`` (mesh in photo pixels, vertex normals).
        kps: ``(5, 2)`` keypoints of the same face, pixels.
        sh: ``(9, 3)`` lighting; ``None`` = the face's own (``fit.sh``). Pass another face's SH
            for lighting transfer, or ``lighting.sh_from_direction(...)``.
        crop_factor: shading crop expansion.
        height, width: output size in pixels.
        box: ``[x0, y0, x1, y1]`` square crop of the photo (pixels) to render instead of the keypoint
            crop, e.g. the centred square a training image is cut to, so the map lines up with it.

    Returns:
        ``(height, width, 3)`` uint8 grey image (three equal channels).

    Raises:
        ValueError: ``fit`` has no mesh (``FaceFit.from_json`` of JSON written without it).
    """
    from .align import landmark_box

    if fit.vertices is None:
        raise ValueError("this FaceFit has no mesh (read from JSON written without it): fit the photo again to render it")
    x0, y0, x1, y1 = landmark_box(kps, crop_factor) if box is None else box
    side = x1 - x0
    scale = max(height, width) / side  # pixels of the output per pixel of the photo
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    v = fit.vertices.astype(np.float64)
    xy = np.stack([(v[:, 0] - cx) * scale + width / 2, (v[:, 1] - cy) * scale + height / 2], axis=1)
    grey = render_shading(xy, v[:, 2] * scale, fit.triangles, fit.normals, fit.sh if sh is None else sh, height, width)
    return np.repeat(np.round(grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def shading_map_faces(fits: list, placements: list, shs: list, height: int, width: int) -> np.ndarray:
    """Several fitted faces rendered grey on black in one map, each at its own place and under its own light.

    One raster for all faces (``raster_pixels`` over their meshes together, so a nearer face hides a
    farther one where they overlap), then each covered pixel is shaded with the SH lighting of the face
    it shows. A single face with ``placement = (scale, cx, cy, width / 2, height / 2)`` gives exactly
    ``shading_map`` of that face.

    Args:
        fits: P ``FaceFit`` records (mesh in their photos' pixels).
        placements: per face ``(scale, cx, cy, ox, oy)``: photo pixel ``p`` goes to output pixel
            ``(p - (cx, cy)) * scale + (ox, oy)``; depth is multiplied by ``scale``.
        shs: per face ``(9, 3)`` SH lighting (``lighting.SH_BASIS`` order).
        height, width: output size in pixels.

    Returns:
        ``(height, width, 3)`` uint8 grey image (three equal channels).

    Raises:
        ValueError: a fit without a mesh, or lists of different lengths.
    """
    if not (len(fits) == len(placements) == len(shs)) or not fits:
        raise ValueError(f"need one placement and one SH per fit, got {len(fits)} fits, {len(placements)} placements, {len(shs)} SH")
    xy, depth, tris, normals, owner = [], [], [], [], []
    offset = 0
    for k, (fit, (scale, cx, cy, ox, oy)) in enumerate(zip(fits, placements)):
        if fit.vertices is None:
            raise ValueError("this FaceFit has no mesh (read from JSON written without it): fit the photo again to render it")
        v = fit.vertices.astype(np.float64)
        xy.append(np.stack([(v[:, 0] - cx) * scale + ox, (v[:, 1] - cy) * scale + oy], axis=1))
        depth.append(v[:, 2] * scale)
        tris.append(np.asarray(fit.triangles) + offset)
        normals.append(np.asarray(fit.normals, dtype=np.float64))
        owner.append(np.full(len(fit.triangles), k))
        offset += len(v)
    triangles = np.concatenate(tris)
    tri_id, ys, xs, tid, w = raster_pixels(np.concatenate(xy), np.concatenate(depth), triangles, height, width)
    n = interpolate(w, np.take(triangles, tid, axis=0), np.concatenate(normals))
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    face_of = np.take(np.concatenate(owner), tid)  # (P_pixels,) which face each covered pixel shows
    out = np.zeros((height, width, 3))
    for k, sh in enumerate(shs):
        sel = face_of == k
        out[ys[sel], xs[sel]] = np.clip(shade(n[sel], sh), 0.0, 1.0)
    grey = out.mean(axis=2)
    return np.repeat(np.round(grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
