"""Face analysis: detection, alignment, ArcFace embeddings, image reading and its errors."""

import csv

import numpy as np
import pytest
import skimage.data
from PIL import Image

from facemakeup.errors import FaceTooSmallError, ImageReadError, ModelNotFoundError, NoFaceError
from facemakeup.faces import FaceAnalyzer, clip_crop, estimate_norm, landmark_box, load_image, norm_crop
from facemakeup.faces.align import ARCFACE_TEMPLATE


def test_astronaut_one_face_with_plausible_geometry(analyzer, astronaut):
    faces = analyzer.get(astronaut)
    assert len(faces) == 1
    f = faces[0]
    le, re, nose, lm, rm = f.kps
    assert le[0] < re[0] and lm[0] < rm[0]  # left/right as seen in the photo
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])  # eyes above nose above mouth
    x0, y0, x1, y1 = f.bbox
    assert np.all((f.kps[:, 0] > x0) & (f.kps[:, 0] < x1) & (f.kps[:, 1] > y0) & (f.kps[:, 1] < y1))
    assert 0.5 < f.det_score <= 1.0
    assert f.embedding.shape == (512,) and f.embedding.dtype == np.float32
    assert abs(np.linalg.norm(f.embedding) - 1.0) < 1e-5
    assert f.aligned.shape == (112, 112, 3) and f.clip_image.shape == (224, 224, 3)


def test_estimate_norm_recovers_a_known_similarity():
    angle, scale, shift = np.deg2rad(25.0), 2.5, np.array([100.0, 40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = ARCFACE_TEMPLATE @ rot.T + shift  # the template moved into a "photo"
    m = estimate_norm(kps, 112)
    back = kps @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, ARCFACE_TEMPLATE, atol=1e-4)
    # 224 = 2 x 112: template scaled by 2
    m2 = estimate_norm(kps, 224)
    np.testing.assert_allclose(kps @ m2[:, :2].T + m2[:, 2], ARCFACE_TEMPLATE * 2, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        estimate_norm(kps, 100)


def test_norm_crop_warps_keypoints_where_the_transform_says(analyzer, astronaut):
    face = analyzer.get_face(astronaut)
    m = estimate_norm(face.kps, 112)
    expected = face.kps @ m[:, :2].T + m[:, 2]
    assert np.linalg.norm(expected - ARCFACE_TEMPLATE, axis=1).mean() < 8  # a least-squares fit to the template
    crop = norm_crop(astronaut, face.kps, 112)
    again = analyzer.detector.detect(np.pad(crop, ((56, 56), (56, 56), (0, 0))), det_size=320)[2]
    assert len(again) >= 1
    err = np.linalg.norm(again[0] - 56 - expected, axis=1)
    # re-detected keypoints in the crop sit where the warp put them (the smiling mouth's corners are
    # the detector's least precise points on a 112 px face)
    assert err[:3].max() < 3.0 and err[3:].max() < 8.0, err


def test_landmark_box_and_clip_crop_geometry():
    kps = np.array([[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]], dtype=np.float32)
    np.testing.assert_allclose(landmark_box(kps, 3.0), [-10, 0, 50, 60])
    img = np.full((50, 50, 3), 200, np.uint8)
    crop = clip_crop(img, kps, size=60, crop_factor=3.0)  # 1:1 scale, box starts at x=-10
    assert crop.shape == (60, 60, 3)
    assert crop[:, :10].max() == 0  # padding left of the photo is black
    assert crop[:50, 10:].min() == 200 and crop[50:].max() == 0
    with pytest.raises(ValueError):
        landmark_box(kps, 0)


def test_embedding_is_stable_under_rescaling_and_shift(analyzer, astronaut):
    a = analyzer.get_face(astronaut).embedding
    big = np.asarray(Image.fromarray(astronaut).resize((768, 768), Image.BICUBIC))
    shifted = np.pad(big, ((100, 0), (0, 150), (0, 0)))
    b = analyzer.get_face(shifted).embedding
    assert float(a @ b) > 0.85


def test_several_faces_sorted_by_size_and_face_index(analyzer, astronaut):
    camera = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    group = np.concatenate([camera, astronaut], axis=1)  # two people, different sizes
    faces = analyzer.get(group)
    assert len(faces) == 2
    assert faces[0].size >= faces[1].size
    astro = analyzer.get_face(astronaut).embedding
    sims = [float(f.embedding @ astro) for f in faces]
    assert max(sims) > 0.8 and min(sims) < 0.3  # one of them is the astronaut, the other is not
    assert analyzer.get_face(group, face_index=1) is not None
    with pytest.raises(IndexError, match="2 face"):
        analyzer.get_face(group, face_index=2)
    assert len(analyzer.get(group, max_faces=1)) == 1


def test_no_face_in_a_landscape_photo(analyzer, tmp_path):
    path = tmp_path / "rocket.jpg"
    Image.fromarray(skimage.data.rocket()).save(path)
    assert analyzer.get(path) == []
    with pytest.raises(NoFaceError, match="rocket.jpg: no face"):
        analyzer.get_face(path)


def test_faces_below_min_size_raise(astronaut):
    strict = FaceAnalyzer(min_face_size=400, threads=1)
    with pytest.raises(FaceTooSmallError, match="min_face_size=400"):
        strict.get(astronaut)


def test_truncated_jpeg_names_the_file(tmp_path, astronaut):
    path = tmp_path / "cut.jpg"
    Image.fromarray(astronaut).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg: truncated image"):
        load_image(path)


def test_non_image_and_missing_files(tmp_path, analyzer):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    with pytest.raises(ImageReadError, match="notes.jpg: not an image"):
        analyzer.get(text)
    with pytest.raises(ImageReadError, match="nothere.png: no such file"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(TypeError):
        load_image(12345)


def test_huge_image_is_refused(tmp_path, astronaut):
    path = tmp_path / "big.png"
    Image.fromarray(astronaut).save(path)
    with pytest.raises(ImageReadError, match="more than the limit"):
        load_image(path, max_pixels=512 * 511)


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA", "P"])
def test_colour_modes_still_find_the_face(tmp_path, analyzer, astronaut, mode):
    img = Image.fromarray(astronaut)
    if mode == "I;16":
        gray = np.asarray(img.convert("L")).astype(np.uint16) * 257  # full 16-bit range
        img = Image.fromarray(gray)  # mode I;16
        path = tmp_path / "face16.png"
    else:
        img = img.convert(mode)
        path = tmp_path / ("face.jpg" if mode in ("L", "CMYK") else "face.png")
    img.save(path)
    rgb = load_image(path)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    if mode == "I;16":
        np.testing.assert_array_equal(rgb[..., 0], np.asarray(Image.fromarray(astronaut).convert("L")))
    assert len(analyzer.get(rgb)) == 1


def test_exif_rotation_is_applied(tmp_path, analyzer, astronaut):
    upright = astronaut[:, 56:456]  # 512 x 400, portrait
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    rgb = load_image(path)
    assert rgb.shape == upright.shape
    assert np.abs(rgb.astype(int) - upright).mean() < 3
    np.testing.assert_allclose(analyzer.get_face(rgb).kps, analyzer.get_face(upright).kps, atol=3)


def test_uint16_and_gray_arrays():
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = load_image(arr16)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out[7, 7, 0] == round(63000 / 257)
    with pytest.raises(ImageReadError, match="dtype float64"):
        load_image(np.zeros((4, 4, 3)))


def test_missing_model_says_what_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match="buffalo_l"):
        FaceAnalyzer(detector=tmp_path / "nowhere")


def test_same_identity_scores_higher_on_celeba(shared_data, analyzer):
    rows = list(csv.DictReader(open(shared_data / "celeba-aligned" / "index.tsv"), delimiter="\t"))[:100]  # 20 ids x 5
    emb, ids = [], []
    for r in rows:
        emb.append(analyzer.get_face(shared_data / "celeba-aligned" / r["image"]).embedding)
        ids.append(r["identity"])
    emb, ids = np.stack(emb), np.array(ids)
    sim = emb @ emb.T
    same = ids[:, None] == ids[None]
    off = ~np.eye(len(ids), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.3
    # each image's nearest other image is mostly of the same person
    np.fill_diagonal(sim, -2)
    assert (ids[sim.argmax(1)] == ids).mean() > 0.9
