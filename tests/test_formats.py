"""The three dataset layouts (records, webdataset, face-makeup-v2): round trips, Face-MakeUpV2's keep rule,
streaming (split by node and worker, resume), s3:// through a local S3 server, plug-ins checked first."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_data import _variants

FORMATS = ("records", "webdataset", "face-makeup-v2")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The same three photos built in each format (one shard per photo)."""
    from facemakeup.data.build import build

    root = tmp_path_factory.mktemp("formats")
    _variants(root / "src", 3)
    out = {}
    for fmt in FORMATS:
        s = build(root / "src", root / fmt, format=fmt, shard_size=1, progress=False)
        assert s["ok"] and s["records"] == 3, s["failures"]
        out[fmt] = root / fmt
    return out


def _items(ds, caption):
    ds.caption = caption
    return {it["key"]: it for it in (ds if isinstance(ds, torch.utils.data.IterableDataset) else (ds[i] for i in range(len(ds))))}


def _equal(a: dict, b: dict, fields=None) -> list[str]:
    """Fields whose values differ."""
    bad = []
    for k in fields or a:
        x, y = a[k], b[k]
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) and not x.is_floating_point() else \
            (torch.allclose(x, y, atol=0, rtol=0, equal_nan=True) if isinstance(x, torch.Tensor) else x == y)
        if not same:
            bad.append(k)
    return bad


def test_webdataset_build_items_equal_the_records_folders(builds):
    from facemakeup.data import FaceCaptionMaskDataset
    from facemakeup.data.dataset import FaceCaptionMaskShards

    tars = sorted(builds["webdataset"].glob("*.tar"))
    assert len(tars) == 3 and not list(builds["webdataset"].glob("records-*.jsonl"))
    with tarfile.open(tars[0]) as tf:  # one sample = files sharing a key: a .json and an image among them
        names = tf.getnames()
    exts = {n.split(".", 1)[1] for n in names}
    assert {"json", "jpg", "face.png", "shading.png", "parsing.png", "id.npy"} <= exts and any(e.startswith("attribute_") for e in exts)
    assert len({n.split(".", 1)[0] for n in names}) == 1
    recs = FaceCaptionMaskDataset(builds["records"], resolution=64, mask_resolution=16)
    shards = FaceCaptionMaskDataset(builds["webdataset"], resolution=64, mask_resolution=16)  # a folder of tars: streamed
    assert isinstance(shards, FaceCaptionMaskShards)
    for caption in ("attribute", "emotion"):
        a, b = _items(recs, caption), _items(shards, caption)
        assert sorted(a) == sorted(b) and len(a) == 3
        for k in a:
            assert _equal(a[k], b[k]) == [], k


def test_face_makeup_v2_build_gives_the_same_masks_and_token_indices(builds):
    from facemakeup.data import FaceCaptionMaskDataset

    out = builds["face-makeup-v2"]
    for folder in ("images", "faces", "face_id", "shading", "Mask/Attribute", "Mask/Emotion"):
        assert any((out / folder).iterdir()), folder
    recs = FaceCaptionMaskDataset(builds["records"], resolution=64, mask_resolution=16)
    v2 = FaceCaptionMaskDataset(out / "train.json", resolution=64, mask_resolution=16)
    assert v2.skipped == {} and len(v2) == 3
    for caption in ("attribute", "emotion"):
        a, b = _items(recs, caption), _items(v2, caption)
        assert sorted(a) == sorted(b)
        for k in a:  # the photo is copied as is; crops and shading are JPEG there (not compared)
            assert _equal(a[k], b[k], ["caption", "input_ids", "masks", "token_indices", "mask_valid", "id_embedding",
                                       "pixel_values", "kps"]) == [], k


def _v2_keeps(item: dict, data_root, face_id_dir, control_img_dir, parsing_mask_dir) -> bool:
    """A minimal written-out reimplementation (ours, for this test) of the keep rule of Face-MakeUpV2's
    ``dataset/MaskDataset.py::Dataset4ShortCaptionRandomText.__init__``: the ID embedding (``face[0]`` with
    ``.jpg`` replaced by ``.pt``, under the face-id root) and the shading map (``image`` under the control root)
    exist, and all masks of at least one caption exist (``PARSING/Emotion/MASK``, ``PARSING/Attribute/MASK``).
    Also what its ``__getitem__`` then opens: the photo under the data root and the face crop, and a ``.pt``
    ``torch.load`` gives a (1, 512) tensor."""
    face = item["face"][0]
    pt = os.path.join(face_id_dir, face.replace(".jpg", ".pt"))
    if not (os.path.exists(pt) and os.path.exists(os.path.join(control_img_dir, item["image"]))):
        return False
    valid = []
    for caption, masks, sub in (("face_emotion_caption", "emotion_parsing_masks", "Emotion"),
                                ("face_attribute_caption", "atrribute_parsing_masks", "Attribute")):
        if caption in item and masks in item:
            valid.append(all(os.path.exists(os.path.join(parsing_mask_dir, sub, m["mask"])) for m in item[masks]))
    return any(valid) and os.path.exists(os.path.join(data_root, item["image"])) and tuple(torch.load(pt).shape) == (1, 512)


def test_face_makeup_v2s_own_keep_rule_keeps_every_exported_item(builds):
    out = builds["face-makeup-v2"]
    items = json.loads((out / "train.json").read_text())
    assert len(items) == 3
    roots = {"data_root": out / "images", "face_id_dir": out / "face_id", "control_img_dir": out / "shading",
             "parsing_mask_dir": out / "Mask"}
    assert all(_v2_keeps(it, **roots) for it in items)
    assert all(it["face"][0].endswith(".jpg") and it["atrribute_parsing_masks"] for it in items)
    (out / "face_id" / items[0]["face"][0].replace(".jpg", ".pt")).rename(out / "moved.pt")  # the rule can fail
    try:
        assert not _v2_keeps(items[0], **roots)
    finally:
        (out / "moved.pt").rename(out / "face_id" / items[0]["face"][0].replace(".jpg", ".pt"))


def test_v2s_own_data_without_our_extras_and_with_other_roots(builds, tmp_path):
    """V2's published data: no keypoints, no phrase texts, its roots anywhere (given as keyword arguments)."""
    from facemakeup.data import FaceCaptionMaskDataset

    src = builds["face-makeup-v2"]
    items = json.loads((src / "train.json").read_text())
    for it in items:
        it.pop("facemakeup")
        for k in ("atrribute_parsing_masks", "emotion_parsing_masks"):
            it[k] = [{"mask": m["mask"], "token_indices": m["token_indices"]} for m in it[k]]
    items[1]["emotion_parsing_masks"].append({"mask": "gone.png", "token_indices": [1]})  # only its attribute caption is usable
    items[2]["atrribute_parsing_masks"].append({"mask": "gone.png", "token_indices": [1]})
    items[2]["emotion_parsing_masks"].append({"mask": "gone.png", "token_indices": [1]})  # neither: dropped
    roots = {}
    for name, folder in (("data_root", "images"), ("face_root", "faces"), ("face_id_root", "face_id"),
                         ("control_root", "shading"), ("parsing_root", "Mask")):
        shutil.copytree(src / folder, tmp_path / f"x_{folder}")
        roots[name] = tmp_path / f"x_{folder}"
    (tmp_path / "data.json").write_text(json.dumps(items))
    ds = FaceCaptionMaskDataset(tmp_path / "data.json", resolution=64, mask_resolution=16, **roots)
    assert len(ds) == 2 and ds.skipped == {"missing_files": 1}
    assert all(r.kps is None and r.phrases is None for r in ds.records)
    ds.caption = "emotion"
    item = ds[1]
    assert item["caption_kind"] == "attribute" and torch.isnan(item["kps"]).all()  # its only usable caption
    with pytest.raises(FileNotFoundError, match="no usable Face-MakeUpV2 item"):
        FaceCaptionMaskDataset(tmp_path / "data.json", resolution=64)  # default roots beside the JSON: none there


def _fake_shards(src_tar: Path, folder: Path, shards: int, per_shard: int) -> list[str]:
    """``shards`` tars of ``per_shard`` copies of one real sample, each with its own key (record and member names)."""
    with tarfile.open(src_tar) as tf:
        members = {m.name.split(".", 1)[1]: tf.extractfile(m).read() for m in tf.getmembers()}
    from facemakeup.data.formats import sample_stem

    rec = json.loads(members["json"])
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for j in range(per_shard):
                key = f"fake{s}-{j}"
                stem = sample_stem(key)
                text = json.dumps(rec).replace(sample_stem(rec["key"]), stem).replace(f'"key": "{rec["key"]}"', f'"key": "{key}"')
                blobs = {**members, "json": text.encode()}
                for ext, blob in sorted(blobs.items()):
                    ti = tarfile.TarInfo(f"{stem}.{ext}")
                    ti.size = len(blob)
                    tf.addfile(ti, io.BytesIO(blob))
    return sorted(str(p) for p in folder.glob("*.tar"))


def test_stream_splits_by_node_and_worker_and_resumes(builds, tmp_path, monkeypatch):
    from facemakeup.data.dataset import FaceCaptionMaskShards
    from facemakeup.train.loop import PositionSampler

    urls = _fake_shards(sorted(builds["webdataset"].glob("*.tar"))[0], tmp_path / "s", shards=4, per_shard=5)
    batch, world, workers = 2, 2, 2

    def stream(rank, worker, start=0, epochs=1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        ds = FaceCaptionMaskShards(tmp_path / "s", seed=3, shuffle_buffer=4, epochs=epochs)
        return [(pos, r.key) for pos, (r, _) in ds.stream(start, batch)]

    runs = {(r, w): stream(r, w) for r in range(world) for w in range(workers)}
    keys = [k for run in runs.values() for _, k in run]
    assert sorted(keys) == sorted(f"fake{s}-{j}" for s in range(4) for j in range(5))  # each sample once per epoch
    positions = [p for run in runs.values() for p, _ in run]
    assert len(set(positions)) == len(positions)
    for rank in range(world):  # torch's loader takes batch k from worker k % workers: the positions are PositionSampler's
        steps = [p for w in range(workers) for p, _ in runs[(rank, w)]]
        full = list(PositionSampler(0, 6, batch, 1, world, rank))  # 3 batches of <= 2 per worker
        assert set(steps) <= set(full)
    again = stream(1, 0)
    assert again == runs[(1, 0)]  # seeded: the same order
    for start in (1, 3):  # resume after `start` batches of the process: each worker skips its share
        for w in range(workers):
            done = len([k for k in range(start) if k % workers == w])
            assert stream(0, w, start=start) == runs[(0, w)][done * batch:]
    two = stream(0, 1, epochs=2)  # the next epoch reshuffles
    assert [k for _, k in two[: len(runs[(0, 1)])]] == [k for _, k in runs[(0, 1)]] and len(two) > len(runs[(0, 1)])
    monkeypatch.setenv("WORLD_SIZE", "5")
    monkeypatch.setenv("RANK", "4")
    monkeypatch.setenv("NUM_WORKERS", "1")
    monkeypatch.setenv("WORKER", "0")
    with pytest.raises(ValueError, match="4 shards for 5 processes x 1 DataLoader workers"):
        next(FaceCaptionMaskShards(tmp_path / "s").stream())


# ------------------------------------------------------------------------------------------------ s3://

@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 in server mode on 127.0.0.1 (as s3fs's own tests run it); stopped at the end."""
    pytest.importorskip("moto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    import fsspec

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(k, v)
    fsspec.config.conf.setdefault("s3", {})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"b{time.time_ns()}"
    fs.mkdir(bucket)
    fsspec.filesystem("s3").invalidate_cache()
    return fs, bucket


def test_shards_on_s3_stream_the_same_items_and_build_from_s3(builds, s3, tmp_path):
    from facemakeup.data import FaceCaptionMaskDataset
    from facemakeup.data.build import build, list_sources

    fs, bucket = s3
    for tar in sorted(builds["webdataset"].glob("*.tar")):
        fs.put(str(tar), f"{bucket}/shards/{tar.name}")
    local = _items(FaceCaptionMaskDataset(builds["webdataset"], resolution=64, mask_resolution=16), "attribute")
    remote = _items(FaceCaptionMaskDataset(f"s3://{bucket}/shards", resolution=64, mask_resolution=16), "attribute")
    assert sorted(local) == sorted(remote)
    assert all(_equal(local[k], remote[k]) == [] for k in local)
    assert len(list_sources(f"s3://{bucket}/shards/{{00000..00001}}.tar")) == 2  # brace pattern, as webdataset
    # build-dataset from tar shards on S3 (the photos of a --format webdataset build are images too)
    s = build(f"s3://{bucket}/shards", tmp_path / "again", progress=False, limit=1)
    assert s["ok"] and s["records"] == 1 and s["input"] == f"s3://{bucket}/shards"


# ------------------------------------------------------------------------------------------ plug-ins first

@pytest.mark.parametrize("args,named", [(["--captioner", "nomodule"], "--captioner 'nomodule'"),
                                        (["--captioner", "nomodule_xyz:caption"], "cannot import 'nomodule_xyz'"),
                                        (["--captioner", "json:no_such_fn"], "has no 'no_such_fn'"),
                                        (["--tokenizer", "/no/such/dir"], "--tokenizer '/no/such/dir' cannot be loaded")])
def test_bad_captioner_or_tokenizer_exit_2_before_the_plan(tmp_path, args, named):
    from click.testing import CliRunner

    from facemakeup.cli import main

    _variants(tmp_path / "src", 1)
    res = CliRunner().invoke(main, ["build-dataset", str(tmp_path / "src"), str(tmp_path / "out"), *args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and named in lines[0] and ("give " in lines[0]), res.output
    assert not (tmp_path / "out" / "plan.json").exists()


def test_plan_fixes_the_format(builds):
    from facemakeup.data.build import build
    from facemakeup.errors import PlanMismatchError

    src = builds["records"].parent / "src"
    with pytest.raises(PlanMismatchError, match="format webdataset"):
        build(src, builds["records"], format="webdataset", shard_size=1, progress=False)


def test_box_choice_helpers():
    from facemakeup.data.curation import CurationConfig, box_iou, box_match, parse_box

    assert parse_box("[1, 2, 30, 40]") == [1, 2, 30, 40] and parse_box([0, 0, 1.5, 2]) == [0, 0, 1.5, 2]
    for bad in ("[1,2,3]", "[5,5,1,1]", "nope", [1, 2, "x", 4]):
        with pytest.raises(ValueError):
            parse_box(bad) if bad != "nope" else parse_box(json.dumps(bad))
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3) and box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0
    dets = [np.array([0, 0, 100, 100]), np.array([200, 0, 240, 40])]
    assert box_match(dets, [198, 2, 238, 44], CurationConfig())[0] == 1
    index, verdict = box_match(dets, [500, 500, 600, 600], CurationConfig())
    assert index is None and verdict.reason.startswith("box_no_match")


def test_exporting_a_records_folder_gives_the_bytes_of_a_direct_build(builds, tmp_path):
    import hashlib

    from facemakeup.data.formats import export_records

    def digests(folder, pattern):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in folder.rglob(pattern) if p.is_file() and not p.name.startswith(".")}

    assert export_records(builds["records"], tmp_path / "wds", "webdataset", progress=False) == {"records": 3, "shards": 3, "skipped": 0}
    assert digests(tmp_path / "wds", "*.tar") == digests(builds["webdataset"], "*.tar")
    export_records(builds["records"], tmp_path / "v2", "face-makeup-v2", progress=False)
    for folder in ("images", "faces", "face_id", "shading", "Mask"):
        assert digests(tmp_path / "v2" / folder, "*") == digests(builds["face-makeup-v2"] / folder, "*"), folder
    assert json.loads((tmp_path / "v2" / "train.json").read_text()) == json.loads((builds["face-makeup-v2"] / "train.json").read_text())
