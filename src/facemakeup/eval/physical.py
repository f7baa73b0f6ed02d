"""Pose-RMSE and Light-RMSE, as Face-MakeUpV2 reports them (docs/sources.md, "Metric recipes").

Both compare 3D-fit estimates of a generated image and of its reference: the head pose (global
rotation, radians) and the 9x3 SH lighting. Face-MakeUpV2 fits DECA; these take the estimates of
any ``FaceFitter`` (mediapipe by default), so numbers are comparable only between runs that use the
same fitter, and not with the paper's table (DECA's axis-angle pose and FLAME albedo differ).

``PoseRMSE`` and ``LightRMSE`` accumulate over (generated, reference) pairs: per pair the RMSE over
the 3 angles / 27 coefficients, pooled as the root of the mean square (= the RMSE over all pairs'
angles / coefficients). Pairs where either face or its fit is missing get NaN and are left out.

Example:
    >>> from facemakeup.faces import FaceAnalyzer
    >>> metric = PoseRMSE(FaceAnalyzer())
    >>> metric.update(["gen.png"], ["ref.jpg"])
    >>> metric.compute()
"""

from __future__ import annotations

import numpy as np

from .identity import main_faces
from .results import PerImageMetric, root_mean_square

_POSE_KEYS = ("yaw", "pitch", "roll")


def _pose_array(p) -> np.ndarray:
    if isinstance(p, dict):
        return np.array([p[k] for k in _POSE_KEYS], dtype=np.float64)
    if isinstance(p, (list, tuple)) and p and isinstance(p[0], dict):
        return np.stack([_pose_array(q) for q in p])
    return np.asarray(p, dtype=np.float64)


def pose_rmse(a, b) -> float:
    """Root-mean-square difference of head poses, radians.

    Args:
        a, b: one pose or N poses each, as ``{"yaw", "pitch", "roll"}`` dicts (radians), lists of
            them, or ``(3,)`` / ``(N, 3)`` arrays in yaw, pitch, roll order.

    Returns:
        ``sqrt(mean((a - b)^2))`` over all angles, with each difference wrapped into [-pi, pi).

    Raises:
        ValueError: the shapes differ or are not (..., 3).
    """
    a, b = _pose_array(a), _pose_array(b)
    if a.shape != b.shape or a.shape[-1] != 3:
        raise ValueError(f"poses must have matching shapes (3,) or (N, 3), got {a.shape} and {b.shape}")
    d = (a - b + np.pi) % (2 * np.pi) - np.pi
    return float(np.sqrt(np.mean(d**2)))


def light_rmse(a, b) -> float:
    """Root-mean-square difference of SH lighting coefficients.

    Args:
        a, b: ``(9, 3)`` or ``(N, 9, 3)`` SH coefficients (``faces.lighting.SH_BASIS`` order, same
            basis and normalisation on both sides).

    Returns:
        ``sqrt(mean((a - b)^2))`` over all coefficients (image units, [0, 1] scale).

    Raises:
        ValueError: the shapes differ or are not (..., 9, 3).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.shape[-2:] != (9, 3):
        raise ValueError(f"SH lighting must have matching shapes (9, 3) or (N, 9, 3), got {a.shape} and {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


class _FitMetric(PerImageMetric):
    statistic = staticmethod(root_mean_square)

    def __init__(self, analyzer, **kwargs):
        super().__init__(**kwargs)
        self.analyzer = analyzer

    def update(self, generated, references) -> None:
        """Two equal-length sequences of images (paths, PIL, uint8 RGB arrays) or ``Face`` records
        from an analyser with a fitter."""
        if len(generated) != len(references):
            raise ValueError(f"{len(generated)} generated images but {len(references)} references")
        gens, refs = main_faces(self.analyzer, generated), main_faces(self.analyzer, references)
        self._append([np.nan if g is None or r is None or g.fit is None or r.fit is None else self._error(g.fit, r.fit)
                      for g, r in zip(gens, refs)])


class PoseRMSE(_FitMetric):
    """Pose-RMSE accumulator (radians): per pair ``pose_rmse`` of the fitted yaw, pitch, roll.

    Args:
        analyzer: ``faces.FaceAnalyzer`` with a fitter (mediapipe by default; DECA for the paper's).
    """

    name = "Pose-RMSE"

    @staticmethod
    def _error(g, r) -> float:
        return pose_rmse(g.pose, r.pose)


class LightRMSE(_FitMetric):
    """Light-RMSE accumulator: per pair ``light_rmse`` of the fitted 9x3 SH lighting.

    Args:
        analyzer: ``faces.FaceAnalyzer`` with a fitter.
    """

    name = "Light-RMSE"

    @staticmethod
    def _error(g, r) -> float:
        return light_rmse(g.sh, r.sh)
