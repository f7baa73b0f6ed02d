"""Full face analysis speed on 2 cores, and where the time goes.

    python benchmarks/analysis_speed.py [--limit N]

``FaceAnalyzer.get`` (SCRFD detection, norm_crop, ArcFace, CLIP crop, mediapipe 3D mesh, pose, SH
lighting) plus the 512 px shading map, on ../shared/data/wild photos (150-1024 px, the largest face).
Model inference (the onnxruntime sessions and the LiteRT face-landmark network) is timed by wrapping those calls;
the rest is our own code (image decoding excluded). Writes benchmarks/results/analysis_speed.json.
"""

from __future__ import annotations

import statistics
import time

from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.render import shading_map


class Timed:
    """Wraps an object's method, adding its run time to a shared counter."""

    def __init__(self, fn, counter: dict, key: str):
        self.fn, self.counter, self.key = fn, counter, key

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.counter[self.key] = self.counter.get(self.key, 0.0) + time.perf_counter() - t0


def main() -> None:
    args = data_benchmark_args(__doc__)
    analyzer = FaceAnalyzer()
    counter: dict[str, float] = {}
    analyzer.detector.session.run = Timed(analyzer.detector.session.run, counter, "scrfd")
    analyzer.recognizer.session.run = Timed(analyzer.recognizer.session.run, counter, "arcface")
    net = analyzer.fitter._net
    net.invoke = Timed(net.invoke, counter, "face_landmark_tflite")
    paths = sorted((SHARED_DATA / "wild" / "images").iterdir())[: args.limit]
    images = [load_image(p) for p in paths]
    analyzer.get(images[0])  # warm-up
    counter.clear()
    per_face, total, n = [], 0.0, 0
    for rgb in tqdm(images, desc="analysis"):
        t0 = time.perf_counter()
        faces = analyzer.get(rgb, max_faces=1)
        if faces and faces[0].fit is not None:
            shading_map(faces[0].fit, faces[0].kps)
        dt = time.perf_counter() - t0
        total += dt
        if faces:
            per_face.append(dt)
            n += 1
    model = sum(counter.values())
    result = {
        "photos": len(images),
        "faces": n,
        "faces_per_second": n / total,
        "median_s_per_face": statistics.median(per_face),
        "model_inference_s": {k: v for k, v in counter.items()},
        "model_share": model / total,
        "own_code_share": 1 - model / total,
        "includes": "detection, norm_crop, ArcFace, CLIP crop, 3D mesh, pose, SH fit, 512 px shading map",
        "threads": "onnxruntime default (one per core), LiteRT 2",
    }
    print(result)
    print("wrote", write_result("analysis_speed", result))


if __name__ == "__main__":
    main()
