"""Age, gender and the 40 CelebA attributes as ``FaceAnalyzer`` reports them, on held-out photos.

    python benchmarks/age_gender.py [--limit N] [--label before|after]

Two held-out sets of ../shared/data (research-only), never used to train or calibrate the heads
(``scripts/train_attributes.py``):

* UTKFace test part: ``crc32(file name) % 5 == 0`` (1 in 5 chips; ``attributes.utkface_is_test``), ages
  0-116 and gender: age MAE overall and per 10-year band (with the mean signed error: negative = read
  too young), coverage of ``age_interval``, gender accuracy for adults (> 12) and children (<= 12);
* CelebA validation identities (identity % 10 in {0, 1}) of ``celeba-hq-256`` + ``celeba-aligned``:
  gender accuracy against ``Male``, the 40 attributes' accuracy and balanced accuracy (decision:
  probability > 0.5, the JSON as ``facemakeup analyze`` writes it), expected age by CelebA's ``Young``
  (these photos have no ages).

Each photo goes the run-time path: ``FaceAnalyzer.get(max_faces=1)`` (a UTKFace chip where no face
is found is padded by half its side and tried again, as in training), then the ``embed`` and
``attributes`` stages (timed per face). It reads only the public outputs (``age``, ``gender``,
``attributes``, ``child``, ``age_interval`` where present), so the same script measures an older
checkout: ``PYTHONPATH=<old>/src python benchmarks/age_gender.py --label before`` writes
``results/age_gender_before.json``; the default run writes ``results/age_gender.json`` and copies the
``before`` file's numbers into it for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import zlib

import cv2
import numpy as np
from tqdm import tqdm

from common import RESULTS, SHARED_DATA, write_result
from facemakeup.errors import FaceTooSmallError
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.attributes import CELEBA_ATTRIBUTES, AttributePredictor

BANDS = [(0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 80), (81, 200)]
CHILD_MAX_AGE = 12


def spread(rows: list, limit: int | None) -> list:
    """``limit`` rows evenly spaced over ``rows`` (all with ``None``): UTKFace's index is sorted by age."""
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]


def main_face(analyzer: FaceAnalyzer, rgb: np.ndarray, pad_retry: bool):
    """The main face (``get(max_faces=1)``); a chip with none is padded by half its side and tried again."""
    for attempt in range(1 + pad_retry):
        if attempt:
            p = rgb.shape[0] // 2
            rgb = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_REPLICATE)
        try:
            faces = analyzer.get(rgb, max_faces=1)
        except FaceTooSmallError:
            faces = []
        if faces:
            return faces[0]
    return None


def analyse(analyzer: FaceAnalyzer, face, clock: dict):
    t = time.perf_counter()
    analyzer.run([face], "embed")
    clock["embed"] += time.perf_counter() - t
    t = time.perf_counter()
    analyzer.run([face], "attributes")
    clock["attributes"] += time.perf_counter() - t
    clock["n"] += 1
    return face.attributes


def bands(pred: np.ndarray, true: np.ndarray) -> dict:
    """Per 10-year band of ``true`` (years): count, MAE and mean signed error of ``pred``. The same table as
    ``scripts/train_attributes.py``'s ``band_table``, written here again on purpose: the "before" run of this
    benchmark imports the previous facemakeup source, which has neither."""
    out = {}
    for lo, hi in BANDS:
        m = (true >= lo) & (true <= hi)
        if m.any():
            err = pred[m] - true[m]
            out[f"{lo}-{hi}" if hi < 200 else f"{lo}+"] = {"n": int(m.sum()), "mae": round(float(np.abs(err).mean()), 2),
                                                          "mean_signed_error": round(float(err.mean()), 2)}
    return out


def balanced(pred: np.ndarray, y: np.ndarray) -> float:
    """Balanced accuracy (mean of true-positive and true-negative rates) of boolean ``pred`` against boolean ``y``."""
    tpr = pred[y].mean() if y.any() else 1.0
    tnr = (~pred[~y]).mean() if (~y).any() else 1.0
    return float((tpr + tnr) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="N photos of each set, evenly spaced over it")
    ap.add_argument("--label", default="after", help="'before' writes age_gender_before.json (an older checkout's numbers)")
    args = ap.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"no data at {SHARED_DATA} (set FACEMAKEUP_SHARED_DATA)")
    analyzer = FaceAnalyzer(fitter=None, attributes=AttributePredictor(emotion_model=False))
    clock = {"embed": 0.0, "attributes": 0.0, "n": 0}

    # ---------------------------------------------------------------- UTKFace test part
    with open(SHARED_DATA / "utkface" / "index.tsv") as f:
        utk = spread([r for r in csv.DictReader(f, delimiter="\t") if zlib.crc32(r["file"].encode()) % 5 == 0], args.limit)
    age_t, age_p, male_t, male_p, inside, missed = [], [], [], [], [], 0
    for r in tqdm(utk, desc="utkface test", mininterval=20):
        face = main_face(analyzer, load_image(SHARED_DATA / "utkface" / "images" / r["file"]), pad_retry=True)
        if face is None:
            missed += 1
            continue
        a = analyse(analyzer, face, clock)
        age_t.append(int(r["age"]))
        age_p.append(a.age)
        male_t.append(r["gender"] == "male")
        male_p.append(a.gender["male"])
        iv = getattr(a, "age_interval", None)
        if iv is not None:
            inside.append(iv[0] <= min(int(r["age"]), 100) <= iv[1])
    age_t, age_p, male_t, male_p = np.array(age_t), np.array(age_p, float), np.array(male_t), np.array(male_p)
    adult = age_t > CHILD_MAX_AGE
    utk_result = {
        "photos": len(utk), "faces": int(len(age_t)), "no_face": missed,
        "age_mae": round(float(np.abs(age_p - age_t).mean()), 2),
        "age_bands": bands(age_p, age_t),
        "age_interval_coverage": round(float(np.mean(inside)), 3) if inside else None,
        "gender_accuracy_adults": round(float(((male_p > 0.5) == male_t)[adult].mean()), 4),
        "gender_accuracy_children": round(float(((male_p > 0.5) == male_t)[~adult].mean()), 4),
        "gender_accuracy_under_10": round(float(((male_p > 0.5) == male_t)[age_t < 10].mean()), 4),
        "children_mean_abs_p_male_minus_half": round(float(np.abs(male_p[~adult] - 0.5).mean()), 3),
    }
    print(json.dumps(utk_result, indent=1))

    # ---------------------------------------------------------------- CelebA validation identities
    rows = []
    for name in ("celeba-hq-256", "celeba-aligned"):
        with open(SHARED_DATA / name / "index.tsv") as f:
            rows += spread([(SHARED_DATA / name / r["image"], r) for r in csv.DictReader(f, delimiter="\t") if int(r["identity"]) % 10 < 2],
                           args.limit)
    probs, truth, ages, missed = [], [], [], 0
    for path, r in tqdm(rows, desc="celeba val", mininterval=20):
        face = main_face(analyzer, load_image(path), pad_retry=False)
        if face is None:
            missed += 1
            continue
        a = analyse(analyzer, face, clock)
        probs.append([a.gender["male"] if n == "Male" else a.celeba[n] for n in CELEBA_ATTRIBUTES])
        truth.append([int(r[n]) > 0 for n in CELEBA_ATTRIBUTES])
        ages.append(a.age)
    probs, truth, ages = np.array(probs), np.array(truth), np.array(ages, float)
    raw_male = probs[:, CELEBA_ATTRIBUTES.index("Male")]
    per = {}
    for j, n in enumerate(CELEBA_ATTRIBUTES):
        pred = probs[:, j] > 0.5
        per[n] = {"accuracy": round(float((pred == truth[:, j]).mean()), 4), "balanced_accuracy": round(balanced(pred, truth[:, j]), 4),
                  "majority_baseline": round(float(max(truth[:, j].mean(), 1 - truth[:, j].mean())), 4)}
    young = truth[:, CELEBA_ATTRIBUTES.index("Young")]
    celeba_result = {
        "photos": len(rows), "faces": int(len(truth)), "no_face": missed,
        "gender_accuracy": round(float(((raw_male > 0.5) == truth[:, CELEBA_ATTRIBUTES.index("Male")]).mean()), 4),
        "gender_note": "gender = the reported gender.male (child-adjusted); the Male attribute row below uses it too",
        "attributes_mean_accuracy": round(float(np.mean([v["accuracy"] for v in per.values()])), 4),
        "attributes_mean_balanced_accuracy": round(float(np.mean([v["balanced_accuracy"] for v in per.values()])), 4),
        "attributes_mean_majority_baseline": round(float(np.mean([v["majority_baseline"] for v in per.values()])), 4),
        "expected_age_median_by_young_label": {"young": round(float(np.median(ages[young])), 1),
                                               "not_young": round(float(np.median(ages[~young])), 1)},
        "attributes": per,
    }
    print(json.dumps({k: v for k, v in celeba_result.items() if k != "attributes"}, indent=1))
    result = {
        "label": args.label,
        "utkface_test": utk_result, "celeba_val": celeba_result,
        "ms_per_face": {"embed_stage": round(1000 * clock["embed"] / clock["n"], 1),
                        "attributes_stage": round(1000 * clock["attributes"] / clock["n"], 1),
                        "note": "per face, one face per call (no batching), emotion off, 2 CPU threads; the embed stage runs "
                                "first and its embedding is reused by the attribute heads where they read it"},
        "split_rules": {"utkface": "crc32(file name) % 5 == 0", "celeba": "identity % 10 in {0, 1}"},
    }
    if args.label == "before":
        print("wrote", write_result("age_gender_before", result))
        return
    before = RESULTS / "age_gender_before.json"
    if before.is_file():
        b = json.loads(before.read_text())
        result["before"] = {k: b[k] for k in ("utkface_test", "celeba_val", "ms_per_face", "versions", "command") if k in b}
        result["before"]["celeba_val"] = {k: v for k, v in result["before"]["celeba_val"].items() if k != "attributes"}
        for n, v in per.items():
            v["accuracy_before"] = b["celeba_val"]["attributes"][n]["accuracy"]
            v["balanced_accuracy_before"] = b["celeba_val"]["attributes"][n]["balanced_accuracy"]
    print("wrote", write_result("age_gender", result))


if __name__ == "__main__":
    main()
