"""kill -9 at random moments during `facemakeup build-dataset`, each followed by a re-run, and two builds at once.

    python benchmarks/build_kill_resume.py --limit 40 --kills 20
    python benchmarks/build_kill_resume.py --limit 40 --kills 20 --format webdataset   # results/build_kill_resume_webdataset.json

1. An uninterrupted build of the first ``--limit`` photos of ../shared/data/celeba-hq-256 (reference).
2. Two builds started at once on one OUT: the second must be refused, the first must complete.
3. ``--kills`` times: start the build (alternately 1 and 2 workers) on another OUT and SIGKILL it at a
   random moment: every 4th run in its first 0.1-4 s (imports, lock, plan, verification), the others
   0-2 photo-times after a worker started a shard (processing and commits). Shards of one photo, so
   the kills land in every phase of a shard. After each kill no key may appear twice. Then one last
   re-run to completion.
4. Compare with the reference: record keys, every record line, and the SHA-256 of every output file
   (records, rejects, masks, embeddings, crops, shading and parsing maps, plan, contact sheet; the
   ``SSSSS.tar`` shards of a ``--format webdataset`` build, whose record keys are read from the tars).

Writes benchmarks/results/build_kill_resume.json. The datasets hold research-only faces: they stay
in --work, outside the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402

COMPARED = ("records-", "rejects-", "Mask", "id", "faces", "shading", "parsing", "plan.json", "contact.png", "train.json", "images",
            "face_id")


def cli(src, out, *extra) -> list[str]:
    return [sys.executable, "-m", "facemakeup.cli", "build-dataset", str(src), str(out), *extra]


def hashes(out: Path) -> dict[str, str]:
    """SHA-256 of every compared output file (done markers and the summary hold timings: not compared)."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and (p.relative_to(out).as_posix().startswith(COMPARED) or (p.parent == out and p.suffix == ".tar"))}


def keys(out: Path) -> list[str]:
    """Record keys of every committed records file and tar shard (a torn tar is never in place: it is renamed whole)."""
    import tarfile

    found = [json.loads(line)["key"] for f in sorted(out.glob("records-*.jsonl")) for line in f.read_text().splitlines() if line.strip()]
    for t in sorted(out.glob("*.tar")):
        with tarfile.open(t) as tf:
            found += [json.loads(tf.extractfile(m).read())["key"] for m in tf.getmembers() if m.name.endswith(".json")]
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SHARED_DATA / "celeba-hq-256" / "images")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fcm-kill-resume"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", default="records", choices=["records", "webdataset", "face-makeup-v2"])
    args = ap.parse_args()
    if not args.input.exists():
        sys.exit(f"no data at {args.input}")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    limit = ["--limit", str(args.limit), "--shard-size", "1", "--format", args.format]
    ref, conc, out = args.work / "reference", args.work / "concurrent", args.work / "killed"

    t0 = time.time()
    subprocess.run(cli(args.input, ref, *limit), check=True, capture_output=True)
    full = time.time() - t0
    print(f"reference: {len(keys(ref))} records in {full:.1f} s", flush=True)

    first = subprocess.Popen(cli(args.input, conc, *limit), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (conc / "build.lock").exists() and first.poll() is None:
        time.sleep(0.02)
    second = subprocess.run(cli(args.input, conc, *limit), capture_output=True, text=True)
    first_out, first_err = first.communicate()
    concurrent = {"second_exit_status": second.returncode, "second_message": (second.stderr.strip().splitlines() or [""])[-1],
                  "first_exit_status": first.returncode, "first_records": len(keys(conc)),
                  "first_records_unique": len(set(keys(conc))), "first_equals_reference": hashes(conc) == hashes(ref)}
    print("two at once:", concurrent, flush=True)

    rng = random.Random(args.seed)
    kills = []
    for k in range(args.kills):
        workers = 1 + k % 2
        left = set((out / ".staging").glob("*"))  # what the last killed run left (this run removes it)
        proc = subprocess.Popen(cli(args.input, out, *limit, "--workers", str(workers)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        if k % 4 == 0:
            phase, delay = "start", rng.uniform(0.1, 4.0)
        else:  # a worker has made its models and opened a shard's staging folder
            while proc.poll() is None and not set((out / ".staging").glob("*")) - left:
                time.sleep(0.02)
            phase, delay = "shards", rng.uniform(0.0, 2 * full / args.limit)
        time.sleep(delay)
        at = time.time() - t0
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ks = keys(out)
        done = len(list((out / "done").glob("*.json"))) if (out / "done").is_dir() else 0
        kills.append({"kill_at_s": round(at, 2), "phase": phase, "workers": workers, "finished_before_kill": finished, "records": len(ks),
                      "duplicated_keys": len(ks) - len(set(ks)), "shards_done": done})
        print(kills[-1], flush=True)
    final = subprocess.run(cli(args.input, out, *limit), capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    a, b = hashes(ref), hashes(out)
    ref_keys, got = set(keys(ref)), keys(out)
    result = {
        "benchmark": "build_kill_resume", "format": args.format, "input": str(args.input), "photos": args.limit, "kills": len(kills),
        "reference_seconds": round(full, 1), "reference_records": len(ref_keys),
        "final_exit_status": final.returncode, "final_records": len(got),
        "lost_records": len(ref_keys - set(got)), "extra_records": len(set(got) - ref_keys),
        "duplicated_records": len(got) - len(set(got)),
        "max_duplicated_keys_after_any_kill": max((k["duplicated_keys"] for k in kills), default=0),
        "files_compared": len(a), "files_identical": sum(a[p] == b.get(p) for p in a),
        "files_differing_or_missing": sorted(p for p in a if a[p] != b.get(p))[:20], "files_extra": sorted(set(b) - set(a))[:20],
        "part_files_left": [str(p) for p in out.rglob("*") if ".part" in p.name] + ([".staging"] if (out / ".staging").exists() else []),
        "final_run_repaired": summary["shards"]["repaired"], "final_run_processed_shards": summary["shards"]["processed_this_run"],
        "two_builds_at_once": concurrent, "kill_log": kills, "load_average": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "kill_log"}, indent=1))
    print("wrote", write_result("build_kill_resume" + ("" if args.format == "records" else f"_{args.format.replace('-', '_')}"), result))


if __name__ == "__main__":
    main()
