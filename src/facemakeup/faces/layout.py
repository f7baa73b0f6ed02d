"""Where several people go in one image: their boxes, attention masks and the ControlNet map with every face.

Face-MakeUp conditions an image on one person. With P people, the ID channel gives each person's ID
tokens a region of the image (diffusers' IP-Adapter attention masks, see
``face_conditioning.FaceConditioningMixin``); this module decides the regions and draws the
ControlNet's map with every face in its place. Three sources of places:

* **a layout photo** with P faces (``layout_from_photo``): its faces, taken left to right (or by an
  explicit assignment), are the people's places. The photo is fitted inside the output (one scale,
  centred, nothing cut: ``fit_photo``). A person's mask is its face box grown to the head
  (``head_box``), or the head region the face parser finds (``mask="parsing"``: face, hair, ears,
  hat, glasses, earrings). Where two masks overlap, each pixel goes to the person whose face centre
  is nearer (relative to the face's size), so a pixel carries at most one identity. The map renders
  every layout face: its 3D fit for the shading map (Face-MakeUpV2), its 5 keypoints for the keypoint
  map (V1 / InstantID), under each face's own lighting or one chosen light.
* **no layout** (``side_by_side``): P equal columns at the output size, each a person's mask and box;
  each person's reference face is drawn in its column, its shading crop (keypoint box x
  ``crop_factor``) fitted to the largest square centred in the column, as the one-person map fits
  the reference's crop to the whole image.
* **given masks** (``layout_from_masks``): a person's box is its mask's bounding box, its reference
  face drawn there the same way.

Coordinates are pixels of the output image (x right, y down), boxes ``[x0, y0, x1, y1]``.

Example:
    >>> faces = FaceAnalyzer(fitter="mediapipe").get("pair.jpg")          # two faces
    >>> lay = layout_from_photo(faces, people=2, height=512, width=512)
    >>> lay.masks.shape, lay.condition_map("shading").shape                # (2, 512, 512), (512, 512, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import FaceMakeUpInputError, FitError
from .align import landmark_box

#: How a detected face box grows to the head, as fractions of the box's width (each side) and
#: height (top, bottom): SCRFD's box runs from the brows to the chin, the head adds hair and ears.
HEAD_GROW = {"side": 0.3, "top": 0.6, "bottom": 0.2}
#: CelebAMask-HQ labels of the head (``parsing.CELEBAMASK_CLASSES``): skin, nose, glasses, eyes, brows,
#: ears, mouth, lips, hair, hat, earrings.
HEAD_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#: How a person's mask is made from a layout face.
MASK_KINDS = ("box", "parsing")


@dataclass(frozen=True, eq=False)
class Layout:
    """The places of P people in one ``height`` x ``width`` image.

    Attributes:
        boxes: ``(P, 4)`` float64 ``[x0, y0, x1, y1]`` output pixels, inside the image: the grown head box
            (layout), the column (side by side) or the mask's bounding box (given masks).
        masks: ``(P, H, W)`` float32 in {0, 1}: where person p's ID tokens act; no pixel in two masks
            (layout, side by side; given masks are kept as given).
        faces: per person the ``Face`` drawn in the map (a layout face, or the person's reference), or ``None``.
        placements: per person ``(scale, cx, cy, ox, oy)``: the face's photo pixel ``p`` is drawn at
            ``(p - (cx, cy)) * scale + (ox, oy)`` (``render.shading_map_faces``), or ``None``.
        source: ``"layout"``, ``"side by side"`` or ``"masks"``.
        layout_faces: per person the index of its face in the layout photo's left-to-right order
            (``None`` without a layout photo).
    """

    boxes: np.ndarray
    masks: np.ndarray
    faces: list
    placements: list
    source: str
    layout_faces: list[int] | None = None

    @property
    def people(self) -> int:
        """P, the number of people."""
        return len(self.masks)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def condition_map(self, kind: str, sh: np.ndarray | None = None) -> np.ndarray:
        """The ControlNet's map with every person's face in its place.

        Args:
            kind: ``"shading"`` (every face's 3D fit rendered grey, ``render.shading_map_faces``) or
                ``"keypoints"`` (every face's 5 keypoints, ``conditions.keypoint_map_faces``).
            sh: ``(9, 3)`` one lighting for every face; ``None``: each face's own (``fit.sh``).

        Returns:
            ``(height, width, 3)`` uint8.

        Raises:
            ValueError: unknown ``kind``, or no person has a face to draw.
            FitError: ``"shading"`` and a face's 3D fit failed (the person is named).
        """
        drawn = [(p, f, pl) for p, (f, pl) in enumerate(zip(self.faces, self.placements)) if f is not None]
        if not drawn:
            raise ValueError("no person has a face to draw in the map: pass the map itself (shading_image)")
        height, width = self.size
        if kind == "keypoints":
            from .conditions import keypoint_map_faces

            return keypoint_map_faces([_place(f.kps, pl) for _, f, pl in drawn], height, width)
        if kind != "shading":
            raise ValueError(f"condition must be 'shading' or 'keypoints', got {kind!r}")
        from .render import shading_map_faces

        for p, f, _ in drawn:
            if f.fit is None:
                raise FitError(f"person {p + 1}: no shading map, the 3D fit of its face failed ({f.fit_error}); use a clearer, "
                               "more frontal face, or the keypoint map")
        return shading_map_faces([f.fit for _, f, _ in drawn], [pl for _, _, pl in drawn],
                                 [f.fit.sh if sh is None else np.asarray(sh) for _, f, _ in drawn], height, width)

    def to_json(self) -> list[dict]:
        """Per person ``{"box": [x0, y0, x1, y1], "mask_fraction": share of the image, "layout_face": k or None}``."""
        return [{"box": [round(float(v), 2) for v in b], "mask_fraction": round(float(m.mean()), 5),
                 "layout_face": None if self.layout_faces is None else int(self.layout_faces[p])}
                for p, (b, m) in enumerate(zip(self.boxes, self.masks))]


def _place(points: np.ndarray, placement) -> np.ndarray:
    scale, cx, cy, ox, oy = placement
    pts = np.asarray(points, dtype=np.float64)
    return np.stack([(pts[:, 0] - cx) * scale + ox, (pts[:, 1] - cy) * scale + oy], axis=1)


def head_box(bbox: np.ndarray) -> np.ndarray:
    """A face box grown to the head (``HEAD_GROW``).

    Args:
        bbox: ``(4,)`` ``[x0, y0, x1, y1]`` face box (SCRFD), pixels.

    Returns:
        ``(4,)`` float64 ``[x0, y0, x1, y1]``, same pixels (may leave the photo).
    """
    x0, y0, x1, y1 = (float(v) for v in bbox)
    w, h = x1 - x0, y1 - y0
    return np.array([x0 - HEAD_GROW["side"] * w, y0 - HEAD_GROW["top"] * h, x1 + HEAD_GROW["side"] * w, y1 + HEAD_GROW["bottom"] * h])


def left_to_right(faces: list) -> list[int]:
    """Indices of ``faces`` ordered by their box centre's x (ties: y), the order people are given in."""
    return sorted(range(len(faces)), key=lambda i: ((faces[i].bbox[0] + faces[i].bbox[2]) / 2, (faces[i].bbox[1] + faces[i].bbox[3]) / 2))


def fit_photo(photo_height: int, photo_width: int, height: int, width: int) -> tuple[float, float, float, float, float]:
    """The placement of a whole photo inside the output: one scale, centred, nothing cut (letterboxed).

    Returns:
        ``(scale, cx, cy, ox, oy)``: photo pixel ``p`` goes to ``(p - (cx, cy)) * scale + (ox, oy)``.
    """
    scale = min(height / photo_height, width / photo_width)
    return scale, photo_width / 2, photo_height / 2, width / 2, height / 2


def layout_size(photo_height: int, photo_width: int, side: int, multiple: int = 8) -> tuple[int, int]:
    """``(height, width)`` with the photo's aspect ratio, the longer side ``side``, both multiples of ``multiple``."""
    if photo_width >= photo_height:
        return max(multiple, int(round(side * photo_height / photo_width / multiple)) * multiple), side
    return side, max(multiple, int(round(side * photo_width / photo_height / multiple)) * multiple)


def box_placement(face, box, crop_factor: float = 5.0) -> tuple[float, float, float, float, float]:
    """The placement that draws ``face``'s shading crop (keypoint box x ``crop_factor``) in the largest
    square centred in ``box`` (output pixels)."""
    kx0, ky0, kx1, ky1 = landmark_box(face.kps, crop_factor)
    bx0, by0, bx1, by1 = (float(v) for v in box)
    side = min(bx1 - bx0, by1 - by0)
    return side / (kx1 - kx0), (kx0 + kx1) / 2, (ky0 + ky1) / 2, (bx0 + bx1) / 2, (by0 + by1) / 2


def split_overlaps(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Give each pixel claimed by several masks to the person whose box centre is nearest, in units of
    that box's half-diagonal (a larger face keeps more of the overlap).

    Args:
        masks: ``(P, H, W)`` bool or {0, 1}. boxes: ``(P, 4)`` output pixels.

    Returns:
        ``(P, H, W)`` bool, disjoint, each a subset of its mask.
    """
    masks = np.asarray(masks) > 0
    shared = masks.sum(0) > 1
    if not shared.any():
        return masks
    ys, xs = np.nonzero(shared)
    b = np.asarray(boxes, dtype=np.float64)
    centre = (b[:, :2] + b[:, 2:]) / 2  # (P, 2)
    half_diag = np.maximum(np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2, 1e-6)
    dist = np.hypot(xs[None] + 0.5 - centre[:, :1], ys[None] + 0.5 - centre[:, 1:]) / half_diag[:, None]  # (P, n)
    dist[~masks[:, ys, xs]] = np.inf  # only among the masks that claim the pixel
    winner = dist.argmin(0)
    out = masks.copy()
    out[:, ys, xs] = False
    out[winner, ys, xs] = True
    return out


def _box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(P, H, W)`` bool: the pixels whose centres lie inside each box."""
    ys, xs = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    return np.stack([(xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3]) for b in boxes])


def _clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def choose_layout_faces(n_faces: int, people: int, assignment: list[int] | None = None) -> list[int]:
    """Which layout face (in left-to-right order) each person takes.

    Args:
        n_faces: faces found in the layout photo. people: P.
        assignment: per person the index of its face in left-to-right order (0 = leftmost), or
            ``None``: person p takes the p-th face from the left (then P must equal ``n_faces``).

    Returns:
        P indices into the left-to-right order.

    Raises:
        FaceMakeUpInputError: P does not match the faces (without an assignment), or an assignment
            of the wrong length, with repeats, or beyond the faces.
    """
    if assignment is None:
        if n_faces != people:
            raise FaceMakeUpInputError(
                f"the layout photo has {n_faces} face(s) but {people} {'person was' if people == 1 else 'people were'} given: give one person per face (left to "
                "right), or say which faces the people take (`layout_assignment`, 0 = leftmost)")
        return list(range(people))
    picks = [int(a) for a in assignment]
    if len(picks) != people or len(set(picks)) != len(picks) or any(not 0 <= a < n_faces for a in picks):
        raise FaceMakeUpInputError(
            f"`layout_assignment` must give each of the {people} people a different face among the layout's {n_faces} "
            f"(0 = leftmost ... {n_faces - 1}), got {list(assignment)}")
    return picks


def layout_from_photo(faces: list, people: int, height: int, width: int, assignment: list[int] | None = None,
                      mask: str = "box", parser=None) -> Layout:
    """The places of P people from a layout photo's faces (module docstring).

    Args:
        faces: the photo's ``Face`` records (``FaceAnalyzer.get``, any order; with ``fit`` for a shading map).
        people: P.
        height, width: output size in pixels.
        assignment: see ``choose_layout_faces``.
        mask: ``"box"`` (the face box grown to the head) or ``"parsing"`` (the parser's head region).
        parser: a ``parsing.FaceParser`` for ``mask="parsing"`` (default: the shipped one).

    Returns:
        The ``Layout`` (``source="layout"``).

    Raises:
        FaceMakeUpInputError: no face, P does not match, a bad assignment or ``mask``, or a person whose
            mask is empty (its face lies under another's).
    """
    if mask not in MASK_KINDS:
        raise FaceMakeUpInputError(f"the person mask must be one of {', '.join(MASK_KINDS)}, got {mask!r}")
    if not faces:
        raise FaceMakeUpInputError("the layout photo has no face: use a photo with one face per person")
    order = left_to_right(faces)
    picks = choose_layout_faces(len(faces), people, assignment)
    chosen = [faces[order[k]] for k in picks]
    photo = chosen[0].photo
    ph, pw = photo.shape[:2]
    placement = fit_photo(ph, pw, height, width)
    boxes = _clip_boxes(np.stack([_place(head_box(f.bbox).reshape(2, 2), placement).reshape(4) for f in chosen]), height, width)
    if mask == "box":
        masks = _box_masks(boxes, height, width)
    else:
        if parser is None:
            from .parsing import FaceParser

            parser = FaceParser()
        labels = parser.parse_batch([photo] * len(chosen), [f.kps for f in chosen])
        scale, cx, cy, ox, oy = placement
        M = np.array([[scale, 0, ox - cx * scale], [0, scale, oy - cy * scale]])
        masks = np.stack([cv2.warpAffine(np.isin(lab, HEAD_LABELS).astype(np.uint8), M, (width, height), flags=cv2.INTER_NEAREST,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0 for lab in labels])
        found = [np.argwhere(m) for m in masks]
        boxes = np.array([[f[:, 1].min(), f[:, 0].min(), f[:, 1].max() + 1, f[:, 0].max() + 1] if len(f) else b
                          for f, b in zip(found, boxes)], dtype=np.float64)
    masks = split_overlaps(masks, boxes)
    for p, m in enumerate(masks):
        if not m.any():
            raise FaceMakeUpInputError(f"person {p + 1} (layout face {picks[p]} from the left) gets an empty mask at {width}x{height}: "
                                       "its face is too small or hidden by another; use a larger output or another layout")
    return Layout(boxes, masks.astype(np.float32), chosen, [placement] * people, "layout", picks)


def side_by_side(people: int, height: int, width: int, faces: list | None = None, crop_factor: float = 5.0) -> Layout:
    """P equal columns at the output size (module docstring).

    Args:
        people: P >= 1. height, width: output size in pixels (``width >= P``).
        faces: per person the ``Face`` to draw in its column (its reference), or ``None``.
        crop_factor: the drawn face's shading crop, keypoint box x this (Face-MakeUpV2: 5).

    Returns:
        The ``Layout`` (``source="side by side"``).

    Raises:
        FaceMakeUpInputError: more people than pixel columns.
    """
    if not 1 <= people <= width:
        raise FaceMakeUpInputError(f"{people} people do not fit side by side in {width} pixel columns")
    edges = np.round(np.linspace(0, width, people + 1)).astype(int)
    boxes = np.array([[edges[p], 0, edges[p + 1], height] for p in range(people)], dtype=np.float64)
    return _with_faces(boxes, _box_masks(boxes, height, width).astype(np.float32), faces, crop_factor, "side by side")


def layout_from_masks(masks: np.ndarray, faces: list | None = None, crop_factor: float = 5.0) -> Layout:
    """The places of P people given as masks: each box is its mask's bounding box.

    Args:
        masks: ``(P, H, W)`` in {0, 1} (kept as given; overlaps allowed, as in diffusers).
        faces: per person the ``Face`` to draw in its box, or ``None``.
        crop_factor: as ``side_by_side``.

    Raises:
        FaceMakeUpInputError: an empty mask.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = []
    for p, m in enumerate(masks):
        found = np.argwhere(m > 0.5)
        if not len(found):
            raise FaceMakeUpInputError(f"face mask {p} is empty: every person needs a region")
        boxes.append([found[:, 1].min(), found[:, 0].min(), found[:, 1].max() + 1, found[:, 0].max() + 1])
    return _with_faces(np.array(boxes, dtype=np.float64), masks, faces, crop_factor, "masks")


def _with_faces(boxes, masks, faces, crop_factor, source) -> Layout:
    people = len(boxes)
    faces = list(faces) if faces is not None else [None] * people
    if len(faces) != people:
        raise ValueError(f"{len(faces)} faces for {people} people")
    placements = [None if f is None else box_placement(f, b, crop_factor) for f, b in zip(faces, boxes)]
    return Layout(boxes, masks, faces, placements, source)
