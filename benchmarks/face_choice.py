"""How often the face-choice rule picks another face than "the largest box", on ../shared/data/wild.

    python benchmarks/face_choice.py [--limit N] [--sheet /tmp/face_choice.jpg]

For every photo with two or more faces, compares the main face of ``face_choice_scores`` (visible
area, centrality, detector score) with the old rule (the longest box side). Where they differ and
the photo's identity has other photos, the two candidates' ArcFace embeddings are compared with
the main faces of those other photos: the face that is more similar is the identity the photo is
labelled with. Writes benchmarks/results/face_choice.json and a contact sheet of every photo with
several faces (green: main face, red: largest box where it differs, grey: the others; research-only
photos: the sheet must be written OUTSIDE the repository, /tmp by default).

It also checks ``get(max_faces=1)``'s fast path (detection at 320 alone when that settles the main
face) against full detection, on wild and the first ``--celebamask`` CelebAMask-HQ photos (512 px):
how often the fast path was taken, how often it chose another face (box IoU < 0.5), how far its
keypoints and ArcFace embedding moved (the pooled detection may keep the 640 px box instead), and
the identity verification ROC AUC over all photo pairs of the two sets (labelled identities) with
the embeddings of either way.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score  # the test extra
from tqdm import tqdm

from common import ROOT, SHARED_DATA, write_result
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.analyzer import face_choice_scores


def fast_path_check(analyzer: FaceAnalyzer, photos, pairs: list) -> dict:
    """``get(max_faces=1)`` against the first face of full detection, over (name, rgb, faces, identity)
    tuples; appends (identity, full embedding, fast embedding) to ``pairs`` for photos with an identity."""
    calls = []
    full = analyzer.detector.detect_multiscale
    analyzer.detector.detect_multiscale = lambda rgb, sizes, **kw: calls.append(len(sizes)) or full(rgb, sizes, **kw)
    n = taken = other = 0
    kp_dev, cos = [], []
    try:
        for name, rgb, faces, ident in tqdm(photos, desc="fast path"):
            calls.clear()
            fast = analyzer.get(rgb, max_faces=1, stages=("embed",))
            n += 1
            taken += calls == [1] and len(analyzer.detection_sizes(*rgb.shape[:2])) > 1
            if not faces or not fast:
                other += bool(faces) != bool(fast)
                continue
            a, b = fast[0].bbox, faces[0].bbox
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
            if iou < 0.5:
                other += 1
                print(f"fast path chose another face in {name}")
                continue
            kp_dev.append(float(np.abs(fast[0].kps - faces[0].kps).max() / faces[0].size))
            cos.append(float(fast[0].embedding @ faces[0].embedding))
            if ident:
                pairs.append((ident, faces[0].embedding, fast[0].embedding))
    finally:
        analyzer.detector.detect_multiscale = full
    return {"photos": n, "fast_path_taken": int(taken), "chose_another_face": other,
            "keypoint_max_deviation_over_face_size_p99": float(np.percentile(kp_dev, 99)) if kp_dev else None,
            "embedding_cosine_min": min(cos) if cos else None,
            "embedding_cosine_median": float(np.median(cos)) if cos else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N photos")
    parser.add_argument("--celebamask", type=int, default=850, help="CelebAMask-HQ photos for the fast-path check")
    parser.add_argument("--sheet", default="/tmp/face_choice_changed.jpg", help="contact sheet path (outside the repository)")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"no data at {SHARED_DATA} (set FACEMAKEUP_SHARED_DATA)")
    sheet_path = __import__("pathlib").Path(args.sheet).resolve()
    if ROOT in sheet_path.parents:
        sys.exit(f"{sheet_path}: the sheet shows research-only photos; write it outside the repository")

    wild = SHARED_DATA / "wild"
    identity = {}
    with open(wild / "MANIFEST.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            identity[row["file"]] = row["identity_id_if_known"] or None
    files = sorted(identity)[: args.limit]
    analyzer = FaceAnalyzer(fitter=None)
    photos = {}
    for name in tqdm(files, desc="detect"):
        rgb = load_image(wild / name)
        faces = analyzer.get(rgb, stages=("embed",))
        photos[name] = (rgb, faces)
    with open(SHARED_DATA / "celebamask-hq" / "index.tsv") as f:
        celebamask = list(csv.DictReader(f, delimiter="\t"))[: args.celebamask]
    pairs: list[tuple] = []  # (identity, full-detection embedding, fast-path embedding)
    fast_path = {"wild": fast_path_check(analyzer, [(n, rgb, faces, identity[n]) for n, (rgb, faces) in photos.items()], pairs),
                 "celebamask-hq": fast_path_check(analyzer, ((r["image"], rgb, analyzer.get(rgb, stages=("embed",)), f"c{r['identity']}")
                                                              for r in celebamask for rgb in [load_image(SHARED_DATA / "celebamask-hq" / r["image"])]),
                                                  pairs)}
    ids = np.array([p[0] for p in pairs])
    same = (ids[:, None] == ids[None])[np.triu_indices(len(ids), 1)]
    fast_path["verification_pairs"] = {"photos": len(ids), "same_identity_pairs": int(same.sum()), "pairs": int(len(same))}
    for k, way in ((1, "full_detection"), (2, "fast_path")):
        emb = np.stack([p[k] for p in pairs])
        sims = (emb @ emb.T)[np.triu_indices(len(ids), 1)]
        fast_path["verification_pairs"][f"roc_auc_{way}"] = float(roc_auc_score(same, sims))

    by_identity = defaultdict(list)
    for name, (_, faces) in photos.items():
        if faces and identity[name]:
            by_identity[identity[name]].append(name)

    multi, changed, cases = 0, [], []
    verdicts = {"new_more_similar": 0, "old_more_similar": 0, "no_other_photo": 0}
    for name, (rgb, faces) in photos.items():
        if len(faces) < 2:
            continue
        multi += 1
        old = int(np.argmax([f.size for f in faces]))  # the old rule: the longest box side
        others = [photos[o][1][0].embedding for o in by_identity.get(identity[name], []) if o != name]
        if old != 0:
            changed.append(name)
        if old == 0:
            verdict = "same face"
        elif not others:
            verdicts["no_other_photo"] += 1
            verdict = "no other photo"
        else:
            ref = np.stack(others)
            new_sim, old_sim = float((ref @ faces[0].embedding).mean()), float((ref @ faces[old].embedding).mean())
            verdict = f"id sim new {new_sim:.2f} / old {old_sim:.2f}"
            verdicts["new_more_similar" if new_sim > old_sim else "old_more_similar"] += 1
        h, w = rgb.shape[:2]
        scores = face_choice_scores(np.stack([f.bbox for f in faces]), np.array([f.det_score for f in faces]), h, w)
        cases.append({"file": name, "faces": len(faces), "changed": old != 0, "old_index": old, "old_box_side": faces[old].size,
                      "new_box_side": faces[0].size, "scores": [round(float(s), 1) for s in scores], "verdict": verdict})

    if cases:
        tiles = []
        for case in cases:
            rgb, faces = photos[case["file"]]
            img = Image.fromarray(rgb)
            draw = ImageDraw.Draw(img)
            lw = max(2, round(max(img.size) / 200))
            for f in faces[1:]:
                draw.rectangle([float(v) for v in f.bbox], outline=(160, 160, 160), width=lw)
            draw.rectangle([float(v) for v in faces[case["old_index"]].bbox], outline=(255, 0, 0), width=lw)
            draw.rectangle([float(v) for v in faces[0].bbox], outline=(0, 255, 0), width=lw)
            img.thumbnail((320, 320))
            tile = Image.new("RGB", (320, 350), "white")
            tile.paste(img, (0, 0))
            ImageDraw.Draw(tile).text((4, 324), f"{case['file'][7:40]}\n{case['verdict']}", fill=(0, 0, 0))
            tiles.append(tile)
        cols = min(5, len(tiles))
        sheet = Image.new("RGB", (cols * 320, -(-len(tiles) // cols) * 350), "white")
        for k, t in enumerate(tiles):
            sheet.paste(t, ((k % cols) * 320, (k // cols) * 350))
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(sheet_path, quality=90)

    result = {
        "data": "../shared/data/wild (unaligned photos, 150-1024 px)",
        "photos": len(photos),
        "photos_with_a_face": sum(bool(f) for _, f in photos.values()),
        "photos_with_several_faces": multi,
        "main_face_changed": len(changed),
        "changed_share_of_all_photos": len(changed) / max(len(photos), 1),
        "identity_check_of_changed": verdicts,
        "identity_check": "mean ArcFace cosine of each candidate with the main faces of the same identity's other photos",
        "main_face_fast_path": fast_path,
        "cases": cases,
        "contact_sheet": f"{sheet_path} (not in the repository: research-only photos); green = main face, red = largest box where it differs, grey = other faces",
    }
    print({k: v for k, v in result.items() if k != "cases"})
    print("wrote", write_result("face_choice", result))


if __name__ == "__main__":
    main()
