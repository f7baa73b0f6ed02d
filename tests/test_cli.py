"""``facemakeup generate`` end to end with the tiny model, and its error exits."""

import hashlib
import json

import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from facemakeup.cli import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_generate_tiny_writes_images_sheet_and_provenance(tmp_path, photo):
    out = tmp_path / "out"
    res = run("generate", "--reference", photo, "--prompt", "a smiling woman", "--out", out, "--model", "tiny",
              "--num-images", 2, "--steps", 3, "--seed", 7)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["conditions.png", "grid.png", "image_00.png", "image_01.png", "provenance.json"]
    img = Image.open(out / "image_00.png")
    assert img.size == (64, 64) and json.loads(img.text["facemakeup"])["seed"] == 7
    assert not np.array_equal(np.asarray(img), np.asarray(Image.open(out / "image_01.png")))
    rec = json.loads((out / "provenance.json").read_text())
    assert rec["inputs"]["references"][0]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert rec["parameters"]["seed"] == 7 and rec["parameters"]["steps"] == 3
    assert rec["models"]["pipeline"] == "tiny" and "noise" in rec["note"]
    assert rec["versions"]["torch"].startswith("2.13") and rec["timings"]["generate_s"] > 0
    x0, y0, x1, y1 = rec["inputs"]["references"][0]["bbox"]
    assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 200  # the astronaut's face
    sheet = Image.open(out / "conditions.png")
    assert sheet.height == 384 and sheet.width > 384 * 2


def test_generate_is_reproducible(tmp_path, photo):
    for name in ("a", "b"):
        assert run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / name, "--model", "tiny", "--steps", 2).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "image_00.png")), np.asarray(Image.open(tmp_path / "b" / "image_00.png")))


def test_photo_without_face_fails_before_loading_models(tmp_path):
    rocket = tmp_path / "rocket.jpg"
    Image.fromarray(skimage.data.rocket()).save(rocket)
    res = run("generate", "--reference", rocket, "--prompt", "x", "--out", tmp_path / "o", "--model", "no/such-model")
    assert res.exit_code == 1
    assert "rocket.jpg: no face found" in res.output
    assert not (tmp_path / "o").exists()


def test_truncated_photo_is_named(tmp_path, photo):
    cut = tmp_path / "cut.png"
    cut.write_bytes(photo.read_bytes()[:5000])
    res = run("generate", "--reference", cut, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny")
    assert res.exit_code == 1 and "cut.png: truncated or corrupt" in res.output


def test_missing_model_exits_with_download_instructions(tmp_path, photo):
    res = run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in res.output and "--model DIR" in res.output


def test_weights_must_match_references(tmp_path, photo):
    res = run("generate", "--reference", photo, "--weight", 1, "--weight", 2, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny")
    assert res.exit_code == 1 and "2 --weight values for 1 --reference" in res.output
