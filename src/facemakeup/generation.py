"""One generate function for the CLI and the demo: photos -> conditions -> the pipeline -> files with provenance.

``facemakeup generate`` and the web demo differ in where their photos come from (paths vs uploads)
and where their results go (``--out`` staged and committed at once vs a run folder and a zip);
everything between is here, once (DESIGN.md, "One generate function"):

1. ``prepare_conditions``: the chosen face of each reference, its CLIP crop at the request's crop
   factor, and the ControlNet's map: Face-MakeUpV2's shading map (the reference's or a target's
   3D face, under its own, another photo's or a chosen light) or V1's / InstantID's keypoint map;
2. ``generate``: the pipeline call (``FaceMakeUpPipeline`` or ``FaceMakeUpXLPipeline``) with the
   precomputed ArcFace embeddings and crops (no second face analysis), timed;
3. ``write_outputs``: ``image_NN.png`` (prompt and seed in the PNG text chunk), ``grid.png``,
   ``shading.png`` / ``keypoints.png``, ``conditions.png`` and ``provenance.json`` (inputs with
   SHA-256, every parameter, models, versions, timings).

Several people in one image (``GenerationRequest.people``, each a ``Person`` with its photos and
weights): each person's ID tokens act only inside its mask (the pipeline's ``face_masks``). The places
come from ``faces.layout``: a layout photo's faces left to right (``layout``, or ``layout_faces`` to
choose), each face box grown to the head or its parsed head region (``mask``), and the map renders
every layout face under its own lighting or the one chosen light; without a layout, P columns side by
side, each person's reference drawn in its column. ``write_outputs`` adds ``mask_PP.png`` per person
and a ``"people"`` list to ``provenance.json`` (each person's references with SHA-256, weights, box,
mask file, layout face).

Example:
    >>> analyzer = FaceAnalyzer(fitter="mediapipe")
    >>> photo = read_photo("me.jpg", analyzer)
    >>> req = GenerationRequest(prompt="a smiling woman", references=[(photo, 0)], steps=30)
    >>> result = generate(load_pipeline("tiny"), req)
    >>> write_outputs("out/", req, result, task="generate", models={"pipeline": "tiny"})
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import FitError, NoFaceError


@dataclass(frozen=True)
class Photo:
    """A photo, read and analysed.

    Attributes:
        label: display name (a path, or a safe name of an upload). sha256: of the file's bytes.
        rgb: ``(H, W, 3)`` uint8 pixels. faces: its ``Face`` records, main face first (``FaceAnalyzer.get``).
        path: the file it was read from, or ``None`` (an upload).
    """

    label: str
    sha256: str
    rgb: np.ndarray
    faces: list
    path: str | None = None


def read_photo(path: str | os.PathLike, analyzer, max_faces: int | None = None) -> Photo:
    """Read ``path`` and detect its faces, main face first (each analysed further on first use).

    Args:
        path: an image file. analyzer: a ``faces.FaceAnalyzer``.
        max_faces: keep this many faces (``1``: the main face only, through the analyser's fast path,
            as ``FaceAnalyzer.get_face``); ``None``: all.

    Raises:
        ImageReadError: unreadable, not an image, truncated, too many pixels (named by the path).
        NoFaceError: no face in it (``FaceTooSmallError``: only too-small faces).
    """
    faces = analyzer.get(path, max_faces=max_faces)  # decodes once; its errors name the path
    if not faces:
        raise NoFaceError(f"{path}: no face found (tried detection sizes {list(analyzer.det_sizes)}); use a photo "
                          "with a clearly visible, roughly frontal face")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return Photo(str(path), digest, faces[0].photo, faces, str(path))


@dataclass
class Person:
    """One person of a several-people request.

    Attributes:
        references: ``(Photo, face index)`` per photo of the person (several are mixed by ``weights``).
        weights: one mixing weight >= 0 per photo, or ``None`` (equal).
    """

    references: list[tuple[Photo, int]]
    weights: list[float] | None = None


@dataclass
class GenerationRequest:
    """Everything one generation reads (the CLI's flags, the demo's page).

    Attributes:
        prompt, negative_prompt: text (``negative_prompt`` ``None``: the pipeline's empty / zero negative).
        references: ``(Photo, face index)`` per reference of the person (several are mixed by ``weights``);
            empty when ``people`` is given.
        weights: one mixing weight >= 0 per reference, or ``None`` (equal).
        people: several people in one image, one ``Person`` each (``None``: the one person of ``references``).
        layout: a photo with one face per person: their places and poses (``faces.layout.layout_from_photo``);
            ``None``: with ``people``, P columns side by side. Also allowed for one person (a place and a mask).
        layout_faces: per person the layout face it takes (0 = leftmost), or ``None`` (left to right, one each).
        mask: a person's mask from a layout face: ``"box"`` (face box grown to the head) or ``"parsing"``.
        shading_from: the photo whose main face gives the map's pose and shape (and, unless told
            otherwise, its light): Face-MakeUpV2's target image; ``None``: the first reference.
        light_from: a photo whose main face's SH lighting relights the map, or ``None``.
        light_dir: ``(3,)`` one light from this direction (camera frame: x right, y up, z toward the
            viewer) with ``light_strength`` (``faces.lighting.sh_from_direction``), or ``None``.
        condition: what the ControlNet reads: ``"shading"``, ``"keypoints"`` or ``"none"``.
        crop_factor: the CLIP face crop, keypoint box times this (V2 demo 3).
        shading_crop_factor: the map's crop, keypoint box times this (V2 demo 5).
        seed, num_images, steps, guidance_scale, ip_scale, s_scale, controlnet_scale, height, width,
        truncate_prompt: as the pipeline's ``__call__`` (``height``/``width`` ``None``: the model's size).
        controlnet_start, controlnet_end: the ShadingNet's window, fractions of the steps (the
            pipeline's ``control_guidance_start`` / ``control_guidance_end``; end 0.4 stops it early).
        loras: ``speed.LoraSpec`` per user LoRA (few-step LCM/TCD/Hyper-SD, styles), loaded beside the face
            adapter's LoRA by ``prepare_pipeline`` (which fills their names and SHA-256).
        scheduler: a ``speed.SCHEDULERS`` name, or ``None``: the pipeline's (DDIM for SD 1.5, as
            Face-MakeUp; the backbone folder's for SDXL).
        vae: ``"tiny"`` (TAESD), a VAE folder, or ``None`` (the backbone's); see ``speed.load_vae``.
        compile: ``torch.compile`` the UNet and ControlNet (``prepare_pipeline``).
    """

    prompt: str
    references: list[tuple[Photo, int]]
    negative_prompt: str | None = None
    weights: list[float] | None = None
    shading_from: Photo | None = None
    light_from: Photo | None = None
    light_dir: list[float] | None = None
    light_strength: float = 0.7
    condition: str = "shading"
    crop_factor: float = 3.0
    shading_crop_factor: float = 5.0
    seed: int = 42
    num_images: int = 1
    steps: int = 50
    guidance_scale: float = 7.5
    ip_scale: float = 0.6
    s_scale: float = 1.0
    controlnet_scale: float = 0.5
    height: int | None = None
    width: int | None = None
    truncate_prompt: bool = False
    people: list[Person] | None = None
    layout: Photo | None = None
    layout_faces: list[int] | None = None
    mask: str = "box"
    controlnet_start: float = 0.0
    controlnet_end: float = 1.0
    loras: list = field(default_factory=list)
    scheduler: str | None = None
    vae: str | None = None
    compile: bool = False

    def parameters(self) -> dict:
        """The request's numbers and switches, for ``provenance.json`` (the scheduler's name as
        ``scheduler_name``; ``write_outputs`` adds the class that ran as ``scheduler``)."""
        skip = {"prompt", "negative_prompt", "references", "weights", "shading_from", "light_from", "light_dir", "people", "layout",
                "loras", "scheduler"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["loras"] = [{"path": str(x.path), "weight": x.weight, "name": x.name, "sha256": x.sha256} for x in self.loras]
        out["scheduler_name"] = self.scheduler
        return out

    @property
    def several(self) -> bool:
        """Whether people get places and masks (``people`` or a ``layout`` given)."""
        return self.people is not None or self.layout is not None

    def persons(self) -> list[Person]:
        """The people of the request: ``people``, or the one person of ``references`` / ``weights``."""
        return list(self.people) if self.people is not None else [Person(list(self.references), self.weights)]

    def flat(self) -> tuple[list[tuple[Photo, int]], list[int], list[float] | None]:
        """``(references, person of each, weights)`` over all people, in order (weights ``None``: all equal)."""
        refs, owner, weights = [], [], []
        for p, person in enumerate(self.persons()):
            refs += person.references
            owner += [p] * len(person.references)
            weights += list(person.weights) if person.weights is not None else [1.0] * len(person.references)
        given = self.people is None and self.weights is not None or any(q.weights is not None for q in self.people or [])
        return refs, owner, weights if given else None


@dataclass
class Conditions:
    """What a request turns into before the pipeline runs.

    Attributes:
        faces: the chosen ``Face`` of each reference, its CLIP crop at the request's ``crop_factor``.
        map: ``(height, width, 3)`` uint8 ControlNet map (shading or keypoints), or ``None`` (no ControlNet).
        sh: ``(9, 3)`` SH lighting of a shading map, or ``None`` (also with people lit each by their own).
        size: ``(height, width)`` of the output in pixels.
        request: the request they were made from.
        people: the person of each face in ``faces``.
        layout: the people's places (``faces.layout.Layout``: boxes, masks, faces drawn), or ``None`` (one
            person without a layout: no mask).
    """

    faces: list
    map: np.ndarray | None = None
    sh: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    request: GenerationRequest | None = None
    people: list[int] = field(default_factory=list)
    layout: object = None


@dataclass
class GenerationResult:
    """``output`` (the pipeline's ``FaceMakeUpPipelineOutput``), the ``conditions`` it used, ``timings`` in
    seconds, and the pipeline's ``scheduler`` class name."""

    output: object
    conditions: Conditions
    timings: dict = field(default_factory=dict)
    scheduler: str = ""


def output_size(pipe, request: GenerationRequest) -> tuple[int, int]:
    """``(height, width)`` of the images: the request's, else the model's (``sample_size * vae_scale_factor``);
    with a layout photo and no size given, the layout's aspect ratio with the model's side as the longer
    side (``faces.layout.layout_size``)."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if request.layout is not None and request.height is None and request.width is None:
        from .faces.layout import layout_size

        return layout_size(*request.layout.rgb.shape[:2], side)
    return request.height or side, request.width or side


def prepare_conditions(pipe, request: GenerationRequest) -> Conditions:
    """The faces and the ControlNet's map of a request.

    Raises:
        NoFaceError: a reference's face index is beyond the faces found.
        FitError: a shading map is needed and the 3D fit of its face (or of the light's photo) failed.
        ValueError: relighting asked for without a shading map; ``FaceMakeUpInputError`` for people that do
            not match the layout's faces (``faces.layout``), or a layout with ``shading_from``.
    """
    from .faces.align import clip_crop, landmark_box

    size = pipe.image_encoder.config.image_size if pipe.image_encoder is not None else 224
    refs, owner, _ = request.flat()
    if request.people is not None and request.references:
        raise ValueError("give the photos either as `references` (one person) or as `people`, not both")
    if not refs:
        raise ValueError("no reference photo: give each person at least one")
    faces = []
    for photo, index in refs:
        if not 0 <= index < len(photo.faces):
            raise NoFaceError(f"{photo.label}: face #{index} chosen, but {len(photo.faces)} face(s) were found (face_index={index})")
        face = photo.faces[index]
        faces.append(replace(face, clip_image=clip_crop(photo.rgb, face.kps, size, request.crop_factor),
                             clip_box=landmark_box(face.kps, request.crop_factor)))
    height, width = output_size(pipe, request)
    cond = Conditions(faces, size=(height, width), request=request, people=owner)
    if (request.light_from is not None or request.light_dir is not None) and request.condition != "shading":
        raise ValueError(f"relighting acts on the shading map; condition {request.condition!r} has none")
    if request.several:
        return _place_people(pipe, request, cond)
    if pipe.controlnet is None or request.condition == "none":
        return cond
    source = request.shading_from.faces[0] if request.shading_from is not None else faces[0]
    source_label = request.shading_from.label if request.shading_from is not None else request.references[0][0].label
    if request.condition == "keypoints":
        from .faces.conditions import keypoint_map

        cond.map = keypoint_map(source.kps, request.shading_crop_factor, height, width)
        return cond
    from .faces.lighting import sh_from_direction
    from .faces.render import shading_map

    light = request.light_from.faces[0] if request.light_from is not None else None
    for what, face, label in (("shading", source, source_label), ("light", light, request.light_from and request.light_from.label)):
        if face is not None and face.fit is None:
            raise FitError(f"{label}: the 3D fit of the {what} photo's face failed ({face.fit_error}); use a photo with a "
                           "clearer, more frontal face")
    if light is not None:
        sh = light.fit.sh
    elif request.light_dir is not None:
        sh = sh_from_direction(request.light_dir, request.light_strength)
    else:
        sh = source.fit.sh
    cond.sh = np.asarray(sh)
    cond.map = shading_map(source.fit, source.kps, sh=cond.sh, crop_factor=request.shading_crop_factor, height=height, width=width)
    return cond


def _lighting(request: GenerationRequest) -> np.ndarray | None:
    """The one chosen light of a request (``light_from``'s face or ``light_dir``), or ``None``.

    Raises:
        FitError: the light photo's 3D fit failed.
    """
    from .faces.lighting import sh_from_direction

    if request.light_from is not None:
        light = request.light_from.faces[0]
        if light.fit is None:
            raise FitError(f"{request.light_from.label}: the 3D fit of the light photo's face failed ({light.fit_error}); use a photo "
                           "with a clearer, more frontal face")
        return np.asarray(light.fit.sh)
    if request.light_dir is not None:
        return np.asarray(sh_from_direction(request.light_dir, request.light_strength))
    return None


def _place_people(pipe, request: GenerationRequest, cond: Conditions) -> Conditions:
    """The places, masks and map of a several-people request (``faces.layout``)."""
    from .errors import FaceMakeUpInputError
    from .faces import layout as places

    if request.shading_from is not None:
        raise FaceMakeUpInputError("with several people (or a layout) the map's poses come from the layout photo or each person's "
                                   "reference: use a layout photo instead of shading_from")
    n_people = len(request.persons())
    height, width = cond.size
    firsts = [cond.faces[cond.people.index(p)] for p in range(n_people)]  # each person's first photo
    if request.layout is not None:
        cond.layout = places.layout_from_photo(request.layout.faces, n_people, height, width, request.layout_faces, request.mask)
    else:
        cond.layout = places.side_by_side(n_people, height, width, firsts, request.shading_crop_factor)
    if pipe.controlnet is not None and request.condition != "none":
        light = _lighting(request) if request.condition == "shading" else None
        cond.sh = light
        try:
            cond.map = cond.layout.condition_map(request.condition, light)
        except FitError as err:
            where = f"{request.layout.label}: " if request.layout is not None else ""
            raise FitError(f"{where}{err}") from None
    return cond


def prepare_pipeline(pipe, request: GenerationRequest, local_files_only: bool | None = None) -> dict:
    """Make ``pipe`` what the request asks for, once per loaded pipeline (before ``generate``): its
    LoRAs loaded beside the face adapter's and fused with it (so a step costs what a plain step costs),
    its scheduler, its VAE, compiled if asked.

    Args:
        pipe: a ``FaceMakeUpPipeline`` or ``FaceMakeUpXLPipeline``; request: the request (``request.loras``
            is replaced by the loaded specs, with adapter names and SHA-256).
        local_files_only: for the VAE (default: ``HF_HUB_OFFLINE``).

    Returns:
        What to record as models in ``provenance.json``: ``{"loras": [...], "vae": ..., "compiled": [...]}``.

    Raises:
        ModelNotFoundError: a LoRA or VAE is missing. CheckpointError / CheckpointLayoutError: one that
            cannot be used or does not fit the pipeline. FaceMakeUpInputError: an unknown scheduler.
    """
    from . import speed

    family = "sdxl" if type(pipe).__name__ == "FaceMakeUpXLPipeline" else "sd15"
    request.loras = speed.load_loras(pipe, list(request.loras))
    speed.set_scheduler(pipe, request.scheduler)
    if request.vae is not None:
        speed.use_vae(pipe, speed.load_vae(request.vae, family, pipe.unet.dtype, local_files_only))
    pipe.fuse_lora()  # inference only: every LoRA merged (the face adapter's last), no per-step LoRA cost
    compiled = speed.compile_denoiser(pipe) if request.compile else []
    vae = None if request.vae is None else (speed.TINY_VAES[family] if request.vae == "tiny" else str(request.vae))
    return {"loras": request.parameters()["loras"], "vae": vae, "compiled": compiled}


def generate(pipe, request: GenerationRequest, conditions: Conditions | None = None, progress=None,
             on_latents=None) -> GenerationResult:
    """Run the pipeline for a request.

    Args:
        pipe: a ``FaceMakeUpPipeline`` or ``FaceMakeUpXLPipeline`` (``prepare_pipeline`` made, or not); the
            request's scheduler, when named, is set here too.
        request: the request. conditions: from ``prepare_conditions`` (made here when ``None``).
        progress: optional ``callable(step, steps)`` after each denoising step.
        on_latents: optional ``callable(step, steps, latents)`` after each step, ``latents`` the
            ``(B, 4, h, w)`` current latents (the demo's live preview decodes them with TAESD).

    Returns:
        The ``GenerationResult``.

    Raises:
        as ``prepare_conditions`` and the pipeline's ``__call__`` (``ValueError`` / ``FaceMakeUpInputError``
        for invalid values).
    """

    from .speed import set_scheduler

    set_scheduler(pipe, request.scheduler)
    timings = {}
    t0 = time.perf_counter()
    cond = conditions if conditions is not None else prepare_conditions(pipe, request)
    timings["conditions_s"] = time.perf_counter() - t0

    def on_step(_pipe, i, _t, _tensors):
        if progress is not None:
            progress(i + 1, request.steps)
        if on_latents is not None:
            on_latents(i + 1, request.steps, _tensors["latents"])
        return {}

    height, width = cond.size
    _, owner, weights = request.flat()
    people = {} if cond.layout is None else {"reference_people": owner, "face_masks": torch.from_numpy(cond.layout.masks)}
    t0 = time.perf_counter()
    out = pipe(request.prompt, id_embeds=pipe.face_id_embeds(cond.faces),
               face_images=[f.clip_image for f in cond.faces] if pipe.reads_clip else None,
               negative_prompt=request.negative_prompt, num_images_per_prompt=request.num_images, height=height, width=width,
               num_inference_steps=request.steps, guidance_scale=request.guidance_scale, ip_scale=request.ip_scale,
               s_scale=request.s_scale, reference_weights=weights, seed=request.seed,
               shading_image=cond.map, controlnet_conditioning_scale=request.controlnet_scale, condition=request.condition,
               truncate_prompt=request.truncate_prompt, callback_on_step_end=on_step,
               control_guidance_start=request.controlnet_start, control_guidance_end=request.controlnet_end, **people)
    timings["generate_s"] = time.perf_counter() - t0
    timings["per_step_s"] = timings["generate_s"] / request.steps
    return GenerationResult(out, cond, timings, type(pipe.scheduler).__name__)


def _people_records(request: GenerationRequest, result: GenerationResult, folder: Path, names: list[str]) -> list[dict]:
    """Write ``mask_PP.png`` per person (appended to ``names``) and return the ``"people"`` records."""
    from PIL import Image

    cond, out = result.conditions, result.output
    masks = out.face_masks.numpy() if out.face_masks is not None else cond.layout.masks  # what the attention saw
    records = []
    faces = iter(cond.faces)
    weights = iter(out.reference_weights)
    for p, (person, place) in enumerate(zip(request.persons(), cond.layout.to_json())):
        name = f"mask_{p:02d}.png"
        Image.fromarray((masks[p] > 0.5).astype(np.uint8) * 255).save(folder / name)
        names.append(name)
        rec = {"person": p, "references": [_photo_record(photo, next(faces), i) for photo, i in person.references],
               "weights": [next(weights) for _ in person.references], **place, "mask": name, "source": cond.layout.source}
        if cond.layout.layout_faces is not None:
            rec["layout_bbox"] = [float(v) for v in cond.layout.faces[p].bbox]
        if cond.layout.faces[p] is not None and cond.sh is None and request.condition == "shading" and cond.map is not None:
            rec["sh"] = np.asarray(cond.layout.faces[p].fit.sh).tolist()  # this face's own lighting in the map
        records.append(rec)
    return records


def _photo_record(photo: Photo, face, face_index: int | None = None) -> dict:
    rec = {"name": photo.label, "sha256": photo.sha256}
    if photo.path is not None:
        rec["path"] = photo.path
    if face_index is not None:
        rec["face_index"] = face_index
    return {**rec, **face.to_json()}


def write_outputs(folder: str | os.PathLike, request: GenerationRequest, result: GenerationResult, *, task: str, models: dict,
                  extra: dict | None = None, parameters: dict | None = None) -> list[str]:
    """Write a generation's files into ``folder`` (which exists).

    Files: ``image_NN.png`` (PNG text chunk ``facemakeup``: prompt, seed, index, model), ``grid.png``
    (several images), ``shading.png`` or ``keypoints.png`` (the ControlNet's map), ``mask_PP.png`` (each
    person's mask, with several people or a layout), ``conditions.png`` (``viz.conditions_sheet``, the
    masks drawn on the map) and ``provenance.json``: ``task``, ``inputs`` (references with their SHA-256,
    face and person, weights, prompts, the shading/light/layout photos, light direction and SH),
    ``people`` (with several people or a layout: per person its ``references`` with SHA-256, ``weights``,
    ``box`` and ``mask`` file, ``mask_fraction``, ``layout_face`` and that face's ``bbox`` in the layout
    photo), ``parameters`` (the request's, the scheduler, plus ``parameters``), ``models``, ``outputs``,
    ``timings``, package versions (``provenance.environment``), plus ``extra``'s keys.

    Returns:
        The names written, ``provenance.json`` last.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .provenance import environment
    from .viz import conditions_sheet

    folder = Path(folder)
    out, cond = result.output, result.conditions
    names = []
    for i, img in enumerate(out.images):
        info = PngInfo()
        info.add_text("facemakeup", json.dumps({"prompt": request.prompt, "seed": request.seed, "index": i,
                                                "model": models.get("pipeline")}))
        names.append(f"image_{i:02d}.png")
        img.save(folder / names[-1], pnginfo=info)
    if len(out.images) > 1:
        from diffusers.utils import make_image_grid

        cols = min(len(out.images), 4)
        rows = -(-len(out.images) // cols)
        blank = [out.images[0].copy().point(lambda _: 0)] * (rows * cols - len(out.images))
        make_image_grid(list(out.images) + blank, rows=rows, cols=cols).save(folder / "grid.png")
        names.append("grid.png")
    if out.shading_image is not None:
        names.append("keypoints.png" if request.condition == "keypoints" else "shading.png")
        Image.fromarray(out.shading_image).save(folder / names[-1])
    refs, owner, _ = request.flat()
    people = None
    if cond.layout is not None:
        people = _people_records(request, result, folder, names)
    conditions_sheet([p.rgb for p, _ in refs], cond.faces, shading=out.shading_image, layout=cond.layout, people=owner if people else None,
                     layout_photo=request.layout.rgb if request.layout is not None else None).save(folder / "conditions.png")
    names.append("conditions.png")
    with_map = out.shading_image is not None
    record = {
        "task": task,
        "inputs": {
            "references": [{**_photo_record(p, f, i), **({"person": o} if people else {})}
                           for (p, i), f, o in zip(refs, cond.faces, owner)],
            "reference_weights": out.reference_weights,
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "truncate_prompt": request.truncate_prompt,
            "shading_from": _photo_record(request.shading_from, request.shading_from.faces[0]) if request.shading_from else None,
            "light_from": _photo_record(request.light_from, request.light_from.faces[0]) if request.light_from else None,
            "light_dir": list(request.light_dir) if request.light_dir is not None else None,
            "light_strength": request.light_strength if request.light_dir is not None else None,
            "sh": cond.sh.tolist() if cond.sh is not None else None,
            **({"layout": {"name": request.layout.label, "sha256": request.layout.sha256, **({"path": request.layout.path}
                                                                                          if request.layout.path else {})}}
               if request.layout is not None else {}),
        },
        **({"people": people} if people else {}),
        "parameters": {**request.parameters(), "height": cond.size[0], "width": cond.size[1],
                       "controlnet_scale": request.controlnet_scale if with_map else None,
                       "controlnet_start": request.controlnet_start if with_map else None,
                       "controlnet_end": request.controlnet_end if with_map else None,
                       "condition": request.condition if with_map else None, "scheduler": result.scheduler, **(parameters or {})},
        "models": models,
        "outputs": names,
        "timings": result.timings,
        **environment(),
        **(extra or {}),
    }
    (folder / "provenance.json").write_text(json.dumps(record, indent=2, allow_nan=False), encoding="utf-8")
    return names + ["provenance.json"]
