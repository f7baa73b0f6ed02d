"""FaceCaptionHQ curation filters (Face-MakeUp, Sec. 3.1; docs/sources.md "Data").

Face-MakeUp built FaceCaptionHQ-4M from LAION-Face by keeping high-resolution photos and dropping
grayscale photos (mean per-pixel channel standard deviation under a threshold), text-heavy
photos (an OCR detector), group photos (the face detector finds more than one face) and
anime/cartoon faces (an LBP cascade). Ours, each returning a ``Verdict`` with its measured value:

- ``resolution``: shorter side in pixels (``min_side``).
- ``grayscale``: mean over pixels of the standard deviation of (R, G, B), 0-255 units.
- ``text``: fraction of the photo covered by text boxes from PaddleOCR's PP-OCRv4 text detector
  (DB network, Apache-2.0, ``ch_PP-OCRv4_det_infer.onnx`` from the ``rapidocr-onnxruntime`` wheel):
  probability > 0.3, connected components with mean probability >= 0.5, grown by DB's unclip 1.6.
- ``group``: faces at least ``group_min_ratio`` of the largest face's size (tiny background faces
  do not count), more than one = group photo.
- ``box``: a downloaded sample's own face box (FaceCaption-15M's ``box``, ``[x1, y1, x2, y2]`` photo
  pixels) chooses the face instead of the main-face rule: the detection with the highest IoU, at
  least ``min_box_iou``; none = rejected (``box_no_match``). The source chose the person, so the
  group filter does not apply to such a photo (its face count is still recorded).
- ``cartoon``: the paper's anime LBP cascade does not install offline. Ours is a heuristic on the
  CelebA-HQ-framed face crop: cartoons are drawn with flat colour fills, photos have sensor noise
  and texture, so we measure the fraction of 4-neighbour pixel pairs of the 128 px face crop whose
  colours are equal within 1/255 per channel. Threshold set on real photos (benchmarks/results); a
  documented proxy, not a trained anime detector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..faces.onnx import open_session
from ..faces.parsing import celebahq_crop


@dataclass(frozen=True)
class Verdict:
    """One filter's outcome: ``name``, measured ``value``, ``threshold``, ``passed``, ``reason`` (if not)."""

    name: str
    value: float
    threshold: float
    passed: bool
    reason: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CurationConfig:
    """Thresholds of the filters (defaults chosen on ../shared photos; see benchmarks/results/build_*).

    Attributes:
        min_side: shorter side in pixels (FaceCaptionHQ kept the highest-resolution photos).
        min_colour_std: grayscale below this mean channel std (0-255).
        max_text_fraction: text-heavy above this fraction of the photo.
        group_min_ratio: a second face counts when its size is at least this fraction of the largest's.
        max_flat_fraction: cartoon above this fraction of flat neighbour pairs in the face crop.
        min_box_iou: a source box names the detection it overlaps most when their IoU is at least this.
    """

    min_side: int = 256
    min_colour_std: float = 2.0
    max_text_fraction: float = 0.10
    group_min_ratio: float = 0.25
    max_flat_fraction: float = 0.40
    min_box_iou: float = 0.3


def resolution(image: np.ndarray, cfg: CurationConfig) -> Verdict:
    """Shorter side of ``(H, W, 3)`` ``image`` against ``cfg.min_side``."""
    side = float(min(image.shape[:2]))
    ok = side >= cfg.min_side
    return Verdict("resolution", side, cfg.min_side, ok, None if ok else f"low_resolution: shorter side {side:.0f} px < {cfg.min_side}")


def colour_std(image: np.ndarray, max_pixels: int = 250_000) -> float:
    """Mean over pixels of the standard deviation of each pixel's R, G, B (0-255); 0 for gray images."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / max_pixels)))
    return float(image[::step, ::step].astype(np.float32).std(axis=-1).mean())


def grayscale(image: np.ndarray, cfg: CurationConfig) -> Verdict:
    """Colour standard deviation against ``cfg.min_colour_std``."""
    v = colour_std(image)
    ok = v >= cfg.min_colour_std
    return Verdict("grayscale", round(v, 3), cfg.min_colour_std, ok, None if ok else f"grayscale: colour std {v:.2f} < {cfg.min_colour_std}")


def group(face_sizes: list[float], cfg: CurationConfig) -> Verdict:
    """Number of faces at least ``group_min_ratio`` x the largest (sizes in pixels, any order)."""
    n = 0 if not face_sizes else int(sum(s >= cfg.group_min_ratio * max(face_sizes) for s in face_sizes))
    ok = n <= 1
    return Verdict("group", float(n), 1.0, ok, None if ok else f"group_photo: {n} faces")


def parse_box(value) -> list[float]:
    """A source box as ``[x1, y1, x2, y2]`` floats (photo pixels) from a list or a JSON string such as
    FaceCaption-15M's ``"[x1,y1,x2,y2]"``.

    Raises:
        ValueError: not four finite numbers with x1 < x2 and y1 < y2.
    """
    import json
    import math

    box = json.loads(value) if isinstance(value, str) else value
    try:
        box = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"box {value!r} is not a list of numbers") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
        raise ValueError(f"box {value!r} is not [x1, y1, x2, y2] with x1 < x2, y1 < y2")
    return box


def box_iou(a, b) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 when disjoint)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_match(detections: list, box: list[float], cfg: CurationConfig) -> tuple[int | None, Verdict]:
    """The detection a source box names: ``(index or None, Verdict)`` with the best IoU as value.

    Args:
        detections: ``[x0, y0, x1, y1]`` boxes of the detected faces (photo pixels).
        box: the source's box (``parse_box``).
    """
    ious = [box_iou(d[:4], box) for d in detections]
    best = int(np.argmax(ious)) if ious else None
    value = ious[best] if best is not None else 0.0
    ok = best is not None and value >= cfg.min_box_iou
    return (best if ok else None), Verdict("box", round(value, 4), cfg.min_box_iou, ok,
                                            None if ok else f"box_no_match: best IoU {value:.2f} with {len(ious)} detected faces")


def flat_fraction(image: np.ndarray, kps: np.ndarray, size: int = 128) -> float:
    """Fraction of horizontally or vertically adjacent pixel pairs of the face crop with equal colour
    (max channel difference <= 1), in [0, 1]."""
    crop = celebahq_crop(image, kps, size).astype(np.int16)
    c = crop[size // 8 : -size // 8, size // 8 : -size // 8]
    dh = np.abs(np.diff(c, axis=1)).max(-1) <= 1
    dv = np.abs(np.diff(c, axis=0)).max(-1) <= 1
    return float((dh.sum() + dv.sum()) / (dh.size + dv.size))


def cartoon(image: np.ndarray, kps: np.ndarray, cfg: CurationConfig) -> Verdict:
    """Flat-colour fraction of the face crop against ``cfg.max_flat_fraction``."""
    v = flat_fraction(image, kps)
    ok = v <= cfg.max_flat_fraction
    return Verdict("cartoon", round(v, 4), cfg.max_flat_fraction, ok, None if ok else f"cartoon: flat-colour fraction {v:.2f}")


class TextDetector:
    """PP-OCRv4 text detection on onnxruntime: photo -> text boxes and covered fraction.

    The network is PaddleOCR's DB detector (Liao et al. 2020, "Real-time Scene Text Detection with
    Differentiable Binarization"): one text-probability map at the input's resolution.

    Args:
        model: ``ch_PP-OCRv4_det_infer.onnx``; ``None`` = fetched from the rapidocr-onnxruntime wheel.
        max_side: the photo is resized so its longer side is at most this (multiple of 32).
        threads: onnxruntime intra-op threads (0 = default).

    Raises:
        ModelNotFoundError: the model is neither cached nor downloadable.
    """

    def __init__(self, model=None, max_side: int = 640, threads: int = 0):
        from ..weights import fetch

        self.model_file = fetch("text_detector", model)
        self.session = open_session(self.model_file, threads)
        self.max_side = max_side

    def boxes(self, image: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.6,
              max_line_height: float = 0.12) -> np.ndarray:
        """Text boxes of ``(H, W, 3)`` uint8 RGB ``image``: ``(K, 4)`` float32 ``[x0, y0, x1, y1]`` pixels.

        PP-OCR's DB post-processing, axis-aligned: pixels with probability > ``thresh``, connected
        components whose mean probability is >= ``box_thresh``, each grown by ``area * unclip / perimeter``.
        The network takes BGR scaled to [-1, 1] (RapidOCR's defaults). Without the recogniser that
        follows it in an OCR system, DB fires on large smooth close-up faces: components whose shorter
        side exceeds ``max_line_height`` of the photo's longer side (not a line of text) are dropped.
        Text over a face (memes) is kept: that is what the filter is for.
        """
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        nh, nw = max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)
        x = cv2.resize(image[..., ::-1], (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
        prob = self.session.run(None, {self.session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0][0, 0]
        n, labels, stats, _ = cv2.connectedComponentsWithStats((prob > thresh).astype(np.uint8), connectivity=8)
        if n <= 1:
            return np.zeros((0, 4), np.float32)
        mean_prob = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n) / np.maximum(stats[:, 4], 1)
        out = []
        for i in range(1, n):
            x0, y0, bw, bh, area = stats[i]
            if mean_prob[i] < box_thresh or min(bw, bh) < 3 or min(bw, bh) > max_line_height * max(nw, nh):
                continue
            d = bw * bh * unclip / (2 * (bw + bh))  # DB's unclip offset: A * r / L
            out.append([(x0 - d) * w / nw, (y0 - d) * h / nh, (x0 + bw + d) * w / nw, (y0 + bh + d) * h / nh])
        return np.clip(np.array(out, np.float32).reshape(-1, 4), 0, [w, h, w, h]).astype(np.float32)

    def fraction(self, image: np.ndarray) -> float:
        """Fraction of the photo's area covered by the union of text boxes (see ``boxes``), in [0, 1]."""
        h, w = image.shape[:2]
        s = min(1.0, 512 / max(h, w))
        cover = np.zeros((max(1, int(h * s)), max(1, int(w * s))), np.uint8)
        for x0, y0, x1, y1 in self.boxes(image):
            cover[int(y0 * s) : int(np.ceil(y1 * s)), int(x0 * s) : int(np.ceil(x1 * s))] = 1
        return float(cover.mean())

    def verdict(self, image: np.ndarray, cfg: CurationConfig) -> Verdict:
        """Text fraction against ``cfg.max_text_fraction``."""
        v = self.fraction(image)
        ok = v <= cfg.max_text_fraction
        return Verdict("text", round(v, 4), cfg.max_text_fraction, ok, None if ok else f"text_heavy: text covers {v:.0%}")
