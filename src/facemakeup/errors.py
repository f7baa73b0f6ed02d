"""Named errors a user can act on (DESIGN.md, "Conventions").

Every message says what went wrong, on which input, and what to do about it. One class per kind of
failure; ``facemakeup`` on the command line turns each kind into one line on stderr and an exit
status (``EXIT_STATUS``, documented in the README and in ``facemakeup --help``).
"""

from __future__ import annotations


class FaceMakeUpError(Exception):
    """Base class of every error facemakeup raises on purpose."""


class FaceMakeUpInputError(FaceMakeUpError, ValueError):
    """A value given by the user is unusable: not finite, out of its documented range, an empty or
    over-long prompt, text that is not UTF-8, or two options that cannot go together.

    The message names the value, the limit and the fix.
    """


class ImageReadError(FaceMakeUpInputError):
    """A file could not be read as an image (missing, permission denied, a folder, a symbolic link
    loop, empty, not an image, truncated, corrupt, too many pixels) or an array is not an image.

    The message names the file and the reason.
    """


class OutputError(FaceMakeUpError, OSError):
    """The output folder cannot take the results: not writable, not enough free space, or it holds
    earlier results and overwriting them was not asked for. Raised before any work is done.
    """


class NoFaceError(FaceMakeUpError, ValueError):
    """No face was found in an image."""


class FaceTooSmallError(NoFaceError):
    """Faces were found, but all of them are smaller than the analyser's ``min_face_size``."""


class ModelNotFoundError(FaceMakeUpError, OSError):
    """Pretrained weights are neither on disk nor downloadable.

    The message says what to download and how to point facemakeup to it.
    """


class CheckpointError(FaceMakeUpError, ValueError):
    """A weights file exists but cannot be used: not a checkpoint, truncated, a pickle holding more
    than tensors (never unpickled: that would run code from the file), or a layout that does not fit.
    """


class FitError(FaceMakeUpError, ValueError):
    """The 3D face fit (mesh, pose, lighting) failed for a detected face; the message says why."""


class UnsupportedModelError(CheckpointError):
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


class CheckpointLayoutError(CheckpointError):
    """A checkpoint's keys or shapes match no known layout (or do not fit the UNet).

    The message names the nearest known layout and the keys that differ from it.
    """


#: Exit status of the ``facemakeup`` command per kind of failure (first matching class wins).
#: 0 is success; click's own usage errors (unknown option, missing argument) also exit 2.
EXIT_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ModelNotFoundError, 1, "a model or weights file is missing (the message says what to download)"),
    (FaceMakeUpInputError, 2, "bad input: an option's value, a combination of options, an unreadable image or prompt"),
    (NoFaceError, 3, "no usable face in a photo (none found, too small, or no face at --face-index)"),
    (FitError, 3, "no usable face in a photo (its 3D fit failed where a shading map needs it)"),
    (OutputError, 4, "the output folder cannot take the results (not writable, full, holds earlier results)"),
    (BuildLockedError, 4, "the output folder is being built by another build-dataset (its lock is held)"),
    (CheckpointError, 5, "a weights file exists but cannot be used (not a checkpoint, truncated, pickled objects, wrong layout)"),
    (MemoryError, 6, "out of memory (use a smaller --height/--width or fewer --num-images)"),
    (FaceMakeUpError, 2, "bad input: an option's value, a combination of options, an unreadable image or prompt"),
)
#: Exit status of an unexpected error (a bug: rerun with ``--debug`` and report the traceback), BSD's EX_SOFTWARE.
EXIT_INTERNAL = 70
