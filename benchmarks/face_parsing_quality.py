"""Face-parsing accuracy and speed of ``analyze --parsing-quality fast|accurate`` on held-out photos.

    python benchmarks/face_parsing_quality.py [--limit N]

The parser's validation split (CelebAMask-HQ photos of CelebA identities with identity % 8 == 0,
never trained on; ``scripts/train_face_parser.py``), run the way ``analyze`` runs it: SCRFD
keypoints on the 512 px photo -> ``FaceParser.parse`` (CelebA-HQ-framed crop, labels warped back).
Scores per option: mean IoU over 8 groups (background, skin, brows, eyes, nose, mouth = mouth +
lips, ears, hair), the 18 foreground classes' mean IoU (classes present), pixel accuracy, and
seconds per face. The classes outside the groups (eyeglasses, hat, earring,
necklace, neck, cloth) form a 9th group that counts in the unions but not in the mean. IoU is
accumulated over the whole split (intersection and union summed over
photos). Writes benchmarks/results/face_parsing_quality.json.
"""

from __future__ import annotations

import csv
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.parsing import CELEBAMASK_CLASSES, FaceParser

#: The 8 groups: name -> CelebAMask-HQ labels.
GROUPS = {"background": (0,), "skin": (1,), "brows": (6, 7), "eyes": (4, 5), "nose": (2,), "mouth": (10, 11, 12),
          "ears": (8, 9), "hair": (13,)}


def main() -> None:
    args = data_benchmark_args(__doc__, "first N validation photos")
    root = SHARED_DATA / "celebamask-hq"
    rows = [r for r in csv.DictReader(open(root / "index.tsv"), delimiter="\t") if int(r["identity"]) % 8 == 0][: args.limit]
    detector = FaceAnalyzer(fitter=None, threads=2)
    parsers = {q: FaceParser(quality=q) for q in ("fast", "accurate")}
    lut = np.zeros(19, np.int64)
    for g, labels in enumerate(GROUPS.values()):
        lut[list(labels)] = g
    lut[[3, 14, 15, 16, 17, 18]] = len(GROUPS)  # eyeglasses, hat, earring, necklace, neck, cloth: "other", not averaged
    conf = {q: np.zeros((19, 19), np.int64) for q in parsers}
    seconds = {q: 0.0 for q in parsers}
    faces = 0
    for r in tqdm(rows, desc="parse"):
        rgb = load_image(root / r["image"])
        truth = np.asarray(Image.open(root / r["mask"]).resize(rgb.shape[1::-1], Image.NEAREST)).astype(np.int64)
        face = detector.get_face(rgb)
        faces += 1
        for q, parser in parsers.items():
            t0 = time.perf_counter()
            pred = parser.parse(rgb, face.kps).astype(np.int64)
            seconds[q] += time.perf_counter() - t0
            conf[q] += np.bincount(truth.ravel() * 19 + pred.ravel(), minlength=19 * 19).reshape(19, 19)

    def iou(c):
        inter = np.diag(c).astype(np.float64)
        union = c.sum(0) + c.sum(1) - inter
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan), c.sum(1) > 0

    result = {"data": str(root), "split": "validation: CelebA identity % 8 == 0 (held out from training)", "photos": faces,
              "groups": {k: list(v) for k, v in GROUPS.items()}, "options": {}}
    for q, c in conf.items():
        per_class, present = iou(c)
        g = np.zeros((len(GROUPS) + 1,) * 2, np.int64)
        np.add.at(g, (lut[:, None].repeat(19, 1), lut[None, :].repeat(19, 0)), c)  # class confusion -> group confusion
        per_group = iou(g)[0][: len(GROUPS)]
        result["options"][q] = {
            "input_sides": list(parsers[q].sides), "flip_average": parsers[q].flip,
            "probabilities_warped_back": parsers[q].warp_probabilities,
            "miou_8_groups": float(np.nanmean(per_group)),
            "iou_per_group": {k: round(float(v), 4) for k, v in zip(GROUPS, per_group)},
            "miou_18_foreground_classes_present": float(np.nanmean(per_class[1:][present[1:]])),
            "iou_per_class": {k: round(float(v), 4) for k, v in zip(CELEBAMASK_CLASSES, per_class)},
            "pixel_accuracy": float(np.trace(c) / c.sum()),
            "seconds_per_face": seconds[q] / max(faces, 1),
        }
        print(q, {k: v for k, v in result["options"][q].items() if not k.startswith("iou_per")})
    print("wrote", write_result("face_parsing_quality", result))


if __name__ == "__main__":
    main()
