"""Named errors a user can act on (DESIGN.md, "Conventions").

Every message says what went wrong, on which input, and what to do about it.
"""

from __future__ import annotations


class FaceMakeUpError(Exception):
    """Base class of every error facemakeup raises on purpose."""


class ImageReadError(FaceMakeUpError, ValueError):
    """A file could not be read as an image (missing, not an image, truncated or corrupt, too large).

    The message names the file and the reason.
    """


class NoFaceError(FaceMakeUpError, ValueError):
    """No face was found in an image."""


class FaceTooSmallError(NoFaceError):
    """Faces were found, but all of them are smaller than the analyser's ``min_face_size``."""


class ModelNotFoundError(FaceMakeUpError, OSError):
    """Pretrained weights are neither on disk nor downloadable.

    The message says what to download and how to point facemakeup to it.
    """


class FitError(FaceMakeUpError, ValueError):
    """The 3D face fit (mesh, pose, lighting) failed for a detected face; the message says why."""


class UnsupportedModelError(FaceMakeUpError, ValueError):
    """A model file was found but cannot be used (not readable, or built from unsupported operators).

    The message names the file, what is unsupported, and which models work.
    """


class RecordError(FaceMakeUpError, ValueError):
    """A FaceCaptionMask record is invalid, of an unknown ``schema_version``, or its files are missing.

    The message names the record (its key and records file) and what to do (rebuild, upgrade facemakeup).
    """


class BuildLockedError(FaceMakeUpError, RuntimeError):
    """Another ``build-dataset`` is running on the same output folder (its lock file is held)."""


class PlanMismatchError(FaceMakeUpError, ValueError):
    """An output folder's shard plan was made for other inputs than the ones given now."""


class CheckpointError(FaceMakeUpError, ValueError):
    """A checkpoint file cannot be used: truncated or corrupt, refused (unsafe pickle), or of an
    unknown layout. The message names the file and what to do."""


class CheckpointLayoutError(CheckpointError):
    """A checkpoint's keys or shapes match no known layout (or do not fit the UNet).

    The message names the nearest known layout and the keys that differ from it.
    """
