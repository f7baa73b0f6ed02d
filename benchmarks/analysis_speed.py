"""Face analysis speed per stage on 1 and 2 cores, before/after, and where the time goes.

    python benchmarks/analysis_speed.py [--limit N] [--before-src DIR] [--rounds R]

Times, per photo of ../shared/data/wild (150-1024 px; decoded before timing), the main face's
detection (``get(max_faces=1)``) + ArcFace embedding + CLIP crop + 3D fit with SH lighting
("total"), and the 512 px shading map separately. Three layouts of the 2-core machine:

* ``1core``: one process pinned to one core, one thread per library;
* ``2core``: one process on both cores, two threads per library (one photo's latency);
* ``2proc``: two processes, one per core, one thread each, each taking every other photo
  (throughput, as ``build-dataset --workers 2`` runs); they start together after their warm-up
  and faces/s = all faces / the slower one's time.

onnxruntime/LiteRT/OpenCV/torch threads are set to match; the configurations alternate in
``--rounds`` rounds over the same photos, so a shared machine's load hits them alike (load
recorded per run). ``--before-src`` is a ``src`` folder of an older facemakeup (``git archive
<commit> src | tar -x -C /tmp/before``) for the "before" rows. Model inference (onnxruntime
sessions and the LiteRT landmark network) is timed by wrapping those calls; the rest is "own
code" (ours plus the OpenCV/numpy calls it makes). A cProfile of the first "after" run gives
``own_python_tottime_share``: the time spent on the lines of our own .py files (numpy arithmetic
written there included; OpenCV/numpy functions they call not) over the profiled time, and the
heaviest of them. Process CPU time is recorded beside wall time. Writes
benchmarks/results/analysis_speed.json.
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

HERE = Path(__file__).resolve().parent


class Timed:
    """Wraps a callable, adding its run time to a shared counter."""

    def __init__(self, fn, counter: dict, key: str):
        self.fn, self.counter, self.key = fn, counter, key

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.counter[self.key] = self.counter.get(self.key, 0.0) + time.perf_counter() - t0


def worker(version: str, cores: list[int], paths: list[str], profile: bool, barrier: bool = False) -> dict:
    """One configuration, in this process pinned to the CPUs ``cores``. Returns timings.

    With ``barrier`` it says "ready" on stderr after its warm-up and waits for a line on stdin.
    """
    os.sched_setaffinity(0, set(cores))
    cores = len(cores)
    import cv2
    import torch

    cv2.setNumThreads(cores)
    torch.set_num_threads(cores)
    from facemakeup.faces import FaceAnalyzer, load_image
    from facemakeup.faces.render import shading_map

    analyzer = FaceAnalyzer(threads=cores)
    if version == "before":  # the old code hard-coded 2 LiteRT threads
        from facemakeup.faces.mesh import MediaPipeFitter

        analyzer._fitter = MediaPipeFitter(threads=cores)
    counter: dict[str, float] = {}
    analyzer.detector.session.run = Timed(analyzer.detector.session.run, counter, "scrfd")
    analyzer.recognizer.session.run = Timed(analyzer.recognizer.session.run, counter, "arcface")
    net = analyzer.fitter._net
    net.invoke = Timed(net.invoke, counter, "face_landmark_tflite")
    images = [load_image(p) for p in paths]

    def analyse(rgb, stages: dict):
        t0 = time.perf_counter()
        if version == "before":  # one call did everything for every face it kept
            faces = analyzer.get(rgb, max_faces=1)
            stages["all"] = stages.get("all", 0.0) + time.perf_counter() - t0
            return faces[0] if faces else None
        faces = analyzer.get(rgb, max_faces=1)  # the main face (its fast path: see FaceAnalyzer.get)
        t1 = time.perf_counter()
        stages["detect"] = stages.get("detect", 0.0) + t1 - t0
        if not faces:
            return None
        face = faces[0]
        for stage in ("embed", "clip", "fit"):
            t = time.perf_counter()
            analyzer.run([face], stage)
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - t
        return face

    analyse(images[0], {})  # warm-up (sessions, mediapipe)
    counter.clear()
    if barrier:
        print("ready", file=sys.stderr, flush=True)
        sys.stdin.readline()
    stages: dict[str, float] = {}
    total, shading, n = 0.0, 0.0, 0
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu = 0.0
    fitted = []
    for rgb in images:
        t0, c0 = time.perf_counter(), time.process_time()
        face = analyse(rgb, stages)
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if face is not None:
            n += 1
            fitted.append(face)
    if profiler is not None:
        profiler.disable()  # the profile covers the measured stages, not the shading map
    for face in fitted:
        if face.fit is not None:
            t0 = time.perf_counter()
            shading_map(face.fit, face.kps)
            shading += time.perf_counter() - t0
    out = {"version": version, "cores": cores, "photos": len(images), "faces": n, "total_s": total,
           "faces_per_second": n / total, "cpu_s": cpu, "faces_per_cpu_second": n / cpu, "stage_s": stages, "shading_map_s": shading,
           "model_inference_s": dict(counter), "model_share": sum(counter.values()) / total,
           "own_code_share": 1 - sum(counter.values()) / total}
    if profiler is not None:
        import pstats

        stats = pstats.Stats(profiler)
        own = [(fn, st) for fn, st in stats.stats.items() if "facemakeup" in fn[0]]
        out["own_python_tottime_share"] = sum(st[2] for _, st in own) / stats.total_tt  # our .py lines, not C calls they make
        own.sort(key=lambda x: -x[1][2])  # by own time (tottime)
        out["heaviest_own_functions_tottime_s"] = {f"{Path(fn[0]).name}:{fn[1]}({fn[2]})": round(st[2], 4) for fn, st in own[:10]}
    return out


def run_layout(version: str, src: str, procs: list[list[int]], paths: list[str], profile: bool) -> dict:
    """Run one worker process per CPU list in ``procs`` (photos dealt out in turn), started together."""
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(len(procs[0]))}
    workers = []
    for k, cores in enumerate(procs):
        spec = {"version": version, "cores": cores, "paths": paths[k :: len(procs)], "profile": profile and k == 0,
                "barrier": True}
        workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for w in workers:  # wait until every worker has warmed up
        while (line := w.stderr.readline()) and line.strip() != "ready":
            pass
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.flush()
    outs = []
    for w in workers:
        stdout, stderr = w.communicate()
        if w.returncode:
            raise RuntimeError(f"worker failed: {stderr[-2000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    if len(outs) == 1:
        return outs[0]
    wall = max(o["total_s"] for o in outs)
    faces, model = sum(o["faces"] for o in outs), sum(sum(o["model_inference_s"].values()) for o in outs)
    busy = sum(o["total_s"] for o in outs)
    return {"version": version, "cores": len(procs), "processes": len(procs), "photos": sum(o["photos"] for o in outs),
            "faces": faces, "total_s": wall, "faces_per_second": faces / wall, "cpu_s": sum(o["cpu_s"] for o in outs),
            "faces_per_cpu_second": faces / sum(o["cpu_s"] for o in outs),
            "stage_s": {k: sum(o["stage_s"][k] for o in outs) for k in outs[0]["stage_s"]},
            "shading_map_s": sum(o["shading_map_s"] for o in outs), "model_share": model / busy,
            "own_code_share": 1 - model / busy, "per_process": outs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="photos (the first N of wild, sorted)")
    parser.add_argument("--before-src", default=None, help="src folder of the older facemakeup for the 'before' rows")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["version"], spec["cores"], spec["paths"], spec["profile"], spec["barrier"])))
        return

    sys.path.insert(0, str(HERE))
    from common import ROOT, SHARED_DATA, write_result

    if not SHARED_DATA.is_dir():
        sys.exit(f"no data at {SHARED_DATA} (set FACEMAKEUP_SHARED_DATA)")
    every = sorted((SHARED_DATA / "wild" / "images").iterdir())
    paths = [str(p) for p in every[:: max(1, len(every) // args.limit)][: args.limit]]  # spread over all sources and sizes
    versions = {"after": str(ROOT / "src")}
    if args.before_src:
        versions = {"before": str(Path(args.before_src).resolve()), **versions}
    cpus = sorted(os.sched_getaffinity(0))[:2]
    layouts = {"1core": [cpus[:1]], "2core": [cpus], "2proc": [[c] for c in cpus]}  # one list of CPUs per process
    runs = []
    for r in range(args.rounds):
        for layout, procs in layouts.items():
            for version, src in versions.items():
                load = os.getloadavg()[0]
                out = run_layout(version, src, procs, paths, profile=version == "after" and r == 0 and layout == "1core")
                out.update(layout=layout, round=r, load_1min_before=load)
                print(f"round {r} {version} {layout}: {out['faces_per_second']:.1f} faces/s, "
                      f"own code {out['own_code_share']:.0%}, load {load:.1f}")
                runs.append(out)
    summary = {}
    for version in versions:
        for layout in layouts:
            rows = [x for x in runs if x["version"] == version and x["layout"] == layout]
            summary[f"{version}_{layout}"] = {
                "faces_per_second_median": statistics.median(x["faces_per_second"] for x in rows),
                "faces_per_cpu_second_median": statistics.median(x["faces_per_cpu_second"] for x in rows),
                "own_code_share_median": statistics.median(x["own_code_share"] for x in rows),
                "shading_map_ms_median": 1000 * statistics.median(x["shading_map_s"] / max(x["faces"], 1) for x in rows),
                "stage_ms_per_face": {k: round(1000 * statistics.median(x["stage_s"][k] / max(x["faces"], 1) for x in rows), 2)
                                      for k in rows[0]["stage_s"]},
            }
    if "before" in versions:
        for layout in layouts:
            summary[f"speedup_{layout}"] = (summary[f"after_{layout}"]["faces_per_second_median"]
                                            / summary[f"before_{layout}"]["faces_per_second_median"])
    profiled = next(x for x in runs if "own_python_tottime_share" in x)
    summary["own_python_tottime_share"] = profiled["own_python_tottime_share"]
    summary["goal"] = {"faces_per_second_2_cores": 25, "met": summary["after_2proc"]["faces_per_second_median"] >= 25,
                       "own_python_share_max": 0.10, "own_python_met": profiled["own_python_tottime_share"] < 0.10}
    result = {
        "photos": len(paths),
        "measures": "main face per photo: detection + ArcFace embedding + CLIP crop + 3D fit with SH lighting "
                    "(images decoded before timing); the 512 px shading map timed separately",
        "note": "wall-clock figures hold for an otherwise idle machine only: check load_1min_before per run",
        "summary": summary,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))
    print("wrote", write_result("analysis_speed", result))


if __name__ == "__main__":
    main()
