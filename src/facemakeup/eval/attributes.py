"""Attr: how many CelebA attributes a generated face shows clearly (Face-MakeUpV2's table).

The recipe (docs/sources.md): the count of the 40 CelebA attributes whose sigmoid exceeds 0.85, from
a ResNet-50 40-attribute classifier. That classifier is not public; ours is
``faces.attributes.AttributePredictor`` (MLP heads on ImageNet MobileNetV2 + ArcFace + dlib features,
each attribute's calibrated decision threshold folded into its probability, so 0.5 is the decision
and 0.85 a confident one), so the numbers are comparable between runs of this package with the same
heads, not with the paper's.

Example:
    >>> from facemakeup.faces import FaceAnalyzer
    >>> from facemakeup.faces.attributes import AttributePredictor
    >>> metric = AttributeCount(FaceAnalyzer(fitter=None, attributes=AttributePredictor(age_model=False, gender_model=False, emotion_model=False)))
    >>> metric.update(["gen.png"])
"""

from __future__ import annotations

import numpy as np

from .identity import main_faces
from .results import PerImageMetric

#: Face-MakeUpV2's threshold on the attribute classifier's sigmoid.
ATTR_THRESHOLD = 0.85


def attribute_count(probabilities, threshold: float = ATTR_THRESHOLD) -> int:
    """Number of attributes with probability strictly above ``threshold``.

    Args:
        probabilities: ``(40,)`` probabilities in [0, 1], or a ``{name: probability}`` dict.
        threshold: the paper's 0.85.
    """
    p = np.asarray(list(probabilities.values()) if isinstance(probabilities, dict) else probabilities, dtype=np.float64)
    return int((p > threshold).sum())


class AttributeCount(PerImageMetric):
    """Attr accumulator: per generated image, ``attribute_count`` of its main face (NaN: no face).

    Args:
        analyzer: ``faces.FaceAnalyzer`` with an ``attributes`` predictor.
        threshold: sigmoid threshold (0.85).

    Raises:
        ValueError: the analyser has no attribute predictor.
    """

    name = "Attr"

    def __init__(self, analyzer, threshold: float = ATTR_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        if analyzer.attributes is None:
            raise ValueError("the analyzer has no attribute predictor: build it with attributes=AttributePredictor(...)")
        self.analyzer = analyzer
        self.threshold = threshold

    def update(self, generated) -> None:
        """A sequence of images (paths, PIL, uint8 RGB arrays) or ``Face`` records."""
        faces = main_faces(self.analyzer, generated)
        self._append([np.nan if f is None or f.attributes is None else attribute_count(f.attributes.celeba, self.threshold)
                      for f in faces])
