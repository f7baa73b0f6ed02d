"""FaceSim: identity similarity of generated images to their reference (Face-MakeUp V1 ``evaluate/``).

The recipe (docs/sources.md): cosine of ArcFace ``normed_embedding`` of the generated face and of the
reference face, ``buffalo_l`` (ArcFace r50). V1 silently skips images where no face is found; here
such images count in ``no_face_rate`` and are left out of the mean. The face of each image is the
one ``FaceAnalyzer.get_face`` chooses (its main face).

Example:
    >>> from facemakeup.faces import FaceAnalyzer
    >>> metric = FaceSimilarity(FaceAnalyzer(fitter=None))
    >>> metric.update(["gen_0.png", "gen_1.png"], ["ref.jpg", "ref.jpg"])
    >>> metric.result(model="w600k_mbf").value
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import NoFaceError
from ..faces.image import ImageInput
from .results import PerImageMetric


def main_faces(analyzer, images: Sequence) -> list:
    """The main face of each image, or ``None`` where no face is found.

    Args:
        analyzer: a ``faces.FaceAnalyzer`` (its stages decide what each ``Face`` holds).
        images: paths, PIL images, ``(H, W, 3)`` uint8 RGB arrays, or ``Face`` records (passed through).

    Returns:
        One ``Face`` or ``None`` per image.

    Raises:
        ImageReadError: an image cannot be read.
    """
    from ..faces import Face

    out = []
    for image in images:
        if isinstance(image, Face) or image is None:
            out.append(image)
            continue
        try:
            out.append(analyzer.get_face(image))
        except NoFaceError:
            out.append(None)
    return out


def face_similarity(generated, reference) -> float:
    """Cosine similarity of two ArcFace embeddings (or two ``Face`` records), in [-1, 1].

    Raises:
        ValueError: the embeddings' shapes differ or one has zero norm.
    """
    a = np.asarray(getattr(generated, "embedding", generated), dtype=np.float64)
    b = np.asarray(getattr(reference, "embedding", reference), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embeddings must have the same shape, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("an embedding has zero norm")
    return float(a @ b / (na * nb))


class FaceSimilarity(PerImageMetric):
    """FaceSim accumulator: per generated image, the ArcFace cosine to its reference's face.

    Args:
        analyzer: ``faces.FaceAnalyzer`` whose recogniser gives the embeddings (``buffalo_l``'s
            ``w600k_r50`` for the paper's numbers; the offline ``w600k_mbf`` otherwise).

    ``update(generated, references)``: two equal-length sequences of images (paths, PIL, uint8 RGB
    arrays) or ``Face`` records. A generated image without a face gets NaN and counts in
    ``no_face_rate``; a reference without a face raises ``NoFaceError`` (the pair cannot be scored).
    """

    name = "FaceSim"

    def __init__(self, analyzer, **kwargs):
        super().__init__(**kwargs)
        self.analyzer = analyzer

    def update(self, generated: Sequence[ImageInput], references: Sequence[ImageInput]) -> None:
        if len(generated) != len(references):
            raise ValueError(f"{len(generated)} generated images but {len(references)} references")
        refs = main_faces(self.analyzer, references)
        for ref, item in zip(refs, references):
            if ref is None:
                raise NoFaceError(f"reference {item if isinstance(item, (str, bytes)) or hasattr(item, '__fspath__') else '<image>'}: no face found")
        gens = main_faces(self.analyzer, generated)
        self._append([np.nan if g is None else face_similarity(g, r) for g, r in zip(gens, refs)])

    @property
    def no_face_rate(self) -> float:
        """Fraction of generated images in which no face was found (NaN before any update)."""
        v = self.per_image()
        return float(np.mean(~np.isfinite(v))) if len(v) else float("nan")
