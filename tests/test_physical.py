"""The physical channel: rasteriser, SH lighting, 3D fit and pose, shading maps, metrics."""

import csv

import numpy as np
import pytest

from facemakeup.eval import light_rmse, pose_rmse
from facemakeup.faces import lighting
from facemakeup.faces.lighting import SH_BASIS, estimate_sh, mirror_sh, sh_basis, sh_from_direction, shade
from facemakeup.faces.mesh import euler_to_rotation, fit_from_vertices, rotation_to_euler
from facemakeup.faces.render import interpolate, raster_pixels, render_shading, render_sphere, shading_map


def random_normals(n, seed=0, front=True):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if front:
        v[:, 2] = np.abs(v[:, 2])
    return v


# ---------------------------------------------------------------------------- SH
def test_sh_basis_matches_known_constants():
    b = sh_basis(np.array([0.0, 0.0, 1.0]))
    # A_l * Y_lm at n = +z: pi*0.282095, (2pi/3)*0.488603 for z, (pi/4)*0.315392*2 for 3z^2-1
    np.testing.assert_allclose(b[[0, 3, 8]], [np.pi * 0.282095, 2 * np.pi / 3 * 0.488603, np.pi / 4 * 0.315392 * 2], rtol=1e-5)
    np.testing.assert_allclose(b[[1, 2, 4, 5, 6]], 0, atol=1e-12)
    assert SH_BASIS == ("1", "x", "y", "z", "xy", "xz", "yz", "x2-y2", "3z2-1")


def test_uniform_light_gives_constant_irradiance():
    sh = sh_from_direction([0, 0, 1], strength=0.0, ambient=0.4)
    np.testing.assert_allclose(shade(random_normals(50, front=False), sh), 0.4, atol=1e-12)


def test_directional_light_is_brightest_facing_it():
    sh = sh_from_direction([-1, 0, 0], strength=1.0, ambient=0.0)[:, 0]
    facing, away = shade(np.array([-1.0, 0, 0]), sh), shade(np.array([1.0, 0, 0]), sh)
    assert facing == pytest.approx(1.0625, rel=1e-6)  # clamped cosine through order 2: 1/4 + 1/2 + 5/16
    assert away < 0.1
    with pytest.raises(ValueError, match="not all zero"):
        sh_from_direction([0, 0, 0])


def test_estimate_sh_recovers_coefficients():
    normals = random_normals(400)
    sh = np.random.default_rng(1).normal(scale=0.3, size=(9, 3))
    est = estimate_sh(normals, shade(normals, sh), ridge=0.0)
    np.testing.assert_allclose(est, sh, atol=1e-8)
    with pytest.raises(ValueError, match="at least 9"):
        estimate_sh(normals[:5], shade(normals[:5], sh))


def test_mirror_sh_matches_mirrored_normals():
    normals = random_normals(100)
    sh = np.random.default_rng(2).normal(size=(9, 3))
    mirrored = normals * [-1, 1, 1]
    np.testing.assert_allclose(shade(mirrored, mirror_sh(sh)), shade(normals, sh), atol=1e-12)
    assert lighting.ODD_IN_X.tolist() == [False, True, False, False, True, True, False, False, False]


# ---------------------------------------------------------------------------- rasteriser
def test_raster_pixels_area_and_depth_order():
    square = np.array([[10, 10], [50, 10], [50, 50], [10, 50]], float)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    tri_id, ys, xs, tid, w = raster_pixels(square, np.zeros(4), tris, 64, 64)
    assert 40 * 40 <= (tri_id >= 0).sum() <= 41 * 41 and len(ys) == (tri_id >= 0).sum()  # centres in [10, 50]^2 (both edges)
    assert tri_id[30, 30] >= 0 and tri_id[8, 30] == -1 and tri_id[30, 52] == -1
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()  # edge pixels are clipped onto their triangle
    # two overlapping triangles: the closer (larger depth) wins
    xy = np.array([[0, 0], [60, 0], [0, 60], [0, 0], [60, 0], [0, 60]], float)
    depth = np.array([1, 1, 1, 5, 5, 5.0])
    tri_id, ys, xs, tid, w = raster_pixels(xy, depth, np.array([[0, 1, 2], [3, 4, 5]]), 64, 64)
    assert set(np.unique(tid)) == {1} and np.allclose(interpolate(w, np.array([[3, 4, 5]] * len(tid)), depth), 5)


def test_interpolation_reproduces_an_affine_attribute_and_normals_match_the_summed_formula():
    from facemakeup.faces.mesh import vertex_normals

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.linspace(4, 60, 8), np.linspace(4, 60, 8)), -1).reshape(-1, 2) + rng.uniform(-2, 2, (64, 2))
    tris = np.array([[r * 8 + c, r * 8 + c + 1, r * 8 + c + 8] for r in range(7) for c in range(7)]
                    + [[r * 8 + c + 1, r * 8 + c + 9, r * 8 + c + 8] for r in range(7) for c in range(7)])
    values = np.stack([0.3 * grid[:, 0] - 0.7 * grid[:, 1] + 2, grid[:, 0] * 0 + 5], axis=1)  # affine in (x, y)
    tri_id, ys, xs, tid, w = raster_pixels(grid, np.zeros(64), tris, 64, 64)
    assert (tid == tri_id[ys, xs]).all() and len(ys) > 2500
    inside = (w > 1e-9).all(axis=1)  # pixel centres strictly inside their triangle (edges are clipped onto it)
    got = interpolate(w, tris[tid], values)
    np.testing.assert_allclose(got[inside, 0], 0.3 * (xs[inside] + 0.5) - 0.7 * (ys[inside] + 0.5) + 2, atol=1e-9)
    np.testing.assert_allclose(got[:, 1], 5, atol=1e-12)
    # vertex normals: the area-weighted sum of the incident faces' normals, normalised
    points = np.concatenate([grid, rng.normal(size=(64, 1))], axis=1)
    a, b, c = (points[tris[:, k]] for k in range(3))
    expected = np.zeros_like(points)
    for k in range(3):
        np.add.at(expected, tris[:, k], np.cross(b - a, c - a))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vertex_normals(points, tris), expected, atol=1e-12)


def test_sphere_render_is_lit_from_the_light_side():
    img = render_sphere(sh_from_direction([-1, 0, 0.2]), 64)
    assert img[32, 8].mean() > img[32, 56].mean() + 0.3  # left brighter than right
    assert img[0, 0].max() == 0  # black outside the disk


# ---------------------------------------------------------------------------- pose
def test_euler_round_trip_and_mirror_rule():
    for yaw, pitch, roll in [(0.3, -0.2, 0.1), (-0.7, 0.4, -0.5), (0, 0, 0)]:
        r = euler_to_rotation(yaw, pitch, roll)
        assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1)
        p = rotation_to_euler(r)
        np.testing.assert_allclose([p["yaw"], p["pitch"], p["roll"]], [yaw, pitch, roll], atol=1e-12)
        m = np.diag([-1.0, 1, 1])
        q = rotation_to_euler(m @ r @ m)  # the mirrored head
        np.testing.assert_allclose([q["yaw"], q["pitch"], q["roll"]], [-yaw, pitch, -roll], atol=1e-12)
    # positive yaw turns the face (its z axis) toward +x, the image's right
    assert euler_to_rotation(0.5, 0, 0)[0, 2] > 0


# ---------------------------------------------------------------------------- fit on real photos
@pytest.fixture(scope="module")
def astro_face(analyzer, astronaut):
    return analyzer.get_face(astronaut)


def test_astronaut_fit(astro_face):
    fit = astro_face.fit
    assert fit is not None and fit.fitter.startswith("mediapipe")
    assert fit.vertices.shape == (468, 3) and fit.triangles.shape[1] == 3 and len(fit.triangles) > 800
    np.testing.assert_allclose(np.linalg.norm(fit.normals, axis=1), 1, atol=1e-5)
    # a roughly frontal, upright face: all angles within 20 degrees
    assert all(abs(np.degrees(v)) < 20 for v in fit.pose.values()), fit.pose
    x0, y0, x1, y1 = astro_face.bbox
    inside = (fit.vertices[:, 0] > x0 - 20) & (fit.vertices[:, 0] < x1 + 20) & (fit.vertices[:, 1] > y0 - 30) & (fit.vertices[:, 1] < y1 + 20)
    assert inside.mean() > 0.95
    # front-facing normals point toward the viewer at the nose tip (mediapipe vertex 1)
    assert fit.normals[1, 2] > 0.5
    assert fit.sh.shape == (9, 3)
    # albedo 1: the irradiance toward the camera is about the colour of the skin there (R > G > B)
    front = shade(np.array([0.0, 0.0, 1.0]), fit.sh)
    assert np.all((front > 0.3) & (front < 1.0)) and front[0] > front[1] > front[2]


def test_mirroring_negates_yaw_and_roll(analyzer, astronaut, astro_face):
    mirrored = analyzer.get_face(np.ascontiguousarray(astronaut[:, ::-1])).fit.pose
    p = astro_face.fit.pose
    assert abs(mirrored["yaw"] + p["yaw"]) < np.radians(3)
    assert abs(mirrored["roll"] + p["roll"]) < np.radians(2)
    assert abs(mirrored["pitch"] - p["pitch"]) < np.radians(3)


def test_relit_render_gives_back_its_lighting(astronaut, astro_face):
    """Render the fitted face with its own SH into the photo, fit the lighting again: same SH."""
    fit = astro_face.fit
    h, w = astronaut.shape[:2]
    v = fit.vertices.astype(np.float64)
    rgb = render_shading(v[:, :2], v[:, 2], fit.triangles, fit.normals, fit.sh, h, w, grey=False)
    photo = np.round(rgb * 255).astype(np.uint8)
    again = fit_from_vertices(photo, v, fit.triangles, fit.skin, fit.rotation, "test").sh
    assert np.linalg.norm(again - fit.sh) / np.linalg.norm(fit.sh) < 0.05
    assert light_rmse(again, fit.sh) < 0.02


def test_shading_map_lit_from_the_left_is_brighter_on_the_left(astro_face):
    left = shading_map(astro_face.fit, astro_face.kps, sh=sh_from_direction([-1, 0, 0.5]), height=256, width=256)[..., 0]
    right = shading_map(astro_face.fit, astro_face.kps, sh=sh_from_direction([1, 0, 0.5]), height=256, width=256)[..., 0]
    assert left.shape == (256, 256) and left.dtype == np.uint8
    face = left > 0
    cx = int(np.round(np.nonzero(face)[1].mean()))  # the face's centre column
    lm = left[:, :cx][face[:, :cx]].mean(), left[:, cx:][face[:, cx:]].mean()
    rm = right[:, :cx][face[:, :cx]].mean(), right[:, cx:][face[:, cx:]].mean()
    assert lm[0] > lm[1] + 20 and rm[1] > rm[0] + 20
    assert (left[~face] == 0).all()  # black background
    # the crop factor sets the face's size in the map
    small = shading_map(astro_face.fit, astro_face.kps, crop_factor=10, height=256, width=256)[..., 0] > 0
    assert 3 < face.sum() / small.sum() < 5  # area scales with (10 / 5)^2


def test_pose_and_light_rmse():
    a = [{"yaw": 0.1, "pitch": 0.0, "roll": 0.0}, {"yaw": 0.0, "pitch": 0.2, "roll": 0.0}]
    b = [{"yaw": 0.0, "pitch": 0.0, "roll": 0.0}, {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}]
    assert pose_rmse(a, b) == pytest.approx(np.sqrt((0.01 + 0.04) / 6))
    assert pose_rmse([np.pi - 0.05, 0, 0], [-np.pi + 0.05, 0, 0]) == pytest.approx(0.1 / np.sqrt(3))  # wraps
    assert light_rmse(np.ones((9, 3)), np.zeros((9, 3))) == 1.0
    with pytest.raises(ValueError):
        light_rmse(np.ones((9, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError):
        pose_rmse([0, 0], [0, 0])


def test_fit_succeeds_on_celebamask_faces(shared_data, analyzer):
    rows = list(csv.DictReader(open(shared_data / "celebamask-hq" / "index.tsv"), delimiter="\t"))[:40]
    key = next(k for k in rows[0] if "image" in k or "file" in k)
    failed = [r[key] for r in rows if analyzer.get_face(shared_data / "celebamask-hq" / r[key]).fit is None]
    assert not failed
