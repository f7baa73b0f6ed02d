"""CPU seconds per photo inside one builder worker: before/after, local process vs dask worker, side by side.

    git archive OLD src | tar -x -C /tmp/before
    python benchmarks/build_cpu.py --before-src /tmp/before/src --photos 40 --rounds 2

Wall-clock img/s on a shared machine measure the neighbours as much as the builder; the CPU time of
the worker process does not (much). Each measurement is one fresh worker (a spawned process, or a
dask ``LocalCluster`` worker) that makes its ``RecordMaker`` (models loaded), builds one warm-up
photo, then the first ``--photos`` photos of celeba-hq-256, timing process CPU and wall. Variants:

- ``local``: a spawned process, as ``build-dataset --workers N`` runs.
- ``dask-default``: a worker of a ``LocalCluster`` with dask's defaults (its nanny sets
  ``MALLOC_TRIM_THRESHOLD_=65536`` in the worker's environment; the sampling profiler runs).
- ``dask-builder``: a worker as ``build-dataset --distributor dask`` starts it (``build.DASK_WORKER_CONFIG``).
- ``local-trim``: a spawned process with ``MALLOC_TRIM_THRESHOLD_=65536`` (the cause, isolated).

Every variant runs for each source tree (``--before-src`` through ``PYTHONPATH``, and this one), in
alternating order, ``--rounds`` times; medians are reported, with the load average of every run.
The 2-core throughput a build reaches on an idle machine is about ``2 / cpu_seconds_per_photo`` (two
single-threaded workers), printed as ``idle_estimate_img_per_s_2_workers``. Writes
benchmarks/results/build_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402

VARIANTS = ("local", "dask-default", "dask-builder", "local-trim")


def work(images: list[str]) -> dict:
    """In a worker: make the RecordMaker, warm up on the first photo, time the rest."""
    from facemakeup.data.build import BuildConfig, Source, _maker

    maker = _maker(BuildConfig())
    sources = [Source(Path(p).name, path=p) for p in images]
    datas = [Path(p).read_bytes() for p in images]
    maker(sources[0], datas[0])
    t0, c0 = time.perf_counter(), time.process_time()
    for s, d in zip(sources[1:], datas[1:]):
        maker(s, d)
    n = len(images) - 1
    return {"cpu_seconds_per_photo": (time.process_time() - c0) / n, "wall_seconds_per_photo": (time.perf_counter() - t0) / n,
            "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "facemakeup": __import__("facemakeup").__file__}


def child(variant: str, images: list[str]) -> dict:
    """One measurement (run in a fresh interpreter by ``main``)."""
    if variant in ("local", "local-trim"):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if variant == "local-trim":
            os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            return ex.submit(work, images).result()
    import dask
    from dask.distributed import Client, LocalCluster

    settings = {}
    if variant == "dask-builder":
        import importlib

        settings = getattr(importlib.import_module("facemakeup.data.build"), "DASK_WORKER_CONFIG", None)  # the module, not build()
        if settings is None:
            return {"skipped": "this source has no DASK_WORKER_CONFIG"}
    with dask.config.set(settings):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            return client.submit(work, images, pure=False).result()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SHARED_DATA / "celeba-hq-256" / "images")
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before-src", type=Path, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--name", default="build_cpu", help="results/NAME.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    images = [str(p) for p in sorted(args.input.glob("*.jpg"))[: args.photos + 1]]
    if args.child:
        print("RESULT " + json.dumps(child(args.child, images)), flush=True)
        return
    if not images:
        sys.exit(f"no photos at {args.input}")
    versions = [("after", None)] + ([("before", str(args.before_src.resolve()))] if args.before_src else [])
    runs = []
    for rnd in range(args.rounds):
        order = versions if rnd % 2 == 0 else versions[::-1]
        for variant in args.variants.split(","):
            for version, src in order:
                env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
                if src:
                    env["PYTHONPATH"] = src
                load = os.getloadavg()[0]
                proc = subprocess.run([sys.executable, __file__, "--child", variant, "--photos", str(args.photos), "--input", str(args.input)],
                                      capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                res = json.loads(line[7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:] if proc.stderr else "no output"}
                runs.append({"round": rnd, "version": version, "variant": variant, "load_average_before": round(load, 2),
                             "load_average_after": round(os.getloadavg()[0], 2), **res})
                print(json.dumps(runs[-1]), flush=True)
    table = {}
    for version, _ in versions:
        for variant in args.variants.split(","):
            cpu = [r["cpu_seconds_per_photo"] for r in runs if r["version"] == version and r["variant"] == variant and "cpu_seconds_per_photo" in r]
            wall = [r["wall_seconds_per_photo"] for r in runs if r["version"] == version and r["variant"] == variant and "wall_seconds_per_photo" in r]
            if cpu:
                c = statistics.median(cpu)
                table[f"{version}/{variant}"] = {"cpu_seconds_per_photo": round(c, 4), "wall_seconds_per_photo": round(statistics.median(wall), 4),
                                                 "idle_estimate_img_per_s_2_workers": round(2 / c, 1), "runs": len(cpu)}
    for k, v in table.items():
        print(f"{k:24s} {v}")
    print("wrote", write_result(args.name, {"benchmark": "build_cpu", "photos": args.photos, "before_src": str(args.before_src),
                                              "table": table, "runs": runs,
                                              "note": "CPU seconds per photo in one worker after warm-up; idle estimate = 2 / cpu (two single-threaded workers)"}))


if __name__ == "__main__":
    main()
