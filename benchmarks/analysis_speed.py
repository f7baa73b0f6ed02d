"""Face analysis speed per stage on 1 and 2 cores, before/after, and where the time goes.

    python benchmarks/analysis_speed.py [--limit N] [--before-src DIR] [--rounds R]

Times, per photo of ../shared/data/wild (150-1024 px; decoded before timing), the main face's
detection + ArcFace embedding + CLIP crop + 3D fit with SH lighting ("total"), and the 512 px
shading map separately. Each configuration (code version x cores) runs in its own process pinned
to that many cores (``os.sched_setaffinity``) with onnxruntime/LiteRT/OpenCV/torch threads set to
match; the configurations alternate in ``--rounds`` rounds over the same photos, so the machine's
load (shared with other jobs) hits them alike: read the ratios. ``--before-src`` is a ``src``
folder of an older facemakeup (``git archive <commit> src | tar -x -C /tmp/before``) for the
"before" rows. Model inference (onnxruntime sessions and the LiteRT landmark network) is timed by
wrapping those calls; the rest is the project's own Python; a cProfile of the "after" run lists
the heaviest own functions and the share of time spent on the lines of our own .py files
(``own_python_tottime_share``; OpenCV/numpy C calls they make not included). Process CPU time is
recorded beside wall time: on a loaded machine it is the steadier measure. Writes benchmarks/results/analysis_speed.json.
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


def worker(version: str, cores: int, paths: list[str], profile: bool) -> dict:
    """One configuration, in this process (pinned to ``cores`` cores). Returns timings."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
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
        faces = analyzer.get(rgb)
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
    stages: dict[str, float] = {}
    total, shading, n = 0.0, 0.0, 0
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu = 0.0
    for rgb in images:
        t0, c0 = time.perf_counter(), time.process_time()
        face = analyse(rgb, stages)
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if face is not None:
            n += 1
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

        profiler.disable()
        stats = pstats.Stats(profiler)
        own = [(fn, st) for fn, st in stats.stats.items() if "facemakeup" in fn[0]]
        out["own_python_tottime_share"] = sum(st[2] for _, st in own) / stats.total_tt  # our .py lines, not C calls they make
        own.sort(key=lambda x: -x[1][2])  # by own time (tottime)
        out["heaviest_own_functions_tottime_s"] = {f"{Path(fn[0]).name}:{fn[1]}({fn[2]})": round(st[2], 4) for fn, st in own[:10]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="photos (the first N of wild, sorted)")
    parser.add_argument("--before-src", default=None, help="src folder of the older facemakeup for the 'before' rows")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["version"], spec["cores"], spec["paths"], spec["profile"])))
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
    runs = []
    for r in range(args.rounds):
        for cores in (1, 2):
            for version, src in versions.items():
                spec = {"version": version, "cores": cores, "paths": paths, "profile": version == "after" and r == 0}
                env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(cores)}
                load = os.getloadavg()[0]
                res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                                     text=True, check=True)
                out = json.loads(res.stdout.strip().splitlines()[-1])
                out["round"], out["load_1min_before"] = r, load
                print(f"round {r} {version} {cores} core(s): {out['faces_per_second']:.1f} faces/s, "
                      f"own code {out['own_code_share']:.0%}, load {load:.1f}")
                runs.append(out)
    summary = {}
    for version in versions:
        for cores in (1, 2):
            rows = [x for x in runs if x["version"] == version and x["cores"] == cores]
            summary[f"{version}_{cores}core"] = {
                "faces_per_second_median": statistics.median(x["faces_per_second"] for x in rows),
                "faces_per_cpu_second_median": statistics.median(x["faces_per_cpu_second"] for x in rows),
                "own_code_share_median": statistics.median(x["own_code_share"] for x in rows),
                "shading_map_ms_median": 1000 * statistics.median(x["shading_map_s"] / max(x["faces"], 1) for x in rows),
            }
            stage_keys = rows[0]["stage_s"].keys()
            summary[f"{version}_{cores}core"]["stage_ms_per_face"] = {
                k: round(1000 * statistics.median(x["stage_s"][k] / max(x["faces"], 1) for x in rows), 2) for k in stage_keys}
    if "before" in versions:
        for cores in (1, 2):
            for key in ("faces_per_second_median", "faces_per_cpu_second_median"):
                summary[f"speedup_{cores}core_{key.split('_median')[0]}"] = (summary[f"after_{cores}core"][key]
                                                                            / summary[f"before_{cores}core"][key])
    result = {
        "photos": len(paths),
        "measures": "main face per photo: detection + ArcFace embedding + CLIP crop + 3D fit with SH lighting "
                    "(images decoded before timing); the 512 px shading map timed separately",
        "note": "machine shared with other jobs while measuring (load average ~15-20 on 2 cores): absolute "
                "wall-clock numbers are several times too low; compare the configurations (alternated in rounds, "
                "load recorded per run). faces_per_cpu_second (process CPU time) is far less sensitive to the "
                "load: on 1 core it estimates the throughput of an unshared core",
        "summary": summary,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))
    print("wrote", write_result("analysis_speed", result))


if __name__ == "__main__":
    main()
