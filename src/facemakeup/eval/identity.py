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


def match_faces_to_boxes(faces: list, boxes) -> list:
    """Which detected face is each person's: per box the face with the largest share of its own box inside
    that box (at least half), each face given to one box at most (largest shares first).

    Args:
        faces: ``Face`` records of one generated image (``bbox`` in its pixels).
        boxes: P ``[x0, y0, x1, y1]`` boxes in the same pixels (the people's places, e.g. a layout's head boxes).

    Returns:
        P entries: the matched ``Face``, or ``None`` where no face lies (mostly) inside the box.
    """
    shares = []
    for p, (x0, y0, x1, y1) in enumerate(boxes):
        for k, f in enumerate(faces):
            fx0, fy0, fx1, fy1 = (float(v) for v in f.bbox)
            inter = max(0.0, min(x1, fx1) - max(x0, fx0)) * max(0.0, min(y1, fy1) - max(y0, fy0))
            area = max((fx1 - fx0) * (fy1 - fy0), 1e-9)
            if inter / area >= 0.5:
                shares.append((inter / area, p, k))
    out, used = [None] * len(boxes), set()
    for _, p, k in sorted(shares, reverse=True):
        if out[p] is None and k not in used:
            out[p], used = faces[k], used | {k}
    return out


def people_similarities(generated: list, references: list) -> tuple[np.ndarray, np.ndarray]:
    """FaceSim of each person's generated face to its own reference, and to the others' (identity leakage).

    Args:
        generated: P generated ``Face`` records (or ``None`` where no face was found), person order.
        references: P reference ``Face`` records (or embeddings), person order.

    Returns:
        ``(own, leakage)``, each ``(P,)`` float64: ``own[p]`` = cos(generated p, reference p); ``leakage[p]``
        = the highest cos(generated p, reference q) over the other people q (P = 2: the other's). NaN where
        person p has no generated face (and leakage NaN for P = 1).
    """
    n = len(references)
    own, leak = np.full(n, np.nan), np.full(n, np.nan)
    for p, face in enumerate(generated):
        if face is None:
            continue
        own[p] = face_similarity(face, references[p])
        others = [face_similarity(face, references[q]) for q in range(n) if q != p]
        if others:
            leak[p] = max(others)
    return own, leak


class PeopleIdentity:
    """Several people per image: per person its FaceSim to its own reference (``"FaceSim-people"``) and its
    identity leakage, the highest similarity to another person's reference (``"ID-leakage"``, lower is better).

    Args:
        analyzer: ``faces.FaceAnalyzer`` whose detector and recogniser find and embed the faces.

    ``update(generated, references, boxes)``: per image, its path/array, the P reference ``Face`` records
    (or photos) and the P boxes (generated-image pixels) that match faces to people
    (``match_faces_to_boxes``). Values are per person and image; a person without a face in its box gets
    NaN and counts in ``no_face_rate``. The reference-to-reference similarity of each person is kept too
    (``reference_cross``): leakage near it means the faces are as alike as the references themselves.
    """

    def __init__(self, analyzer):
        self.analyzer = analyzer
        self.similarity, self.leakage, self.cross = _Values(), _Values(), _Values()

    def update(self, generated, references: list, boxes) -> tuple[np.ndarray, np.ndarray, list]:
        """Score one image. Returns ``(own, leakage, matched faces)``, each per person.

        Raises:
            NoFaceError: a reference without a face.
        """
        refs = main_faces(self.analyzer, references)
        for k, (r, item) in enumerate(zip(refs, references)):
            if r is None:
                raise NoFaceError(f"reference {item if isinstance(item, (str, bytes)) or hasattr(item, '__fspath__') else k}: no face found")
        from ..faces import Face

        faces = generated if isinstance(generated, list) and all(isinstance(f, Face) for f in generated) else self.analyzer.get(generated)
        matched = match_faces_to_boxes(faces, boxes)
        own, leak = people_similarities(matched, refs)
        cross = [max((face_similarity(refs[p], refs[q]) for q in range(len(refs)) if q != p), default=np.nan) for p in range(len(refs))]
        self.similarity.update(own)
        self.leakage.update(leak)
        self.cross.update(cross)
        return own, leak, matched

    @property
    def no_face_rate(self) -> float:
        """Fraction of (image, person) in which no face was found in the person's box (NaN before any update)."""
        v = self.similarity.per_image()
        return float(np.mean(~np.isfinite(v))) if len(v) else float("nan")

    def results(self, model: str | None, substitute: str | None = None, n_images: int = 0) -> dict:
        """``{"FaceSim-people": MetricResult, "ID-leakage": MetricResult}`` (bootstrap over faces)."""
        from .results import summarize

        cross = self.cross.per_image()
        finite = cross[np.isfinite(cross)]
        empty = f"no face found in the people's boxes of any of the {n_images} generated images"
        return {
            "FaceSim-people": summarize(self.similarity.per_image(), model=model, substitute=substitute, empty_reason=empty,
                                        no_face_rate=self.no_face_rate, images=n_images),
            "ID-leakage": summarize(self.leakage.per_image(), model=model, substitute=substitute, empty_reason=empty,
                                    reference_cross_similarity=float(finite.mean()) if len(finite) else None, lower_is_better=True),
        }


class _Values(PerImageMetric):
    """Per-value store of ``PeopleIdentity`` (its ``update`` feeds three of these at once)."""

    def update(self, values) -> None:
        self._append(values)
