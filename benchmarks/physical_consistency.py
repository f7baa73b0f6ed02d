"""Consistency of the physical channel on real photos: mirror symmetry, relighting, fit success.

    python benchmarks/physical_consistency.py [--limit N]

On ../shared/data/celebamask-hq (850 faces) and ../shared/data/wild (319 photos; the largest face):
* fit success (detection + 3D fit) per set, with the failures listed;
* mirroring: the mirrored photo's yaw and roll should be the negatives of the original's and its
  pitch the same (median absolute error, degrees); its SH lighting should be the original's with
  the x-odd coefficients (x, xy, xz) negated (median relative error ||sh' - M sh|| / ||sh||), and
  the irradiance it predicts on the face should match (relative RMS over the visible normals);
* relighting: the fitted face rendered under its own SH, fitted again with the same mesh, should
  give back that SH (median relative error).
Writes benchmarks/results/physical_consistency.json.
"""

from __future__ import annotations


import numpy as np
from tqdm import tqdm

from common import SHARED_DATA, data_benchmark_args, write_result
from facemakeup.faces import FaceAnalyzer, load_image
from facemakeup.faces.lighting import mirror_sh, shade
from facemakeup.faces.mesh import fit_from_vertices
from facemakeup.faces.render import render_shading


def mirror_errors(analyzer, rgb, face) -> dict:
    fit = face.fit
    flipped = analyzer.get(np.ascontiguousarray(rgb[:, ::-1]), max_faces=1)
    if not flipped or flipped[0].fit is None:
        return {}
    f2 = flipped[0].fit
    p, q = fit.pose, f2.pose
    expected = mirror_sh(fit.sh)
    normals = fit.normals[fit.visible & fit.skin].astype(np.float64) * [-1, 1, 1]  # the mirrored face's normals
    irr_true, irr = shade(normals, expected), shade(normals, f2.sh)
    return {
        "yaw": abs(np.degrees(q["yaw"] + p["yaw"])),
        "roll": abs(np.degrees(q["roll"] + p["roll"])),
        "pitch": abs(np.degrees(q["pitch"] - p["pitch"])),
        "sh_rel": float(np.linalg.norm(f2.sh - expected) / np.linalg.norm(expected)),
        "irradiance_rel": float(np.sqrt(np.mean((irr - irr_true) ** 2)) / np.sqrt(np.mean(irr_true**2))),
    }


def relight_error(rgb, face) -> float:
    fit = face.fit
    v = fit.vertices.astype(np.float64)
    render = render_shading(v[:, :2], v[:, 2], fit.triangles, fit.normals, fit.sh, rgb.shape[0], rgb.shape[1], grey=False)
    again = fit_from_vertices(np.round(render * 255).astype(np.uint8), v, fit.triangles, fit.skin, fit.rotation, "relit").sh
    return float(np.linalg.norm(again - fit.sh) / np.linalg.norm(fit.sh))


def run_set(analyzer, name, paths) -> dict:
    failures, mirror, relight = [], [], []
    for path in tqdm(paths, desc=name):
        rgb = load_image(path)
        faces = analyzer.get(rgb, max_faces=1)
        if not faces:
            failures.append({"image": path.name, "reason": "no face detected"})
            continue
        if faces[0].fit is None:
            failures.append({"image": path.name, "reason": faces[0].fit_error})
            continue
        m = mirror_errors(analyzer, rgb, faces[0])
        if m:
            mirror.append(m)
        relight.append(relight_error(rgb, faces[0]))
    med = {k: float(np.median([m[k] for m in mirror])) for k in ("yaw", "pitch", "roll", "sh_rel", "irradiance_rel")}
    p90 = {k: float(np.percentile([m[k] for m in mirror], 90)) for k in ("yaw", "pitch", "roll")}
    return {
        "photos": len(paths),
        "fitted": len(paths) - len(failures),
        "success_rate": (len(paths) - len(failures)) / len(paths),
        "failures": failures,
        "mirror_pairs": len(mirror),
        "mirror_median_abs_error_deg": {k: med[k] for k in ("yaw", "pitch", "roll")},
        "mirror_p90_abs_error_deg": p90,
        "mirror_sh_median_relative_error": med["sh_rel"],
        "mirror_irradiance_median_relative_rms": med["irradiance_rel"],
        "relight_sh_median_relative_error": float(np.median(relight)),
        "relight_sh_p90_relative_error": float(np.percentile(relight, 90)),
    }


def main() -> None:
    args = data_benchmark_args(__doc__)
    analyzer = FaceAnalyzer()
    sets = {
        "celebamask-hq": sorted((SHARED_DATA / "celebamask-hq" / "images").iterdir())[: args.limit],
        "wild": sorted((SHARED_DATA / "wild" / "images").iterdir())[: args.limit],
    }
    result = {name: run_set(analyzer, name, paths) for name, paths in sets.items()}
    result["fitter"] = analyzer.model_files
    path = write_result("physical_consistency", result)
    for name in sets:
        r = result[name]
        print(name, {k: v for k, v in r.items() if k != "failures"})
        print("  failures:", r["failures"])
    print("wrote", path)


if __name__ == "__main__":
    main()
