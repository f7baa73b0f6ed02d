"""``facemakeup generate`` end to end with the tiny model, and its error exits."""

import hashlib
from pathlib import Path
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
    assert sorted(p.name for p in out.iterdir()) == ["conditions.png", "grid.png", "image_00.png", "image_01.png", "provenance.json", "shading.png"]
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
    assert sheet.height == 2 * 384 + 8 and sheet.width > 384 * 2  # the reference row, then the shading map


def test_generate_is_reproducible(tmp_path, photo):
    for name in ("a", "b"):
        assert run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / name, "--model", "tiny", "--steps", 2).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "image_00.png")), np.asarray(Image.open(tmp_path / "b" / "image_00.png")))


def test_photo_without_face_fails_before_loading_models(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: the model would be fetched after the faces
    rocket = tmp_path / "rocket.jpg"
    Image.fromarray(skimage.data.rocket()).save(rocket)
    res = run("generate", "--reference", rocket, "--prompt", "x", "--out", tmp_path / "o", "--model", "no/such-model")
    assert res.exit_code == 3
    assert "will be downloaded from https://huggingface.co/no/such-model" in res.output  # announced, not yet fetched
    assert "rocket.jpg: no face found" in res.output
    assert not (tmp_path / "o").exists()


def test_truncated_photo_is_named(tmp_path, photo):
    cut = tmp_path / "cut.png"
    cut.write_bytes(photo.read_bytes()[:5000])
    res = run("generate", "--reference", cut, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny")
    assert res.exit_code == 2 and "cut.png: truncated image" in res.output


def test_missing_model_exits_with_download_instructions(tmp_path, photo):
    res = run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in res.output and "--model DIR" in res.output


def test_weights_must_match_references(tmp_path, photo):
    res = run("generate", "--reference", photo, "--weight", 1, "--weight", 2, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny")
    assert res.exit_code == 2 and "2 --weight value(s) for 1 --reference(s)" in res.output


def test_generate_with_shading_options(tmp_path, photo):
    target = tmp_path / "target.png"
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:, ::-1])).save(target)  # a mirrored "target"
    outs = {}
    for name, extra in {"own": [], "dir": ["--light-dir", "-1,0,0.5"], "dim": ["--light-dir", "-1,0,0.5", "--light-strength", "0.3"],
                        "from": ["--light-from", target],
                        "shade": ["--shading-from", target]}.items():
        out = tmp_path / name
        res = run("generate", "--reference", photo, "--prompt", "x", "--out", out, "--model", "tiny", "--steps", 1, *extra)
        assert res.exit_code == 0, res.output
        outs[name] = np.asarray(Image.open(out / "shading.png"))[..., 0].astype(int)
        assert (out / "conditions.png").is_file()
    rec = json.loads((tmp_path / "dir" / "provenance.json").read_text())
    assert rec["inputs"]["light_dir"] == [-1.0, 0.0, 0.5] and rec["parameters"]["controlnet_scale"] == 0.5
    assert json.loads((tmp_path / "shade" / "provenance.json").read_text())["inputs"]["shading_from"]["path"] == str(target)
    face = outs["own"] > 0
    assert np.abs(outs["dir"] - outs["own"])[face].mean() > 5  # relit
    assert outs["dim"][face].mean() < outs["dir"][face].mean() - 10  # a weaker light
    np.testing.assert_array_equal(outs["from"] > 0, face)  # same geometry, other light
    # the mirrored target's geometry: its silhouette is the mirror of the reference's
    mirrored = outs["shade"][:, ::-1] > 0
    assert (mirrored & face).sum() / (mirrored | face).sum() > 0.8


def test_generate_light_options_are_checked(tmp_path, photo):
    res = run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny", "--light-dir", "1,2")
    assert res.exit_code == 2 and "expected three numbers" in res.output
    res = run("generate", "--reference", photo, "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny",
              "--light-dir", "1,0,0", "--light-from", photo)
    assert res.exit_code == 2 and "pass one" in res.output


def test_analyze_folder_and_glob_with_failures_reported(tmp_path, photo):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(folder / "astro.jpg")
    Image.fromarray(skimage.data.rocket()).save(folder / "rocket.jpg")
    (folder / "broken.png").write_bytes(photo.read_bytes()[:3000])
    out = tmp_path / "an"
    res = run("analyze", folder, str(photo.parent / "*.png"), "--out", out)
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "broken.png" in res.output and "rocket.jpg: no face found" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["photos"] == 4 and summary["analysed"] == 2 and summary["faces"] == 2  # no face: not analysed
    assert {Path(f["image"]).name for f in summary["failures"]} == {"broken.png", "rocket.jpg"}
    rec = json.loads((out / "astro.json").read_text())
    assert rec["width"] == 512 and rec["height"] == 512 and len(rec["faces"]) == 1
    face = rec["faces"][0]
    assert set(face) >= {"bbox", "kps", "det_score", "pose", "sh", "sh_basis", "shading_map"}
    assert np.array(face["sh"]).shape == (9, 3) and face["sh_basis"][:4] == ["1", "x", "y", "z"]
    assert set(face["pose"]) == {"yaw", "pitch", "roll"} and all(abs(v) < 0.5 for v in face["pose"].values())
    assert Image.open(out / face["shading_map"]).size == (512, 512)
    assert Image.open(out / "astro_overlay.png").height == 512
    assert rec["main_face"] == 0 and len(rec["faces"][0]["embedding"]) == 512
    assert not (out / "rocket.json").exists()  # a photo without a face gets no JSON


def test_analyze_parsing_and_attributes(tmp_path):
    import matplotlib.cbook

    photo = tmp_path / "hopper.jpg"
    photo.write_bytes(matplotlib.cbook.get_sample_data("grace_hopper.jpg").read())
    out = tmp_path / "an"
    res = run("analyze", photo, "--out", out, "--parsing")
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "hopper.json").read_text())
    face = rec["faces"][0]
    labels = np.asarray(Image.open(out / rec["parsing"]))
    assert labels.dtype == np.uint8 and labels.shape == (rec["height"], rec["width"]) and labels.max() <= 18
    assert np.array_equal(labels, np.asarray(Image.open(out / face["parsing"])))  # one face: the same map
    x0, y0, x1, y1 = (int(v) for v in face["bbox"])
    inside = labels[y0:y1, x0:x1]
    assert (inside == 1).mean() > 0.3 and (inside == 2).any()  # skin, nose
    eyes_y = min(k[1] for k in face["kps"][:2])
    hat_rows = np.nonzero((labels == 14).any(axis=1))[0]
    assert len(hat_rows) and np.median(hat_rows) < eyes_y  # her navy cap, above the eyes
    assert len(face["attributes"]) == 40 and all(0 <= p <= 1 for p in face["attributes"].values())
    assert face["attributes"]["Wearing_Hat"] > 0.5 and face["attributes"]["Young"] < 0.5
    assert abs(face["gender"]["female"] + face["gender"]["male"] - 1) < 1e-3
    assert 25 <= face["age"] <= 90 and abs(sum(face["emotion"].values()) - 1) < 1e-2
    # issue 21: acceptance reads this JSON: she is a woman (before: male 0.98), elderly, no mustache
    assert face["gender"]["male"] < 0.1 and face["age"] > 60 and face["attributes"]["Mustache"] < 0.5
    assert face["age_interval"][0] < face["age"] < face["age_interval"][1]


def test_analyze_nothing_usable_exits_non_zero(tmp_path):
    rocket = tmp_path / "rocket.jpg"
    Image.fromarray(skimage.data.rocket()).save(rocket)
    res = run("analyze", rocket, "--out", tmp_path / "an")
    assert res.exit_code == 3 and json.loads((tmp_path / "an" / "summary.json").read_text())["faces"] == 0
    res = run("analyze", str(tmp_path / "nothing*.jpg"), "--out", tmp_path / "an2")
    assert res.exit_code == 2 and "no such file" in res.output
