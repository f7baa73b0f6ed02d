"""``facemakeup`` command line. Thin: parse, call the library, print.

    facemakeup generate --reference PHOTO --prompt TEXT --out DIR [--model ID|PATH|tiny] [--seed N] ...
    facemakeup analyze PHOTO_OR_DIR_OR_GLOB... --out DIR
"""

from __future__ import annotations

import glob
import json
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from .errors import FaceMakeUpError

logger = logging.getLogger("facemakeup")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Identity-consistent, controllable face generation (Face-MakeUp / Face-MakeUpV2)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(1)


def _light_dir(ctx, param, value):
    if value is None:
        return None
    try:
        xyz = [float(v) for v in value.split(",")]
    except ValueError:
        xyz = []
    if len(xyz) != 3 or not any(xyz):
        raise click.BadParameter(f"expected three numbers x,y,z (x right, y up, z toward the viewer), got {value!r}")
    return xyz


@main.command()
@click.option("--reference", "references", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Photo of the person; repeat to mix several references.")
@click.option("--weight", "weights", multiple=True, type=float, help="Mixing weight per --reference (default equal).")
@click.option("--prompt", required=True, help='Text prompt, e.g. "a smiling woman with blonde hair".')
@click.option("--negative-prompt", default=None, help="Negative prompt.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--model", default=None, help="'tiny' (random, noise images), a saved FaceMakeUpPipeline folder, or an SD 1.5 backbone id/folder [default: stable-diffusion-v1-5/stable-diffusion-v1-5].")
@click.option("--image-encoder", default=None, help="CLIP image encoder id/folder [default: laion/CLIP-ViT-H-14-laion2B-s32B-b79K].")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help="ID-adapter weights: IP-Adapter-FaceID-PlusV2 / Face-MakeUp checkpoint file, or a FaceIDAdapter folder.")
@click.option("--shadingnet", default=None, help="ShadingNet (ControlNet) weights: Face-MakeUpV2 model.bin, a ControlNet folder, or 'init' (untrained).")
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
@click.option("--face-index", default=0, show_default=True, type=int, help="Which face of each photo, 0 = largest.")
@click.option("--crop-factor", default=3.0, show_default=True, type=float, help="CLIP face crop: keypoint box x this.")
@click.option("--shading-crop-factor", default=5.0, show_default=True, type=float, help="Shading map crop: keypoint box x this.")
def generate(references, weights, prompt, negative_prompt, out_dir, model, image_encoder, adapter, shadingnet, face_models, seed,
             num_images, steps, guidance_scale, ip_scale, s_scale, controlnet_scale, shading_from, light_from, light_dir, light_strength, height,
             width, face_index, crop_factor, shading_crop_factor):
    """Generate images of the person in --reference, as --prompt describes."""
    from dataclasses import replace

    import torch
    from PIL import Image

    from .faces import FaceAnalyzer, clip_crop, load_image
    from .faces.lighting import sh_from_direction
    from .faces.render import shading_map
    from .provenance import environment, sha256_file
    from .viz import conditions_sheet

    if weights and len(weights) != len(references):
        _fail(ValueError(f"{len(weights)} --weight values for {len(references)} --reference photos"))
    if light_from is not None and light_dir is not None:
        _fail(ValueError("--light-from and --light-dir both set the lighting: pass one"))
    timings = {}
    try:
        # 1. Faces first: a photo without a usable face fails before any large model loads.
        t0 = time.perf_counter()
        analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, crop_factor=crop_factor)
        photos = [load_image(r) for r in references]
        faces = [analyzer.get_face(ref, face_index) for ref in references]  # by path, so errors name the file
        shading_face = analyzer.get_face(shading_from) if shading_from else faces[0]
        light_face = analyzer.get_face(light_from) if light_from else None
        timings["face_analysis_s"] = time.perf_counter() - t0

        # 2. The pipeline
        from .pipeline import DEFAULT_BACKBONE, DEFAULT_IMAGE_ENCODER, load_pipeline

        model = model or DEFAULT_BACKBONE
        image_encoder = image_encoder or DEFAULT_IMAGE_ENCODER
        t0 = time.perf_counter()
        pipe = load_pipeline(model, image_encoder=image_encoder, adapter=str(adapter) if adapter else None, shadingnet=shadingnet)
        timings["load_s"] = time.perf_counter() - t0
        # the faces found above feed the pipeline directly (no second analysis), CLIP crops at the encoder's size
        clip_size = pipe.image_encoder.config.image_size if pipe.image_encoder is not None else analyzer.clip_size
        faces = [replace(f, clip_image=clip_crop(photo, f.kps, clip_size, crop_factor)) for photo, f in zip(photos, faces)]
        pipe.face_adapter.fuse_lora()  # inference only: merge the LoRA, no per-step LoRA cost

        # 3. The shading map (Face-MakeUpV2): the reference's or the target's face, its own or another light
        shading = None
        if pipe.controlnet is None and (shading_from or light_from or light_dir):
            raise ValueError("--shading-from/--light-from/--light-dir need a ShadingNet: pass --shadingnet")
        if pipe.controlnet is not None:
            h = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
            w = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
            for name, face in (("shading", shading_face), ("light", light_face)):
                if face is not None and face.fit is None:
                    raise FaceMakeUpError(f"the {name} photo's 3D fit failed: {face.fit_error}")
            sh = light_face.fit.sh if light_face else (sh_from_direction(light_dir, light_strength) if light_dir else None)
            shading = shading_map(shading_face.fit, shading_face.kps, sh=sh, crop_factor=shading_crop_factor, height=h, width=w)

        # 4. Generate
        t0 = time.perf_counter()
        out = pipe(prompt, id_embeds=torch.from_numpy(np.stack([f.embedding for f in faces])), face_images=[f.clip_image for f in faces],
                   negative_prompt=negative_prompt, num_images_per_prompt=num_images, height=height, width=width,
                   num_inference_steps=steps, guidance_scale=guidance_scale, ip_scale=ip_scale, s_scale=s_scale,
                   reference_weights=list(weights) or None, seed=seed, shading_image=shading,
                   controlnet_conditioning_scale=controlnet_scale)
        timings["generate_s"] = time.perf_counter() - t0
        timings["per_step_s"] = timings["generate_s"] / steps
    except (FaceMakeUpError, IndexError, ValueError) as err:
        _fail(err)

    # 5. Save images, the conditions sheet and the provenance record
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL.PngImagePlugin import PngInfo

    names = []
    for i, img in enumerate(out.images):
        info = PngInfo()
        info.add_text("facemakeup", json.dumps({"prompt": prompt, "seed": seed, "index": i, "model": model}))
        name = f"image_{i:02d}.png"
        img.save(out_dir / name, pnginfo=info)
        names.append(name)
    extra = []
    if out.shading_image is not None:
        Image.fromarray(out.shading_image).save(out_dir / "shading.png")
        extra.append("shading.png")
    conditions_sheet(photos, faces, shading=out.shading_image).save(out_dir / "conditions.png")
    if len(out.images) > 1:
        from diffusers.utils import make_image_grid

        cols = min(len(out.images), 4)
        rows = -(-len(out.images) // cols)
        blank = [out.images[0].copy().point(lambda _: 0)] * (rows * cols - len(out.images))
        make_image_grid(list(out.images) + blank, rows=rows, cols=cols).save(out_dir / "grid.png")
        extra.append("grid.png")

    def _face_record(path, face):
        return {"path": str(path), "sha256": sha256_file(path), "bbox": face.bbox.tolist(), "kps": face.kps.tolist(),
                "det_score": face.det_score, "pose": face.fit.pose if face.fit else None}

    record = {
        "task": "generate",
        "inputs": {
            "references": [{**_face_record(r, f), "face_index": face_index, "clip_box": f.clip_box.tolist()}
                           for r, f in zip(references, faces)],
            "reference_weights": out.reference_weights,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "shading_from": _face_record(shading_from, shading_face) if shading_from else None,
            "light_from": _face_record(light_from, light_face) if light_from else None,
            "light_dir": light_dir,
            "light_strength": light_strength if light_dir else None,
        },
        "parameters": {"seed": seed, "num_images": num_images, "steps": steps, "guidance_scale": guidance_scale,
                       "ip_scale": ip_scale, "s_scale": s_scale, "controlnet_scale": controlnet_scale if shading is not None else None,
                       "height": out.images[0].height, "width": out.images[0].width, "crop_factor": crop_factor,
                       "shading_crop_factor": shading_crop_factor, "scheduler": type(pipe.scheduler).__name__},
        "models": {"pipeline": model, "image_encoder": image_encoder if model != "tiny" else "tiny (random)",
                   "adapter": str(adapter) if adapter else ("untrained (fresh init)" if model != "tiny" else "tiny (random)"),
                   "shadingnet": shadingnet if model != "tiny" else "tiny (fresh from_unet)",
                   "face": analyzer.model_files},
        "outputs": names + ["conditions.png"] + extra,
        "timings": timings,
        **environment(),
    }
    if model == "tiny":
        record["note"] = "tiny randomly initialised pipeline: the images are noise, not faces"
    (out_dir / "provenance.json").write_text(json.dumps(record, indent=2))
    click.echo(f"wrote {len(names)} image(s), conditions.png and provenance.json to {out_dir}")


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
    return paths


@main.command()
@click.argument("photos", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx.")
@click.option("--shading-crop-factor", default=5.0, show_default=True, type=float, help="Shading map crop: keypoint box x this.")
@click.option("--shading-size", default=512, show_default=True, type=int, help="Side of the shading map in pixels.")
@click.option("--parsing", is_flag=True, help="Also write each face's label map NAME_faceK_parsing.png (CelebAMask-HQ values 0-18).")
@click.option("--attributes/--no-attributes", default=True, show_default=True, help="CelebA attributes, gender, age, emotion.")
def analyze(photos, out_dir, face_models, shading_crop_factor, shading_size, parsing, attributes):
    """Faces, 3D pose, SH lighting, shading maps, attributes and (with --parsing) region labels of PHOTOS.

    PHOTOS are files, folders or globs. Writes NAME.json, NAME_overlay.png and NAME_faceK_shading.png
    per photo, and summary.json. With --parsing also NAME_parsing.png (all faces) and
    NAME_faceK_parsing.png (uint8 label maps, CelebAMask-HQ values 0-18, the photo's size).
    Photos and faces that fail are reported on stderr and in summary.json, and skipped. Exits 1
    when no face at all could be analysed.
    """
    from tqdm import tqdm

    from PIL import Image

    from .faces import FaceAnalyzer, load_image
    from .faces.lighting import SH_BASIS
    from .faces.render import shading_map
    from .provenance import environment
    from .viz import analysis_overlay

    paths = _expand_inputs(photos)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, parser=True if parsing else None,
                                attributes=True if attributes else None)
    except FaceMakeUpError as err:
        _fail(err)
    failures, done, n_faces = [], 0, 0
    stems: dict[str, int] = {}
    for path in tqdm(paths, desc="analyze", unit="photo"):
        stem = path.stem if path.stem not in stems else f"{path.stem}_{stems[path.stem]}"
        stems[path.stem] = stems.get(path.stem, 0) + 1
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
        records, fitted, maps = [], [], []
        for k, face in enumerate(faces):
            if face.fit is None:
                failures.append({"image": str(path), "face": k, "reason": f"3D fit failed: {face.fit_error}"})
                click.echo(f"skipped face {k} of {path}: 3D fit failed: {face.fit_error}", err=True)
                continue
            smap = shading_map(face.fit, face.kps, crop_factor=shading_crop_factor, height=shading_size, width=shading_size)
            map_name = f"{stem}_face{k}_shading.png"
            Image.fromarray(smap).save(out_dir / map_name)
            rec = {
                "bbox": face.bbox.tolist(), "kps": face.kps.tolist(), "det_score": face.det_score,
                "pose": face.fit.pose, "sh": face.fit.sh.tolist(), "sh_basis": list(SH_BASIS),
                "shading_map": map_name, "fitter": face.fit.fitter,
            }
            if face.attributes is not None:
                rec.update(face.attributes.to_json())
            if face.parsing is not None:
                rec["parsing"] = f"{stem}_face{k}_parsing.png"
                Image.fromarray(face.parsing).save(out_dir / rec["parsing"])
            records.append(rec)
            fitted.append(face)
            maps.append(smap)
        record = {"image": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "faces": records}
        if parsing and fitted:
            combined = np.zeros(rgb.shape[:2], np.uint8)
            for face in reversed(fitted):  # smallest first: the larger face wins where two overlap
                combined = np.where(face.parsing > 0, face.parsing, combined)
            record["parsing"] = f"{stem}_parsing.png"
            Image.fromarray(combined).save(out_dir / record["parsing"])
        (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
        analysis_overlay(rgb, fitted, maps).save(out_dir / f"{stem}_overlay.png")
        done += 1
        n_faces += len(records)
    summary = {"task": "analyze", "photos": len(paths), "analysed": done, "faces": n_faces, "failures": failures,
               "models": analyzer.model_files, "shading_crop_factor": shading_crop_factor, **environment()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"{done} of {len(paths)} photos analysed, {n_faces} faces, {len(failures)} failures; wrote {out_dir}")
    if n_faces == 0:
        sys.exit(1)


@main.command("build-dataset")
@click.argument("input", type=str)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@click.option("--shard", default="0/1", show_default=True, help="I/N: take inputs I, I+N, I+2N, ... (for job arrays).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first K inputs of the shard.")
@click.option("--min-side", default=256, show_default=True, type=int, help="Curation: minimum shorter side (px).")
@click.option("--max-text", default=0.10, show_default=True, type=float, help="Curation: maximum text-covered fraction.")
@click.option("--captioner", default="template", show_default=True,
              help="'template', or module:function returning (attribute_caption, emotion_caption) for (image, info).")
@click.option("--tokenizer", default=None, help="SD 1.5 folder or hub id for the CLIP tokenizer (default: OpenAI's BPE vocabulary).")
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Intra-op threads per model per worker.")
def build_dataset(input, out, workers, shard, limit, min_side, max_text, captioner, tokenizer, face_models, threads):
    """Build FaceCaptionMask records from INPUT (folder, file list, or WebDataset .tar shards) into OUT.

    Curates (resolution, grayscale, text, group photos, cartoons), analyses the face, writes captions,
    phrase masks with CLIP token indices, shading maps and ID embeddings. Re-running skips finished
    work; safe to kill at any moment.
    """
    from .data.build import BuildConfig, build, parse_shard
    from .data.curation import CurationConfig

    try:
        shard_tuple = parse_shard(shard)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--shard") from None
    config = BuildConfig(curation=CurationConfig(min_side=min_side, max_text_fraction=max_text), captioner=captioner,
                         tokenizer=tokenizer, face_models=str(face_models) if face_models else None, threads=threads)
    try:
        summary = build(input, out, workers=workers, shard=shard_tuple, limit=limit, config=config)
    except (FileNotFoundError, ValueError, FaceMakeUpError) as err:
        _fail(err)
    click.echo(
        f"shard {summary['shard']}: {summary['records']} records, {summary['rejects']} rejects, {summary['errors_this_run']} errors "
        f"({summary['processed_this_run']} processed this run, {summary['already_done']} already done"
        + (f", {summary['images_per_second']} img/s" if summary["images_per_second"] else "") + f"); wrote {out}"
    )
    if summary["rejects_by_reason"]:
        click.echo("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in summary["rejects_by_reason"].items()))


# ------------------------------------------------------------------------------------------ train
@main.command()
@click.option("--preset", "preset_name", required=True, type=click.Choice(["tiny", "sd15"]),
              help="tiny: the --model tiny backbone on a CPU in minutes; sd15: the paper's recipe (REFERENCE.md).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="YAML file of config keys over the preset (unknown keys are an error).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=Path), help="A build-dataset folder.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder.")
@click.option("--max-steps", default=None, type=click.IntRange(1), help="Stop this invocation at this step [default: num_train_steps].")
@click.option("--checkpoint-every", default=None, type=click.IntRange(1), help="Steps between checkpoints [default: the config's].")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable), e.g. --set learning_rate=3e-4.")
def train(preset_name, config_file, data_dir, run_dir, max_steps, checkpoint_every, resume, overrides):
    """Train Face-MakeUpV2's ID adapter (projection, IP k/v, LoRA) and ShadingNet on FaceCaptionMask records.

    Writes RUN_DIR/config.yaml, metrics.jsonl, loss.png, tensorboard/, samples/, checkpoint-STEP/ and
    final/ (face_adapter/ + shadingnet/: load with `facemakeup generate --adapter RUN_DIR/final
    --shadingnet RUN_DIR/final`). Runs under `accelerate launch -m facemakeup.train` for several processes.
    """
    from .train import ConfigError, NonFiniteLossError, apply_overrides, load_config, preset
    from .train import train as run_training

    try:
        cfg = preset(preset_name)
        if config_file is not None:
            cfg = load_config(config_file, base=cfg)
        cfg = apply_overrides(cfg, list(overrides) + ([f"checkpoint_every={checkpoint_every}"] if checkpoint_every else []))
        summary = run_training(cfg, data_dir, run_dir, max_steps=max_steps, resume=resume)
    except ConfigError as err:
        _fail(ValueError(f"{err} (set keys with --set KEY=VALUE or --config FILE.yaml)"))
    except (NonFiniteLossError, FaceMakeUpError, FileNotFoundError, ValueError) as err:
        _fail(err)
    click.echo(f"trained steps {summary['start_step']}..{summary['stop_step']} on {summary['records_train']} records "
               f"({summary['records_skipped']} skipped); wrote {run_dir}")


if __name__ == "__main__":
    main()
