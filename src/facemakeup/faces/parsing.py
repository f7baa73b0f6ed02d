"""Face parsing: a label map in CelebAMask-HQ's 19 classes for every face.

No pretrained face parser installs offline (OFFLINE_MODELS.md), so the project trains its own
(``scripts/train_face_parser.py``): an ImageNet MobileNetV2 (torchvision weights from a PyPI wheel)
with a small FPN decoder (Kirillov et al. 2019, "Panoptic FPN" semantic branch, one level), trained
on CelebAMask-HQ images. The weights ship in the package (``assets/face_parser.safetensors``) with a
model card (``assets/face_parser.md``): trained on CelebAMask-HQ, research-only.

The parser sees faces framed as CelebA-HQ frames them: a similarity transform maps the 5
keypoints onto ``CELEBAHQ_TEMPLATE`` (the mean SCRFD keypoints of the 850 CelebAMask-HQ photos at
512 px), the network labels that crop at 256 px, and the labels are warped back to the photo
(nearest neighbour; outside the crop = background). ``quality="accurate"`` averages several input
sides and the mirror image and warps the probabilities back instead.

The network runs on onnxruntime by default (``backend="onnxruntime"``: 3-4x faster than torch on
these CPUs, same probabilities within 1e-5): ``export_onnx`` exports the weights once with
``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch and side) into the weights cache,
named by the weights file's SHA-256, so a changed weights file gets its own export.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.transform import SimilarityTransform
from torch import nn
from torch.nn import functional as F

from ..errors import ModelNotFoundError
from .backbone import MobileNetV2, imagenet_normalize

#: CelebAMask-HQ class names, index = label value.
CELEBAMASK_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
#: Label permutation for a horizontal flip (left <-> right classes swap).
HFLIP_PERMUTATION = (0, 1, 2, 3, 5, 4, 7, 6, 9, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18)
#: Named regions (for captions and masks) as sets of CelebAMask-HQ labels.
REGIONS = {
    "face": (1, 2, 3, 4, 5, 6, 7, 10, 11, 12),
    "skin": (1,),
    "nose": (2,),
    "eyeglasses": (3,),
    "eyes": (4, 5),
    "brows": (6, 7),
    "ears": (8, 9),
    "mouth": (10, 11, 12),
    "lips": (11, 12),
    "hair": (13,),
    "hat": (14,),
    "earrings": (15,),
    "necklace": (16,),
    "neck": (17,),
    "cloth": (18,),
}
#: Mean 5-point SCRFD keypoints of the CelebAMask-HQ photos (512 px), mirror-symmetrised: the
#: framing the parser was trained on.
CELEBAHQ_TEMPLATE = np.array(
    [[194.9, 244.1], [319.0, 244.1], [256.95, 320.0], [202.0, 374.5], [309.9, 374.5]], dtype=np.float32
)
DEFAULT_WEIGHTS = "face_parser.safetensors"


def celebahq_transform(kps: np.ndarray, size: int = 512) -> np.ndarray:
    """Similarity transform (2x3, float64) taking photo pixels to a ``size``-px CelebA-HQ-framed crop.

    Args:
        kps: ``(5, 2)`` keypoints (x, y) in photo pixels, InsightFace order.
        size: crop side in pixels.
    """
    tform = SimilarityTransform.from_estimate(np.asarray(kps, np.float64), CELEBAHQ_TEMPLATE.astype(np.float64) * size / 512.0)
    return tform.params[:2, :]


def celebahq_crop(image: np.ndarray, kps: np.ndarray, size: int = 512) -> np.ndarray:
    """The photo warped to CelebA-HQ framing: ``(size, size, 3)`` uint8 RGB, edges replicated."""
    M = celebahq_transform(kps, size)
    return cv2.warpAffine(image, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FaceParserNet(nn.Module):
    """MobileNetV2 + one-level FPN decoder -> per-pixel logits over the 19 CelebAMask-HQ classes.

    ``forward(x)``: ``(N, 3, H, W)`` float32 RGB in [0, 1] (H, W multiples of 32) -> ``(N, 19, H, W)`` logits.
    """

    def __init__(self, width: int = 64, num_classes: int = len(CELEBAMASK_CLASSES)):
        super().__init__()
        self.backbone = MobileNetV2(taps=(3, 6, 13, 17))
        self.lateral = nn.ModuleList(nn.Conv2d(MobileNetV2.channels(i), width, 1) for i in self.backbone.taps)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(imagenet_normalize(x))
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = lat(f) + F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


#: ``FaceParser`` quality settings: network input sides as multiples of the side the weights were
#: trained at (their ``input_size`` metadata, 256 for the shipped ones; the probabilities of every
#: side are resized to that side and averaged), whether to average with the mirrored crop, and
#: whether the probabilities (bilinear) or the labels (nearest) are warped back to the photo.
#: Chosen on the validation split (model card): the shipped weights lose accuracy at 2x their
#: training side (0.68 vs 0.80 8-group mIoU), gain at 1.25x averaged with 1x.
PARSING_QUALITY = {"fast": ((1.0,), False, False), "accurate": ((1.0, 1.25), True, True)}


ONNX_OPSET = 17


def export_onnx(weights: str | os.PathLike | None = None, folder: str | os.PathLike | None = None) -> Path:
    """The ONNX export of a ``FaceParserNet`` weights file, made once and cached.

    Args:
        weights: the ``.safetensors`` file (``None`` = the shipped ``assets/face_parser.safetensors``).
        folder: where exports live (``None`` = ``weights.weights_home() / "face_parser"``).

    Returns:
        ``FOLDER/face_parser-<first 16 hex digits of the weights' SHA-256>-opset17.onnx``: input ``x``
        ``(N, 3, H, W)`` float32 RGB in [0, 1] (H, W multiples of 32), output ``logits`` ``(N, 19, H, W)``.
        Written to a temporary file and renamed, so concurrent workers never see a torn file.

    Raises:
        ModelNotFoundError: no weights file.
    """
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..weights import asset, weights_home

    path = Path(weights) if weights is not None else asset(DEFAULT_WEIGHTS)
    if not path.is_file():
        raise ModelNotFoundError(f"no face-parser weights at {path}: reinstall facemakeup (its wheel ships assets/{DEFAULT_WEIGHTS})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    target = Path(folder) if folder is not None else weights_home() / "face_parser"
    onnx_file = target / f"face_parser-{digest}-opset{ONNX_OPSET}.onnx"
    if onnx_file.is_file():
        return onnx_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    net = FaceParserNet(width=int(meta.get("width", 64)))
    net.load_state_dict(load_file(str(path)), strict=True)
    net.eval()
    target.mkdir(parents=True, exist_ok=True)
    tmp = onnx_file.with_name(f".{onnx_file.name}.part{os.getpid()}")
    try:
        side = int(meta.get("input_size", 256))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, side, side),), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}})
        os.replace(tmp, onnx_file)
    finally:
        tmp.unlink(missing_ok=True)
    return onnx_file


class FaceParser:
    """Label every pixel of a face photo with a CelebAMask-HQ class.

    Args:
        weights: a ``.safetensors`` file of ``FaceParserNet`` (its metadata holds ``input_size``);
            ``None`` = the weights shipped with the package.
        quality: ``"fast"`` (the crop at the training side, 256 px for the shipped weights, one
            pass, labels warped back) or ``"accurate"`` (the crop at 1x and 1.25x that side, each
            averaged with its mirror image, left/right classes swapped back; the probabilities
            warped back to the photo before the argmax; about 5x the network time).
            The model card (``assets/face_parser.md``) gives the accuracy of each.
        backend: ``"onnxruntime"`` (the network exported once by ``export_onnx``, run without spin-waiting
            threads) or ``"torch"``; the same probabilities within 1e-5 (tested).
        threads: onnxruntime intra-op threads (0 = one per core); the torch backend uses torch's setting.

    Raises:
        ModelNotFoundError: ``weights`` does not exist (or the package was installed without its asset).
        ValueError: unknown ``quality`` or ``backend``.
    """

    def __init__(self, weights: str | os.PathLike | None = None, quality: str = "fast", backend: str = "onnxruntime",
                 threads: int = 0):
        from safetensors.torch import load_file

        from ..weights import asset

        if quality not in PARSING_QUALITY:
            raise ValueError(f"unknown parsing quality {quality!r}: choose from {list(PARSING_QUALITY)}")
        if backend not in ("onnxruntime", "torch"):
            raise ValueError(f"unknown parser backend {backend!r}: choose 'onnxruntime' or 'torch'")
        path = Path(weights) if weights is not None else asset(DEFAULT_WEIGHTS)
        if not path.is_file():
            raise ModelNotFoundError(
                f"no face-parser weights at {path}: train them with `python scripts/train_face_parser.py` "
                "(needs CelebAMask-HQ) or reinstall facemakeup, whose wheel ships assets/face_parser.safetensors"
            )
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        self.quality = quality
        scales, self.flip, self.warp_probabilities = PARSING_QUALITY[quality]
        self.input_size = int(meta.get("input_size", 256))  # the side the probabilities come at
        self.sides = tuple(int(round(self.input_size * f / 32)) * 32 for f in scales)  # network input sides
        self.weights = path
        self.net = FaceParserNet(width=int(meta.get("width", 64)))
        self.net.load_state_dict(load_file(str(path)), strict=True)
        self.net.eval()
        self.backend, self.session, self.onnx_file = backend, None, None
        if backend == "onnxruntime":
            from .onnx import open_session

            self.onnx_file = export_onnx(path)
            self.session = open_session(self.onnx_file, threads)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network: ``(N, 3, H, W)`` float32 RGB in [0, 1] -> ``(N, 19, H, W)`` logits, on the chosen backend."""
        if self.session is None:
            return self.net(x)
        return torch.from_numpy(self.session.run(None, {"x": np.ascontiguousarray(x.numpy(), np.float32)})[0])

    @torch.no_grad()
    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities for CelebA-HQ-framed crops: the mean over the quality's input sides
        (each resized to ``input_size``) and, with ``quality="accurate"``, over the mirrored crops
        too, whose left/right classes are swapped back (``HFLIP_PERMUTATION``).

        Args:
            crops: ``(N, S, S, 3)`` uint8 RGB (any S; resized to each input side, bilinear with antialias).

        Returns:
            ``(N, 19, input_size, input_size)`` float32 softmax probabilities.
        """
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
        total = None
        for side in self.sides:
            xs = x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            p = self.logits(xs).softmax(1)  # (N, 19, side, side)
            if self.flip:
                mirrored = self.logits(xs.flip(-1)).softmax(1).flip(-1)  # classes still mirrored: l_eye means the other eye
                p = (p + mirrored[:, list(HFLIP_PERMUTATION)]) / 2
            if side != self.input_size:
                p = F.interpolate(p, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            total = p if total is None else total + p
        return (total / len(self.sides)).numpy()

    def parse(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """Label map of one face, the photo's size.

        Args:
            image: ``(H, W, 3)`` uint8 RGB photo.
            kps: ``(5, 2)`` keypoints of the face (pixels).

        Returns:
            ``(H, W)`` uint8 labels 0-18 (``CELEBAMASK_CLASSES``); pixels outside the face's crop are 0.
        """
        return self.parse_batch([image], [kps])[0]

    def parse_batch(self, images: list[np.ndarray], kps: list[np.ndarray]) -> list[np.ndarray]:
        """``parse`` for several faces (of one or several photos), one network run.

        Args:
            images: per face, its ``(H, W, 3)`` uint8 RGB photo. kps: per face ``(5, 2)`` pixels.

        Returns:
            Per face an ``(H, W)`` uint8 label map of its photo's size.
        """
        size = max(self.sides)  # crop once at the largest side the network sees
        transforms = [celebahq_transform(k, size) for k in kps]
        crops = np.stack([cv2.warpAffine(im, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
                          for im, M in zip(images, transforms)])
        probs = self.probabilities(crops)  # (N, 19, S, S), S = input_size
        if size != self.input_size:  # the probabilities' frame
            transforms = [celebahq_transform(k, self.input_size) for k in kps]
        if not self.warp_probabilities:
            return [cv2.warpAffine(lab, M, (im.shape[1], im.shape[0]), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                    for lab, M, im in zip(probs.argmax(1).astype(np.uint8), transforms, images)]
        out = []
        for p, M, im in zip(probs, transforms, images):  # warp the probabilities (4 channels per OpenCV call), then argmax
            h, w = im.shape[:2]
            back = [cv2.warpAffine(np.ascontiguousarray(p[c : c + 4].transpose(1, 2, 0)), M, (w, h),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                    .reshape(h, w, -1) for c in range(0, len(p), 4)]
            out.append(np.concatenate(back, axis=2).argmax(2).astype(np.uint8))  # all zero outside the crop: background
        return out


def region_mask(labels: np.ndarray, region: str | tuple[int, ...], kps: np.ndarray | None = None) -> np.ndarray:
    """Binary mask of a named region in a label map.

    Args:
        labels: ``(H, W)`` uint8 CelebAMask-HQ label map (``FaceParser.parse``).
        region: a ``REGIONS`` name, a tuple of label values, or one of the skin regions CelebAMask-HQ
            has no class for, cut along the face's own vertical axis (eye midpoint -> mouth midpoint, so
            roll does not matter): ``"lower_face"`` (skin below the nose tip: beards, stubble) and
            ``"upper_face"`` (skin above the eyes: a bald head).
        kps: ``(5, 2)`` keypoints of the face (pixels); needed for the two skin regions.

    Returns:
        ``labels``-shaped bool array.

    Raises:
        KeyError: unknown region name. ValueError: a skin region without ``kps``.
    """
    if not isinstance(region, str):
        return np.isin(labels, region)
    if region in REGIONS:
        return np.isin(labels, REGIONS[region])
    if region not in ("lower_face", "upper_face"):
        raise KeyError(f"unknown region {region!r}")
    if kps is None:
        raise ValueError(f"region {region!r} needs the face's keypoints")
    eye, mouth = kps[:2].mean(0), kps[3:].mean(0)
    axis = (mouth - eye) / max(np.linalg.norm(mouth - eye), 1e-6)
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx - eye[0]) * axis[0] + (yy - eye[1]) * axis[1]  # pixels along the axis from the eye line
    cut = t > float((kps[2] - eye) @ axis) if region == "lower_face" else t < 0
    return (labels == 1) & cut
