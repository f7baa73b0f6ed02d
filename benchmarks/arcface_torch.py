"""Torch ArcFace vs onnxruntime: embedding parity, align_faces vs norm_crop, and speed as ratios in one run.

    python benchmarks/arcface_torch.py [--limit N]

Reads the first N (default 64) photos of ../shared/data/celeba-aligned (research-only) plus
skimage's astronaut, detects the 5 keypoints with ``FaceAnalyzer(fitter=None)`` and measures
- ``max |e_torch - e_onnx|`` of ``load_arcface_torch()`` on the ``norm_crop`` crops (onnxruntime
  embeddings from ``recognize.ArcFace``);
- mean / max ``|align_faces - norm_crop|`` in pixel values [0, 255];
- the end-to-end cosine between the ONNX embedding of the cv2 crop and the torch embedding of the
  ``align_faces`` crop of the photo in [-1, 1] (what the ID loss sees);
- time per face of onnxruntime, torch without gradient, and torch align + embed + backward, batch 8.
Writes benchmarks/results/arcface_torch.json.
"""

from __future__ import annotations

import os
import time

import numpy as np
import skimage.data
import torch
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image, norm_crop
from facemakeup.faces.arcface_torch import align_faces, load_arcface_torch

BATCH = 8


def main() -> None:
    args = data_benchmark_args(__doc__, "first N celeba-aligned photos (default 64)")
    limit = args.limit or 64
    analyzer = FaceAnalyzer(fitter=None)
    arcface = load_arcface_torch()
    files = sorted((SHARED_DATA / "celeba-aligned" / "images").glob("*.jpg"))[:limit]
    photos = [skimage.data.astronaut()] + [load_image(f) for f in files]

    emb_diff, pix_mean, pix_max, cos_end, faces_used = [], [], [], [], []
    for photo in tqdm(photos, desc="parity"):
        faces = analyzer.get(photo, max_faces=1)
        if not faces:
            continue
        face = faces[0]
        faces_used.append((photo, face))
        crop = ((face.aligned.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        image = torch.tensor(photo).permute(2, 0, 1)[None].float()  # (1, 3, H, W) in [0, 255]
        kps = torch.from_numpy(face.kps[None].copy())
        with torch.no_grad():
            emb = arcface(torch.from_numpy(crop))[0].numpy()
            ours = align_faces(image, kps)[0].permute(1, 2, 0).numpy()
            emb_end = arcface(align_faces(image / 127.5 - 1, kps, fill=-1.0))[0].numpy()
        emb_diff.append(float(np.abs(emb - face.embedding).max()))
        diff = np.abs(ours - norm_crop(photo, face.kps).astype(np.float32))
        pix_mean.append(float(diff.mean()))
        pix_max.append(float(diff.max()))
        cos_end.append(float(emb_end @ face.embedding))

    crops = np.stack([f.aligned for _, f in faces_used[:BATCH]])
    blob = torch.from_numpy(((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
    size = max(p.shape[0] for p, _ in faces_used[:BATCH]), max(p.shape[1] for p, _ in faces_used[:BATCH])
    images = torch.zeros(len(crops), 3, *size)  # photos padded to one size (bottom/right)
    for i, (p, _) in enumerate(faces_used[:BATCH]):
        images[i, :, : p.shape[0], : p.shape[1]] = torch.tensor(p).permute(2, 0, 1).float() / 127.5 - 1
    kps = torch.from_numpy(np.stack([f.kps for _, f in faces_used[:BATCH]]))

    def onnx_run():
        analyzer.recognizer.embed(crops)

    def torch_run():
        with torch.no_grad():
            arcface(blob)

    def grad_run():
        x = images.clone().requires_grad_(True)
        emb = arcface(align_faces(x, kps, fill=-1.0))
        (1 - emb.sum(1)).sum().backward()

    timings = {}
    for name, fn in (("onnxruntime", onnx_run), ("torch_no_grad", torch_run), ("torch_align_embed_backward", grad_run)):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        timings[name] = (time.perf_counter() - t0) / 3 / len(crops)

    result = {
        "model": str(arcface.model_file),
        "photos": len(faces_used),
        "embedding_max_abs_diff": {"max": max(emb_diff), "mean": float(np.mean(emb_diff))},
        "align_abs_pixel_diff_0_255": {"mean": float(np.mean(pix_mean)), "max": max(pix_max)},
        "end_to_end_cosine_vs_onnx": {"min": min(cos_end), "mean": float(np.mean(cos_end))},
        "batch": len(crops),
        "seconds_per_face": timings,
        "ratio_vs_onnxruntime": {k: v / timings["onnxruntime"] for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
    }
    print(result)
    print(write_result("arcface_torch", result))


if __name__ == "__main__":
    main()
