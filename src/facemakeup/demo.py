"""The web demo: Face-MakeUpV2's demo inputs and more, as a gradio app built by ``build_demo(pipeline)``.

Everything the Face-MakeUpV2 demo takes (reference image, optional target image for the shading,
prompt, negative prompt, IP scale, s_scale, ShadingNet scale, steps, number of images, seed with a
random button, face crop factor, shading crop factor, width/height; docs/sources.md), plus:

* up to ``MAX_REFERENCES`` reference photos, each with a mixing weight (``reference_weights``);
* pose/shape of the shading map from the reference or the target photo, and its lighting from the
  reference, the target photo, or a direction picked by clicking on a lit sphere;
* a preview before generating: the detected faces (box, keypoints, CLIP crop box), the aligned
  ArcFace crop, the CLIP crop, the shading map and the lighting; a face picker for photos with
  several faces;
* several people: a group photo as the layout (its faces, left to right, give the people's places,
  poses and lighting) and one reference upload per detected face; the preview draws the people's
  masks on the map (``generation.GenerationRequest.people``, ``faces.layout``);
* the ShadingNet's window (``control_guidance_start`` / ``_end``: stop it after the early steps, which
  set pose and light, for speed);
* with a preview VAE (TAESD, ``preview_vae``), a live preview of the image while it is denoised;
* a gallery of the results and a zip of the images with their ``provenance.json``;
* examples from public-domain photos (scikit-image's astronaut, matplotlib's Grace Hopper).

Requests are queued, one generation at a time per model; uploads are checked (file size, pixel
count, readable image) and problems are shown in the page (``gr.Error``), never as a traceback.
All files the demo writes go under its output folder; uploaded file names are only shown, never
used as paths. Follows STYLE.md 18 (gradio's Blocks docs; the Face-MakeUpV2 and InstantID
``app.py`` for the inputs).

Example:
    >>> from facemakeup.demo import build_demo, launch_demo
    >>> from facemakeup.pipeline import load_pipeline
    >>> app = build_demo(load_pipeline("tiny"), output_dir="demo-out")
    >>> launch_demo(app, output_dir="demo-out")  # http://127.0.0.1:7860
"""


import hashlib
import io
import json
import os
import random
import re
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import FaceMakeUpError, ImageReadError, NoFaceError
from .faces.align import landmark_box
from .faces.image import load_image
from .faces.lighting import sh_from_direction
from .faces.render import render_sphere
from .generation import Conditions, GenerationRequest, Photo, generate, prepare_conditions, write_outputs
from .viz import draw_faces

#: Reference photos one request may mix.
MAX_REFERENCES = 4
#: People one group photo may hold (one reference upload each).
MAX_PEOPLE = 4
#: Uploads with more pixels than this are refused (4096 x 4096).
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Uploads larger than this many bytes are refused (by gradio at upload, and again here).
DEFAULT_MAX_FILE_SIZE = 20 * 1024 * 1024
#: Where the shading map's pose and face shape come from.
POSE_SOURCES = ("reference", "target photo")
#: Where the shading map's lighting comes from.
LIGHT_SOURCES = ("reference", "target photo", "direction (sphere)")
#: The negative prompt the demo starts with.
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"
#: Side of the clickable lit sphere in pixels.
SPHERE_SIZE = 160
#: Analysed photos kept in memory (by content hash).
CACHE_SIZE = 8


@dataclass
class DemoRequest:
    """Everything one preview or generation reads from the page.

    Attributes:
        references: file paths of 1..``MAX_REFERENCES`` reference photos.
        weights: mixing weight (>= 0) of each reference, in order; extra entries are ignored, and so
            are all when there is one reference.
        face_indices: which face of each reference photo (0 = largest); extra entries are ignored.
        target: optional target photo (Face-MakeUpV2's image for the shading), file path.
        pose_from: one of ``POSE_SOURCES``. light_from: one of ``LIGHT_SOURCES``.
        light_x, light_y: light direction's x (right) and y (up) in [-1, 1]; z (toward the viewer)
            is ``sqrt(1 - x^2 - y^2)`` (the point clicked on the sphere's visible half).
        light_strength: irradiance of that light (plus 0.15 ambient), see ``sh_from_direction``.
        crop_factor: CLIP face crop, keypoint box x this (V2 demo: 3).
        shading_crop_factor: shading-map crop, keypoint box x this (V2 demo: 5).
        prompt, negative_prompt: text. ip_scale, s_scale, controlnet_scale, guidance_scale: as the
            pipeline's ``ip_scale``, ``s_scale``, ``controlnet_conditioning_scale``, ``guidance_scale``.
        steps: denoising steps. num_images: images per request. seed: integer seed (``None``: refused).
        width, height: output size in pixels (multiples of 8).
        group: optional group photo (the layout: one face per person), file path; then ``people`` replaces
            ``references``.
        people: per face of the group photo, left to right, the file path of that person's reference photo.
        controlnet_start, controlnet_end: the ShadingNet's window, fractions of the steps (0 <= start < end <= 1).
    """

    references: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=lambda: [1.0] * MAX_REFERENCES)
    face_indices: list[int] = field(default_factory=lambda: [0] * MAX_REFERENCES)
    target: str | None = None
    pose_from: str = "reference"
    light_from: str = "reference"
    light_x: float = -0.5
    light_y: float = 0.3
    light_strength: float = 0.7
    crop_factor: float = 3.0
    shading_crop_factor: float = 5.0
    prompt: str = ""
    negative_prompt: str = NEGATIVE_PROMPT
    ip_scale: float = 0.5
    s_scale: float = 0.7
    controlnet_scale: float = 0.5
    guidance_scale: float = 7.5
    steps: int = 50
    num_images: int = 1
    seed: int | None = 42
    width: int = 512
    height: int = 512
    group: str | None = None
    people: list[str | None] = field(default_factory=list)
    controlnet_start: float = 0.0
    controlnet_end: float = 1.0


def safe_label(path: str | os.PathLike, prefix: str) -> str:
    """A display name for an upload: ``prefix`` and the file's base name with anything but letters,
    digits, ``.``, ``-``, ``_`` and spaces replaced (the name comes from the user's browser)."""
    name = re.sub(r"[^\w.\- ]", "_", Path(str(path)).name)[:60]
    return f"{prefix} ({name})"


def light_direction(x: float, y: float) -> np.ndarray:
    """The unit light direction for a point ``(x, y)`` of the unit disc (the sphere as seen).

    Args:
        x: right, y: up, both in [-1, 1]. Points outside the disc are taken on its rim (z = 0).

    Returns:
        ``(3,)`` float64 unit vector, camera frame (x right, y up, z toward the viewer).
    """
    r = float(np.hypot(x, y))
    if r > 1.0:
        return np.array([x / r, y / r, 0.0])
    if r == 0.0:
        return np.array([0.0, 0.0, 1.0])
    return np.array([x, y, np.sqrt(max(0.0, 1.0 - r * r))])


def sphere_point(px: float, py: float, size: int = SPHERE_SIZE) -> tuple[float, float]:
    """The disc coordinates ``(x right, y up)`` of pixel ``(px, py)`` of a ``size`` x ``size``
    sphere image (``render_sphere``'s layout: pixel centres at ``i + 0.5``)."""
    return (px + 0.5) / size * 2 - 1, 1 - (py + 0.5) / size * 2


def sphere_image(x: float, y: float, strength: float = 0.7, size: int = SPHERE_SIZE) -> np.ndarray:
    """A sphere lit from ``light_direction(x, y)``, with a cross where the light points.

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    rgb = (render_sphere(sh_from_direction(light_direction(x, y), strength), size) * 255).round().astype(np.uint8)
    cx, cy = int((x + 1) / 2 * size), int((1 - y) / 2 * size)
    for d in range(-5, 6):
        for px, py in ((cx + d, cy), (cx, cy + d)):
            if 0 <= px < size and 0 <= py < size:
                rgb[py, px] = (255, 64, 64)
    return rgb


class DemoBackend:
    """The demo's work, without gradio: reading uploads, face analysis, conditions, generation.

    Args:
        pipeline: a ``FaceMakeUpPipeline``; its LoRA is fused for inference here.
        output_dir: the only folder the demo writes to (``runs/``, ``downloads/``, ``examples/``).
        analyzer: a ``faces.FaceAnalyzer`` (default: the offline SCRFD + ArcFace, with the 3D fitter
            when the pipeline has a ShadingNet).
        max_pixels: uploads with more pixels are refused. max_file_size: bytes, same.
        model_info: what to record as the models in ``provenance.json`` (e.g. ``{"pipeline": "tiny"}``).
    """

    def __init__(self, pipeline, output_dir, analyzer=None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, model_info: dict | None = None, preview_vae=None):
        self.pipe = pipeline
        self.preview_vae = preview_vae
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.has_shading = pipeline.controlnet is not None
        self.clip_size = pipeline.image_encoder.config.image_size if pipeline.image_encoder is not None else 224
        if analyzer is None:
            from .faces import FaceAnalyzer

            analyzer = FaceAnalyzer(clip_size=self.clip_size, fitter="mediapipe" if self.has_shading else None)
        self.analyzer = analyzer
        self.max_pixels = max_pixels
        self.max_file_size = max_file_size
        self.model_info = model_info or {"pipeline": type(pipeline).__name__}
        self.default_size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        self._cache: OrderedDict[str, tuple[np.ndarray, list]] = OrderedDict()
        self._faces_lock = threading.Lock()  # onnxruntime/mediapipe sessions: one photo at a time
        self._generate_lock = threading.Lock()  # one generation at a time per model, also outside gradio's queue
        if not pipeline.face_adapter.lora_fused:
            pipeline.fuse_lora()  # inference only: merge the LoRAs (the face adapter's last), no per-step LoRA cost
        if preview_vae is not None:
            from .speed import check_vae_fits

            check_vae_fits(pipeline, preview_vae)  # refuses a VAE whose latents do not fit, before the page opens

    # ------------------------------------------------------------------ uploads
    def read_photo(self, path: str | os.PathLike, prefix: str) -> Photo:
        """Read and analyse one upload (cached by content).

        Raises:
            ImageReadError: too large (bytes or pixels), not an image, truncated; named by ``prefix``
                and the uploaded name.
            NoFaceError: no face in the photo (``FaceTooSmallError`` when all faces are too small).
        """
        label = safe_label(path, prefix)
        size = os.path.getsize(path)
        if size > self.max_file_size:
            raise ImageReadError(f"{label}: the file is {size / 2**20:.1f} MB, more than the limit of "
                                 f"{self.max_file_size / 2**20:.1f} MB; upload a smaller photo")
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self._faces_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                rgb, faces = self._cache[digest]
            else:
                buffer = io.BytesIO(data)
                buffer.name = label  # load_image names the file in its errors
                rgb = load_image(buffer, max_pixels=self.max_pixels)
                try:
                    faces = self.analyzer.get(rgb)
                except FaceMakeUpError as err:
                    raise type(err)(f"{label}: {str(err).removeprefix('<ndarray>: ')}") from None
                self._cache[digest] = (rgb, faces)
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        if not faces:
            raise NoFaceError(f"{label}: no face found; use a photo with a clearly visible, roughly frontal face")
        return Photo(label, digest, rgb, faces)

    # ------------------------------------------------------------------ conditions
    def request(self, req: DemoRequest) -> GenerationRequest:
        """The page's request as ``generation.GenerationRequest``: its photos read and analysed, its
        choices (pose and light sources, weights, face indices) turned into the generator's inputs.

        Raises:
            ValueError: a missing or inconsistent input (no reference, no target where one is needed,
                weights summing to 0); the message says what to change.
            ImageReadError, NoFaceError: from ``read_photo``.
        """
        if req.group:
            return self._group_request(req)
        refs = [r for r in (req.references or []) if r]
        if not refs:
            raise ValueError("upload at least one reference photo of the person")
        if len(refs) > MAX_REFERENCES:
            raise ValueError(f"{len(refs)} reference photos uploaded; the demo mixes at most {MAX_REFERENCES}")
        weights = [float(w) for w in list(req.weights)[: len(refs)]] if len(refs) > 1 else [1.0]  # one photo: nothing to weigh
        if len(weights) != len(refs) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"reference weights must be >= 0 with a positive sum, got {weights}")
        photos = [self.read_photo(p, f"reference {k + 1}") for k, p in enumerate(refs)]
        indices = [int(list(req.face_indices)[k]) if k < len(req.face_indices) else 0 for k in range(len(photos))]
        needs_target = self.has_shading and ("target photo" in (req.pose_from, req.light_from))
        if needs_target and not req.target:
            raise ValueError("the shading map's pose or lighting comes from the target photo: upload one, or choose 'reference'")
        target = self.read_photo(req.target, "target") if req.target and self.has_shading else None
        sphere = self.has_shading and req.light_from == "direction (sphere)"
        return GenerationRequest(
            prompt=req.prompt, references=list(zip(photos, indices)), negative_prompt=req.negative_prompt or None, weights=weights,
            shading_from=target if req.pose_from == "target photo" else None,
            light_from=target if req.light_from == "target photo" else None,
            light_dir=light_direction(req.light_x, req.light_y).tolist() if sphere else None, light_strength=float(req.light_strength),
            condition="shading" if self.has_shading else "none", crop_factor=float(req.crop_factor),
            shading_crop_factor=float(req.shading_crop_factor), seed=int(req.seed) if req.seed is not None else 0,
            num_images=int(req.num_images), steps=int(req.steps), guidance_scale=float(req.guidance_scale), ip_scale=float(req.ip_scale),
            s_scale=float(req.s_scale), controlnet_scale=float(req.controlnet_scale), height=int(req.height), width=int(req.width),
            controlnet_start=float(req.controlnet_start), controlnet_end=float(req.controlnet_end),
        )

    def group_faces(self, path: str | os.PathLike) -> Photo:
        """The group photo, read and analysed, its faces left to right (person 1 is the leftmost).

        Raises:
            ImageReadError, NoFaceError: as ``read_photo``; ValueError: more than ``MAX_PEOPLE`` faces.
        """
        from .faces.layout import left_to_right

        photo = self.read_photo(path, "group photo")
        if len(photo.faces) > MAX_PEOPLE:
            raise ValueError(f"{photo.label}: {len(photo.faces)} faces found; the demo places at most {MAX_PEOPLE} people")
        return replace(photo, faces=[photo.faces[i] for i in left_to_right(photo.faces)])

    def _group_request(self, req: DemoRequest) -> GenerationRequest:
        """A several-people request: the group photo as the layout, one reference per face."""
        from .generation import Person

        if any(r for r in (req.references or [])):
            raise ValueError("a group photo takes one reference per face (the uploads under it): remove the reference photos "
                             "above, or the group photo")
        if self.has_shading and req.pose_from == "target photo":
            raise ValueError("with a group photo the poses come from its faces: choose 'reference' for the pose")
        group = self.group_faces(req.group)
        n = len(group.faces)
        given = list(req.people or []) + [None] * n
        missing = [k + 1 for k in range(n) if not given[k]]
        if missing:
            raise ValueError(f"the group photo has {n} face(s): upload a reference photo for face(s) {missing} (counted from the left)")
        people = [Person([(self.read_photo(given[k], f"person {k + 1}"), 0)]) for k in range(n)]
        needs_target = self.has_shading and req.light_from == "target photo"
        if needs_target and not req.target:
            raise ValueError("the shading map's lighting comes from the target photo: upload one, or choose 'reference'")
        target = self.read_photo(req.target, "target") if needs_target else None
        sphere = self.has_shading and req.light_from == "direction (sphere)"
        return GenerationRequest(
            prompt=req.prompt, references=[], people=people, layout=group, negative_prompt=req.negative_prompt or None,
            light_from=target, light_dir=light_direction(req.light_x, req.light_y).tolist() if sphere else None,
            light_strength=float(req.light_strength), condition="shading" if self.has_shading else "none",
            crop_factor=float(req.crop_factor), shading_crop_factor=float(req.shading_crop_factor),
            seed=int(req.seed) if req.seed is not None else 0, num_images=int(req.num_images), steps=int(req.steps),
            guidance_scale=float(req.guidance_scale), ip_scale=float(req.ip_scale), s_scale=float(req.s_scale),
            controlnet_scale=float(req.controlnet_scale), height=int(req.height), width=int(req.width),
            controlnet_start=float(req.controlnet_start), controlnet_end=float(req.controlnet_end),
        )

    def conditions(self, req: DemoRequest) -> Conditions:
        """Read the photos of a request, pick the faces and build the shading map
        (``generation.prepare_conditions``, as ``facemakeup generate``).

        Raises:
            as ``request``; ``NoFaceError`` for a face index beyond the faces found; ``FitError`` when
            the 3D fit of the face the shading map needs failed.
        """
        return prepare_conditions(self.pipe, self.request(req))

    def preview(self, req: DemoRequest) -> tuple[list[tuple[Image.Image, str]], list[int], str]:
        """What the model will see, before generating.

        Returns:
            ``(items, face_counts, message)``: gallery items ``(image, caption)`` (each reference
            with all its faces drawn, its aligned ArcFace crop and CLIP crop; the target; the
            shading map and its lighting on a sphere), the number of faces in each reference photo,
            and a one-line Markdown summary.

        Raises:
            as ``conditions``.
        """
        cond = self.conditions(req)
        request = cond.request
        if request.people is not None:
            return self._group_preview(req, cond)
        items = []
        for k, ((photo, i), face) in enumerate(zip(request.references, cond.faces)):
            items.append((draw_faces(photo.rgb, [replace(f, clip_box=landmark_box(f.kps, req.crop_factor)) for f in photo.faces]),
                          f"{photo.label}: {len(photo.faces)} face(s), using #{i}"))
            items.append((Image.fromarray(face.aligned), f"reference {k + 1}: aligned ArcFace crop (112 px)"))
            items.append((Image.fromarray(face.clip_image), f"reference {k + 1}: CLIP crop (x{req.crop_factor:g})"))
        target = request.shading_from or request.light_from
        if target is not None:
            items.append((draw_faces(target.rgb, target.faces[:1]), f"{target.label}: face #0 used"))
        if cond.map is not None:
            items.append((Image.fromarray(cond.map), f"shading map: pose from {req.pose_from}, light from {req.light_from}"))
            sphere = (render_sphere(cond.sh, SPHERE_SIZE) * 255).round().astype(np.uint8)
            items.append((Image.fromarray(sphere), "the shading map's lighting on a sphere"))
        counts = [len(p.faces) for p, _ in request.references]
        summary = "; ".join(f"{p.label}: {n} face(s)" for (p, _), n in zip(request.references, counts))
        return items, counts, f"Ready: {summary}. Press **Generate**."

    def _group_preview(self, req: DemoRequest, cond: Conditions):
        from .viz import people_panel

        request = cond.request
        group = request.layout
        drawn = draw_faces(group.rgb, group.faces, labels=[k + 1 for k in range(len(group.faces))])
        items = [(drawn, f"{group.label}: {len(group.faces)} face(s), person 1 = the leftmost")]
        for k, ((photo, _), face) in enumerate(zip(request.flat()[0], cond.faces)):
            items.append((Image.fromarray(face.aligned), f"person {k + 1}: {photo.label}, aligned ArcFace crop"))
        items.append((people_panel(cond.layout, cond.map, height=max(256, cond.size[0])),
                      "the map with each person's mask (person 1 red, 2 blue, 3 green, 4 yellow)"))
        return items, [len(group.faces)], f"Ready: {len(group.faces)} people. Press **Generate**."

    # ------------------------------------------------------------------ generation
    def generate(self, req: DemoRequest, progress=None, preview=None) -> tuple[list[Path], Path, str]:
        """Generate, save the images with their provenance in a new run folder, and zip them.

        Args:
            req: the request. progress: optional ``callable((done, total), desc=str)`` called after
                each denoising step (``gr.Progress`` fits).
            preview: optional ``callable(images, done, total)``, with a preview VAE: the current latents
                decoded by it (PIL images at the output size), every ``preview_every(steps)`` steps.

        Returns:
            ``(image_paths, zip_path, message)``; all paths are under ``output_dir``.

        Raises:
            as ``conditions``, and ``ValueError`` for an empty prompt or out-of-range numbers.
        """
        if not (req.prompt or "").strip():
            raise ValueError("write a prompt, e.g. 'a photo of a person smiling, best quality'")
        if req.seed is None:
            raise ValueError("enter a seed (an integer >= 0) or press 'Random seed'")
        steps, num_images, seed = int(req.steps), int(req.num_images), int(req.seed)
        width, height = int(req.width), int(req.height)
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        if steps < 1 or num_images < 1 or not 0 <= seed < 2**63:
            raise ValueError(f"steps and number of images must be >= 1 and the seed >= 0 (got {steps}, {num_images}, {seed})")
        if self.has_shading and not 0 <= float(req.controlnet_start) < float(req.controlnet_end) <= 1:
            raise ValueError(f"the ShadingNet runs from 'ShadingNet from' to 'ShadingNet until' (fractions of the steps): "
                             f"{req.controlnet_start:g} must be below {req.controlnet_end:g}")
        t0 = time.perf_counter()
        cond = self.conditions(req)
        analysis_s = time.perf_counter() - t0
        report = None if progress is None else (lambda i, n: progress((i, n), desc=f"denoising step {i}/{n}"))
        live = None
        if preview is not None and self.preview_vae is not None:
            every = preview_every(steps)

            def live(i, n, latents):
                if i % every == 0 or i == n:
                    preview(self.preview_images(latents), i, n)
        with self._generate_lock:
            result = generate(self.pipe, cond.request, cond, progress=report, on_latents=live)
        result.timings["face_analysis_s"] = analysis_s
        return self._save(req, result)

    def preview_images(self, latents) -> list[Image.Image]:
        """The latents ``(B, 4, h, w)`` decoded by the preview VAE (TAESD reads them unscaled), as PIL images."""
        import torch

        vae = self.preview_vae
        with torch.no_grad():
            decoded = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample  # [-1, 1]
        return self.pipe.image_processor.postprocess(decoded.float(), output_type="pil")

    def _save(self, req: DemoRequest, result) -> tuple[list[Path], Path, str]:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run_dir = self._inside("runs", run_id)
        run_dir.mkdir(parents=True)
        page = {k: getattr(req, k) for k in ("pose_from", "light_from", "light_x", "light_y")}
        names = write_outputs(run_dir, result.conditions.request, result, task="demo", parameters={**page, "run": run_id},
                              models={**self.model_info, "face": self.analyzer.model_files})
        zip_path = self._inside("downloads", f"facemakeup-{run_id}.zip")
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                zf.write(run_dir / name, f"{run_id}/{name}")
        total = result.timings["face_analysis_s"] + result.timings["generate_s"]
        message = f"Generated {len(result.output.images)} image(s) in {total:.1f} s (seed {int(req.seed)}); download below."
        images = [n for n in names if n.startswith("image_")]
        return [run_dir / n for n in images], zip_path, message

    def _inside(self, *parts: str) -> Path:
        """``output_dir / parts``, refused if it would leave ``output_dir``."""
        path = self.output_dir.joinpath(*parts).resolve()
        if self.output_dir not in path.parents:
            raise ValueError(f"refusing to write outside the output folder: {path}")
        return path

    def examples(self) -> list[list]:
        """Example rows ``[references, target, prompt, pose_from, light_from]`` from public-domain
        photos (scikit-image's astronaut, matplotlib's Grace Hopper), written to ``examples/``."""
        import matplotlib.cbook
        import skimage.data

        folder = self._inside("examples")
        folder.mkdir(exist_ok=True)
        astronaut, hopper = folder / "astronaut.png", folder / "grace_hopper.jpg"
        if not astronaut.is_file():
            Image.fromarray(skimage.data.astronaut()).save(astronaut)
        if not hopper.is_file():
            hopper.write_bytes(matplotlib.cbook.get_sample_data("grace_hopper.jpg").read())
        rows = [
            [[str(astronaut)], None, "a photo of a smiling woman in a spacesuit, best quality", "reference", "reference"],
            [[str(hopper)], None, "an oil painting of an old woman in a navy uniform", "reference", "direction (sphere)"],
            [[str(astronaut), str(hopper)], None, "a portrait photo of a woman in a garden, best quality", "reference", "reference"],
        ]
        if self.has_shading:
            rows.append([[str(astronaut)], str(hopper), "a photo of a woman in a red dress, best quality", "target photo", "target photo"])
        return rows

    def group_examples(self) -> list[list]:
        """Example rows ``[group photo, reference of face 1, reference of face 2, prompt]``: the astronaut and
        Grace Hopper side by side as the layout (``examples/pair.png``), each as her own reference."""
        folder = self._inside("examples")
        self.examples()  # writes the two portraits
        pair = _pair_photo(folder)
        return [[str(pair), str(folder / "astronaut.png"), str(folder / "grace_hopper.jpg"), "two women smiling in a garden, best quality"]]


def _pair_photo(folder: Path) -> Path:
    """``folder/pair.png``: scikit-image's astronaut (left) and matplotlib's Grace Hopper (right) side by side
    (both public domain), the demo's example group photo."""
    import matplotlib.cbook
    import skimage.data

    path = folder / "pair.png"
    if not path.is_file():
        hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((512, 600))
        pair = Image.new("RGB", (1024, 600))
        pair.paste(Image.fromarray(skimage.data.astronaut()), (0, 44))
        pair.paste(hopper, (512, 0))
        pair.save(path)
    return path


def backbone_text(pipeline, model_info: dict | None) -> str:
    """What the page says the demo runs on: ``"on SDXL"`` / ``"on Stable Diffusion 1.5"`` (the pipeline's
    family), or for a tiny random model (``model_info["pipeline"]`` ``"tiny"`` / ``"tiny-xl"``) that it is one
    and that its images are noise."""
    family = "SDXL" if getattr(pipeline, "text_encoder_2", None) is not None else "Stable Diffusion 1.5"
    if (model_info or {}).get("pipeline") in ("tiny", "tiny-xl"):
        return (f"on a tiny, randomly initialised {family}-shaped test model ({model_info['pipeline']}): **its images are noise, "
                "not faces**; start the demo with real weights for faces")
    return f"on {family}"


def preview_every(steps: int) -> int:
    """Decode a live preview every this many steps: every step up to 10 steps, else about 10 previews."""
    return max(1, steps // 10)


def live_generation(backend, req: DemoRequest, progress, run):
    """``backend.generate`` in a worker thread; yields ``(gallery, download, status)`` with each live
    preview, then the result. Errors of the generation reach the page as ``run`` turns them."""
    import queue

    updates: queue.Queue = queue.Queue()
    done = {}

    def work():
        try:
            done["result"] = run(backend.generate, req, progress, lambda images, i, n: updates.put((images, i, n)))
        except BaseException as err:  # noqa: BLE001 - handed to the page below
            done["error"] = err
        finally:
            updates.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (item := updates.get()) is not None:
        images, i, n = item
        yield images, None, f"Preview (TAESD) after step {i}/{n} ..."
    thread.join()
    if "error" in done:
        raise done["error"]
    paths, zip_path, message = done["result"]
    yield [str(p) for p in paths], str(zip_path), message


def build_demo(pipeline, output_dir="facemakeup-demo", analyzer=None, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_file_size: int = DEFAULT_MAX_FILE_SIZE, model_info: dict | None = None, title: str = "Face-MakeUp",
               preview_vae=None):
    """The gradio app around ``pipeline``; mount it or ``launch_demo`` it.

    Args:
        pipeline: a ``FaceMakeUpPipeline`` (with a ShadingNet for the shading/lighting inputs).
        output_dir: the folder for results, downloads and examples (created).
        analyzer, max_pixels, max_file_size, model_info, preview_vae: see ``DemoBackend`` (with a
            ``preview_vae``, the gallery shows the image live while it is denoised).
        title: page title.

    Returns:
        ``gr.Blocks``, queued with one generation at a time (``default_concurrency_limit=1``); its
        ``DemoBackend`` is at ``.backend``.
    """
    import gradio as gr

    backend = DemoBackend(pipeline, output_dir, analyzer, max_pixels, max_file_size, model_info, preview_vae)
    size = backend.default_size
    shading_visible = backend.has_shading

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}: identity-consistent face generation\n"
            "Upload one or more photos of a person, check the preview, write a prompt and press **Generate**. "
            "Face-MakeUp ([V1](https://arxiv.org/abs/2501.02523), [V2](https://arxiv.org/abs/2510.21775)) "
            f"{backbone_text(pipeline, backend.model_info)}."
        )
        with gr.Row():
            with gr.Column(scale=1):
                references = gr.File(label=f"Reference photo(s) of the person (up to {MAX_REFERENCES})", file_count="multiple",
                                     file_types=["image"], type="filepath", elem_id="references")
                weights, pickers, slots = [], [], []
                for k in range(MAX_REFERENCES):
                    with gr.Row(visible=False) as slot:
                        weights.append(gr.Slider(0, 1, value=1.0, step=0.05, label=f"weight of reference {k + 1}",
                                                 visible=False, elem_id=f"weight{k}"))
                        pickers.append(gr.Dropdown(choices=[("#0 (largest)", 0)], value=0, label=f"face in reference {k + 1}",
                                                   visible=False, interactive=True, elem_id=f"face{k}"))
                    slots.append(slot)
                with gr.Accordion("Several people: a group photo as the layout", open=False, elem_id="people"):
                    group = gr.File(label=f"Group photo, one face per person (up to {MAX_PEOPLE}): their places, poses and lighting",
                                    file_types=["image"], type="filepath", elem_id="group")
                    person_files = [gr.File(label=f"reference photo of face {k + 1} (from the left)", file_types=["image"], type="filepath",
                                            visible=False, elem_id=f"person{k}") for k in range(MAX_PEOPLE)]
                prompt = gr.Textbox(label="Prompt", placeholder="a photo of a person smiling, best quality", elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value=NEGATIVE_PROMPT, elem_id="negative")
                with gr.Accordion("Shading and lighting (ShadingNet)", open=True, visible=shading_visible):
                    target = gr.File(label="Target photo for the shading (optional)", file_types=["image"], type="filepath", elem_id="target")
                    pose_from = gr.Radio(list(POSE_SOURCES), value="reference", label="Pose and face shape from", elem_id="pose_from")
                    light_from = gr.Radio(list(LIGHT_SOURCES), value="reference", label="Lighting from", elem_id="light_from")
                    with gr.Row():
                        sphere = gr.Image(value=sphere_image(-0.5, 0.3), label="Click on the sphere to place the light",
                                          interactive=False, height=SPHERE_SIZE, width=SPHERE_SIZE, elem_id="sphere")
                        with gr.Column():
                            light_x = gr.Slider(-1, 1, value=-0.5, step=0.01, label="light x (right)", elem_id="light_x")
                            light_y = gr.Slider(-1, 1, value=0.3, step=0.01, label="light y (up)", elem_id="light_y")
                            strength = gr.Slider(0, 2, value=0.7, step=0.05, label="light strength", elem_id="light_strength")
                    shading_crop = gr.Slider(2, 8, value=5, step=0.5, label="Shading crop factor", elem_id="shading_crop")
                    controlnet_scale = gr.Slider(0, 1, value=0.5, step=0.05, label="ShadingNet scale", elem_id="controlnet_scale")
                    with gr.Row():
                        controlnet_start = gr.Slider(0, 1, value=0.0, step=0.05, label="ShadingNet from (fraction of the steps)",
                                                     elem_id="controlnet_start")
                        controlnet_end = gr.Slider(0, 1, value=1.0, step=0.05, label="ShadingNet until (0.4: faster, pose and light kept)",
                                                   elem_id="controlnet_end")
                with gr.Accordion("Generation settings", open=False, elem_id="settings"):
                    ip_scale = gr.Slider(0.1, 2, value=0.5, step=0.05, label="IP scale (identity strength)", elem_id="ip_scale")
                    s_scale = gr.Slider(0, 2, value=0.7, step=0.05, label="s_scale (CLIP face detail in the ID tokens)", elem_id="s_scale")
                    guidance = gr.Slider(1, 15, value=7.5, step=0.5, label="Guidance scale", elem_id="guidance")
                    steps = gr.Slider(1, 100, value=50, step=1, label="Steps", elem_id="steps")
                    num_images = gr.Slider(1, 5, value=1, step=1, label="Number of images", elem_id="num_images")
                    with gr.Row():
                        seed = gr.Number(value=42, precision=0, minimum=0, label="Seed", elem_id="seed")
                        dice = gr.Button("Random seed", elem_id="random_seed")
                    crop = gr.Slider(1, 6, value=3, step=0.5, label="Face crop factor", elem_id="crop")
                    lo = min(256, size)
                    width = gr.Slider(lo, 1024, value=size, step=8, label="Width", elem_id="width")
                    height = gr.Slider(lo, 1024, value=size, step=8, label="Height", elem_id="height")
                with gr.Row():
                    preview_btn = gr.Button("Preview", elem_id="preview_button")
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate_button")
            with gr.Column(scale=1):
                status = gr.Markdown("Upload a reference photo to start.", elem_id="status")
                preview = gr.Gallery(label="What the model will see", columns=3, height="auto", elem_id="preview")
                gallery = gr.Gallery(label="Generated", columns=3, height="auto", format="png", elem_id="gallery")
                download = gr.File(label="Download: images + provenance.json (zip)", interactive=False, elem_id="download")
        gr.Examples(backend.examples(), inputs=[references, target, prompt, pose_from, light_from], label="Examples (public-domain photos)")

        gr.Examples(backend.group_examples(), inputs=[group, *person_files[:2], prompt], label="Two people (public-domain photos)")

        controls = [references, *weights, *pickers, target, pose_from, light_from, light_x, light_y, strength, crop, shading_crop,
                    prompt, negative, ip_scale, s_scale, controlnet_scale, guidance, steps, num_images, seed, width, height,
                    controlnet_start, controlnet_end, group, *person_files]

        def request(values, reset_faces: bool = False) -> DemoRequest:
            refs = values[0]
            v = values[1 + 2 * MAX_REFERENCES:]
            faces = [0] * MAX_REFERENCES if reset_faces else [int(i or 0) for i in values[1 + MAX_REFERENCES: 1 + 2 * MAX_REFERENCES]]
            return DemoRequest(
                references=[str(r) for r in refs] if refs else [], weights=[float(w) for w in values[1: 1 + MAX_REFERENCES]],
                face_indices=faces, target=v[0], pose_from=v[1], light_from=v[2], light_x=v[3], light_y=v[4], light_strength=v[5],
                crop_factor=v[6], shading_crop_factor=v[7], prompt=v[8], negative_prompt=v[9], ip_scale=v[10], s_scale=v[11],
                controlnet_scale=v[12], guidance_scale=v[13], steps=int(v[14]), num_images=int(v[15]),
                seed=v[16], width=int(v[17]), height=int(v[18]), controlnet_start=float(v[19]), controlnet_end=float(v[20]),
                group=str(v[21]) if v[21] else None, people=[str(f) if f else None for f in v[22:22 + MAX_PEOPLE]],
            )

        def run(fn, *args):
            try:
                return fn(*args)
            except (FaceMakeUpError, ValueError, IndexError) as err:
                raise gr.Error(str(err), duration=None, print_exception=False) from None

        def on_references(*values):
            refs = values[0] or []
            if not refs:
                hidden = [gr.update(visible=False)] * MAX_REFERENCES
                return [None, "Upload a reference photo to start.", *hidden, *hidden, *hidden]
            req = request(values, reset_faces=True)
            items, counts, message = run(backend.preview, req)
            n = len(counts)
            slot_updates = [gr.update(visible=k < n and (n > 1 or counts[k] > 1)) for k in range(MAX_REFERENCES)]
            weight_updates = [gr.update(visible=k < n and n > 1) for k in range(MAX_REFERENCES)]
            picker_updates = [
                gr.update(choices=[(f"#{i}" + (" (largest)" if i == 0 else ""), i) for i in range(counts[k])], value=0,
                          visible=counts[k] > 1) if k < n else gr.update(visible=False)
                for k in range(MAX_REFERENCES)
            ]
            return [items, message, *slot_updates, *weight_updates, *picker_updates]

        def on_preview(*values):
            req = request(values)
            if not values[0] and not req.group:
                return None, "Upload a reference photo to start."
            if req.group and not all(req.people[:len(backend.group_faces(req.group).faces)]):
                return None, "Upload a reference photo for each face of the group photo (counted from the left)."
            items, _, message = run(backend.preview, req)
            return items, message

        def on_group(*values):
            req = request(values)
            if not req.group:
                return [None, "Upload a reference photo to start.", *[gr.update(visible=False)] * MAX_PEOPLE]
            n = len(run(backend.group_faces, req.group).faces)
            shown = [gr.update(visible=k < n) for k in range(MAX_PEOPLE)]
            if not all(req.people[:n]):
                return [None, f"The group photo has {n} face(s): upload one reference photo per face, counted from the left.", *shown]
            items, _, message = run(backend.preview, req)
            return [items, message, *shown]

        def on_generate(*values, progress=gr.Progress()):
            if backend.preview_vae is None:
                paths, zip_path, message = run(backend.generate, request(values), progress)
                yield [str(p) for p in paths], str(zip_path), message
                return
            yield from live_generation(backend, request(values), progress, run)

        def on_sphere(x, y, s, evt: gr.SelectData):
            px, py = sphere_point(*evt.index)
            px, py = (round(float(np.clip(px, -1, 1)), 2), round(float(np.clip(py, -1, 1)), 2))  # the sliders' step
            return px, py, "direction (sphere)", sphere_image(px, py, s)

        faces_events = {"concurrency_id": "faces", "concurrency_limit": 1}
        references.change(on_references, controls, [preview, status, *slots, *weights, *pickers], **faces_events)
        group.change(on_group, controls, [preview, status, *person_files], **faces_events)
        triggers = [target.change, pose_from.input, light_from.input, crop.release, shading_crop.release, width.release,
                    height.release, light_x.release, light_y.release, strength.release, preview_btn.click]
        triggers += [p.input for p in pickers] + [f.change for f in person_files]
        gr.on(triggers, on_preview, controls, [preview, status], **faces_events)
        for slider in (light_x, light_y, strength):
            slider.input(lambda x, y, s: sphere_image(x, y, s), [light_x, light_y, strength], sphere, queue=False, show_progress="hidden")
        sphere.select(on_sphere, [light_x, light_y, strength], [light_x, light_y, light_from, sphere], queue=False).then(
            on_preview, controls, [preview, status], **faces_events)
        dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, queue=False)
        generate_btn.click(on_generate, controls, [gallery, download, status], concurrency_id="generate", concurrency_limit=1)

    demo.queue(default_concurrency_limit=1)
    demo.backend = backend
    return demo


def launch_demo(demo, output_dir, host: str = "127.0.0.1", port: int = 7860, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
                prevent_thread_lock: bool = False):
    """Serve a ``build_demo`` app: bound to ``host`` (loopback unless told), uploads capped at
    ``max_file_size`` bytes, files served only from gradio's cache and ``output_dir``, no
    server-side rendering (no node), system fonts (no font downloads)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, max_file_size=max_file_size, allowed_paths=[str(Path(output_dir).resolve())],
                       ssr_mode=False, theme=theme, prevent_thread_lock=prevent_thread_lock)
