"""Curation filters on real photos and on made-bad copies of them: how often each filter fires.

    python benchmarks/curation.py [--limit N]

For every ``wild/`` photo (real, unaligned, 150-1024 px; press photos often show text behind the
person): the filter values of the photo itself, of a grayscale copy, of a copy with six lines of
caption text drawn over it, and of a posterised copy (bilateral filter + 6 levels per channel, a
crude stand-in for a flat-shaded cartoon; no cartoon face set installs offline). Writes
benchmarks/results/curation.json with the firing rate of each filter on each version at the
default thresholds, and value percentiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, data_benchmark_args, write_result  # noqa: E402


def main():
    args = data_benchmark_args(__doc__, "first N wild photos")
    from facemakeup.data.curation import CurationConfig, TextDetector, colour_std, flat_fraction
    from facemakeup.faces import load_image
    from facemakeup.faces.detect import SCRFD

    cfg = CurationConfig()
    text, det = TextDetector(threads=2), SCRFD(None, threads=2)
    files = sorted((SHARED_DATA / "wild" / "images").iterdir())[: args.limit]
    values = {v: {"colour_std": [], "text": [], "flat": []} for v in ("real", "grayscale", "text_overlay", "posterised")}
    for f in tqdm(files, desc="curation", mininterval=5):
        rgb = load_image(f)
        boxes, _, kps = det.detect_multiscale(rgb, (640, 320))
        if len(boxes) == 0:
            continue
        k = kps[int(np.argmax(boxes[:, 2] - boxes[:, 0]))]
        gray = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        over = rgb.copy()
        h, w = rgb.shape[:2]
        for i in range(6):
            cv2.putText(over, "SALE 50% OFF TODAY", (int(0.02 * w), int(h * (0.12 + 0.15 * i))), cv2.FONT_HERSHEY_SIMPLEX,
                        w / 420, (255, 255, 255), max(2, w // 160))
        poster = cv2.bilateralFilter(rgb, 9, 75, 75) // 43 * 43 + 21
        for name, img in (("real", rgb), ("grayscale", gray), ("text_overlay", over), ("posterised", poster)):
            values[name]["colour_std"].append(colour_std(img))
            values[name]["text"].append(text.fraction(img))
            values[name]["flat"].append(flat_fraction(img, k))
    rates, pct = {}, {}
    for name, v in values.items():
        a = {k: np.array(x) for k, x in v.items()}
        rates[name] = {"grayscale": float((a["colour_std"] < cfg.min_colour_std).mean()),
                       "text_heavy": float((a["text"] > cfg.max_text_fraction).mean()),
                       "cartoon": float((a["flat"] > cfg.max_flat_fraction).mean())}
        pct[name] = {k: np.percentile(x, [1, 10, 50, 90, 99]).round(4).tolist() for k, x in a.items()}
    result = {"benchmark": "curation", "photos": len(values["real"]["flat"]), "photos_listed": len(files), "thresholds": vars(cfg),
              "firing_rate": rates, "percentiles_1_10_50_90_99": pct}
    print(rates)
    print("wrote", write_result("curation", result))


if __name__ == "__main__":
    main()
