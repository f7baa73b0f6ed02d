"""Metric results: the record every metric ends in, bootstrap confidence intervals over images.

A metric's per-image values (or per-image features, for Frechet distances) are kept by its
accumulator; ``summarize`` turns them into a ``MetricResult`` with a percentile-bootstrap 95%
interval (Efron & Tibshirani 1993, ch. 13): images are resampled with replacement and the
statistic recomputed. Missing values (NaN: e.g. no face in that image) are left out and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: The paper's ten metrics, in the column order of Face-MakeUpV2's table (docs/sources.md).
PAPER_METRICS = ("CLIP-T", "VLMScore", "Attr", "CLIP-I", "DINO", "FaceSim", "FID", "LPIPS", "Pose-RMSE", "Light-RMSE")
#: Several people per image (``eval.identity.PeopleIdentity``): per-person FaceSim, and identity leakage (lower is better).
PEOPLE_METRICS = ("FaceSim-people", "ID-leakage")


@dataclass
class MetricResult:
    """One row of ``metrics.json``.

    Attributes:
        status: ``"computed"`` or ``"not computed"``.
        value: the metric (``None`` when not computed).
        ci95: ``[lo, hi]`` percentile-bootstrap 95% interval over images (``None`` when not computed
            or fewer than 2 values).
        n: number of images (or pairs) the value is over.
        model: the model that produced it (file, hub id or package), ``None`` when not computed.
        substitute: ``None``, or what the model replaces and why (offline substitutes).
        reason: why it was not computed and the flag that fixes it (``None`` when computed).
        extra: metric-specific numbers (e.g. FaceSim's ``no_face_rate``), merged into the JSON record.
    """

    status: str
    value: float | None = None
    ci95: list[float] | None = None
    n: int = 0
    model: str | None = None
    substitute: str | None = None
    reason: str | None = None
    extra: dict | None = None

    def to_json(self) -> dict:
        """The ``metrics.json`` record: ``status, value, ci95, n, model, substitute, reason`` (+ extras)."""
        d = asdict(self)
        extra = d.pop("extra") or {}
        return {**d, **extra}


def not_computed(reason: str, model: str | None = None, substitute: str | None = None, **extra) -> MetricResult:
    """A ``MetricResult`` for a metric that could not be computed; ``reason`` says why and how to fix it."""
    return MetricResult(status="not computed", reason=reason, model=model, substitute=substitute, extra=extra or None)


def mean(x: np.ndarray) -> float:
    """Arithmetic mean."""
    return float(np.mean(x))


def root_mean_square(x: np.ndarray) -> float:
    """``sqrt(mean(x^2))``: pools per-image RMSEs over equal-sized groups into one RMSE."""
    return float(np.sqrt(np.mean(np.square(x))))


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float] = mean, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float] | None:
    """Percentile-bootstrap interval of ``statistic`` over the rows of ``values``.

    Args:
        values: ``(N,)`` or ``(N, ...)`` array; rows are resampled with replacement.
        statistic: function of a resampled array -> float.
        n_boot: number of resamples.
        seed: seed of the resampling (so intervals are reproducible).
        level: coverage, 0.95 -> the 2.5 and 97.5 percentiles.

    Returns:
        ``[lo, hi]``, or ``None`` for fewer than 2 rows.
    """
    values = np.asarray(values)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)])
    alpha = (1 - level) / 2
    return [float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))]


def summarize(values, statistic: Callable[[np.ndarray], float] = mean, model: str | None = None,
              substitute: str | None = None, empty_reason: str = "no values", **extra) -> MetricResult:
    """Per-image values -> ``MetricResult`` (NaN values are dropped; none left -> "not computed").

    Args:
        values: ``(N,)`` per-image values, NaN where the image has none.
        statistic: ``mean`` or ``root_mean_square``.
        model, substitute: see ``MetricResult``.
        empty_reason: the ``reason`` when no finite value remains.
        extra: extra fields of the record.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return not_computed(empty_reason, model=model, substitute=substitute, **extra)
    return MetricResult(status="computed", value=statistic(v), ci95=bootstrap_ci(v, statistic), n=int(len(v)),
                        model=model, substitute=substitute, extra=extra or None)



class PerImageMetric(Metric):
    """Base of the per-image accumulators: ``update(...)`` appends one value per image,
    ``compute()`` pools them with ``statistic``, ``per_image()`` returns them. A torchmetrics
    ``Metric`` (STYLE.md 17): the ``values`` state is concatenated across processes.

    Subclasses set ``name`` and ``statistic`` and call ``self._append(values)`` in ``update``.
    """

    full_state_update = False
    name = "metric"
    statistic = staticmethod(mean)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _append(self, values) -> None:
        self.values.append(torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1))

    def per_image(self) -> np.ndarray:
        """``(N,)`` float64 per-image values so far (NaN where an image has none)."""
        return dim_zero_cat(self.values).cpu().numpy() if self.values else np.zeros(0)

    def compute(self) -> torch.Tensor:
        """The statistic over the finite per-image values (NaN when there are none)."""
        v = self.per_image()
        v = v[np.isfinite(v)]
        return torch.tensor(self.statistic(v) if len(v) else float("nan"), dtype=torch.float64)

    def result(self, model: str | None, substitute: str | None = None, empty_reason: str = "no values", **extra) -> MetricResult:
        """``summarize`` of the per-image values."""
        return summarize(self.per_image(), self.statistic, model=model, substitute=substitute, empty_reason=empty_reason, **extra)
