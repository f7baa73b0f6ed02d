"""Age and gender as ``FaceAnalyzer`` reports them, on the attribute predictor's held-out photos.

    python benchmarks/age_gender.py [--limit N]

The test split of ``scripts/train_attributes.py`` (CelebA identity % 10 in {0, 1}: never used to
train or calibrate the heads) of ../shared/data celeba-hq-256 and celeba-aligned. These photos have
CelebA's ``Male`` and ``Young`` labels but no ages, and their subjects are adult celebrities, so
what can be measured here is:

* gender accuracy against ``Male``, before and after the child adjustment
  (``attributes.child_adjusted_male``): what the adjustment costs on adults;
* how often an adult is flagged a child (``child >= 0.5``) and the mean child probability;
* the age network's expectation and its own 10th-90th percentile spread by ``Young`` label (too
  sharp to report as an uncertainty: see the result).

Error by age band needs photos with ages (UTKFace, APPA-REAL, FG-NET); none is in ../shared/data
and none installs from the package registries, so it is reported "not computed" with that reason.
Writes benchmarks/results/age_gender.json.
"""

from __future__ import annotations

import csv

import numpy as np
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.attributes import age_chip, age_summary


def main() -> None:
    args = data_benchmark_args(__doc__, "first N test photos")
    rows = []
    for name in ("celeba-hq-256", "celeba-aligned"):
        with open(SHARED_DATA / name / "index.tsv") as f:
            rows += [(SHARED_DATA / name / r["image"], int(r["Male"]) > 0, int(r["Young"]) > 0)
                     for r in csv.DictReader(f, delimiter="\t") if int(r["identity"]) % 10 < 2]
    rows = rows[: args.limit]
    analyzer = FaceAnalyzer(fitter=None, attributes=True)
    male_label, young_label, raw, reported, ages, intervals, child = [], [], [], [], [], [], []
    for path, male, young in tqdm(rows, desc="age/gender"):
        faces = analyzer.get(load_image(path), max_faces=1, stages=("attributes",))
        if not faces:
            continue
        face, a = faces[0], faces[0].attributes
        reported.append(a.gender["male"])
        raw.append((a.gender["male"] - 0.5 * a.child) / max(1 - a.child, 1e-9))  # child_adjusted_male inverted
        ages.append(a.age)
        intervals.append(age_summary(analyzer.attributes.age_probabilities(age_chip(face.photo, face.kps)[None]))[1][0])
        child.append(a.child)
        male_label.append(male)
        young_label.append(young)
    male_label, young_label = np.array(male_label), np.array(young_label)
    raw, reported, ages, child = np.array(raw), np.array(reported), np.array(ages), np.array(child)
    intervals = np.array(intervals)

    def by_young(values):
        return {"young": round(float(values[young_label].mean()), 2), "not_young": round(float(values[~young_label].mean()), 2)}

    result = {
        "data": "celeba-hq-256 + celeba-aligned, test split of scripts/train_attributes.py (identity % 10 in {0, 1})",
        "photos": len(rows), "faces": int(len(male_label)),
        "gender_accuracy_before_child_adjustment": float(((raw >= 0.5) == male_label).mean()),
        "gender_accuracy_reported": float(((reported >= 0.5) == male_label).mean()),
        "gender_changed_by_child_adjustment": int(((raw >= 0.5) != (reported >= 0.5)).sum()),
        "adults_flagged_child": float((child >= 0.5).mean()),
        "mean_child_probability": float(child.mean()),
        "expected_age_by_young_label": by_young(ages),
        "age_network_p10_by_young_label": by_young(intervals[:, 0]),
        "age_network_p90_by_young_label": by_young(intervals[:, 1]),
        "age_network_p10_p90_width_median_years": float(np.median(intervals[:, 1] - intervals[:, 0])),
        "age_network_spread_note": "the network's 10th-90th percentiles lie 5 years apart at the median while its error is "
                                   "larger (MAE 9.2 years on UTKFace in the check that filed issue 9): too sharp to report as "
                                   "an uncertainty, so FaceAttributes has no age interval",
        "error_by_age_band": "not computed: no photos with ages are reachable here (UTKFace, APPA-REAL, FG-NET are "
                             "distributed through websites and model hubs only; ../shared/data has CelebA's Young label, no ages)",
    }
    print({k: v for k, v in result.items()})
    print("wrote", write_result("age_gender", result))


if __name__ == "__main__":
    main()
