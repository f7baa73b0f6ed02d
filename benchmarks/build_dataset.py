"""Build FaceCaptionMask from ../shared/data/celeba-hq-256: images/s with 1 and 2 workers, local vs dask, time per stage.

    python benchmarks/build_dataset.py --limit 200
    git archive OLD src | tar -x -C /tmp/before && python benchmarks/build_dataset.py --limit 200 --before-src /tmp/before/src

With ``--before-src`` every run is made twice, alternately, by that source tree (through ``PYTHONPATH``)
and by this one, so "before" and "after" share the machine's load.

Runs ``facemakeup build-dataset`` (a fresh process and a fresh OUT each, so every run pays its
model loading) on the first ``--limit`` photos with ``--distributor local`` and ``dask`` (a
``LocalCluster``), 1 and 2 workers, side by side in one run (timings on a shared machine are
noisy: compare the ratios; the load average is recorded). Per run: images/s of the build (from
taking the lock to the summary, models loading included), the CLI's wall time, seconds per stage
summed over workers and their sum per photo (``worker_seconds_per_photo``: what a photo costs inside a worker,
the number to compare between the local and the dask distributor), rejects by filter. Then caption and
mask statistics of the records.
Writes benchmarks/results/build_dataset.json. The datasets hold research-only faces: they stay in
--work, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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
    ap.add_argument("--work", type=Path, default=Path("/tmp/fcm-bench"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--runs", default="local:1,local:2,dask:1,dask:2", help="DISTRIBUTOR:WORKERS,...")
    ap.add_argument("--before-src", type=Path, default=None, help="an older facemakeup src/ to run side by side")
    args = ap.parse_args()
    if not args.input.exists():
        sys.exit(f"no data at {args.input}")

    from facemakeup.data.captions import clip_tokenizer
    from facemakeup.data.record import read_records

    runs = []
    versions = [("before", str(args.before_src.resolve())), ("after", None)] if args.before_src else [("after", None)]
    for spec in args.runs.split(","):
        distributor, workers = spec.split(":")
        for version, src in versions:
            out = args.work / f"{distributor}-{workers}-{version}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
            load = os.getloadavg()[0]
            t0 = time.time()
            res = subprocess.run([sys.executable, "-m", "facemakeup.cli", "build-dataset", str(args.input), str(out), "--limit",
                                  str(args.limit), "--workers", workers, "--distributor", distributor], capture_output=True, text=True,
                                 env=env)
            wall = time.time() - t0
            s = json.loads((out / "summary.json").read_text())
            stage = s["stage_seconds_this_run"]
            runs.append({"version": version, "distributor": distributor, "workers": int(workers), "exit_status": res.returncode,
                         "images_per_second": s["images_per_second"], "build_seconds": s["seconds"], "cli_wall_seconds": round(wall, 1),
                         "worker_seconds_per_photo": round(sum(stage.values()) / max(1, s["photos_this_run"]), 4),
                         "records": s["records"], "rejects_by_reason": s["rejects_by_reason"], "failures": s["failures"],
                         "stage_seconds": stage, "load_average_before": round(load, 2),
                         "load_average_after": round(os.getloadavg()[0], 2)})
            print(json.dumps(runs[-1]), flush=True)
    if args.before_src:  # ratios of side-by-side pairs
        for spec in args.runs.split(","):
            d, w = spec.split(":")
            b, a = (next(r for r in runs if r["distributor"] == d and r["workers"] == int(w) and r["version"] == v) for v in ("before", "after"))
            print(f"{spec}: {b['images_per_second']} -> {a['images_per_second']} img/s "
                  f"({a['images_per_second'] / b['images_per_second']:.2f}x); per photo in a worker {b['worker_seconds_per_photo']} -> "
                  f"{a['worker_seconds_per_photo']} s", flush=True)

    after = [r for r in runs if r["version"] == "after"]
    records, _ = read_records(args.work / f"{after[-1]['distributor']}-{after[-1]['workers']}-after")
    tok = clip_tokenizer()
    phrases = Counter(p["region"] for r in records for kind in ("attribute", "emotion") for p in r.phrases[kind])
    coverage = {}
    from PIL import Image

    for r in records:
        for p in r.phrases["attribute"]:
            coverage.setdefault(p["region"], []).append(float((np.asarray(Image.open(r.path(p["mask"]))) > 127).mean()))
    lengths = [len(tok(r.face_attribute_caption)["input_ids"]) for r in records]
    stage_total = Counter()
    for run in after:
        stage_total.update(run["stage_seconds"])
    photos = sum(args.limit for _ in after)
    result = {
        "benchmark": "build_dataset", "input": str(args.input), "photos_per_run": args.limit,
        "note": "first --limit photos of celeba-hq-256; every run in a fresh process, models loading included; load_average_before per run says whether the machine was shared",
        "before_src": str(args.before_src) if args.before_src else None,
        "runs": runs,
        "stage_seconds_per_photo": {k: round(v / photos, 4) for k, v in stage_total.items()},
        "captions": {
            "records": len(records),
            "distinct_attribute_captions": len({r.face_attribute_caption for r in records}),
            "distinct_emotion_captions": len({r.face_emotion_caption for r in records}),
            "attribute_caption_tokens_median": float(np.median(lengths)) if lengths else None,
            "attribute_caption_tokens_max": int(max(lengths)) if lengths else None,
            "phrases_with_mask_by_region": dict(phrases.most_common()),
            "median_mask_area_fraction_by_region": {k: round(float(np.median(v)), 4) for k, v in coverage.items()},
            "emotion_labels": dict(Counter(max(r.emotion, key=r.emotion.get) for r in records).most_common()),
            "examples": [[r.face_attribute_caption, r.face_emotion_caption] for r in records[:12]],
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "captions"}, indent=1))
    print("wrote", write_result("build_dataset", result))


if __name__ == "__main__":
    main()
