"""The face parser on onnxruntime (the default) against its torch network: same probabilities, same labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def parsers():
    from facemakeup.faces.parsing import FaceParser

    return {q: (FaceParser(quality=q, backend="torch"), FaceParser(quality=q, threads=1)) for q in ("fast", "accurate")}


def test_export_is_cached_and_named_by_the_weights(tmp_path):
    from facemakeup.faces.parsing import export_onnx
    from facemakeup.weights import asset

    a = export_onnx(folder=tmp_path)
    assert a.is_file() and a.parent == tmp_path and a.stat().st_size > 1_000_000
    mtime = a.stat().st_mtime_ns
    assert export_onnx(folder=tmp_path) == a and a.stat().st_mtime_ns == mtime  # made once
    import hashlib

    assert hashlib.sha256(asset("face_parser.safetensors").read_bytes()).hexdigest()[:16] in a.name
    assert not list(tmp_path.glob(".*part*"))


@pytest.mark.parametrize("quality", ["fast", "accurate"])
def test_onnxruntime_matches_torch(parsers, quality, astronaut, analyzer):
    torch_parser, ort_parser = parsers[quality]
    assert ort_parser.backend == "onnxruntime" and ort_parser.session is not None and torch_parser.session is None
    gen = torch.Generator().manual_seed(0)
    for side in sorted({256, *ort_parser.sides}):  # every side the quality runs, batch of 2
        x = torch.rand(2, 3, side, side, generator=gen)
        with torch.no_grad():
            ref = torch_parser.logits(x)
        got = ort_parser.logits(x)
        assert got.shape == ref.shape == (2, 19, side, side)
        assert float((got.softmax(1) - ref.softmax(1)).abs().max()) < 1e-4
    face = analyzer.get_face(astronaut)
    a, b = torch_parser.parse(astronaut, face.kps), ort_parser.parse(astronaut, face.kps)
    assert a.shape == astronaut.shape[:2] and (a != b).mean() < 1e-4 and (a > 0).mean() > 0.05


def test_unknown_backend():
    from facemakeup.faces.parsing import FaceParser

    with pytest.raises(ValueError, match="backend"):
        FaceParser(backend="tensorrt")
