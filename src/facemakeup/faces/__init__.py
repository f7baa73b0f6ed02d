"""Face analysis: pixels -> facts about one face (no diffusion imports here)."""

from .align import clip_crop, estimate_norm, landmark_box, norm_crop
from .analyzer import Face, FaceAnalyzer
from .image import load_image

__all__ = ["Face", "FaceAnalyzer", "clip_crop", "estimate_norm", "landmark_box", "load_image", "norm_crop"]
