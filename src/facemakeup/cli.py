"""``facemakeup`` command line. Thin: parse, call the library, print.

    facemakeup generate --reference PHOTO --prompt TEXT --out DIR [--model ID|PATH|tiny] [--seed N] ...
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from .errors import FaceMakeUpError

logger = logging.getLogger("facemakeup")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Identity-consistent, controllable face generation (Face-MakeUp / Face-MakeUpV2)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(1)


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
@click.option("--face-models", default=None, type=click.Path(path_type=Path), help="Folder with buffalo_l's det_10g.onnx and w600k_r50.onnx [default: offline SCRFD-500M + w600k_mbf].")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--num-images", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance-scale", default=7.5, show_default=True, type=float)
@click.option("--ip-scale", default=0.6, show_default=True, type=float, help="Weight of the ID attention.")
@click.option("--s-scale", default=1.0, show_default=True, type=float, help="Weight of the CLIP (Perceiver) part of the ID tokens.")
@click.option("--height", default=None, type=int, help="Pixels, multiple of 8 [default: the model's, 512 for SD 1.5].")
@click.option("--width", default=None, type=int)
@click.option("--face-index", default=0, show_default=True, type=int, help="Which face of each photo, 0 = largest.")
@click.option("--crop-factor", default=3.0, show_default=True, type=float, help="CLIP face crop: keypoint box x this.")
def generate(references, weights, prompt, negative_prompt, out_dir, model, image_encoder, adapter, face_models, seed, num_images,
             steps, guidance_scale, ip_scale, s_scale, height, width, face_index, crop_factor):
    """Generate images of the person in --reference, as --prompt describes."""
    from .faces import FaceAnalyzer, load_image
    from .provenance import environment, sha256_file
    from .viz import conditions_sheet

    if weights and len(weights) != len(references):
        _fail(ValueError(f"{len(weights)} --weight values for {len(references)} --reference photos"))
    timings = {}
    try:
        # 1. Faces first: a photo without a usable face fails before any large model loads.
        t0 = time.perf_counter()
        analyzer = FaceAnalyzer(detector=face_models, recognizer=face_models, crop_factor=crop_factor)
        photos = [load_image(r) for r in references]
        for ref in references:
            analyzer.get_face(ref, face_index)  # by path, so errors name the file
        timings["face_analysis_s"] = time.perf_counter() - t0

        # 2. The pipeline
        from .pipeline import DEFAULT_BACKBONE, DEFAULT_IMAGE_ENCODER, load_pipeline

        model = model or DEFAULT_BACKBONE
        image_encoder = image_encoder or DEFAULT_IMAGE_ENCODER
        t0 = time.perf_counter()
        pipe = load_pipeline(model, image_encoder=image_encoder, adapter=str(adapter) if adapter else None)
        timings["load_s"] = time.perf_counter() - t0
        if pipe.image_encoder is not None:
            analyzer.clip_size = pipe.image_encoder.config.image_size
        pipe.face_analyzer = analyzer

        # 3. Generate
        t0 = time.perf_counter()
        out = pipe(prompt, reference_image=list(references), negative_prompt=negative_prompt, num_images_per_prompt=num_images,
                   height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale, ip_scale=ip_scale,
                   s_scale=s_scale, reference_weights=list(weights) or None, face_index=face_index, seed=seed)
        timings["generate_s"] = time.perf_counter() - t0
        timings["per_step_s"] = timings["generate_s"] / steps
    except (FaceMakeUpError, IndexError, ValueError) as err:
        _fail(err)

    # 4. Save images, the conditions sheet and the provenance record
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL.PngImagePlugin import PngInfo

    names = []
    for i, img in enumerate(out.images):
        info = PngInfo()
        info.add_text("facemakeup", json.dumps({"prompt": prompt, "seed": seed, "index": i, "model": model}))
        name = f"image_{i:02d}.png"
        img.save(out_dir / name, pnginfo=info)
        names.append(name)
    conditions_sheet(photos, out.faces).save(out_dir / "conditions.png")
    if len(out.images) > 1:
        from diffusers.utils import make_image_grid

        cols = min(len(out.images), 4)
        rows = -(-len(out.images) // cols)
        blank = [out.images[0].copy().point(lambda _: 0)] * (rows * cols - len(out.images))
        make_image_grid(list(out.images) + blank, rows=rows, cols=cols).save(out_dir / "grid.png")

    record = {
        "task": "generate",
        "inputs": {
            "references": [
                {"path": str(r), "sha256": sha256_file(r), "face_index": face_index, "bbox": f.bbox.tolist(),
                 "kps": f.kps.tolist(), "det_score": f.det_score, "clip_box": f.clip_box.tolist()}
                for r, f in zip(references, out.faces)
            ],
            "reference_weights": out.reference_weights,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
        },
        "parameters": {"seed": seed, "num_images": num_images, "steps": steps, "guidance_scale": guidance_scale,
                       "ip_scale": ip_scale, "s_scale": s_scale, "height": out.images[0].height, "width": out.images[0].width,
                       "crop_factor": crop_factor, "scheduler": type(pipe.scheduler).__name__},
        "models": {"pipeline": model, "image_encoder": image_encoder if model != "tiny" else "tiny (random)",
                   "adapter": str(adapter) if adapter else ("untrained (fresh init)" if model != "tiny" else "tiny (random)"),
                   "face": analyzer.model_files},
        "outputs": names + ["conditions.png"] + (["grid.png"] if len(out.images) > 1 else []),
        "timings": timings,
        **environment(),
    }
    if model == "tiny":
        record["note"] = "tiny randomly initialised pipeline: the images are noise, not faces"
    (out_dir / "provenance.json").write_text(json.dumps(record, indent=2))
    click.echo(f"wrote {len(names)} image(s), conditions.png and provenance.json to {out_dir}")


if __name__ == "__main__":
    main()
