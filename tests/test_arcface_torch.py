"""Torch ArcFace (ONNX graph run in torch) and differentiable alignment vs the onnxruntime/cv2 originals."""

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facemakeup.errors import ModelNotFoundError, UnsupportedModelError
from facemakeup.faces import FaceAnalyzer, estimate_norm, load_image, norm_crop
from facemakeup.faces.align import ARCFACE_TEMPLATE
from facemakeup.faces.arcface_torch import align_faces, load_arcface_torch, similarity_matrices


@pytest.fixture(scope="module")
def arcface():
    return load_arcface_torch()


@pytest.fixture(scope="module")
def face_analyzer():
    return FaceAnalyzer(fitter=None, threads=1)  # onnxruntime SCRFD + ArcFace (w600k_mbf), no mesh


def _blob(crops: np.ndarray) -> torch.Tensor:
    """recognize.ArcFace's preprocessing written out: uint8 RGB (N, 112, 112, 3) -> (N, 3, 112, 112) in [-1, 1]."""
    return torch.from_numpy(((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())


def _detect(analyzer, photos):
    """(photo, Face) pairs: keypoints, norm_crop and onnxruntime embedding of the largest face."""
    faces = [analyzer.get(p, max_faces=1) for p in photos]
    assert all(len(f) == 1 for f in faces)
    return [(p, f[0]) for p, f in zip(photos, faces, strict=True)]


@pytest.fixture(scope="module")
def astro_face(face_analyzer, astronaut):
    return _detect(face_analyzer, [astronaut])[0]


@pytest.fixture(scope="module")
def celeba_faces(face_analyzer, shared_data):
    files = sorted((shared_data / "celeba-aligned" / "images").glob("*.jpg"))[:8]
    assert len(files) == 8
    return _detect(face_analyzer, [load_image(f) for f in files])


def _check_embeddings(arcface, faces):
    faces = [face for _, face in faces]
    with torch.no_grad():
        emb = arcface(_blob(np.stack([f.aligned for f in faces]))).numpy()  # one batch
    onnx_emb = np.stack([f.embedding for f in faces])  # onnxruntime, one face per run
    assert emb.shape == (len(faces), 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert np.abs(emb - onnx_emb).max() < 1e-4


def test_embeddings_match_onnx_astronaut(arcface, astro_face):
    _check_embeddings(arcface, [astro_face])


def test_embeddings_match_onnx_on_photos(arcface, celeba_faces):
    _check_embeddings(arcface, celeba_faces)


def test_weights_frozen_gradients_reach_image_and_keypoints(arcface, astro_face):
    assert all(not p.requires_grad for p in arcface.parameters()) and not arcface.training
    photo, face = astro_face
    image = (torch.tensor(photo).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    kps = torch.from_numpy(face.kps[None].copy()).requires_grad_(True)
    emb = arcface(align_faces(image, kps, fill=-1.0))
    ref = torch.from_numpy(face.embedding[None])
    loss = 1 - (emb * ref).sum()  # the ID loss
    loss.backward()
    assert loss.item() < 1e-3  # the torch crop of the same photo has the same identity
    for grad in (image.grad, kps.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in arcface.parameters())


@pytest.mark.parametrize("size", [112, 224, 128, 256])
def test_similarity_matrices_match_estimate_norm(size):
    rng = np.random.default_rng(size)
    kps = []
    for _ in range(4):  # template rotated, scaled, shifted and jittered: any face pose
        angle, scale = rng.uniform(-1.0, 1.0), rng.uniform(0.5, 4.0)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        kps.append(ARCFACE_TEMPLATE @ rot.T + rng.uniform(0, 300, 2) + rng.normal(0, 3, (5, 2)))
    ours = similarity_matrices(torch.tensor(np.stack(kps)), size).numpy()
    for matrix, k in zip(ours, kps, strict=True):
        np.testing.assert_allclose(matrix, estimate_norm(k, size), atol=1e-9)


def _check_align(pairs):
    for photo, face in pairs:
        image = torch.tensor(photo).permute(2, 0, 1)[None].float()
        crop = align_faces(image, torch.from_numpy(face.kps[None].copy()))[0].permute(1, 2, 0).numpy()
        diff = np.abs(crop - norm_crop(photo, face.kps).astype(np.float32))  # cv2: fixed-point weights, uint8
        assert diff.mean() < 0.4 and diff.max() < 4


def test_align_faces_matches_norm_crop_astronaut(astro_face):
    _check_align([astro_face])


def test_align_faces_matches_norm_crop_on_photos(celeba_faces):
    _check_align(celeba_faces)


def test_align_faces_fill_outside_photo(astro_face):
    astronaut, face = astro_face
    kps = face.kps
    kps = kps - kps.min(axis=0) + 3  # face moved into the corner: half the crop lies outside the photo
    image = torch.tensor(astronaut).permute(2, 0, 1)[None].float() / 127.5 - 1  # [-1, 1]
    crop = align_faces(image, torch.from_numpy(kps[None].copy()), fill=-1.0)[0].permute(1, 2, 0).numpy()
    ref = norm_crop(astronaut, kps).astype(np.float32) / 127.5 - 1  # black outside = -1
    inside = norm_crop(np.full_like(astronaut, 255), kps)[..., 0]
    outside = cv2.dilate(inside, np.ones((3, 3), np.uint8)) == 0  # off the photo by > 1 px (cv2 rounds edges)
    assert outside.mean() > 0.2
    np.testing.assert_allclose(crop[outside], -1.0, atol=1e-6)
    assert np.abs(crop - ref).mean() < 0.4 / 127.5


def _save(tmp_path, nodes, inits, in_shape=(None, 3, 112, 112), out_dim=16):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out_dim])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],  # dtypes as given
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7), path)
    return path


def test_interpreter_matches_onnxruntime_on_iresnet_like_graph(tmp_path):
    """A tiny random graph with the r50/mbf operator pattern (4D BN, strided and asymmetric convs, residual, Gemm)."""
    rng = np.random.default_rng(0)
    c = 8
    w = lambda *s: rng.normal(0, 0.3, s)  # noqa: E731
    inits = {
        "bn0_s": 1 + w(3), "bn0_b": w(3), "bn0_m": w(3), "bn0_v": 1 + rng.uniform(0, 1, 3),
        "c1_w": w(c, 3, 3, 3), "c1_b": w(c), "slope": rng.uniform(0, 0.5, (c, 1, 1)), "slope_w": w(28),
        "dw_w": w(c, 1, 3, 3), "c2_w": w(c, c, 1, 1), "down_w": w(c, c, 1, 1),
        "sub": w(1, c, 1, 1), "mul": 1 + w(1),
        "fc_w": w(32, c * 14 * 14), "fc_b": w(32), "bn1_s": 1 + w(32), "bn1_b": w(32), "bn1_m": w(32),
        "bn1_v": 1 + rng.uniform(0, 1, 32), "shape": np.array([0, -1]), "mm": w(32, 16),
    }  # fmt: skip
    N = helper.make_node
    nodes = [
        N("BatchNormalization", ["x", "bn0_s", "bn0_b", "bn0_m", "bn0_v"], ["a"], epsilon=2e-5),
        N("Conv", ["a", "c1_w", "c1_b"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        N("PRelu", ["b", "slope"], ["c"]),
        N("Conv", ["c", "dw_w"], ["d"], kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2], group=c),
        N("Conv", ["d", "c2_w"], ["e"], kernel_shape=[1, 1]),
        N("Conv", ["c", "down_w"], ["f"], kernel_shape=[1, 1], strides=[2, 2]),
        N("Add", ["e", "f"], ["g"]),
        N("PRelu", ["g", "slope_w"], ["h"]),  # slope (W,) along the last axis: the general broadcast
        N("Sub", ["h", "sub"], ["i0"]),
        N("Relu", ["i0"], ["i"]),
        N("Mul", ["i", "mul"], ["j"]),
        N("Conv", ["j", "c2_w"], ["k"], kernel_shape=[1, 1], strides=[2, 2], dilations=[1, 1]),
        N("Dropout", ["k"], ["l"]),
        N("Flatten", ["l"], ["m"], axis=1),
        N("Gemm", ["m", "fc_w", "fc_b"], ["n"], transB=1),
        N("BatchNormalization", ["n", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["o"]),
        N("Reshape", ["o", "shape"], ["p"]),
        N("MatMul", ["p", "mm"], ["y"]),
    ]
    inits = {k: v.astype(np.int64 if k == "shape" else np.float32) for k, v in inits.items()}
    path = _save(tmp_path, nodes, inits)
    x = rng.uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    model = load_arcface_torch(path)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert ours.shape == (3, 16)
    assert np.abs(ours - ref).max() < 1e-5


def test_unsupported_operators_are_listed(tmp_path):
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Softmax", ["e"], ["y"], axis=1)]
    path = _save(tmp_path, nodes, {}, in_shape=(None, 16), out_dim=16)
    with pytest.raises(UnsupportedModelError, match=r"\['Erf', 'Softmax'\]"):
        load_arcface_torch(path)


def test_bad_files_and_inputs(tmp_path, arcface):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(UnsupportedModelError, match="garbage.onnx"):
        load_arcface_torch(garbage)
    with pytest.raises(ModelNotFoundError):
        load_arcface_torch(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        arcface(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="kps"):
        align_faces(torch.zeros(2, 3, 64, 64), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        align_faces(torch.zeros(1, 3, 64, 64), torch.rand(1, 5, 2) * 64, size=100)
