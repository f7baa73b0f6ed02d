"""Train the attribute/gender heads and the age head shipped in ``src/facemakeup/assets/``.

    python scripts/extract_attribute_features.py          # once: ~25 min on 2 CPU cores -> /tmp/attr_cache
    python scripts/train_attributes.py [--cache /tmp/attr_cache] [--compare]
    python scripts/train_gender_head.py                   # then: the Male output from the ArcFace gender MLP

Data (../shared/data, research-only, never shipped): ``celeba-hq-256`` + ``celeba-aligned`` (40 CelebA
attributes) and ``utkface`` (age in years, gender). Splits (deterministic):

* CelebA: identity % 10 in {0, 1} -> test (never seen by training or calibration), else training;
* UTKFace: ``utkface_is_test(file)`` (CRC-32 of the file name % 5 == 0, 20%) -> test, else training.

Features (``AttributePredictor.features``, cached by the extraction script): ImageNet MobileNetV2 pools
of the CelebA-HQ-framed 224 px crop, the ArcFace ``w600k_mbf`` embedding, dlib's 81 age bins and its
P(male), and the DINOv2-S/14 class + mean patch tokens (age). Heads (``facemakeup.faces.attributes.MLPHead``): standardised inputs -> one hidden layer ->

* attributes: 40 logits (CelebA photos give all 40 labels, UTKFace photos the ``Male`` label only;
  binary cross-entropy over the labels present);
* age: 101 logits, softmax over the one-year bins 0-100, trained with Gaussian label distributions
  (DLDL, Gao et al. 2017; sigma 2 years) plus the L1 error of the expectation (DLDL-v2, Gao et al. 2018).

Calibration on out-of-fold predictions (5 folds of the training part, CelebA folds by identity):
per-attribute temperature (Guo et al. 2017), then a per-attribute decision threshold folded into the
logit (``p = sigmoid(z / T - logit(t))``, so 0.5 is the calibrated decision): the threshold with the best
balanced accuracy among those whose accuracy is within ``--acc-slack`` of the best accuracy; for
``Male`` the accuracy-best threshold on CelebA + UTKFace adults. The age softmax gets one temperature
so that its 10th-90th percentile interval covers 80% of the out-of-fold ages. The final heads are
then trained on the whole training part and measured on the test part.

Writes ``assets/attribute_heads.safetensors``, ``assets/age_head.safetensors`` and
``benchmarks/results/attributes.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from facemakeup.faces.attributes import (
    AGE_MAX, CELEBA_ATTRIBUTES, MALE, MLPHead, age_summary, child_adjusted_male, save_head, utkface_is_test,
)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "facemakeup" / "assets"
BANDS = [(0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 80), (81, 200)]
ATTR_INPUTS = ("mn_gap18", "mn_p4_13", "arcface", "dlib_age", "dlib_male")
#: Age: the MobileNetV2 pools made the out-of-fold MAE worse (5.10 -> 5.33 with them, --compare), so they are left out.
AGE_INPUTS = ("arcface", "dlib_age", "dlib_male", "dino")


def load(cache: Path):
    """The cached sets as one table: features dict (N, D) float32, and per-row labels/ids."""
    sets = [np.load(cache / f"{n}.npz") for n in ("celeba-hq-256", "celeba-aligned", "utkface")]
    feats = {k[5:]: np.concatenate([s[k][:, 0] for s in sets]).astype(np.float32) for k in sets[0].files if k.startswith("feat_")}
    n_c = len(sets[0]["name"]) + len(sets[1]["name"])
    n_u = len(sets[2]["name"])
    labels = np.full((n_c + n_u, len(CELEBA_ATTRIBUTES)), -1, np.int8)  # -1 = unknown
    labels[:n_c] = np.concatenate([sets[0]["labels"], sets[1]["labels"]])
    labels[n_c:, MALE] = sets[2]["male"]
    age = np.full(n_c + n_u, -1, np.float32)
    age[n_c:] = sets[2]["age"]
    identity = np.concatenate([sets[0]["identity"], sets[1]["identity"], -1 - np.arange(n_u)])
    utk = np.arange(n_c + n_u) >= n_c
    names = np.concatenate([sets[0]["name"], sets[1]["name"], sets[2]["name"]])
    test = np.where(utk, [utkface_is_test(str(n)) for n in names], identity % 10 < 2)
    fold = np.where(utk, np.arange(n_c + n_u) % 5, identity % 5)  # CelebA folds by identity
    photos = {n: int(s["photos"]) for n, s in zip(("celeba-hq-256", "celeba-aligned", "utkface"), sets)}
    return dict(feats=feats, labels=labels, age=age, identity=identity, utk=utk, test=test, fold=fold, names=names, photos=photos,
                race=np.concatenate([np.array([""] * n_c), sets[2]["race"]]))


def stack(feats: dict, inputs, idx) -> torch.Tensor:
    """``(len(idx), sum of widths)`` float32: the named cached features of rows ``idx``, side by side."""
    return torch.from_numpy(np.concatenate([feats[k][idx] for k in inputs], 1))


def train_attr(x, y, hidden, epochs=25, wd=1e-4, dropout=0.5, seed=0, lr=1e-3, seeds=1) -> MLPHead:
    """MLP on (N, D) inputs, (N, 40) labels in {-1 unknown, 0, 1}; masked BCE; ``seeds`` > 1: an ensemble."""
    if seeds > 1:
        return ensemble([train_attr(x, y, hidden, epochs, wd, dropout, seed + k, lr) for k in range(seeds)])
    torch.manual_seed(seed)
    head = MLPHead(x.shape[1], hidden, y.shape[1], dropout)
    head.set_standardization(x)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    yt = torch.from_numpy(y.astype(np.float32))
    mask = yt >= 0
    n = len(x)
    steps = epochs * ((n + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            b = perm[i:i + 128]
            loss = F.binary_cross_entropy_with_logits(head(x[b]), yt[b].clamp(min=0), weight=mask[b].float(), reduction="sum") / mask[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


def ensemble(heads: list[MLPHead]) -> MLPHead:
    """One ``MLPHead`` whose logits are the mean of ``heads``' (same inputs and standardisation): the
    hidden layers side by side, the last layer's weights divided by their number."""
    if len(heads) == 1:
        return heads[0]
    first = heads[0]
    out = MLPHead(first.net[1].in_features, sum(h.net[1].out_features for h in heads), first.net[4].out_features)
    out.mean.copy_(first.mean)
    out.std.copy_(first.std)
    with torch.no_grad():
        out.net[1].weight.copy_(torch.cat([h.net[1].weight for h in heads]))
        out.net[1].bias.copy_(torch.cat([h.net[1].bias for h in heads]))
        out.net[4].weight.copy_(torch.cat([h.net[4].weight for h in heads], 1) / len(heads))
        out.net[4].bias.copy_(torch.stack([h.net[4].bias for h in heads]).mean(0))
    return out.eval()


def dldl_targets(age: np.ndarray, sigma: float = 2.0) -> torch.Tensor:
    """``(N, AGE_MAX + 1)`` Gaussian label distributions (sigma in years) centred on the ages (clipped to 0..AGE_MAX)."""
    bins = np.arange(AGE_MAX + 1, dtype=np.float32)
    t = np.exp(-0.5 * ((bins[None] - np.clip(age, 0, AGE_MAX)[:, None]) / sigma) ** 2)
    return torch.from_numpy(t / t.sum(1, keepdims=True))


def train_age(x, age, hidden, epochs=40, wd=1e-4, dropout=0.5, seed=0, lr=1e-3, l1=1.0, seeds=1) -> MLPHead:
    """MLP on (N, D) inputs -> logits over the bins 0..AGE_MAX; DLDL (KL to Gaussian labels) + l1 * |E - age|."""
    if seeds > 1:
        return ensemble([train_age(x, age, hidden, epochs, wd, dropout, seed + k, lr, l1) for k in range(seeds)])
    torch.manual_seed(seed)
    head = MLPHead(x.shape[1], hidden, AGE_MAX + 1, dropout)
    head.set_standardization(x)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    target = dldl_targets(age)
    at = torch.from_numpy(np.clip(age, 0, AGE_MAX).astype(np.float32))
    bins = torch.arange(AGE_MAX + 1, dtype=torch.float32)
    n = len(x)
    steps = epochs * ((n + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            b = perm[i:i + 128]
            logp = F.log_softmax(head(x[b]), 1)
            loss = F.kl_div(logp, target[b], reduction="batchmean") + l1 * (logp.exp() @ bins - at[b]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


@torch.no_grad()
def logits_of(head, x):
    """``head``'s outputs on ``x`` in chunks, as a numpy array."""
    return torch.cat([head(x[i:i + 1024]) for i in range(0, len(x), 1024)]).numpy()


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the BCE of sigmoid(z / T) (grid over log T)."""
    best = None
    for t in np.exp(np.linspace(np.log(0.3), np.log(5), 60)):
        p = np.clip(1 / (1 + np.exp(-z / t)), 1e-7, 1 - 1e-7)
        nll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        if best is None or nll < best[0]:
            best = (nll, t)
    return float(best[1])


def balanced_acc(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates of boolean decisions ``pred`` against labels ``y``."""
    y = y.astype(bool)
    tpr = pred[y].mean() if y.any() else 1.0
    tnr = (~pred[~y]).mean() if (~y).any() else 1.0
    return float((tpr + tnr) / 2)


def pick_threshold(p: np.ndarray, y: np.ndarray, slack: float) -> float:
    """Threshold: best balanced accuracy among thresholds whose accuracy is within ``slack`` of the best."""
    cands = np.unique(np.concatenate([np.quantile(p, np.linspace(0.005, 0.995, 199)), [0.5]]))
    acc = np.array([((p >= t) == y).mean() for t in cands])
    bal = np.array([balanced_acc(p >= t, y) for t in cands])
    ok = acc >= acc.max() - slack
    return float(cands[ok][np.argmax(bal[ok])])


def band_table(pred: np.ndarray, true: np.ndarray) -> dict:
    """Per 10-year band of ``true`` (years): count, MAE and mean signed error (pred - true) of ``pred``."""
    out = {}
    for lo, hi in BANDS:
        m = (true >= lo) & (true <= hi)
        if m.any():
            err = pred[m] - true[m]
            out[f"{lo}-{hi}" if hi < 200 else f"{lo}+"] = {"n": int(m.sum()), "mae": round(float(np.abs(err).mean()), 2),
                                                          "mean_signed_error": round(float(err.mean()), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/attr_cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--age-hidden", type=int, default=512)
    ap.add_argument("--age-l1", type=float, default=1.0, help="weight of the expectation's L1 error beside the DLDL loss (0.1: 5.21, 1.0: 5.11 out-of-fold)")
    ap.add_argument("--acc-slack", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, default=1, help="heads averaged (one ensemble MLPHead) per model; 3 did not help age and triples the file")
    ap.add_argument("--max-band-bias", type=float, default=5.0, help="years: the age de-biasing's target on out-of-fold bands")
    ap.add_argument("--oof-age", type=Path, default=None, help="reuse saved out-of-fold age logits (.npy) of the chosen inputs")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--compare", action="store_true", help="also compare input feature sets (age and attributes) on out-of-fold data")
    ap.add_argument("--skip", choices=["age", "attributes"], default=None)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "attributes.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    d = load(args.cache)
    feats, labels, test, fold, utk = d["feats"], d["labels"], d["test"], d["fold"], d["utk"]
    tr = ~test
    results = {"benchmark": "attributes", "photos": d["photos"],
               "split_rule": "CelebA: identity % 10 in {0, 1} test, else training; UTKFace: crc32(file name) % 5 == 0 test, else training; "
                             "calibration on 5-fold out-of-fold predictions of the training part (CelebA folds by identity % 5)",
               "split_sizes": {"celeba_train": int((tr & ~utk).sum()), "celeba_test": int((test & ~utk).sum()),
                               "utkface_train": int((tr & utk).sum()), "utkface_test": int((test & utk).sum())}}
    print(results["split_sizes"])

    # ------------------------------------------------------------------ age
    if args.skip != "age":
        ua_tr, ua_te = np.nonzero(tr & utk)[0], np.nonzero(test & utk)[0]
        age = d["age"]
        bins = np.arange(AGE_MAX + 1, dtype=np.float64)
        compare = {}
        sets = {"dlib_age (81 bins, as before)": ("dlib_age",), "mobilenet": ("mn_gap18", "mn_p4_13"), "arcface": ("arcface",),
                "dino": ("dino",), "arcface + dlib": ("arcface", "dlib_age", "dlib_male"),
                "mobilenet + arcface + dlib (issue 21's first head)": ("mn_gap18", "mn_p4_13", "arcface", "dlib_age", "dlib_male"),
                "mobilenet + arcface + dlib + dino": ("mn_gap18", "mn_p4_13", "arcface", "dlib_age", "dlib_male", "dino"),
                "chosen": AGE_INPUTS} if args.compare else {"chosen": AGE_INPUTS}
        for label, inputs in sets.items():
            oof = np.zeros((len(ua_tr), AGE_MAX + 1), np.float32)
            if label == "chosen" and args.oof_age is not None and args.oof_age.is_file():
                oof = np.load(args.oof_age)
            for k in range(args.folds) if not oof.any() else ():
                fit, val = fold[ua_tr] != k, fold[ua_tr] == k
                h = train_age(stack(feats, inputs, ua_tr[fit]), age[ua_tr[fit]], args.age_hidden, seeds=args.seeds, l1=args.age_l1)
                oof[val] = logits_of(h, stack(feats, inputs, ua_tr[val]))
            if label == "chosen":
                np.save(args.cache / "oof_age.npy", oof)
            e = torch.softmax(torch.from_numpy(oof), 1).numpy() @ bins
            compare[label] = {"oof_mae": round(float(np.abs(e - age[ua_tr]).mean()), 2), "bands": band_table(e, age[ua_tr])}
            print("age", label, compare[label]["oof_mae"], {k: v["mean_signed_error"] for k, v in compare[label]["bands"].items()})
        # dlib's own expectation (the network as shipped before), out-of-fold = as it is
        dl = feats["dlib_age"][ua_tr].astype(np.float64)
        dl_e = (dl / dl.sum(1, keepdims=True)) @ np.concatenate([[0.25], np.arange(1, 81)])
        compare["dlib expectation (before, no training)"] = {"oof_mae": round(float(np.abs(dl_e - age[ua_tr]).mean()), 2),
                                                            "bands": band_table(dl_e, age[ua_tr])}
        t_oof = np.clip(age[ua_tr], 0, AGE_MAX)

        def coverage_temperature(values):
            """Softmax temperature whose p10-p90 interval (over ``values``) covers 80% of the out-of-fold ages."""
            best = None
            for t in np.linspace(0.6, 3.0, 49):
                _, iv, _ = age_summary(torch.softmax(torch.from_numpy(oof) / t, 1).numpy(), values)
                cover = float(((age[ua_tr] >= iv[:, 0] - 0.5) & (t_oof <= iv[:, 1] + 0.5)).mean())
                if best is None or abs(cover - 0.8) < abs(best[1] - 0.8):
                    best = (float(t), cover)
            return best

        # 1. interval temperature with the plain bins; 2. de-biasing (inverse calibration, blended) at that
        # temperature: h(t) = mean out-of-fold expectation at true age t (Gaussian-smoothed, sigma 3 y, made
        # increasing); bin b then stands for (1 - a) b + a h^-1(b), a = the smallest blend whose out-of-fold
        # bands all have |mean signed error| <= --max-band-bias; 3. the temperature again, for those values.
        temp = coverage_temperature(bins)[0]
        p_oof = torch.softmax(torch.from_numpy(oof) / temp, 1).numpy()
        e_oof = p_oof @ bins
        h = np.array([np.average(e_oof, weights=np.exp(-0.5 * ((t_oof - g) / 3.0) ** 2)) for g in bins])
        h = np.maximum.accumulate(h + 1e-6 * bins)
        inverse = np.interp(bins, h, bins)
        blend = 1.0
        for a in np.linspace(0, 1, 21):
            bt = band_table(p_oof @ ((1 - a) * bins + a * inverse), age[ua_tr])
            if max(abs(v["mean_signed_error"]) for v in bt.values()) <= args.max_band_bias:
                blend = float(a)
                break
        values = (1 - blend) * bins + blend * inverse
        best_t = coverage_temperature(values)
        e_deb = torch.softmax(torch.from_numpy(oof) / best_t[0], 1).numpy() @ values
        print("age de-bias blend", blend, "temperature", best_t, "oof mae", round(float(np.abs(e_deb - age[ua_tr]).mean()), 2),
              {k: v["mean_signed_error"] for k, v in band_table(e_deb, age[ua_tr]).items()})
        head = train_age(stack(feats, AGE_INPUTS, ua_tr), age[ua_tr], args.age_hidden, seeds=args.seeds, l1=args.age_l1)
        head.temperature.fill_(best_t[0])
        head.values.copy_(torch.from_numpy(values).float())
        p_te = torch.softmax(torch.from_numpy(logits_of(head, stack(feats, AGE_INPUTS, ua_te))), 1).numpy()
        e_te, iv_te, child_te = age_summary(p_te, values)
        true_te = age[ua_te]
        cover_te = float(((true_te >= iv_te[:, 0] - 0.5) & (np.minimum(true_te, AGE_MAX) <= iv_te[:, 1] + 0.5)).mean())
        dte = feats["dlib_age"][ua_te].astype(np.float64)
        before_te = (dte / dte.sum(1, keepdims=True)) @ np.concatenate([[0.25], np.arange(1, 81)])
        results["age"] = {
            "inputs": list(AGE_INPUTS), "hidden": args.age_hidden, "bins": f"0-{AGE_MAX} years, one-year", "label_sigma_years": 2.0,
            "debias_blend": blend, "oof_mae_before_debias": compare["chosen"]["oof_mae"], "l1_weight": args.age_l1,
            "oof_mae_after_debias": round(float(np.abs(e_deb - age[ua_tr]).mean()), 2), "oof_bands_after_debias": band_table(e_deb, age[ua_tr]),
            "interval_temperature": best_t[0], "oof_interval_coverage_p10_p90": best_t[1],
            "test_mae": round(float(np.abs(e_te - true_te).mean()), 2), "test_bands": band_table(e_te, true_te),
            "test_interval_coverage_p10_p90": round(cover_te, 3),
            "test_interval_width_median": float(np.median(iv_te[:, 1] - iv_te[:, 0])),
            "test_mae_before_dlib": round(float(np.abs(before_te - true_te).mean()), 2), "test_bands_before_dlib": band_table(before_te, true_te),
            "oof_feature_comparison": compare,
        }
        print(json.dumps({k: v for k, v in results["age"].items() if k != "oof_feature_comparison"}, indent=1))
        save_head(ASSETS / "age_head.safetensors", head, AGE_INPUTS, {
            "training_data": "UTKFace (research-only, non-commercial) in ../shared: crc32(file) % 5 != 0 (80%)",
            "test_mae": results["age"]["test_mae"], "interval": "10th-90th percentile, temperature-calibrated to 80% out-of-fold coverage"})

    # ------------------------------------------------------------------ attributes + gender
    if args.skip != "attributes":
        a_tr, a_te = np.nonzero(tr)[0], np.nonzero(test)[0]
        inputs_sets = {"mobilenet (as before)": ("mn_gap18", "mn_p2_13"), "mobilenet+": ("mn_gap18", "mn_p4_13"),
                       "mobilenet+ arcface": ("mn_gap18", "mn_p4_13", "arcface"), "all": ATTR_INPUTS} if args.compare else {"all": ATTR_INPUTS}
        comp = {}
        for label, inputs in inputs_sets.items():
            oof = np.zeros((len(a_tr), len(CELEBA_ATTRIBUTES)), np.float32)
            for k in range(args.folds):
                fit, val = fold[a_tr] != k, fold[a_tr] == k
                h = train_attr(stack(feats, inputs, a_tr[fit]), labels[a_tr[fit]], args.hidden, seeds=args.seeds)
                oof[val] = logits_of(h, stack(feats, inputs, a_tr[val]))
            if label == "all":
                np.save(args.cache / "oof_attr.npy", oof)
            yo = labels[a_tr]
            c = ~utk[a_tr]
            accs = [((oof[c, j] > 0) == yo[c, j]).mean() for j in range(40)]
            bals = [balanced_acc(oof[c, j] > 0, yo[c, j]) for j in range(40)]
            comp[label] = {"oof_mean_accuracy_at_0.5": round(float(np.mean(accs)), 4), "oof_mean_balanced_at_0.5": round(float(np.mean(bals)), 4)}
            print("attr", label, comp[label])
        # calibration: temperature, then threshold, per attribute, on out-of-fold logits of the last (chosen) set
        yo = labels[a_tr]
        temps, thr = np.ones(40), np.full(40, 0.5)
        for j in range(40):
            m = yo[:, j] >= 0
            if j == MALE:  # gender: CelebA + UTKFace adults
                m = m & ~(utk[a_tr] & (d["age"][a_tr] <= 12))
            temps[j] = fit_temperature(oof[m, j], yo[m, j])
            p = 1 / (1 + np.exp(-oof[m, j] / temps[j]))
            thr[j] = pick_threshold(p, yo[m, j].astype(bool), 0.0 if j == MALE else args.acc_slack)
        head = train_attr(stack(feats, ATTR_INPUTS, a_tr), labels[a_tr], args.hidden, seeds=args.seeds)
        head.temperature.copy_(torch.from_numpy(temps).float())
        head.shift.copy_(torch.from_numpy(np.log(thr / (1 - thr))).float())
        z = logits_of(head, stack(feats, ATTR_INPUTS, a_te))  # calibrated: > 0 is the decision
        np.save(args.cache / "test_attr_logits.npy", (z + head.shift.numpy()) * head.temperature.numpy())  # raw, for re-calibration
        yt = labels[a_te]
        c = ~utk[a_te]
        per = {}
        for j, name in enumerate(CELEBA_ATTRIBUTES):
            y = yt[c, j].astype(bool)
            raw = z[c, j] * 1  # decision at calibrated 0.5
            per[name] = {"accuracy": round(float(((raw > 0) == y).mean()), 4), "balanced_accuracy": round(balanced_acc(raw > 0, y), 4),
                         "majority_baseline": round(float(max(y.mean(), 1 - y.mean())), 4), "positives": int(y.sum()),
                         "temperature": round(float(temps[j]), 3), "threshold": round(float(thr[j]), 3)}
        # gender on UTKFace test (the reported gender: child-adjusted with the age head when it was trained)
        gu = np.nonzero(utk[a_te])[0]
        male_p = 1 / (1 + np.exp(-z[gu, MALE]))
        uage = d["age"][a_te][gu]
        male_true = yt[gu, MALE].astype(bool)
        adult = uage > 12
        results["attributes"] = per
        results["inputs"] = list(ATTR_INPUTS)
        results["hidden"] = args.hidden
        results["acc_slack"] = args.acc_slack
        results["oof_feature_comparison"] = comp
        results["test_mean_accuracy"] = round(float(np.mean([v["accuracy"] for v in per.values()])), 4)
        results["test_mean_balanced_accuracy"] = round(float(np.mean([v["balanced_accuracy"] for v in per.values()])), 4)
        results["test_mean_majority_baseline"] = round(float(np.mean([v["majority_baseline"] for v in per.values()])), 4)
        results["gender_celeba_test_accuracy"] = per["Male"]["accuracy"]
        results["gender_utkface_test_accuracy_adults"] = round(float(((male_p[adult] > 0.5) == male_true[adult]).mean()), 4)
        results["gender_utkface_test_accuracy_children_unadjusted"] = round(float(((male_p[~adult] > 0.5) == male_true[~adult]).mean()), 4)
        print(json.dumps({k: v for k, v in results.items() if k not in ("attributes", "age")}, indent=1))
        save_head(ASSETS / "attribute_heads.safetensors", head, ATTR_INPUTS, {"seeds": args.seeds, 
            "training_data": "CelebA-HQ 256 + aligned CelebA (40 attributes) and UTKFace (gender) in ../shared; research-only, non-commercial",
            "split_rule": results["split_rule"], "test_mean_accuracy": results["test_mean_accuracy"],
            "test_mean_balanced_accuracy": results["test_mean_balanced_accuracy"], "attributes": list(CELEBA_ATTRIBUTES)})
    results["seconds"] = round(time.time() - t0, 1)
    if args.results.is_file() and args.skip is not None:
        old = json.loads(args.results.read_text())
        results = {**old, **results}
    args.results.write_text(json.dumps(results, indent=1))
    print("wrote", args.results)


if __name__ == "__main__":
    main()
