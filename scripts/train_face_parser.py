"""Train the face parser shipped as ``src/facemakeup/assets/face_parser.safetensors``.

Data: ``../shared/data/celebamask-hq`` (850 CelebA-HQ photos with 19-class masks; research-only,
never shipped). Split by CelebA identity: every identity whose number is 0 mod 8 goes to
validation. Network: ``FaceParserNet`` (ImageNet MobileNetV2 + FPN decoder), 256 px, cross-entropy
with square-rooted median-frequency class weights, AdamW, cosine schedule; augmentation: random
similarity (scale, rotation, shift: the slack of our keypoint alignment on wild photos), horizontal
flip with left/right labels swapped, colour jitter, some grayscale. Writes the weights (float16) and
``benchmarks/results/face_parser.json`` (IoU per class on the validation split at 512 px).

    python scripts/train_face_parser.py --epochs 18
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm import tqdm

from facemakeup.faces.image import load_image
from facemakeup.faces.parsing import CELEBAMASK_CLASSES, HFLIP_PERMUTATION, FaceParserNet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "celebamask-hq"


def read_mask(path: Path) -> np.ndarray:
    """CelebAMask-HQ label PNG (palette mode: the indices are the labels) -> (H, W) uint8."""
    with Image.open(path) as im:
        return np.array(im if im.mode in ("P", "L") else im.convert("L"), dtype=np.uint8)


def load_split(data: Path, val_mod: int = 8):
    rows = list(csv.DictReader(open(data / "index.tsv"), delimiter="\t"))
    images, masks, is_val = [], [], []
    for r in tqdm(rows, desc="reading", mininterval=5):
        img = load_image(data / r["image"])
        mask = read_mask(data / r["mask"])
        mask = cv2.resize(mask, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        images.append(img)
        masks.append(mask)
        is_val.append(int(r["identity"]) % val_mod == 0)
    return images, masks, np.array(is_val), rows


def augment(img, mask, size, rng):
    s = img.shape[0]
    scale = size / s * rng.uniform(0.85, 1.15)
    angle = rng.uniform(-15, 15)
    M = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    M[:, 2] += (size / 2 - s / 2) + rng.uniform(-0.06, 0.06, 2) * size
    x = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    y = cv2.warpAffine(mask, M, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], np.asarray(HFLIP_PERMUTATION, np.uint8)[y[:, ::-1]]
    x = x.astype(np.float32) / 255.0
    x = (x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15)
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * (0.0 if rng.random() < 0.1 else rng.uniform(0.6, 1.4))
    return np.clip(x, 0, 1), y


def iou_table(conf: np.ndarray) -> dict:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    ious = {CELEBAMASK_CLASSES[c]: (float(tp[c] / union[c]) if present[c] else None) for c in range(len(tp))}
    fg = [v for k, v in ious.items() if v is not None and k != "background"]
    return {"iou": ious, "miou_present_classes": float(np.mean([v for v in ious.values() if v is not None])),
            "miou_present_foreground": float(np.mean(fg)), "pixel_accuracy": float(tp.sum() / conf.sum())}


@torch.no_grad()
def evaluate(net, images, masks, size):
    net.eval()
    n = len(CELEBAMASK_CLASSES)
    conf = np.zeros((n, n), np.int64)
    perm = torch.tensor(HFLIP_PERMUTATION)
    for img, mask in zip(images, masks):
        x = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0
        logits = net(x).softmax(1) + net(x.flip(-1)).softmax(1).flip(-1)[:, perm]
        logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        pred = logits[0].argmax(0).numpy()
        conf += np.bincount(mask.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
    net.train()
    return iou_table(conf)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--class-balance", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "facemakeup" / "assets" / "face_parser.safetensors")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "face_parser.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    images, masks, is_val, rows = load_split(args.data)
    train_idx = np.flatnonzero(~is_val)
    val_idx = np.flatnonzero(is_val)
    print(f"train {len(train_idx)} photos, validation {len(val_idx)} (identity % 8 == 0)")
    freq = np.bincount(np.concatenate([masks[i][::4, ::4].ravel() for i in train_idx]), minlength=len(CELEBAMASK_CLASSES))
    freq = np.maximum(freq / freq.sum(), 1e-6)
    # Median-frequency balancing (Eigen & Fergus 2015), square-rooted and clipped: small parts (eyes,
    # brows, lips, earrings) count more without letting rare classes dominate.
    weight = torch.tensor(np.clip(np.sqrt(np.median(freq) / freq), 0.5, 4.0), dtype=torch.float32) if args.class_balance else None
    net = FaceParserNet()
    net.backbone.load_imagenet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(train_idx) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / total)))
    t0 = time.time()
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(train_idx)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10)
        for b in bar:
            batch = [augment(images[i], masks[i], args.size, rng) for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
            x = torch.from_numpy(np.stack([a for a, _ in batch])).permute(0, 3, 1, 2).float()
            y = torch.from_numpy(np.stack([m for _, m in batch]).astype(np.int64))
            loss = F.cross_entropy(net(x), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, "loss": float(loss.item()), "seconds": round(time.time() - t0, 1)})
        print(history[-1], flush=True)
    metrics = evaluate(net, [images[i] for i in val_idx], [masks[i] for i in val_idx], args.size)
    train_s = time.time() - t0
    print(json.dumps(metrics, indent=1))

    meta = {"input_size": str(args.size), "width": "64", "classes": json.dumps(CELEBAMASK_CLASSES),
            "training_data": "CelebAMask-HQ (850-photo subset, research-only licence)",
            "val_miou_present_foreground": f"{metrics['miou_present_foreground']:.4f}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in net.state_dict().items()},
              str(args.out), metadata=meta)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "benchmark": "face_parser", "data": str(args.data), "train_photos": int(len(train_idx)),
        "val_photos": int(len(val_idx)), "val_rule": "CelebA identity % 8 == 0", "eval_resolution": 512,
        "eval_tta": "horizontal flip", "epochs": args.epochs, "batch_size": args.batch_size, "input_size": args.size,
        "train_seconds": round(train_s, 1), "threads": args.threads, "class_balance": args.class_balance,
        "history": history, **metrics,
    }, indent=1))
    print(f"wrote {args.out} and {args.results}")


if __name__ == "__main__":
    main()
