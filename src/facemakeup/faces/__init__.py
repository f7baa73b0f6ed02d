"""Face analysis: pixels -> facts about one face (no diffusion imports here).

Identity (``FaceAnalyzer``: detection and the main-face rule ``face_choice_scores``, then on demand
``norm_crop``, ArcFace, CLIP crop, 3D fit, attributes, parsing) and the physical channel
(``mesh``: 3D fit, pose, SH lighting; ``lighting``; ``render``: shading maps).
"""

from .align import clip_crop, estimate_norm, landmark_box, norm_crop
from .analyzer import Face, FaceAnalyzer, face_choice_scores
from .image import load_image
from .lighting import SH_BASIS, estimate_sh, sh_from_direction
from .mesh import FaceFit, FaceFitter, MediaPipeFitter
from .render import shading_map

__all__ = [
    "SH_BASIS", "Face", "FaceAnalyzer", "FaceFit", "FaceFitter", "MediaPipeFitter", "clip_crop", "estimate_norm",
    "estimate_sh", "face_choice_scores", "landmark_box", "load_image", "norm_crop", "sh_from_direction", "shading_map",
]
