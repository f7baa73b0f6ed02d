"""facemakeup: identity-consistent, controllable text-to-image face generation.

An implementation of Face-MakeUp (arXiv 2501.02523) and Face-MakeUpV2 (arXiv 2510.21775) on
diffusers. Rooms: ``faces`` (analysis, no diffusion imports), ``model`` (what plugs into
diffusers), ``face_conditioning`` (the face conditioning both pipelines share), ``pipeline``
(``FaceMakeUpPipeline``, SD 1.5), ``pipeline_xl`` (``FaceMakeUpXLPipeline``, SDXL), ``cli``.

The torch-side names (``FaceMakeUpPipeline``, ``FaceMakeUpXLPipeline``, ``FaceIDAdapter``) are imported on first use, so
``import facemakeup.faces`` stays light.
"""

__version__ = "0.1.0"

from .errors import (
    CheckpointError,
    FaceMakeUpError,
    FaceMakeUpInputError,
    FaceTooSmallError,
    FitError,
    ImageReadError,
    ModelNotFoundError,
    NoFaceError,
    OutputError,
)

_LAZY = {
    "FaceMakeUpPipeline": "facemakeup.pipeline",
    "FaceMakeUpPipelineOutput": "facemakeup.face_conditioning",
    "FaceMakeUpXLPipeline": "facemakeup.pipeline_xl",
    "FaceIDAdapter": "facemakeup.model.id_adapter",  # diffusers' loader finds saved components here
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facemakeup' has no attribute {name!r}")


__all__ = [
    "CheckpointError", "FaceMakeUpError", "FaceMakeUpInputError", "FaceTooSmallError", "FitError", "ImageReadError",
    "ModelNotFoundError", "NoFaceError", "OutputError", "__version__", *_LAZY,
]
