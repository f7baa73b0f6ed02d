"""Detect, crop and embed the research photos once; cache what the attribute/age/gender heads train on.

    python scripts/extract_attribute_features.py [--cache /tmp/attr_cache] [--limit N]

For every photo of ../shared/data ``celeba-hq-256``, ``celeba-aligned`` and ``utkface`` (research-only,
never shipped; the cache lives outside the repository) this follows the run-time path of
``AttributePredictor``: ``FaceAnalyzer.get(max_faces=1)`` (SCRFD, the main face; a UTKFace chip where nothing is found is
padded by half its side with replicated edges and detected again) -> the 5 keypoints ->
``AttributePredictor.features`` on the photo (and with ``--flip`` on its mirror image): the MobileNetV2
pools of the CelebA-HQ-framed 224 px crop, the ArcFace ``w600k_mbf`` embedding of ``norm_crop``, the
dlib age network's 81 bins, the dlib gender probability and the DINOv2-S/14 tokens of the 224 px crop.
With ``--add NAME ...`` an existing cache gets those features added (the same detections, checked by file name).

Writes ``<cache>/<set>.npz`` (float16 features ``feat_<name>`` of shape (N, F, D): [photo] or, with ``--flip``, [photo, mirror];
labels; identity or file name) per set.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from facemakeup.faces.attributes import CELEBA_ATTRIBUTES, AttributePredictor
from facemakeup.errors import FaceTooSmallError
from facemakeup.faces.analyzer import FaceAnalyzer
from facemakeup.faces.image import load_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def detect(analyzer: FaceAnalyzer, rgb: np.ndarray, pad_retry: bool):
    """``(photo, keypoints)`` of the main face as ``FaceAnalyzer.get(max_faces=1)`` finds it (keypoints
    None when there is none); a chip with no face is padded by half its side and tried again."""
    try:
        faces = analyzer.get(rgb, max_faces=1)
    except FaceTooSmallError:
        faces = []
    if not faces and pad_retry:
        p = rgb.shape[0] // 2
        padded = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_REPLICATE)
        try:
            faces = analyzer.get(padded, max_faces=1)
        except FaceTooSmallError:
            faces = []
        if faces:
            return padded, faces[0].kps
    return rgb, (faces[0].kps if faces else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/attr_cache"))
    ap.add_argument("--sets", nargs="+", default=["utkface", "celeba-hq-256", "celeba-aligned"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flip", action="store_true", help="also the mirror images' features")
    ap.add_argument("--add", nargs="+", default=None, help="FEATURE_DIMS names to add to an existing cache")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    detector = FaceAnalyzer(fitter=None, threads=args.threads)
    pred = AttributePredictor(emotion_model=False, heads=False, threads=args.threads)
    for name in args.sets:
        out = args.cache / f"{name}.npz"
        old = None
        if out.is_file():
            if not args.add:
                print("cached:", out)
                continue
            old = dict(np.load(out))
        t0 = time.time()
        rows = list(csv.DictReader(open(DATA / name / "index.tsv"), delimiter="\t"))[: args.limit]
        key = "file" if name == "utkface" else "image"
        feats: dict[str, list] = {}
        keep, padded_count = [], 0
        batch: list = []

        def flush():
            images, kpss = zip(*batch)
            for flip in (False, True)[: 1 + args.flip]:
                f = pred.features(list(images), list(kpss), flip=flip, names=args.add)
                for k, v in f.items():
                    feats.setdefault(k, [[], []])[int(flip)].append(v.astype(np.float16))
            batch.clear()

        for i, r in enumerate(tqdm(rows, desc=name, mininterval=20)):
            rgb = load_image(DATA / name / ("images/" + r[key] if name == "utkface" else r[key]))
            img, kps = detect(detector, rgb, pad_retry=name == "utkface")
            if kps is None:
                continue
            padded_count += img is not rgb
            keep.append(i)
            batch.append((img, kps))
            if len(batch) == 32:
                flush()
        if batch:
            flush()
        arrays = {f"feat_{k}": np.stack([np.concatenate(x) for x in v if x], axis=1) for k, v in feats.items()}
        kept = [rows[i] for i in keep]
        arrays["name"] = np.array([r[key] for r in kept])
        if name == "utkface":
            arrays["age"] = np.array([int(r["age"]) for r in kept], np.int16)
            arrays["male"] = np.array([r["gender"] == "male" for r in kept])
            arrays["race"] = np.array([r["race"] for r in kept])
        else:
            arrays["identity"] = np.array([int(r["identity"]) for r in kept], np.int64)
            arrays["labels"] = np.array([[int(r[a]) > 0 for a in CELEBA_ATTRIBUTES] for r in kept])
        arrays["photos"] = np.array(len(rows))
        arrays["padded"] = np.array(padded_count)
        if old is not None:
            if not np.array_equal(old["name"], arrays["name"]):
                raise SystemExit(f"{out}: the detections differ from the cached ones; delete the cache and extract again")
            arrays = {**old, **{k: v for k, v in arrays.items() if k.startswith("feat_")}}
        np.savez(out, **arrays)
        print(f"{name}: {len(kept)} of {len(rows)} with a face ({padded_count} after padding), {time.time() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
