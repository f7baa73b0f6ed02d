"""Evaluation metrics. Each names the estimate it compares (see REFERENCE.md, "Metric recipes")."""

from .physical import light_rmse, pose_rmse

__all__ = ["light_rmse", "pose_rmse"]
