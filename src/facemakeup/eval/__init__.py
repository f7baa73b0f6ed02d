"""Evaluation: Face-MakeUpV2's ten metrics (docs/sources.md, "Metric recipes") and its benchmark protocol.

One module per family, each metric an accumulator (``update`` / ``compute``, torchmetrics) that
takes its model as an argument: ``identity`` (FaceSim), ``physical`` (Pose-/Light-RMSE),
``attributes`` (Attr), ``clip_dino`` (CLIP-I, CLIP-T, DINO), ``image_quality`` (FID, LPIPS, other
Frechet distances), ``vlm`` (VLMScore); ``results`` (records, bootstrap intervals), ``benchmark``
(pairs, evaluation, generation protocol) and ``report`` (metrics.json, per_image.csv, report.md).
"""

from .physical import LightRMSE, PoseRMSE, light_rmse, pose_rmse
from .results import PAPER_METRICS, MetricResult, bootstrap_ci

__all__ = ["PAPER_METRICS", "LightRMSE", "MetricResult", "PoseRMSE", "bootstrap_ci", "light_rmse", "pose_rmse"]
