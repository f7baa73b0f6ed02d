"""What the generator's ControlNet reads, made from a face: the shading map (V2) or the keypoint map (V1).

Face-MakeUp V1 feeds its pose ControlNet the 5 facial keypoints drawn as InstantID draws them
(``draw_kps`` in InstantID's ``pipeline_stable_diffusion_xl_instantid.py``, Wang et al. 2024,
arXiv 2401.07519): on black, four limbs from the nose to each eye and mouth corner as filled
ellipses 4 px thick in the colour of their first point, dimmed to 60%, then a filled circle of
radius 10 px on every keypoint in red, green, blue, yellow, magenta (left eye, right eye, nose,
left mouth corner, right mouth corner, insightface's order). Face-MakeUpV2 feeds its ShadingNet
the 3D face rendered under the reference's lighting (``render.shading_map``). Both maps use the same
crop (the keypoints' box expanded by ``crop_factor``, widened to the output's aspect ratio), so they
line up pixel for pixel.

Example:
    >>> kmap = condition_map(face, "keypoints", height=512, width=512)   # (512, 512, 3) uint8
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Limbs (pairs of keypoint indices) of InstantID's ``draw_kps``: each eye and mouth corner to the nose.
KPS_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
#: Colours (RGB) of the 5 keypoints in ``draw_kps``: red, green, blue, yellow, magenta.
KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
#: The kinds of ControlNet input ``condition_map`` makes ("none" = no ControlNet input).
CONDITIONS = ("shading", "keypoints", "none")


def draw_kps(kps: np.ndarray, height: int, width: int, stick_width: int = 4, radius: int = 10) -> np.ndarray:
    """The 5 keypoints drawn on black, as InstantID's ``draw_kps``.

    Args:
        kps: ``(5, 2)`` keypoints ``(x, y)`` in pixels of the output (insightface order: left eye,
            right eye, nose, left mouth corner, right mouth corner).
        height, width: output size in pixels.
        stick_width: half-thickness of the limb ellipses (4).
        radius: keypoint circle radius (10).

    Returns:
        ``(height, width, 3)`` uint8 RGB: limbs at 60% of their colour, full-colour circles on top.

    Raises:
        ValueError: ``kps`` is not ``(5, 2)`` or the size is not positive.
    """
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise ValueError(f"kps must be 5 finite (x, y) points, got shape {kps.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for a, b in KPS_LIMBS:
        (xa, ya), (xb, yb) = kps[a], kps[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        centre = (int(np.mean([xa, xb])), int(np.mean([ya, yb])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), stick_width), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas, polygon, KPS_COLOURS[a])
    out = (canvas * 0.6).astype(np.uint8)  # limbs dimmed, then the points drawn at full colour
    for (x, y), colour in zip(kps, KPS_COLOURS):
        out = cv2.circle(out, (int(x), int(y)), radius, colour, -1)
    return out


def crop_transform(kps: np.ndarray, crop_factor: float, height: int, width: int) -> tuple[float, float, float]:
    """Photo pixels -> output pixels of the condition crop: ``out = (p - centre) * scale + size / 2``.

    The crop is ``landmark_box(kps, crop_factor)`` (a square), widened to the output's aspect ratio,
    as ``render.shading_map`` renders it.

    Returns:
        ``(scale, cx, cy)``: output pixels per photo pixel and the crop centre in photo pixels.
    """
    from .align import landmark_box

    x0, y0, x1, y1 = landmark_box(kps, crop_factor)
    return max(height, width) / (x1 - x0), (x0 + x1) / 2, (y0 + y1) / 2


def keypoint_map(kps: np.ndarray, crop_factor: float = 5.0, height: int = 512, width: int = 512,
                 reference_kps: np.ndarray | None = None) -> np.ndarray:
    """Face-MakeUp V1's ControlNet input: ``draw_kps`` of the face's keypoints in the condition crop.

    Args:
        kps: ``(5, 2)`` keypoints in photo pixels.
        crop_factor: crop expansion (the same as the shading map's, so the two line up).
        height, width: output size in pixels.
        reference_kps: keypoints that define the crop (default ``kps``), e.g. to draw one face's
            keypoints in another face's crop.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    kps = np.asarray(kps, dtype=np.float64)
    scale, cx, cy = crop_transform(kps if reference_kps is None else reference_kps, crop_factor, height, width)
    out = np.stack([(kps[:, 0] - cx) * scale + width / 2, (kps[:, 1] - cy) * scale + height / 2], axis=1)
    return draw_kps(out, height, width)


def condition_map(face, kind: str, crop_factor: float = 5.0, height: int = 512, width: int = 512, sh=None) -> np.ndarray:
    """The ControlNet input of ``kind`` for one analysed face.

    Args:
        face: a ``Face`` (``kps``; ``fit`` for shading).
        kind: ``"shading"`` (Face-MakeUpV2's ShadingNet) or ``"keypoints"`` (Face-MakeUp V1).
        crop_factor: crop expansion (V2 demo: 5).
        height, width: output size in pixels.
        sh: shading only: ``(9, 3)`` lighting instead of the face's own.

    Returns:
        ``(height, width, 3)`` uint8 RGB.

    Raises:
        ValueError: unknown ``kind``.
        FitError: ``"shading"`` for a face whose 3D fit failed.
    """
    if kind == "keypoints":
        return keypoint_map(face.kps, crop_factor, height, width)
    if kind == "shading":
        from ..errors import FitError
        from .render import shading_map

        if face.fit is None:
            raise FitError(f"no shading map: the face's 3D fit failed ({face.fit_error})")
        return shading_map(face.fit, face.kps, sh=sh, crop_factor=crop_factor, height=height, width=width)
    raise ValueError(f"condition must be 'shading' or 'keypoints', got {kind!r}")


def keypoint_map_faces(kps: list, height: int, width: int) -> np.ndarray:
    """Several faces' keypoints drawn in one map (``draw_kps`` of each, combined by the brighter pixel).

    Args:
        kps: P ``(5, 2)`` keypoint sets in pixels of the output.
        height, width: output size in pixels.

    Returns:
        ``(height, width, 3)`` uint8 RGB; one face gives exactly ``draw_kps`` of it.

    Raises:
        ValueError: as ``draw_kps``, or no face.
    """
    if not len(kps):
        raise ValueError("no keypoints to draw")
    out = draw_kps(kps[0], height, width)
    for k in kps[1:]:
        out = np.maximum(out, draw_kps(k, height, width))
    return out
