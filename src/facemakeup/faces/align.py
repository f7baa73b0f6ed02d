"""Face crops: ArcFace ``norm_crop`` and the CLIP crop of the ID channel.

``norm_crop`` follows InsightFace (``insightface/utils/face_align.py``): a similarity transform
(Umeyama least squares) maps the 5 detected keypoints (left eye, right eye, nose tip, left and
right mouth corners, in image coordinates) onto the ArcFace template for a 112x112 face.

The CLIP crop follows Face-MakeUpV2's ID channel: the box spanned by the 5 keypoints, made
square and expanded by ``crop_factor`` (default 3) around its centre, cut out (zero padding outside
the photo) and resized to the image encoder's input size.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

#: ArcFace 5-point template for a 112x112 crop (InsightFace ``arcface_dst``), pixels (x, y).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def estimate_norm(kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Similarity transform from 5 keypoints to the ArcFace template scaled to ``image_size``.

    Args:
        kps: ``(5, 2)`` float keypoints in pixels (x, y), InsightFace order.
        image_size: output side in pixels; a multiple of 112 or of 128 (InsightFace's rule: for
            multiples of 128 the template is scaled by size/128 and shifted right by 8*size/128).

    Returns:
        ``(2, 3)`` float64 affine matrix for ``cv2.warpAffine``.

    Raises:
        ValueError: ``kps`` is not ``(5, 2)`` or ``image_size`` is neither a multiple of 112 nor of 128.
    """
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"kps must have shape (5, 2), got {kps.shape}")
    if image_size % 112 == 0:
        dst = ARCFACE_TEMPLATE * (image_size / 112.0)
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        dst = ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])
    else:
        raise ValueError(f"image_size must be a multiple of 112 or 128, got {image_size}")
    tform = SimilarityTransform.from_estimate(kps, dst)
    return tform.params[:2, :]


def norm_crop(image: np.ndarray, kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """ArcFace alignment: warp ``image`` so the 5 keypoints land on the template.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        kps: ``(5, 2)`` keypoints in pixels.
        image_size: output side in pixels (112 for ArcFace recognition).

    Returns:
        ``(image_size, image_size, 3)`` uint8 RGB, black outside the photo.
    """
    matrix = estimate_norm(kps, image_size)
    return cv2.warpAffine(image, matrix, (image_size, image_size), borderValue=0.0)


def landmark_box(kps: np.ndarray, crop_factor: float = 3.0) -> np.ndarray:
    """The square crop box around the 5 keypoints, expanded by ``crop_factor``.

    Args:
        kps: ``(5, 2)`` keypoints in pixels.
        crop_factor: side of the square divided by the larger side of the keypoints' bounding box
            (Face-MakeUpV2 demo: 3 for the face crop, 5 for the shading crop). Must be > 0.

    Returns:
        ``(4,)`` float ``[x0, y0, x1, y1]`` in pixels; may extend outside the image.
    """
    if crop_factor <= 0:
        raise ValueError(f"crop_factor must be > 0, got {crop_factor}")
    kps = np.asarray(kps, dtype=np.float64)
    lo, hi = kps.min(axis=0), kps.max(axis=0)
    centre = (lo + hi) / 2.0
    half = max(float((hi - lo).max()), 1.0) * crop_factor / 2.0
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def crop_box(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut ``box`` out of ``image`` (zero padding where it leaves the image) and resize to ``size``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        box: ``[x0, y0, x1, y1]`` pixels, square.
        size: output side in pixels.

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    x0, y0 = int(round(float(box[0]))), int(round(float(box[1])))
    side = max(int(round(float(box[2]) - float(box[0]))), 1)
    h, w = image.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:  # the part inside the photo, zero-padded to the box
        canvas = cv2.copyMakeBorder(image[sy0:sy1, sx0:sx1], sy0 - y0, y0 + side - sy1, sx0 - x0, x0 + side - sx1,
                                    cv2.BORDER_CONSTANT, value=0)
    else:
        canvas = np.zeros((side, side, 3), dtype=np.uint8)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(canvas, (size, size), interpolation=interp)


def clip_crop(image: np.ndarray, kps: np.ndarray, size: int = 224, crop_factor: float = 3.0) -> np.ndarray:
    """The face crop the CLIP image encoder sees (Face-MakeUpV2 ID channel).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        kps: ``(5, 2)`` keypoints in pixels.
        size: the image encoder's input side (224 for CLIP ViT-H-14).
        crop_factor: expansion of the keypoints' box (default 3, as in the V2 demo).

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    return crop_box(image, landmark_box(kps, crop_factor), size)
