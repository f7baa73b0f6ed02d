"""ID embeddings on real photos: same-identity vs different-identity cosine, ROC AUC, analysis time.

    python benchmarks/id_embedding.py [--limit N]

Reads ../shared/data/celeba-aligned (600 identities x 5 aligned CelebA faces, research-only) and
times ``FaceAnalyzer(fitter=None).get`` (detection + norm_crop + ArcFace + CLIP crop, no 3D fit) per image there and on
../shared/data/wild (unaligned photos up to 1024 px). Writes benchmarks/results/id_embedding.json.
"""

from __future__ import annotations

import csv
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image


def main() -> None:
    args = data_benchmark_args(__doc__, "first N celeba-aligned images only")

    analyzer = FaceAnalyzer(fitter=None)  # identity only: detection, norm_crop, ArcFace, CLIP crop
    root = SHARED_DATA / "celeba-aligned"
    rows = list(csv.DictReader(open(root / "index.tsv"), delimiter="\t"))[: args.limit]
    emb, ids, times, missed = [], [], [], []
    for r in tqdm(rows, desc="celeba-aligned"):
        img = load_image(root / r["image"])
        t0 = time.perf_counter()
        faces = analyzer.get(img)
        times.append(time.perf_counter() - t0)
        if not faces:
            missed.append(r["image"])
            continue
        emb.append(faces[0].embedding)
        ids.append(r["identity"])
    emb, ids = np.stack(emb), np.array(ids)
    sim = emb @ emb.T
    iu = np.triu_indices(len(ids), 1)
    scores, same = sim[iu], (ids[:, None] == ids[None])[iu]
    auc = float(roc_auc_score(same, scores))

    wild_times, wild_faces = [], []
    for path in tqdm(sorted((SHARED_DATA / "wild" / "images").iterdir()), desc="wild"):
        img = load_image(path)
        t0 = time.perf_counter()
        faces = analyzer.get(img)
        wild_times.append(time.perf_counter() - t0)
        wild_faces.append(len(faces))

    result = {
        "dataset": "celeba-aligned",
        "images": len(rows),
        "no_face": len(missed),
        "no_face_files": missed,
        "identities": len(set(ids)),
        "pairs_same": int(same.sum()),
        "pairs_different": int((~same).sum()),
        "cosine_same_mean": float(scores[same].mean()),
        "cosine_different_mean": float(scores[~same].mean()),
        "roc_auc": auc,
        "models": analyzer.model_files,
        "analysis_s_per_image_celeba_median": statistics.median(times),
        "analysis_s_per_image_wild_median": statistics.median(wild_times),
        "wild_images": len(wild_times),
        "wild_images_with_a_face": int(sum(n > 0 for n in wild_faces)),
        "wild_faces_total": int(sum(wild_faces)),
    }
    path = write_result("id_embedding", result)
    print({k: v for k, v in result.items() if k not in ("no_face_files", "models")})
    print("wrote", path)


if __name__ == "__main__":
    main()
