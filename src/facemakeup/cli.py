"""``facemakeup`` command line. Thin: parse, call the library, print.

    facemakeup generate --reference PHOTO --prompt TEXT --out DIR [--model ID|PATH|tiny|tiny-xl] [--seed N] ...
    facemakeup generate --person A.jpg --person B1.jpg,B2.jpg [--layout GROUP.jpg] --prompt TEXT --out DIR ...
    facemakeup analyze PHOTO_OR_DIR_OR_GLOB... --out DIR
    facemakeup download PARQUET_OR_URL_LIST OUT
    facemakeup build-dataset INPUT OUT [--format records|webdataset|face-makeup-v2]
    facemakeup convert SRC DST --to ours|face-makeup-v2|ip-adapter
    facemakeup evaluate (--pairs FILE.csv | --generated DIR --references DIR) --out DIR [--metrics ...]
    facemakeup benchmark --model ID|PATH|tiny|tiny-xl --identities DIR --out DIR [--prompts FILE] [--seeds N]

Every failure prints one line, ``error: ...``, and exits with the status of its kind (``errors.EXIT_STATUS``:
1 missing model, 2 bad input, 3 no face, 4 output folder, 5 unusable weights file, 6 out of memory,
70 internal error); ``facemakeup --debug ...`` also prints the traceback.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import sys
import time
from pathlib import Path

import click
import numpy as np

from .errors import EXIT_INTERNAL, EXIT_STATUS, FaceMakeUpError, FaceMakeUpInputError, FitError, NoFaceError

logger = logging.getLogger("facemakeup")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


class _Main(click.Group):
    """The command group; turns every error into one line and a documented exit status (``_exit``)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except click.UsageError as err:  # one line, not click's usage block
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(f"error: {err.format_message()}{hint}", err=True)
            sys.exit(err.exit_code)
        except Exception as err:  # noqa: BLE001 - every failure becomes one line and a status
            _exit(err, debug=bool(ctx.params.get("debug")))


@click.group(cls=_Main, epilog="\b\nExit status (every error is one line on stderr; --debug adds the traceback):\n" + "\n".join(
    f"  {s:<3} {what}" for s, what in [(0, "success"), *sorted({(st, w.split(" (")[0]) for _, st, w in EXIT_STATUS}),
                                       (EXIT_INTERNAL, "internal error (a bug: rerun with --debug and report it)")]))
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.option("--debug", is_flag=True, help="On an error, also print its traceback.")
def main(verbose: bool, debug: bool) -> None:
    """Identity-consistent, controllable face generation (Face-MakeUp / Face-MakeUpV2)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(err: Exception) -> None:
    """Raise ``err`` as a named error (plain ``ValueError``s are bad input); ``_Main`` prints and exits."""
    if isinstance(err, FaceMakeUpError):
        raise err
    raise FaceMakeUpInputError(str(err)) from err



def _folder_out(path: Path, flag: str) -> None:
    """``path`` may become an output folder: not an existing file (status 4, as every output-folder problem)."""
    from .errors import OutputError

    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder; pass a folder path")


def _face_choice(ctx, param, value):
    """``--face-index``: "all" or a face number (0 = the main face)."""
    if value is None or str(value).lower() == "all":
        return None if value is None else "all"
    try:
        index = int(value)
    except ValueError:
        index = -1
    if index < 0:
        raise click.BadParameter(f"expected 'all' or a face number >= 0 (0 = the main face), got {value!r}")
    return index


def _shard(ctx, param, value) -> tuple[int, int]:
    """``--shard I/N`` -> ``(I, N)`` with 0 <= I < N."""
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N (e.g. 0/4), got {value!r}") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"{value}: need 0 <= I < N")
    return i, n


def _light_dir(ctx, param, value):
    if value is None:
        return None
    try:
        xyz = [float(v) for v in value.split(",")]
    except ValueError:
        xyz = []
    if len(xyz) != 3 or not any(xyz) or not all(math.isfinite(c) for c in xyz):
        raise click.BadParameter(f"expected three numbers x,y,z (x right, y up, z toward the viewer), got {value!r}")
    return xyz


def _person(ctx, param, values):
    """``--person A.jpg`` / ``--person A1.jpg,A2.jpg`` -> one list of paths per person."""
    people = []
    for value in values:
        paths = [v.strip() for v in value.split(",")]
        if not all(paths):
            raise click.BadParameter(f"expected PHOTO or PHOTO1,PHOTO2,... (photos of one person), got {value!r}")
        people.append([Path(v) for v in paths])
    return people


def _face_list(ctx, param, value):
    """``--layout-faces 1,0`` -> ``[1, 0]``."""
    if value is None:
        return None
    try:
        picks = [int(v) for v in value.split(",")]
    except ValueError:
        picks = [-1]
    if any(k < 0 for k in picks):
        raise click.BadParameter(f"expected one face number >= 0 per person (0 = leftmost in the layout), e.g. 1,0; got {value!r}")
    return picks


@main.command()
@click.option("--reference", "references", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Photo of the person; repeat to mix several references (one person). For several people use --person.")
@click.option("--person", "persons", multiple=True, callback=_person,
              help="Photo(s) of one person, comma-separated (A1.jpg,A2.jpg are mixed); repeat once per person in the image. "
                   "Not with --reference.")
@click.option("--layout", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Photo with one face per person: the people's places (left to right), poses and lighting [default: side by side].")
@click.option("--layout-faces", default=None, callback=_face_list,
              help="Which layout face each --person takes, counted left to right from 0, e.g. 1,0 [default: one each, in order].")
@click.option("--mask", "mask_kind", default="box", show_default=True, type=click.Choice(["box", "parsing"]),
              help="A person's region from its layout face: the face box grown to the head, or the face parser's head region.")
@click.option("--weight", "weights", multiple=True, type=float,
              help="Mixing weight per --reference photo (default equal); with --person, one per photo in the order given, mixed within each person.")
@click.option("--prompt", required=True, help='Text prompt, e.g. "a smiling woman with blonde hair".')
@click.option("--negative-prompt", default=None, help="Negative prompt.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--model", default=None, help="'tiny' / 'tiny-xl' (random SD 1.5- / SDXL-shaped, noise images), a saved FaceMakeUp(XL)Pipeline folder, or an SD 1.5 or SDXL backbone id/folder (told apart by its model_index.json / UNet config) [default: the backbone a training run given as --adapter / --shadingnet records, else stable-diffusion-v1-5/stable-diffusion-v1-5].")
@click.option("--image-encoder", default=None, help="CLIP image encoder id/folder [default: laion/CLIP-ViT-H-14-laion2B-s32B-b79K].")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help="ID-adapter weights: an IP-Adapter-FaceID / -Plus / -PlusV2 / -Portrait file (SD 1.5 or SDXL), InstantID's ip-adapter.bin, a Face-MakeUp V1/V2 model.bin, or our folder (face_adapter/).")
@click.option("--adapter-lora", default=None, type=click.Path(dir_okay=False, path_type=Path), help="The adapter's LoRA as a file of its own (h94's *_lora.safetensors), for an --adapter file that holds the IP k/v alone.")
@click.option("--shadingnet", default=None, help="ControlNet weights: Face-MakeUp V1/V2 model.bin, our folder (shadingnet/), a ControlNet folder, or 'init' (untrained).")
@click.option("--condition", default="shading", show_default=True, type=click.Choice(["shading", "keypoints", "none"]),
              help="What the ControlNet reads: the shading map (Face-MakeUpV2), the 5-keypoint map (Face-MakeUp V1), or nothing.")
@click.option("--shortcut/--no-shortcut", default=None, help="FaceID-Plus v1 checkpoints need --no-shortcut (PlusV2 and Face-MakeUp: shortcut, the default).")
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx [default: offline SCRFD-500M + w600k_mbf].")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--num-images", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance-scale", default=7.5, show_default=True, type=float)
@click.option("--ip-scale", default=0.6, show_default=True, type=float, help="Weight of the ID attention.")
@click.option("--s-scale", default=1.0, show_default=True, type=float, help="Weight of the CLIP (Perceiver) part of the ID tokens.")
@click.option("--controlnet-scale", default=0.5, show_default=True, type=float, help="Weight of the ShadingNet.")
@click.option("--shading-from", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Take pose, shape and lighting of the shading map from this photo (V2's target image).")
@click.option("--light-from", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Relight: take only the lighting (SH) from this photo.")
@click.option("--light-dir", default=None, callback=_light_dir, help="Relight with one light from x,y,z (x right, y up, z toward the viewer), e.g. -1,0,1.")
@click.option("--light-strength", default=0.7, show_default=True, type=click.FloatRange(0), help="With --light-dir: irradiance on a surface facing the light (plus 0.15 ambient).")
@click.option("--height", default=None, type=int, help="Pixels, multiple of 8 [default: the model's, 512 for SD 1.5].")
@click.option("--width", default=None, type=int)
@click.option("--face-index", "--face", "face_index", default="0", show_default=True, callback=_face_choice,
              help="Which face of each photo: 0 = the main face (visible size, centrality, detector score), N = the N-th in that order, 'all' = every face (mixed as references).")
@click.option("--crop-factor", default=3.0, show_default=True, type=float, help="CLIP face crop: keypoint box x this.")
@click.option("--shading-crop-factor", default=5.0, show_default=True, type=float, help="Crop of the shading / keypoint map: keypoint box x this.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out, replacing the files of the earlier run its provenance.json lists.")
@click.option("--truncate-prompt", is_flag=True, help="Cut a prompt over 75 CLIP tokens (with a warning of how many were dropped) instead of refusing it.")
@click.option("--lora", "loras", multiple=True, metavar="FILE_OR_DIR[:WEIGHT]",
              help="A diffusers-format LoRA beside the face adapter's (repeatable), e.g. LCM-LoRA's folder with --scheduler lcm --steps 4 --guidance-scale 1; WEIGHT defaults to 1.")
@click.option("--scheduler", default=None, type=click.Choice(["ddim", "euler", "euler-a", "dpm++", "lcm", "tcd"]),
              help="Sampler [default: ddim for SD 1.5 (Face-MakeUp's), the backbone folder's for SDXL]; lcm / tcd go with their LoRAs.")
@click.option("--controlnet-start", default=0.0, show_default=True, type=float, help="The ShadingNet runs from this fraction of the steps ...")
@click.option("--controlnet-end", default=1.0, show_default=True, type=float, help="... to this one (e.g. 0.4: pose and light are set early; 60%% of its cost saved).")
@click.option("--vae", default=None, help="'tiny' (TAESD: madebyollin/taesd, or taesdxl for SDXL; fast, slightly softer) or a VAE folder [default: the backbone's].")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the UNet and ShadingNet (pays off over many images; the first takes minutes to compile).")
def generate(references, persons, layout, layout_faces, mask_kind, weights, prompt, negative_prompt, out_dir, model, image_encoder, adapter,
             adapter_lora, shadingnet, condition, shortcut, face_models, seed, num_images, steps, guidance_scale, ip_scale, s_scale, controlnet_scale,
             shading_from, light_from, light_dir, light_strength, height, width, face_index, crop_factor, shading_crop_factor, overwrite,
             truncate_prompt, loras, scheduler, controlnet_start, controlnet_end, vae, compile_):
    """Generate images of the person in --reference (or of the people in --person, one each), as --prompt describes.

    Several people: --person A.jpg --person B.jpg puts A and B in one image, each person's identity
    confined to its region; --layout GROUP.jpg takes the regions, poses and lighting from a photo with
    one face per person (left to right, or as --layout-faces says); without it the people stand side
    by side. --reference stays the way to give one person (its photos are mixed).

    Everything is checked before any work: values (finite, within the limits of facemakeup.validation),
    the photos' headers, the models, the people against the layout's faces, and --out (writable, enough
    free space, empty unless --overwrite). Results are written all at once: a failed run leaves nothing behind.
    """
    from . import validation as v
    from .faces import FaceAnalyzer
    from .faces.image import probe_image
    from .generation import GenerationRequest, Person, generate as run_generation, prepare_pipeline, read_photo, write_outputs
    from .pipeline import DEFAULT_BACKBONE, DEFAULT_IMAGE_ENCODER, load_pipeline
    from .validation import OutputFolder

    if bool(references) == bool(persons):
        _fail(FaceMakeUpInputError("--reference gives one person's photos, --person one person each: pass either (e.g. --person A.jpg "
                                   "--person B.jpg for two people), not both" if references else
                                   "no photo: pass --reference PHOTO (one person) or --person PHOTO once per person"))
    if weights and face_index == "all":
        _fail(ValueError("--weight needs one face per --reference; drop --weight or pick one face with --face-index N"))
    model = _model_for_weights(model, {"--adapter": adapter, "--shadingnet": shadingnet})  # a training run knows its backbone
    photos = [q for person in persons for q in person] if persons else list(references)
    if persons:
        if face_index == "all":
            _fail(FaceMakeUpInputError("--face-index all makes every face of a photo a reference of one person; with --person pick one "
                                       "face per photo (--face-index N)"))
        if weights:
            v.check_weights(weights, len(photos), "--weight", what="--person photo")
            start = 0
            for k, person in enumerate(persons):
                if sum(weights[start:start + len(person)]) <= 0:
                    _fail(FaceMakeUpInputError(f"the --weight values of --person #{k + 1} sum to 0: give each person a positive weight"))
                start += len(person)
    several = bool(persons) or layout is not None
    if several and shading_from is not None:
        _fail(FaceMakeUpInputError("--shading-from gives one face's pose; with --person or --layout the poses come from the layout "
                                   "photo (or each person's reference): use --layout instead"))
    if layout_faces is not None and layout is None:
        _fail(FaceMakeUpInputError("--layout-faces picks faces of --layout: pass --layout GROUP.jpg too, or drop it"))
    if _explicit("mask_kind") and layout is None:
        _fail(FaceMakeUpInputError("--mask says how a layout face becomes a region: pass --layout GROUP.jpg too, or drop it"))

    # 0. Preflight, before any work: values, output folder, photos' headers, models
    _check_generate_options(references, () if persons else weights, prompt, negative_prompt, model, image_encoder, adapter, shadingnet, seed,
                            guidance_scale, ip_scale, s_scale, controlnet_scale, shading_from, light_from, light_dir, light_strength, height,
                            width, face_index, crop_factor, shading_crop_factor)
    lora_specs = _check_speed_options(model, loras, controlnet_start, controlnet_end, vae)
    side = 64 if model in ("tiny", "tiny-xl") else 1024
    pixels = (height or side) * (width or side) * 3  # one image, uncompressed: an upper bound of its PNG
    n_people = len(persons) if persons else 1
    expected = pixels * (2 * num_images + 1 + n_people) + 3 * 776 * 384 * (len(photos) + 5) + 2**20  # images, grid, maps, masks, sheet, JSON
    folder = OutputFolder(out_dir, "--out", overwrite=overwrite, expected_bytes=expected, overwrite_hint="pass --overwrite")
    previous = _previous_outputs(out_dir)
    for path in (*photos, shading_from, light_from, layout):
        if path is not None:
            probe_image(path)
    model = model or DEFAULT_BACKBONE
    _preflight_models(model, image_encoder, adapter, shadingnet, face_models)
    if adapter_lora is not None and adapter is None:
        _fail(ValueError("--adapter-lora is the LoRA of an --adapter file: pass --adapter too, or drop it"))
    if adapter_lora is not None and not adapter_lora.is_file():
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(f"--adapter-lora {adapter_lora}: no such file; check the path")
    _preflight_speed_models(model, lora_specs, vae)
    try:
        # 1. Faces first: a photo without a usable face fails before any large model loads.
        t0 = time.perf_counter()
        analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, crop_factor=crop_factor)
        one = 1 if face_index == 0 else None  # the main face only: the analyser's fast path
        refs = []
        for path in references:
            photo = read_photo(path, analyzer, max_faces=one)
            refs += [(photo, k) for k in (range(len(photo.faces)) if face_index == "all" else [face_index])]
        people = None
        if persons:
            start, people = 0, []
            for person in persons:
                people.append(Person([(read_photo(path, analyzer, max_faces=one), face_index) for path in person],
                                     list(weights[start:start + len(person)]) if weights else None))
                start += len(person)
        shading_photo = read_photo(shading_from, analyzer, max_faces=1) if shading_from else None
        light_photo = read_photo(light_from, analyzer, max_faces=1) if light_from else None
        layout_photo = None
        if layout is not None:  # every face; the people must match them before any model loads
            from .faces.layout import choose_layout_faces

            layout_photo = read_photo(layout, analyzer)
            try:
                choose_layout_faces(len(layout_photo.faces), n_people, layout_faces)
            except FaceMakeUpInputError as err:
                raise FaceMakeUpInputError(f"--layout {layout}: {err}") from None
        analysis_s = time.perf_counter() - t0

        # 2. The pipeline
        t0 = time.perf_counter()
        pipe = load_pipeline(model, image_encoder=image_encoder or DEFAULT_IMAGE_ENCODER, adapter=str(adapter) if adapter else None,
                             shadingnet=shadingnet, shortcut=shortcut, adapter_lora=str(adapter_lora) if adapter_lora else None)
        load_s = time.perf_counter() - t0
        shading_options = shading_from or light_from or light_dir or any(
            _explicit(k) for k in ("controlnet_scale", "shading_crop_factor", "controlnet_start", "controlnet_end"))
        if pipe.controlnet is None and shading_options:
            raise ValueError("--shading-from/--light-from/--light-dir/--controlnet-scale/--shading-crop-factor/--controlnet-start/"
                             "--controlnet-end act through a ShadingNet, and this pipeline has none: pass --shadingnet, or drop them")

        # 3. Conditions and generation (facemakeup.generation: the same function as the demo's)
        request = GenerationRequest(prompt=prompt, references=refs, negative_prompt=negative_prompt,
                                    weights=None if persons else (list(weights) or None),
                                    shading_from=shading_photo, light_from=light_photo, light_dir=light_dir, light_strength=light_strength,
                                    condition=condition, crop_factor=crop_factor, shading_crop_factor=shading_crop_factor, seed=seed,
                                    num_images=num_images, steps=steps, guidance_scale=guidance_scale, ip_scale=ip_scale,
                                    s_scale=s_scale, controlnet_scale=controlnet_scale, height=height, width=width,
                                    truncate_prompt=truncate_prompt, people=people, layout=layout_photo, layout_faces=layout_faces,
                                    mask=mask_kind, controlnet_start=controlnet_start, controlnet_end=controlnet_end,
                                    loras=lora_specs, scheduler=scheduler, vae=vae, compile=compile_)
        t0 = time.perf_counter()
        speed_models = prepare_pipeline(pipe, request)  # LoRAs, scheduler, VAE fused / set / compiled
        load_s += time.perf_counter() - t0
        result = run_generation(pipe, request)
        result.timings.update(face_analysis_s=analysis_s, load_s=load_s)
    except (FaceMakeUpError, ValueError) as err:
        _fail(err)

    # 4. Images, the conditions sheet and the provenance record: staged, then moved into --out at once
    stage = folder.begin()
    click.get_current_context().call_on_close(folder.cleanup)
    tiny = model in ("tiny", "tiny-xl")
    encoder = None if pipe.image_encoder is None else ("tiny (random)" if tiny else image_encoder or DEFAULT_IMAGE_ENCODER)
    models = {"pipeline": model, "family": type(pipe).__name__, "image_encoder": encoder,
              "adapter": str(adapter) if adapter else ("untrained (fresh init)" if not tiny else "tiny (random)"),
              "adapter_lora": str(adapter_lora) if adapter_lora else None,
              "shadingnet": shadingnet or (f"{model} (fresh from_unet)" if tiny else None), "face": analyzer.model_files,
              **speed_models}
    extra = {"note": "tiny randomly initialised pipeline: the images are noise, not faces"} if tiny else None
    names = write_outputs(stage, request, result, task="generate", models=models, extra=extra)
    folder.commit(names, previous)
    who = f" of {n_people} people" if persons else ""
    click.echo(f"wrote {len(result.output.images)} image(s){who}, conditions.png and provenance.json to {out_dir}")


def _expand_inputs(inputs: tuple[str, ...]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, no repeats."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found = [p]
        else:
            found = sorted(Path(q) for q in glob.glob(item, recursive=True))
            if not found:
                raise click.BadParameter(f"{item}: no such file, folder or matching files", param_hint="PHOTO")
        paths += [q for q in found if q not in paths]
    if not paths:
        raise click.BadParameter(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(inputs)}", param_hint="PHOTO")
    return paths


def _output_stems(paths: list[Path]) -> dict[Path, str]:
    """Output name per photo: its stem, or, for stems shared by several inputs (same name in different
    folders, or a.jpg beside a.png), ``STEM_HASH`` with the first 8 hex digits of the SHA-1 of the
    resolved path. Deterministic: the same input keeps its name whatever else is analysed with it."""
    import hashlib
    from collections import Counter

    counts = Counter(p.stem for p in paths)
    return {p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
            for p in paths}


@main.command()
@click.argument("photos", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx.")
@click.option("--face-index", "--face", "face_index", default="all", show_default=True, callback=_face_choice,
              help="Faces to analyse in full: 'all', or N (0 = the main face: visible size, centrality, detector score). Every detected face is listed either way.")
@click.option("--shading-crop-factor", default=5.0, show_default=True, type=float, help="Shading map crop: keypoint box x this.")
@click.option("--shading-size", default=512, show_default=True, type=int, help="Side of the shading map in pixels.")
@click.option("--parsing", is_flag=True, help="Also write each face's label map NAME_faceK_parsing.png (CelebAMask-HQ values 0-18).")
@click.option("--parsing-quality", default="fast", show_default=True, type=click.Choice(["fast", "accurate"]),
              help="fast: one pass at 256 px (8-group mIoU 0.796); accurate: 256 + 320 px with mirror averaging (0.813, about 5x slower). See assets/face_parser.md.")
@click.option("--attributes/--no-attributes", default=True, show_default=True, help="CelebA attributes, gender, age, emotion.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out (files of the same name are replaced).")
def analyze(photos, out_dir, face_models, face_index, shading_crop_factor, shading_size, parsing, parsing_quality, attributes,
            overwrite):
    """Faces, identity embedding, 3D pose, SH lighting, shading maps, attributes and (with --parsing) region labels of PHOTOS.

    PHOTOS are files, folders or globs. Per photo with a face: NAME.json (every detected face in
    "faces", in the order of the face-choice rule; "main_face": the index of the photo's main face),
    NAME_overlay.png and NAME_faceK_shading.png, and summary.json. NAME is the photo's stem (with a
    short hash of its path when two inputs share a stem). With --parsing also NAME_parsing.png (all
    analysed faces) and NAME_faceK_parsing.png (uint8 label maps, CelebAMask-HQ values 0-18, the
    photo's size). Photos without a face and faces that fail are reported on stderr and in
    summary.json; a photo without a face gets no NAME.json. Exits 3 when no face at all was analysed.
    --out must be empty unless --overwrite.
    """
    from tqdm import tqdm

    from PIL import Image

    from .faces import FaceAnalyzer, load_image
    from .faces.render import shading_map
    from .provenance import environment
    from .viz import analysis_overlay

    paths = _expand_inputs(photos)
    stems = _output_stems(paths)
    _preflight_analyze(paths, out_dir, shading_crop_factor, shading_size, parsing, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        parser = None
        if parsing:
            from .faces.parsing import FaceParser

            parser = FaceParser(quality=parsing_quality)
        analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, parser=parser, attributes=True if attributes else None)
    except FaceMakeUpError as err:
        _fail(err)
    failures, done, n_faces = [], 0, 0
    for path in tqdm(paths, desc="analyze", unit="photo"):
        stem = stems[path]
        try:
            rgb = load_image(path)
            faces = analyzer.get(rgb)
        except FaceMakeUpError as err:
            failures.append({"image": str(path), "face": None, "reason": str(err)})
            click.echo(f"skipped {path}: {err}", err=True)
            continue
        if not faces:
            failures.append({"image": str(path), "face": None, "reason": "no face found"})
            click.echo(f"skipped {path}: no face found", err=True)
            continue
        if face_index != "all" and face_index >= len(faces):
            failures.append({"image": str(path), "face": face_index, "reason": f"only {len(faces)} face(s) found"})
            click.echo(f"skipped {path}: --face-index {face_index}, but only {len(faces)} face(s) found", err=True)
            continue
        chosen = list(range(len(faces))) if face_index == "all" else [face_index]
        analyzer.run([faces[k] for k in chosen], "embed", "clip", "fit", "attributes", "parsing")
        records, maps = [face.to_json() for face in faces], {}
        for k in chosen:
            face, rec = faces[k], records[k]
            if face.fit is None:
                failures.append({"image": str(path), "face": k, "reason": f"3D fit failed: {face.fit_error}"})
                click.echo(f"face {k} of {path}: 3D fit failed: {face.fit_error}", err=True)
            else:
                maps[k] = shading_map(face.fit, face.kps, crop_factor=shading_crop_factor, height=shading_size, width=shading_size)
                rec["shading_map"] = f"{stem}_face{k}_shading.png"
                Image.fromarray(maps[k]).save(out_dir / rec["shading_map"])
            if face.parsing is not None:
                rec["parsing"] = f"{stem}_face{k}_parsing.png"
                Image.fromarray(face.parsing).save(out_dir / rec["parsing"])
        record = {"image": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "main_face": 0,
                  "analysed_faces": chosen, "faces": records}
        if parsing:
            combined = np.zeros(rgb.shape[:2], np.uint8)
            for k in reversed(chosen):  # the main face last: it wins where two overlap
                combined = np.where(faces[k].parsing > 0, faces[k].parsing, combined)
            record["parsing"] = f"{stem}_parsing.png"
            Image.fromarray(combined).save(out_dir / record["parsing"])
        (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
        analysis_overlay(rgb, [faces[k] for k in chosen], [maps.get(k) for k in chosen], labels=chosen).save(out_dir / f"{stem}_overlay.png")
        done += 1
        n_faces += len(chosen)
    summary = {"task": "analyze", "photos": len(paths), "analysed": done, "faces": n_faces, "failures": failures,
               "face_index": face_index, "models": analyzer.model_files, "parsing_quality": parsing_quality if parsing else None,
               "shading_crop_factor": shading_crop_factor, **environment()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"{done} of {len(paths)} photos analysed, {n_faces} faces, {len(failures)} failures; wrote {out_dir}")
    if n_faces == 0:
        sys.exit(3)


@main.command("download")
@click.argument("input", type=str)
@click.argument("out", type=str)
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1), help="img2dataset processes.")
@click.option("--threads", default=64, show_default=True, type=click.IntRange(1), help="Download threads per process.")
@click.option("--samples-per-shard", default=10000, show_default=True, type=click.IntRange(1), help="URLs per tar shard.")
@click.option("--timeout", default=10, show_default=True, type=click.IntRange(1), help="Seconds per URL.")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(0), help="Tries per URL after the first.")
@click.option("--url-column", default=None, help="The parquet's URL column [default: url or URL].")
@click.option("--keep-column", "keep_columns", multiple=True, help="A column to keep in each sample's JSON (repeatable) [default: all but the URL].")
@click.option("--laion-face-ids", default=None, type=click.Path(exists=True, dir_okay=False),
              help="LAION-Face's id list (laion_face_ids.pth or one id a line): INPUT is then LAION-400M's metadata parquet(s), comma-separated or a glob.")
def download_cmd(input, out, processes, threads, samples_per_shard, timeout, retries, url_column, keep_columns, laion_face_ids):
    """Download the photos of INPUT (FaceCaption-15M's parquet, LAION-400M parquets with --laion-face-ids, or a .txt
    URL list) into WebDataset tar shards in OUT (a folder or fsspec URL), through img2dataset.

    Each sample is KEY.jpg + KEY.json (url and the parquet's other columns: FaceCaption's _id, caption,
    laion_caption, box). Failed URLs are counted in OUT/*_stats.json and download_summary.json, never fatal;
    re-running finishes missing shards. Then: facemakeup build-dataset OUT DATASET.
    """
    from .data.download import download

    try:
        summary = download(input, out, processes=processes, threads=threads, samples_per_shard=samples_per_shard, timeout=timeout,
                           retries=retries, url_column=url_column, keep_columns=list(keep_columns) or None,
                           laion_face_ids=laion_face_ids)
    except (FileNotFoundError, ValueError, FaceMakeUpError) as err:
        _fail(err)
    failed = ", ".join(f"{k} {v}" for k, v in list(summary["failed_by_status"].items())[:5]) or "none"
    click.echo(f"downloaded {summary['downloaded']} of {summary['urls']} URLs into {summary['shards']} shards "
               f"({summary['failed']} failed: {failed}); wrote {out}/download_summary.json")


@main.command("build-dataset")
@click.argument("input", type=str)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes (local) or LocalCluster workers (dask).")
@click.option("--distributor", default="local", show_default=True, type=click.Choice(["local", "dask"]),
              help="local: processes on this machine; dask: dask.distributed (a LocalCluster, or --scheduler).")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (tcp://HOST:8786); implies --distributor dask.")
@click.option("--shard-size", default=None, type=click.IntRange(1), help="Photos per shard when OUT's plan is made [default: n/32, 1-256].")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first K photos of INPUT (fixed by OUT's plan).")
@click.option("--min-side", default=256, show_default=True, type=int, help="Curation: minimum shorter side (px).")
@click.option("--max-text", default=0.10, show_default=True, type=float, help="Curation: maximum text-covered fraction.")
@click.option("--captioner", default="template", show_default=True,
              help="'template', 'source' (the downloaded sample's own face caption, e.g. FaceCaption-15M's, as the attribute "
                   "caption), or module:function returning (attribute_caption, emotion_caption) for (image, info).")
@click.option("--tokenizer", default=None, help="SD 1.5 folder or hub id for the CLIP tokenizer (default: OpenAI's BPE vocabulary).")
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Intra-op threads per model per worker.")
@click.option("--format", "fmt", default="records", show_default=True, type=click.Choice(["records", "webdataset", "face-makeup-v2"]),
              help="records: records-*.jsonl + loose files; webdataset: OUT/SSSSS.tar shards; face-makeup-v2: OUT/train.json + "
                   "images/ faces/ face_id/ shading/ Mask/ (Face-MakeUpV2's train.py reads them).")
def build_dataset(input, out, workers, distributor, scheduler, shard_size, limit, min_side, max_text, captioner, tokenizer,
                  face_models, threads, fmt):
    """Build FaceCaptionMask records from INPUT (folder, file list, WebDataset .tar shards, e.g. what
    `facemakeup download` wrote, or an fsspec URL of shards) into OUT.

    Curates (resolution, grayscale, text, group photos, cartoons), analyses the face, writes captions,
    phrase masks with CLIP token indices, shading maps and ID embeddings, shard by shard. Re-running
    finishes and repairs what is missing; safe to kill at any moment; one build per OUT at a time.
    Exits 1 when no record was built or a shard failed.
    """
    from .data.build import BuildConfig, build, format_summary
    from .data.curation import CurationConfig

    _folder_out(out, "OUT")
    config = BuildConfig(curation=CurationConfig(min_side=min_side, max_text_fraction=max_text), captioner=captioner,
                         tokenizer=tokenizer, face_models=str(face_models) if face_models else None, threads=threads)
    try:
        summary = build(input, out, workers=workers, limit=limit, config=config, shard_size=shard_size,
                        distributor="dask" if scheduler else distributor, scheduler=scheduler, format=fmt)
    except (FileNotFoundError, ValueError, FaceMakeUpError) as err:
        msg = str(err).replace("captioner '", "--captioner '").replace("tokenizer '", "--tokenizer '")
        _fail(type(err)(msg) if isinstance(err, FaceMakeUpError) and msg != str(err) else err)
    click.echo(format_summary(summary))
    click.echo(f"wrote {out / 'summary.json'}")
    if not summary["ok"]:
        click.echo("error: " + ("no record was built" if not summary["records"] else f"{len(summary['failures'])} failure(s); "
                   "re-run the same command to retry them"), err=True)
        sys.exit(1)


@main.command()
@click.option("--model", default=None, help="'tiny' / 'tiny-xl' (random SD 1.5- / SDXL-shaped, noise images), a saved FaceMakeUp(XL)Pipeline folder, or an SD 1.5 or SDXL backbone id/folder (told apart by its model_index.json / UNet config) [default: the backbone a training run given as --adapter / --shadingnet records, else stable-diffusion-v1-5/stable-diffusion-v1-5].")
@click.option("--image-encoder", default=None, help="CLIP image encoder id/folder [default: laion/CLIP-ViT-H-14-laion2B-s32B-b79K].")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help="ID-adapter weights: IP-Adapter-FaceID-PlusV2 / Face-MakeUp checkpoint file, or a FaceIDAdapter folder.")
@click.option("--shadingnet", default=None, help="ShadingNet (ControlNet) weights: Face-MakeUpV2 model.bin, a ControlNet folder, or 'init' (untrained).")
@click.option("--out", "out_dir", default="facemakeup-demo", show_default=True, type=click.Path(path_type=Path),
              help="The only folder the demo writes to: results, zips, examples, gradio's upload cache.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the demo to the network.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-pixels", default=4096 * 4096, show_default=True, type=click.IntRange(1), help="Refuse uploads with more pixels.")
@click.option("--max-file-size", default=20, show_default=True, type=click.FloatRange(0, min_open=True), help="Refuse uploads larger than this (MB).")
@click.option("--preview-vae", default=None, help="Show a live preview while denoising, decoded by this VAE: 'tiny' (TAESD of the backbone) or a folder.")
def demo(model, image_encoder, adapter, shadingnet, out_dir, host, port, max_pixels, max_file_size, preview_vae):
    """Start the web demo (gradio) on http://HOST:PORT."""
    import os

    _folder_out(out_dir, "--out")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(out_dir / "gradio")  # uploads and served copies stay inside --out
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .demo import build_demo, launch_demo
    from .pipeline import DEFAULT_BACKBONE, DEFAULT_IMAGE_ENCODER, load_pipeline

    model = _model_for_weights(model, {"--adapter": adapter, "--shadingnet": shadingnet}) or DEFAULT_BACKBONE
    try:
        pipe = load_pipeline(model, image_encoder=image_encoder or DEFAULT_IMAGE_ENCODER, adapter=str(adapter) if adapter else None,
                             shadingnet=shadingnet)
    except (FaceMakeUpError, ValueError) as err:
        _fail(err)
    preview = None
    if preview_vae is not None:
        from .pipeline import backbone_family
        from .speed import load_vae

        try:
            preview = load_vae(preview_vae, backbone_family(model), pipe.unet.dtype).to(pipe.unet.device)
        except (FaceMakeUpError, ValueError) as err:
            _fail(err)
    info = {"pipeline": model, "image_encoder": image_encoder or DEFAULT_IMAGE_ENCODER, "adapter": str(adapter) if adapter else None,
            "shadingnet": shadingnet, "preview_vae": preview_vae}
    if model in TINY_MODELS:
        info = {"pipeline": model, "note": "tiny randomly initialised pipeline: the images are noise, not faces"}
    max_bytes = int(max_file_size * 2**20)
    try:
        app = build_demo(pipe, output_dir=out_dir, max_pixels=max_pixels, max_file_size=max_bytes, model_info=info, preview_vae=preview)
    except (FaceMakeUpError, ValueError) as err:
        _fail(err)
    click.echo(f"demo on http://{host}:{port} (writing to {out_dir}); Ctrl+C stops it")
    launch_demo(app, out_dir, host=host, port=port, max_file_size=max_bytes)


# ---------------------------------------------------------------------------- convert (issue 12)
@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", required=True, type=click.Choice(["ours", "face-makeup-v2", "ip-adapter"]),
              help="ours: folder with face_adapter/ + shadingnet/; face-makeup-v2: V2's model.bin; ip-adapter: the IP-Adapter "
                   ".bin/.safetensors of the adapter's family (h94 FaceID / FaceID-PlusV2 / Portrait, InstantID ip-adapter.bin).")
@click.option("--model", default=None, help="UNet the checkpoint is for: 'sd15', 'sdxl', 'tiny', 'tiny-xl', or a backbone id/folder [default: the backbone a training run's SRC records in its backbone.json, else sd15].")
@click.option("--subfolder", default=None, help="Folder inside SRC (hub repo or folder).")
@click.option("--weight-name", default=None, help="File inside SRC (hub repo or folder).")
@click.option("--shortcut/--no-shortcut", default=None, help="FaceID-Plus v1 sources: --no-shortcut (kept in ours' config).")
def convert(src, dst, target, model, subfolder, weight_name, shortcut):
    """Convert the checkpoint SRC (any layout facemakeup reads) to DST in the --to layout.

    SRC: an IP-Adapter-FaceID / -Plus / -PlusV2 / -Portrait file (SD 1.5 or SDXL), InstantID's
    ip-adapter.bin, a Face-MakeUp V1/V2 model.bin, our folder (e.g. a training run's final/, whose
    backbone.json says which UNet it is for), or a hub
    repo id with --weight-name.
    """
    from .model.backbone import layout_unet, read_backbone
    from .model.loaders import load_checkpoint, write_checkpoint

    if model is None:  # a training run's folder knows its backbone (model.backbone); anything else: SD 1.5
        model = src if read_backbone(src) is not None else "sd15"
    else:
        _model_for_weights(model, {"SRC": src}, flag="--model")
    try:
        unet, vae_scale = layout_unet(model)
        ckpt = load_checkpoint(src, unet, subfolder=subfolder, weight_name=weight_name, shortcut=shortcut, vae_scale_factor=vae_scale)
        written = write_checkpoint(dst, ckpt.adapter, ckpt.controlnet, target)
    except (FaceMakeUpError, ValueError, OSError) as err:
        _fail(err)
    parts = " + ".join(p for p, c in (("ID adapter", ckpt.adapter), ("ControlNet", ckpt.controlnet)) if c is not None)
    left = " (its ControlNet is not part of the ip-adapter layout: left out)" if target == "ip-adapter" and ckpt.controlnet is not None else ""
    missing = " (no ControlNet in the source: model.bin has no 'controlnet')" if target == "face-makeup-v2" and ckpt.controlnet is None else ""
    click.echo(f"{src}: layout {ckpt.layout} ({parts}) -> {target}: wrote {', '.join(map(str, written))}{left}{missing}")


def _preflight_analyze(paths: list[Path], out_dir: Path, shading_crop_factor: float, shading_size: int, parsing: bool, overwrite: bool) -> None:
    """``analyze``'s values and --out (writable, room for the results, empty unless --overwrite), before any work.

    Unreadable photos are not refused here: ``analyze`` reports and skips them one by one.
    """
    from .validation import OutputFolder, check_integer, check_number

    check_number(shading_crop_factor, "--shading-crop-factor", low=0, high=20, low_open=True,
                 fix="the crop is the keypoint box times this: pass e.g. 5")
    check_integer(shading_size, "--shading-size", low=8, high=4096, fix="pass a side in pixels, e.g. 512")
    sizes = [p.stat().st_size for p in paths if p.is_file()]
    # per photo: overlay and label maps (uncompressed <= ~3 bytes/pixel, ~ the file's pixels), a shading map, JSON
    per_photo = 3 * shading_size**2 + 2**16
    expected = len(paths) * per_photo + 20 * sum(sizes) * (2 if parsing else 1)
    OutputFolder(out_dir, "--out", overwrite=overwrite, expected_bytes=expected, overwrite_hint="pass --overwrite")


# ---------------------------------------------------------------------------------------------- errors and preflight
#: Library argument names as the CLI spells them, for messages raised by the library.
_API_FLAGS = {"`prompt`": "--prompt", "`negative_prompt`": "--negative-prompt", "pass truncate_prompt=True": "pass --truncate-prompt",
              "`layout_assignment`": "--layout-faces"}


def _exit(err: Exception, debug: bool) -> None:
    """Print ``err`` as one line (with its traceback under ``--debug``) and exit with its kind's status."""
    import errno
    import traceback

    if debug:
        traceback.print_exception(err)
    status = next((st for cls, st, _ in EXIT_STATUS if isinstance(err, cls)), None)
    message = " ".join(str(err).split())  # one line
    if status is None and isinstance(err, RuntimeError) and ("can't allocate memory" in message or "out of memory" in message.lower()):
        status, message = 6, f"out of memory ({message[:200]}); use a smaller --height/--width or fewer --num-images"
    if status is None and isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        status, message = 4, f"no space left while writing the results ({err.strerror}); nothing was written, earlier results are kept"
    if status is None:
        click.echo(f"error: internal error: {type(err).__name__}: {message[:300]} (rerun with --debug for the traceback, "
                   "and please report it)", err=True)
        sys.exit(EXIT_INTERNAL)
    for api, flag in _API_FLAGS.items():
        message = message.replace(api, flag)
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _explicit(name: str) -> bool:
    """Whether the user passed option ``name`` (not its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _check_generate_options(references, weights, prompt, negative_prompt, model, image_encoder, adapter, shadingnet, seed,
                            guidance_scale, ip_scale, s_scale, controlnet_scale, shading_from, light_from, light_dir, light_strength,
                            height, width, face_index, crop_factor, shading_crop_factor) -> None:
    """``generate``'s values and combinations, before any work (``facemakeup.validation``).

    Raises:
        FaceMakeUpInputError: a value out of range or not finite, an empty or non-UTF-8 prompt, or an
            option that would be ignored.
    """
    from . import validation as v

    v.check_text(prompt, "--prompt")
    if negative_prompt is not None:
        v.check_text(negative_prompt, "--negative-prompt", allow_empty=True)
    v.check_seed(seed, "--seed")
    v.check_number(guidance_scale, "--guidance-scale", low=0, high=v.MAX_GUIDANCE_SCALE)
    for flag, value in (("--ip-scale", ip_scale), ("--s-scale", s_scale), ("--controlnet-scale", controlnet_scale)):
        v.check_number(value, flag, low=0, high=v.MAX_ID_SCALE)
    v.check_number(light_strength, "--light-strength", low=0, high=10)
    for flag, value in (("--crop-factor", crop_factor), ("--shading-crop-factor", shading_crop_factor)):
        v.check_number(value, flag, low=0, high=20, low_open=True, fix="the crop is the keypoint box times this: pass e.g. 3 to 5")
    if face_index != "all":
        v.check_integer(face_index, "--face-index", low=0, fix="0 is the main face, 1 the next, ...")
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None:
            v.check_side(value, flag)
    if weights:
        v.check_weights(weights, len(references), "--weight", what="--reference")
    if light_from is not None and light_dir is not None:
        raise FaceMakeUpInputError("--light-from and --light-dir both set the lighting: pass one")
    if _explicit("light_strength") and light_dir is None:
        raise FaceMakeUpInputError("--light-strength has an effect only with --light-dir: add --light-dir X,Y,Z or drop it")
    if negative_prompt and guidance_scale <= 1 and _explicit("negative_prompt"):
        raise FaceMakeUpInputError(f"--guidance-scale {guidance_scale:g} turns classifier-free guidance off, so --negative-prompt "
                                   "would be ignored: raise --guidance-scale above 1 or drop --negative-prompt")
    saved = _saved_pipeline(model)
    if model in TINY_MODELS and image_encoder is not None:
        raise FaceMakeUpInputError(f"--model {model} has its own tiny image encoder, so --image-encoder would be ignored: drop it")
    if saved:
        given = [f for f, val in (("--image-encoder", image_encoder), ("--adapter", adapter), ("--shadingnet", shadingnet)) if val is not None]
        if given:
            raise FaceMakeUpInputError(f"--model {model} is a saved {saved} that holds its own components, so "
                                       f"{', '.join(given)} would be ignored: drop them, or pass a backbone (SD 1.5 or SDXL) as --model")
    if model not in TINY_MODELS and not saved and shadingnet is None:
        needs = [f for f in ("--shading-from", "--light-from", "--light-dir", "--controlnet-scale", "--shading-crop-factor")
                 if _explicit(f[2:].replace("-", "_"))]
        if needs:
            raise FaceMakeUpInputError(f"{', '.join(needs)} act(s) through the ShadingNet, and none is loaded: "
                                       "pass --shadingnet FILE_OR_DIR (or 'init'), or drop them")


def _check_speed_options(model, loras, controlnet_start, controlnet_end, vae) -> list:
    """``--lora``, ``--controlnet-start/-end`` and ``--vae`` values, before any work.

    Returns:
        The parsed ``speed.LoraSpec`` of each ``--lora``.

    Raises:
        FaceMakeUpInputError: a weight or fraction out of range, start >= end, or ``--vae tiny`` with a tiny model.
    """
    from . import validation as v
    from .speed import LoraSpec

    specs = [LoraSpec.parse(text) for text in loras]
    for flag, value in (("--controlnet-start", controlnet_start), ("--controlnet-end", controlnet_end)):
        v.check_number(value, flag, low=0, high=1, fix="it is a fraction of the steps, e.g. --controlnet-end 0.4")
    if controlnet_start >= controlnet_end:
        raise FaceMakeUpInputError(f"--controlnet-start {controlnet_start:g} must be below --controlnet-end {controlnet_end:g}: the "
                                   "ShadingNet runs between them (fractions of the steps), e.g. --controlnet-end 0.4")
    if vae == "tiny" and model in TINY_MODELS:
        raise FaceMakeUpInputError(f"--vae tiny is TAESD, made for real SD 1.5 / SDXL backbones (8x latents); --model {model} has 2x "
                                   "latents: drop --vae, or pass a VAE folder made for it")
    return specs


def _preflight_speed_models(model: str, specs: list, vae: str | None) -> None:
    """The LoRA files exist and are LoRAs; a VAE folder exists (a hub VAE, ``--vae tiny`` included, is
    loaded later and named with what to download if it cannot be).

    Raises:
        ModelNotFoundError: a missing file or folder. CheckpointError: a file that is not a readable LoRA.
    """
    from .errors import ModelNotFoundError
    from .speed import check_lora_file

    import huggingface_hub
    from huggingface_hub import constants as hub

    from .pipeline import backbone_family
    from .speed import TINY_VAES

    for spec in specs:
        check_lora_file(spec)
    if vae is None or Path(vae).expanduser().exists():
        return
    repo = TINY_VAES[backbone_family(model)] if vae == "tiny" else vae
    if vae != "tiny" and ("/" not in vae or vae.startswith((".", "/", "~"))):
        raise ModelNotFoundError(f"--vae {vae}: no such folder; pass 'tiny' (TAESD) or the folder of a downloaded VAE "
                                 "(e.g. `hf download madebyollin/taesd --local-dir DIR`)")
    if hub.HF_HUB_OFFLINE and not isinstance(huggingface_hub.try_to_load_from_cache(repo, "config.json"), str):
        raise ModelNotFoundError(f"--vae {vae}: {repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; on a machine with "
                                 f"internet access run `hf download {repo} --local-dir DIR`, copy DIR here and pass --vae DIR")


#: ``--model`` values that build a tiny random pipeline (noise images).
TINY_MODELS = ("tiny", "tiny-xl")


def _model_for_weights(model: str | None, weights: dict, flag: str = "--model") -> str | None:
    """``--model`` for weights from a training run (``model.backbone.read_backbone``): the run's backbone when
    ``--model`` is not given; a ``--model`` of another family than the run's (or another model than a tiny
    run's) is refused, naming the run's backbone and the flag.

    Args:
        model: ``--model`` as given (``None``: not given). weights: ``{flag: path}`` of the weights options
            (``--adapter``, ``--shadingnet``, convert's ``SRC``); ``None`` and ``"init"`` are skipped.
        flag: the option that names the backbone (or layout).

    Returns:
        ``model``, or the run's backbone when ``model`` is ``None`` and some weights are a run's.

    Raises:
        CheckpointLayoutError: a mismatch (exit status 5, as weights trained for another UNet).
        ModelNotFoundError: ``model`` is not given and the run's backbone is an absolute path absent here.
    """
    from .errors import CheckpointLayoutError, ModelNotFoundError
    from .model.backbone import describe, read_backbone

    runs = [(option, path, read_backbone(path)) for option, path in weights.items() if path not in (None, "init")]
    runs = [(option, path, run) for option, path, run in runs if run is not None]
    for option, path, run in runs:
        backbone = run["backbone"]
        if model is None:
            if Path(backbone).is_absolute() and not Path(backbone).exists():
                raise ModelNotFoundError(f"{option} {path} was trained on {backbone} ({run['source']}), which is not on this machine: "
                                         f"pass a copy of that backbone with {flag} DIR")
            model = backbone
            continue
        if model == backbone:
            continue
        family = {"sd15": "sd15", "sdxl": "sdxl", "tiny": "sd15", "tiny-xl": "sdxl"}.get(model)
        if family is None and backbone not in TINY_MODELS:  # tiny weights fit their tiny model only: no lookup needed
            from .pipeline import backbone_family

            family = backbone_family(model)
        if model in TINY_MODELS or backbone in TINY_MODELS or family != run["family"]:
            label = {"sd15": "SD 1.5", "sdxl": "SDXL", None: ""}[family]
            given = (f"the tiny {label} model" if model in TINY_MODELS else f"an {label} UNet" if family else
                     "another backbone (weights trained on a tiny model fit only that model)")
            raise CheckpointLayoutError(f"{option} {path} was trained on {describe(run)}, recorded in {run['source']}; {flag} {model} is "
                                        f"{given}: drop {flag} to use the run's backbone, or pass {flag} {backbone}")
    return model


def _saved_pipeline(model: str | None) -> str | None:
    """The class name when ``model`` is a folder written by ``save_pretrained`` of one of our pipelines, else ``None``."""
    index = Path(model) / "model_index.json" if model and model not in TINY_MODELS else None
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index is not None and index.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return name if name in ("FaceMakeUpPipeline", "FaceMakeUpXLPipeline") else None


def _preflight_models(model: str, image_encoder: str | None, adapter: Path | None, shadingnet: str | None, face_models: Path | None) -> None:
    """Every model ``generate`` will load is on disk, or will be downloaded (said on stderr, with where from).

    Raises:
        ModelNotFoundError: a local path that does not exist or does not hold the model, or a hub id
            that is not cached while the hub is unreachable (``HF_HUB_OFFLINE``); the message says
            what to download and which flag takes it.
    """
    import huggingface_hub
    from huggingface_hub import constants as hub

    from .errors import ModelNotFoundError
    from .face_conditioning import missing_message

    def hub_model(what: str, repo: str, marker: str) -> None:
        path = Path(repo).expanduser()
        if path.exists():
            if not (path / marker).is_file():
                raise ModelNotFoundError(missing_message(what, repo, FileNotFoundError(marker)))
            return
        try:
            huggingface_hub.utils.validate_repo_id(repo)
        except huggingface_hub.errors.HFValidationError:
            flag = "--model" if "backbone" in what else "--image-encoder"
            raise ModelNotFoundError(f"{flag} {repo}: no such folder, and not a Hugging Face id (owner/name); pass the folder of the "
                                     f"downloaded {what} (see the README's model table) as {flag} DIR") from None
        if isinstance(huggingface_hub.try_to_load_from_cache(repo, marker), str):
            return
        if hub.HF_HUB_OFFLINE:
            raise ModelNotFoundError(missing_message(what, repo, ConnectionError("HF_HUB_OFFLINE is set and it is not cached")))
        click.echo(f"note: the {what} '{repo}' is not in the Hugging Face cache ({hub.HF_HUB_CACHE}): it will be downloaded from "
                   f"https://huggingface.co/{repo} first (several GB for SD 1.5 and CLIP ViT-H-14)", err=True)

    for flag, path in (("--adapter", adapter), ("--face-models", face_models)):
        if path is not None and not Path(path).exists():
            raise ModelNotFoundError(f"{flag} {path}: no such file or folder; check the path (see the README's model table)")
    if shadingnet not in (None, "init") and not Path(shadingnet).exists():
        raise ModelNotFoundError(f"--shadingnet {shadingnet}: no such file or folder; pass Face-MakeUpV2's model.bin, a ControlNet "
                                 "folder, or 'init' for an untrained one")
    if model in TINY_MODELS or _saved_pipeline(model):
        return
    from .model.loaders import reads_clip_features
    from .pipeline import DEFAULT_IMAGE_ENCODER, backbone_family

    hub_model("SDXL backbone" if backbone_family(model) == "sdxl" else "SD 1.5 backbone", model, "model_index.json")
    if reads_clip_features(adapter):  # FaceID, Portrait and InstantID files read ArcFace only: no CLIP encoder
        hub_model("CLIP image encoder", image_encoder or DEFAULT_IMAGE_ENCODER, "config.json")


def _previous_outputs(out_dir: Path) -> list[str]:
    """The files an earlier ``generate`` run wrote into ``out_dir`` (from its provenance.json)."""
    try:
        record = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8"))
        return [n for n in record.get("outputs", []) if isinstance(n, str)] + ["provenance.json"]
    except (OSError, ValueError, AttributeError):
        return []


# ---------------------------------------------------------------------------- evaluate, benchmark
def _eval_options(fn):
    """The model flags shared by ``evaluate`` and ``benchmark``."""
    options = [
        click.option("--metrics", default=None, help="Comma-separated subset of: CLIP-T,VLMScore,Attr,CLIP-I,DINO,FaceSim,FID,LPIPS,Pose-RMSE,Light-RMSE [default: all]."),
        click.option("--clip", default=None, help="CLIP model (hub id or folder) for CLIP-I/CLIP-T; recipe: openai/clip-vit-base-patch16."),
        click.option("--dino", default=None, help="DINO model (hub id or folder); recipe: facebook/dino-vits16."),
        click.option("--inception", default=None, type=click.Path(dir_okay=False), help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth for FID [default: FD-MobileNetV2 is reported instead]."),
        click.option("--lpips", default=None, type=click.Path(dir_okay=False), help="torchvision's alexnet-owt-7be5be79.pth, LPIPS's AlexNet backbone (its linear layers come from the lpips wheel)."),
        click.option("--vlm", default=None, help="Image-text-to-text model (hub id or folder) for VLMScore; recipe: Qwen/Qwen2-VL-7B-Instruct."),
        click.option("--face-models", default=None, type=click.Path(file_okay=False), help="buffalo_l folder (det_10g.onnx, w600k_r50.onnx) for FaceSim [default: offline w600k_mbf, a substitute]."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images per model call."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _eval_models(metrics, clip, dino, inception, lpips, vlm, face_models):
    from .eval.benchmark import EvalModels
    from .eval.results import PAPER_METRICS

    names = list(PAPER_METRICS) if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in PAPER_METRICS]
    if unknown or not names:
        raise click.BadParameter(f"unknown metric(s) {unknown}; choose from {','.join(PAPER_METRICS)}", param_hint="--metrics")
    return names, EvalModels(face_models=face_models, clip=clip, dino=dino, inception=inception, lpips=lpips, vlm=vlm)


def _run_evaluation(pairs, out_dir, names, models, batch_size, model_label, note, info):
    from .eval.benchmark import evaluate
    from .eval.report import write_outputs

    results, rows = evaluate(pairs, models, names, batch_size=batch_size)
    write_outputs(out_dir, pairs, results, rows, model_label, note=note, info=info)
    for name, r in results.items():
        shown = f"{r.value:.4g} (ci95 {r.ci95[0]:.4g}-{r.ci95[1]:.4g}, n={r.n})" if r.status == "computed" and r.ci95 else (
            f"{r.value:.4g} (n={r.n})" if r.status == "computed" else f"not computed: {r.reason}")
        click.echo(f"{name:>12}: {shown}{' [substitute]' if r.substitute and r.status == 'computed' else ''}")
    click.echo(f"wrote metrics.json, per_image.csv, report.md and grid.png to {out_dir}")


@main.command()
@click.option("--pairs", "pairs_csv", default=None, type=click.Path(dir_okay=False, path_type=Path), help="CSV with columns generated,reference[,prompt].")
@click.option("--generated", default=None, type=click.Path(file_okay=False, path_type=Path), help="Folder of IDENTITY/*.png (what benchmark writes).")
@click.option("--references", default=None, type=click.Path(file_okay=False, path_type=Path), help="Folder of IDENTITY.jpg/.png reference photos.")
@click.option("--runs", multiple=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A `generate --person` output folder (several people per image; repeatable): per-person FaceSim and identity leakage.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--model-label", default=None, help="Name of the evaluated model in the report [default: read from the PNGs, else 'unknown'].")
@_eval_options
def evaluate(pairs_csv, generated, references, runs, out_dir, model_label, metrics, clip, dino, inception, lpips, vlm, face_models, batch_size):
    """Face-MakeUpV2's ten metrics over (generated, reference) pairs.

    Writes metrics.json (value, bootstrap ci95 over images, n, model, substitute, reason per metric),
    per_image.csv, report.md (the table beside the paper's published rows) and grid.png. A metric
    whose model is absent is reported as not computed, with the flag that fixes it.

    Several people per image (--runs of `generate --person`, or --pairs rows with a boxes column): each
    person's FaceSim against its own reference (faces matched to people by their boxes) and its identity
    leakage (FaceSim against the other people's references, lower is better), reported beside the rest.
    """
    from .eval.benchmark import group_pairs_from_runs, pairs_from_csv, pairs_from_folders

    _folder_out(out_dir, "--out")
    if pairs_csv is not None and (generated is not None or references is not None):
        raise click.UsageError("pass either --pairs FILE.csv or --generated DIR --references DIR")
    if pairs_csv is None and not runs and (generated is None and references is None):
        raise click.UsageError("pass --pairs FILE.csv, --generated DIR --references DIR, or --runs DIR")
    if pairs_csv is None and (generated is None) != (references is None):
        raise click.UsageError("--generated and --references go together")
    names, models = _eval_models(metrics, clip, dino, inception, lpips, vlm, face_models)
    try:
        pairs = pairs_from_csv(pairs_csv) if pairs_csv else (pairs_from_folders(generated, references) if generated else [])
        pairs += group_pairs_from_runs(runs) if runs else []
        label = model_label or _png_model(pairs[0].generated) or "unknown"
        note = "tiny randomly initialised pipeline: the images are noise, not faces; the numbers are those of noise" if label in TINY_MODELS else None
        _run_evaluation(pairs, out_dir, names, models, batch_size, label, note,
                        {"inputs": {"pairs": str(pairs_csv) if pairs_csv else None, "generated": str(generated) if generated else None,
                                    "references": str(references) if references else None, "runs": [str(r) for r in runs]}})
    except (FaceMakeUpError, FileNotFoundError, ValueError, RuntimeError) as err:
        _fail(err)


def _png_model(path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return json.loads(im.info.get("facemakeup", "{}")).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def _benchmark_worker(args) -> list[str]:
    """Generate the identities ``names`` in one process (its own pipeline); returns the failures."""
    (names, identities, out_dir, model, adapter, image_encoder, shadingnet, face_models, config, position, groups) = args
    from dataclasses import replace

    from tqdm import tqdm

    from .eval.benchmark import generate_identity, generate_people
    from .faces import FaceAnalyzer
    from .pipeline import DEFAULT_IMAGE_ENCODER, load_pipeline

    pipe = load_pipeline(model, image_encoder=image_encoder or DEFAULT_IMAGE_ENCODER, adapter=adapter, shadingnet=shadingnet)
    pipe.set_progress_bar_config(disable=True)
    pipe.face_adapter.fuse_lora()
    analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, fitter="mediapipe" if pipe.controlnet is not None else None)
    failures = []
    for name in tqdm(names, desc=f"generate[{position}]", unit="identity", position=position):
        try:
            generate_identity(pipe, analyzer, name, identities[name], out_dir, replace(config))
        except FaceMakeUpError as err:
            failures.append(f"{name}: {err}")
            click.echo(f"skipped identity {name}: {err}", err=True)
    for pair_names, refs in groups:  # two-person sets, side by side
        try:
            generate_people(pipe, analyzer, pair_names, refs, out_dir, replace(config))
        except FaceMakeUpError as err:
            failures.append(f"{'+'.join(pair_names)}: {err}")
            click.echo(f"skipped two-person set {'+'.join(pair_names)}: {err}", err=True)
    return failures


@main.command()
@click.option("--model", default=None, help="'tiny' / 'tiny-xl' (random, noise images), a saved FaceMakeUp(XL)Pipeline folder, or an SD 1.5 or SDXL backbone id/folder [required unless --adapter is a training run's folder: its backbone].")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help="ID-adapter weights (file or FaceIDAdapter folder).")
@click.option("--image-encoder", default=None, help="CLIP image encoder id/folder [default: laion/CLIP-ViT-H-14-laion2B-s32B-b79K].")
@click.option("--shadingnet", default=None, help="ShadingNet weights (Face-MakeUpV2 model.bin, a ControlNet folder).")
@click.option("--identities", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="Folder of reference photos, one per identity (IDENTITY.jpg/.png).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder (images, references/, metrics, report).")
@click.option("--prompts", "prompts_file", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Prompt file, one per line [default: the 20 shipped prompts]; 'best quality, ' is prepended.")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1), help="Images per prompt (seeds 42, 43, ...).")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance-scale", default=7.5, show_default=True, type=float)
@click.option("--ip-scale", default=0.6, show_default=True, type=float)
@click.option("--gen-batch-size", default=4, show_default=True, type=click.IntRange(1), help="Prompts per pipeline call.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Local processes, each with its own pipeline, sharing the identities.")
@click.option("--shard", default="0/1", show_default=True, callback=_shard,
              help="I/N: this job generates identities I, I+N, ... (job arrays); evaluation runs once all identities are done.")
@click.option("--people", "people_sets", default=0, show_default=True, type=click.IntRange(0),
              help="Also N two-person sets (identities 1+2, 3+4, ... side by side, every prompt x seed), scored by FaceSim-people and ID-leakage.")
@_eval_options
def benchmark(model, adapter, image_encoder, shadingnet, identities, out_dir, prompts_file, seeds, steps, guidance_scale, ip_scale,
              gen_batch_size, workers, shard, people_sets, metrics, clip, dino, inception, lpips, vlm, face_models, batch_size):
    """Face-MakeUpV2's protocol: per identity the prompts x seeds, then the ten metrics.

    Writes OUT/IDENTITY/pPP_sSEED.png, OUT/references/IDENTITY.*, then evaluates as `evaluate`
    does. Resumable: finished identities (OUT/IDENTITY/done.json) and finished images are skipped.
    With --people N also OUT/people/A+B/pPP_sSEED.png (two identities side by side), whose per-person
    FaceSim and identity leakage are reported beside the ten metrics.
    """
    from .eval.benchmark import (GenerationConfig, group_pairs_from_benchmark, is_done, list_identities, load_prompts, pairs_from_folders,
                                 people_groups)

    _folder_out(out_dir, "--out")
    shard_i, shard_n = shard
    model = _model_for_weights(model, {"--adapter": adapter, "--shadingnet": shadingnet})
    if model is None:
        raise click.UsageError("--model is required (unless --adapter is a training run's folder, whose backbone is then used)")
    names, models = _eval_models(metrics, clip, dino, inception, lpips, vlm, face_models)
    try:
        people = list_identities(identities)
        prompts = load_prompts(prompts_file)
        groups = people_groups(people, people_sets)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    config = GenerationConfig(prompts=prompts, seeds=seeds, steps=steps, guidance_scale=guidance_scale, ip_scale=ip_scale,
                              batch_size=gen_batch_size, model=model)
    mine = [n for k, n in enumerate(people) if k % shard_n == shard_i and not is_done(out_dir, n)]
    my_groups = [g for k, g in enumerate(groups) if k % shard_n == shard_i and not (out_dir / "people" / "+".join(g[0]) / "done.json").is_file()]
    click.echo(f"{len(people)} identities, {len(prompts)} prompts x {seeds} seed(s); {len(mine)} to generate in this job")
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    try:
        if mine or my_groups:
            jobs = [(mine[w::workers], people, out_dir, model, str(adapter) if adapter else None, image_encoder, shadingnet,
                     face_models, config, w, my_groups[w::workers]) for w in range(max(1, min(workers, max(len(mine), len(my_groups)))))]
            if len(jobs) == 1:
                failures = _benchmark_worker(jobs[0])
            else:
                import multiprocessing as mp

                with mp.get_context("spawn").Pool(len(jobs)) as pool:
                    failures = [f for part in pool.map(_benchmark_worker, jobs) for f in part]
        pending = [n for n in people if not is_done(out_dir, n) and not any(f.startswith(f"{n}:") for f in failures)]
        pending += ["+".join(g) for g, _ in groups if not (out_dir / "people" / "+".join(g) / "done.json").is_file()
                    and not any(f.startswith(f"{'+'.join(g)}:") for f in failures)]
        if pending:
            click.echo(f"{len(pending)} identities are not done yet (other shards?); rerun this command or `facemakeup evaluate "
                       f"--generated {out_dir} --references {out_dir / 'references'} --out {out_dir}` when they are")
            return
        pairs = pairs_from_folders(out_dir, out_dir / "references") + group_pairs_from_benchmark(out_dir)
        note = "tiny randomly initialised pipeline: the images are noise, not faces; the numbers are those of noise" if model in TINY_MODELS else None
        info = {"inputs": {"identities": str(identities), "prompts": str(prompts_file) if prompts_file else "assets/benchmark_prompts.txt",
                           "seeds": seeds, "steps": steps, "adapter": str(adapter) if adapter else None, "failures": failures}}
        _run_evaluation(pairs, out_dir, names, models, batch_size, model, note, info)
    except (FaceMakeUpError, FileNotFoundError, ValueError, RuntimeError) as err:
        _fail(err)


# ------------------------------------------------------------------------------------------ train
@main.command()
@click.option("--preset", "preset_name", required=True, type=click.Choice(["tiny", "sd15", "sdxl", "tiny-xl"]),
              help="tiny / tiny-xl: the --model tiny / tiny-xl backbone on a CPU in minutes; sd15: the paper's recipe (docs/sources.md); sdxl: it on SDXL-base at 1024 px.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="YAML file of config keys over the preset (unknown keys are an error).")
@click.option("--data", "data_dir", required=True, type=str,
              help="A build-dataset records folder, a Face-MakeUpV2 JSON (images/ faces/ face_id/ shading/ Mask/ beside it), or "
                   "WebDataset shards: a folder, glob, {00000..00009} pattern or fsspec URL (s3://, gs://, hf://), streamed.")
@click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--max-steps", default=None, type=click.IntRange(1), help="Stop this invocation at this step [default: num_train_steps].")
@click.option("--checkpoint-every", default=None, type=click.IntRange(1), help="Steps between checkpoints [default: the config's].")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable), e.g. --set learning_rate=3e-4.")
def train(preset_name, config_file, data_dir, run_dir, max_steps, checkpoint_every, resume, overrides):
    """Train Face-MakeUpV2's ID adapter (projection, IP k/v, LoRA) and ShadingNet on FaceCaptionMask records.

    Writes RUN_DIR/config.yaml, metrics.jsonl, loss.png, tensorboard/, samples/, checkpoint-STEP/ and
    final/ (face_adapter/ + shadingnet/ + backbone.json: load with `facemakeup generate --adapter
    RUN_DIR/final --shadingnet RUN_DIR/final`, no --model needed). Runs under `accelerate launch -m facemakeup.train` for several processes.
    """
    from .train import ConfigError, NonFiniteLossError, apply_overrides, load_config, preset
    from .train import train as run_training

    try:
        _folder_out(run_dir, "--out")
        cfg = preset(preset_name)
        if config_file is not None:
            cfg = load_config(config_file, base=cfg)
        cfg = apply_overrides(cfg, list(overrides) + ([f"checkpoint_every={checkpoint_every}"] if checkpoint_every else []))
        from .data.dataset import is_shards

        if not is_shards(data_dir) and not Path(data_dir).exists():
            raise FileNotFoundError(f"--data {data_dir}: no such records folder, Face-MakeUpV2 JSON or shards")
        summary = run_training(cfg, data_dir if is_shards(data_dir) else Path(data_dir), run_dir, max_steps=max_steps, resume=resume)
    except ConfigError as err:
        _fail(ValueError(f"{err} (set keys with --set KEY=VALUE or --config FILE.yaml)"))
    except (NonFiniteLossError, FaceMakeUpError, FileNotFoundError, ValueError) as err:
        _fail(err)
    what = "streamed shards" if summary.get("streamed") else f"{summary['records_train']} records ({summary['records_skipped']} skipped)"
    click.echo(f"trained steps {summary['start_step']}..{summary['stop_step']} on {what}; wrote {run_dir}")


if __name__ == "__main__":
    main()
