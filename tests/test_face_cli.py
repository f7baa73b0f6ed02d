"""``facemakeup analyze`` output names and face choice; ``--face-index`` parsing."""

import json

import numpy as np
import skimage.data
from click.testing import CliRunner
from PIL import Image

from facemakeup.cli import _output_stems, main


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_shared_stems_get_distinct_deterministic_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    astro = skimage.data.astronaut()
    for folder in (a, b):
        Image.fromarray(astro).save(folder / "astro.png")
    Image.fromarray(astro[:, ::-1]).save(a / "solo.png")
    Image.fromarray(astro).save(a / "twin.jpg")
    Image.fromarray(astro).save(a / "twin.png")  # same folder, same stem, other suffix
    paths = [a / "astro.png", b / "astro.png", a / "solo.png", a / "twin.jpg", a / "twin.png"]
    names = _output_stems(paths)
    assert names[a / "solo.png"] == "solo" and len(set(names.values())) == 5
    assert all(names[p].startswith(p.stem + "_") for p in paths if p.stem != "solo")
    assert _output_stems(paths[::-1]) == names  # does not depend on the order of the inputs

    out = tmp_path / "out"
    res = run("analyze", a / "astro.png", b / "astro.png", a / "solo.png", "--out", out, "--no-attributes")
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in out.glob("*.json") if p.name != "summary.json")
    assert written == sorted(f"{names[p]}.json" for p in paths[:3])
    recs = [json.loads((out / f"{names[p]}.json").read_text()) for p in paths[:2]]
    assert {r["image"] for r in recs} == {str(a / "astro.png"), str(b / "astro.png")}  # neither overwrote the other


def test_analyze_lists_every_face_and_names_the_main_one(tmp_path):
    camera = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    group = np.concatenate([camera, skimage.data.astronaut()], axis=1)
    photo = tmp_path / "group.png"
    Image.fromarray(group).save(photo)
    out = tmp_path / "all"
    res = run("analyze", photo, "--out", out, "--no-attributes")
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "group.json").read_text())
    assert rec["main_face"] == 0 and rec["analysed_faces"] == [0, 1] and len(rec["faces"]) == 2
    assert all("pose" in f and "shading_map" in f and len(f["embedding"]) == 512 for f in rec["faces"])

    one = tmp_path / "one"
    res = run("analyze", photo, "--out", one, "--no-attributes", "--face-index", "1")
    assert res.exit_code == 0, res.output
    rec1 = json.loads((one / "group.json").read_text())
    assert rec1["analysed_faces"] == [1] and len(rec1["faces"]) == 2  # every face listed, one analysed in full
    assert "pose" in rec1["faces"][1] and "pose" not in rec1["faces"][0] and "embedding" not in rec1["faces"][0]
    np.testing.assert_allclose(rec1["faces"][1]["bbox"], rec["faces"][1]["bbox"])

    res = run("analyze", photo, "--out", tmp_path / "three", "--no-attributes", "--face", "5")
    assert res.exit_code == 3 and "only 2 face(s)" in res.output
    res = run("analyze", photo, "--out", tmp_path / "bad", "--face-index", "first")
    assert res.exit_code == 2 and "expected 'all' or a face number" in res.output
