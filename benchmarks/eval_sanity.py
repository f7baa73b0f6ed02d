"""Sanity of the evaluation metrics on real photos (no generator involved).

    python benchmarks/eval_sanity.py [--limit N]

On ../shared/data (research-only):
- FaceSim (``eval.identity.FaceSimilarity``, offline ArcFace w600k_mbf): each celeba-aligned photo
  against its identity's first photo (same) and against the next identity's first photo
  (different): means, ROC AUC, no-face rate.
- Pose-RMSE / Light-RMSE (``eval.physical``, mediapipe fit): celebamask-hq photos against
  themselves (must be 0) and against their mirror images.
- Attr (``eval.attributes.AttributeCount``, threshold 0.85) of celeba-hq-256 photos, beside the
  number of attributes CelebA's labels mark present.
- FD-MobileNetV2 (``eval.image_quality.FrechetDistance``) between two disjoint halves of
  celeba-hq-256, and between celeba-hq-256 and wild/.

``--limit N`` caps every set at N photos (defaults below). Writes benchmarks/results/eval_sanity.json.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.eval.attributes import AttributeCount
from facemakeup.eval.identity import FaceSimilarity, main_faces
from facemakeup.eval.image_quality import FrechetDistance, MobileNetV2Features, images_to_tensor
from facemakeup.eval.physical import LightRMSE, PoseRMSE
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.attributes import CELEBA_ATTRIBUTES, AttributePredictor


def rows(name: str) -> list[dict]:
    return list(csv.DictReader(open(SHARED_DATA / name / "index.tsv"), delimiter="\t"))


def face_sim(n_ids: int) -> dict:
    by_id: dict[str, list[str]] = {}
    for r in rows("celeba-aligned"):
        by_id.setdefault(r["identity"], []).append(r["image"])
    ids = list(by_id)[:n_ids]
    analyzer = FaceAnalyzer(fitter=None)
    root = SHARED_DATA / "celeba-aligned"
    faces = {i: main_faces(analyzer, [root / p for p in tqdm(by_id[i], desc=f"FaceSim {i}", leave=False)]) for i in tqdm(ids, desc="FaceSim")}
    refs = {i: faces[i][0] for i in ids}
    same, diff = FaceSimilarity(analyzer), FaceSimilarity(analyzer)
    usable = [i for i in ids if refs[i] is not None]
    for k, i in enumerate(usable):
        same.update(faces[i][1:], [refs[i]] * (len(faces[i]) - 1))
        other = refs[usable[(k + 1) % len(usable)]]
        diff.update(faces[i][1:], [other] * (len(faces[i]) - 1))
    s, d = same.per_image(), diff.per_image()
    ok = np.isfinite(s) & np.isfinite(d)
    labels = np.r_[np.ones(ok.sum()), np.zeros(ok.sum())]
    rs, rd = same.result(model="w600k_mbf"), diff.result(model="w600k_mbf")
    return {"set": "celeba-aligned", "identities": len(usable), "pairs_each": int(len(s)),
            "same_identity": {"mean": rs.value, "ci95": rs.ci95, "no_face_rate": same.no_face_rate},
            "different_identity": {"mean": rd.value, "ci95": rd.ci95},
            "roc_auc": float(roc_auc_score(labels, np.r_[s[ok], d[ok]])),
            "references_without_face": [i for i in ids if refs[i] is None]}


def physical(n: int) -> dict:
    analyzer = FaceAnalyzer()
    root = SHARED_DATA / "celebamask-hq"
    key = next(k for k in rows("celebamask-hq")[0] if "image" in k or "file" in k)
    photos = [load_image(root / r[key]) for r in rows("celebamask-hq")[:n]]
    faces = main_faces(analyzer, tqdm(photos, desc="3D fit"))
    mirrors = main_faces(analyzer, tqdm([np.ascontiguousarray(p[:, ::-1]) for p in photos], desc="3D fit, mirrors"))
    out = {"set": "celebamask-hq", "photos": n}
    for label, gens in (("self", faces), ("mirror", mirrors)):
        pose, light = PoseRMSE(analyzer), LightRMSE(analyzer)
        pose.update(gens, faces)
        light.update(gens, faces)
        rp, rl = pose.result(model="mediapipe"), light.result(model="mediapipe")
        out[label] = {"Pose-RMSE": rp.value, "Pose-RMSE_ci95": rp.ci95, "Pose-RMSE_degrees": float(np.degrees(rp.value)),
                      "Light-RMSE": rl.value, "Light-RMSE_ci95": rl.ci95, "n": rp.n}
    sh = np.stack([f.fit.sh for f in faces if f is not None and f.fit is not None])
    out["sh_coefficient_rms"] = float(np.sqrt(np.mean(sh**2)))  # scale of Light-RMSE: the coefficients' own size
    return out


def attributes(n: int) -> dict:
    analyzer = FaceAnalyzer(fitter=None, attributes=AttributePredictor(age_model=False, gender_model=False, emotion_model=False))
    table = rows("celeba-hq-256")[:n]
    metric = AttributeCount(analyzer)
    metric.update([SHARED_DATA / "celeba-hq-256" / r["image"] for r in tqdm(table, desc="Attr")])
    labelled = np.array([sum(r[a] == "1" for a in CELEBA_ATTRIBUTES) for r in table], float)
    res = metric.result(model="attribute heads")
    counts = metric.per_image()
    ok = np.isfinite(counts)
    return {"set": "celeba-hq-256", "photos": n, "Attr": res.value, "ci95": res.ci95, "no_face": int((~ok).sum()),
            "labelled_present_mean": float(labelled.mean()),
            "correlation_with_labelled_count": float(np.corrcoef(counts[ok], labelled[ok])[0, 1])}


def frechet(n_half: int) -> dict:
    extractor = MobileNetV2Features().load()
    table = rows("celeba-hq-256")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(table))
    a = [SHARED_DATA / "celeba-hq-256" / table[i]["image"] for i in order[:n_half]]
    b = [SHARED_DATA / "celeba-hq-256" / table[i]["image"] for i in order[n_half:2 * n_half]]
    wild = sorted((SHARED_DATA / "wild" / "images").iterdir())

    def feats(paths, desc):
        out = []
        for i in tqdm(range(0, len(paths), 32), desc=desc):
            with torch.no_grad():
                out.append(extractor(images_to_tensor(paths[i:i + 32])))
        return torch.cat(out)

    fa, fb, fw = feats(a, "FD half A"), feats(b, "FD half B"), feats(wild, "FD wild")
    out = {"extractor": "ImageNet MobileNetV2, global average 1280-D (FD-MobileNetV2, not FID)",
           "sizes": {"celeba_half_a": len(a), "celeba_half_b": len(b), "wild": len(wild)}}
    for label, real, fake in (("celeba_half_a_vs_half_b", fa, fb), ("celeba_half_a_vs_wild", fa, fw)):
        fd = FrechetDistance(Precomputed(extractor.num_features))  # features computed once above
        fd.update(real, real=True)
        fd.update(fake, real=False)
        r = fd.result(model="mobilenet_v2", n_boot=20)
        out[label] = {"value": r.value, "ci95": r.ci95}
    return out


class Precomputed(torch.nn.Module):
    """The identity on ``(N, D)`` features computed beforehand (so each set is embedded once)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def main() -> None:
    args = data_benchmark_args(__doc__, "cap on every set (default: 30 identities, 30 fits, 100 attribute photos, 300 per FD half)")
    lim = args.limit
    t0 = time.perf_counter()
    result = {"FaceSim": face_sim(min(lim or 30, 600)), "physical": physical(min(lim or 30, 850)),
              "Attr": attributes(min(lim or 100, 5367)), "FD-MobileNetV2": frechet(min(lim or 300, 2683))}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["load_average"] = os.getloadavg()
    print(write_result("eval_sanity", result))
    import json

    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
