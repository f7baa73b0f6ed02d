"""Disk size and file count per 1,000 records of each dataset layout, and read speed, from one records build.

    python benchmarks/dataset_formats.py --records /tmp/fcm-bench/local-2        # an existing records build
    python benchmarks/dataset_formats.py --limit 200                              # or build the first 200 celeba-hq-256 photos

The records folder is exported (``facemakeup.data.formats.export_records``, no photo analysed again) to
``webdataset`` and ``face-makeup-v2``; per layout: bytes and files on disk (everything a trainer needs:
for the records layout the referenced photos are counted too, although they stay where they are),
scaled to 1,000 records, and the items per second of one pass of ``FaceCaptionMaskDataset`` (512 px,
one process; the load average is recorded). Writes benchmarks/results/dataset_formats.json. The
datasets hold research-only faces: they stay in --work, outside the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402


def usage(folder: Path, extra: list[Path] = ()) -> tuple[int, int]:
    """(bytes, files) of every file under ``folder`` plus ``extra`` files."""
    files = [p for p in folder.rglob("*") if p.is_file()] + list(extra)
    return sum(p.stat().st_size for p in files), len(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, default=None, help="an existing records build (else one is made)")
    ap.add_argument("--input", type=Path, default=SHARED_DATA / "celeba-hq-256" / "images")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fcm-formats"))
    ap.add_argument("--read", type=int, default=100, help="items read per layout for the read speed")
    args = ap.parse_args()

    from facemakeup.data import FaceCaptionMaskDataset
    from facemakeup.data.formats import export_records
    from facemakeup.data.record import read_records

    args.work.mkdir(parents=True, exist_ok=True)
    records_dir = args.records
    if records_dir is None:
        records_dir = args.work / "records"
        if not (records_dir / "summary.json").is_file():
            subprocess.run([sys.executable, "-m", "facemakeup.cli", "build-dataset", str(args.input), str(records_dir),
                            "--limit", str(args.limit), "--workers", "2"], check=True)
    recs, _ = read_records(records_dir)
    n = len(recs)
    photos = [r.path(r.image) for r in recs if os.path.isabs(r.image)]  # referenced, not copied
    layouts = {"records": records_dir}
    for fmt in ("webdataset", "face-makeup-v2"):
        out = args.work / fmt
        shutil.rmtree(out, ignore_errors=True)
        export_records(records_dir, out, fmt)
        layouts[fmt] = out
    rows = []
    for fmt, folder in layouts.items():
        size, count = usage(folder, photos if fmt == "records" else [])
        path = folder / "train.json" if fmt == "face-makeup-v2" else folder
        ds = FaceCaptionMaskDataset(path, resolution=512, mask_resolution=64)
        load = os.getloadavg()[0]
        t0, k = time.perf_counter(), 0
        items = iter(ds) if isinstance(ds, __import__("torch").utils.data.IterableDataset) else (ds[i] for i in range(len(ds)))
        for _ in items:
            k += 1
            if k == args.read:
                break
        rows.append({"format": fmt, "records": n, "bytes": size, "files": count, "MB_per_1000_records": round(size / n * 1000 / 1e6, 1),
                     "files_per_1000_records": round(count / n * 1000), "read_items_per_second": round(k / (time.perf_counter() - t0), 1),
                     "load_average": round(load, 2)})
        print(rows[-1], flush=True)
    print("wrote", write_result("dataset_formats", {"benchmark": "dataset_formats", "records_dir": str(records_dir), "rows": rows,
                                                     "note": "records layout counts the referenced photos (not copied) too"}))


if __name__ == "__main__":
    main()
