"""The FaceCaptionMask builder's safety: one test per defect of issue 10 (each fails on the builder
before it), the record module, the lock, and kill -9 / concurrent builds (slow)."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_data import _variants


def _records(out: Path) -> list[dict]:
    """Every JSON line of every records-*.jsonl under OUT, and every record JSON of its tar shards (how an
    outside reader sees the dataset)."""
    import tarfile

    found = [json.loads(line) for f in sorted(out.rglob("records-*.jsonl")) if not any(p.startswith(".") for p in f.relative_to(out).parts)
             for line in f.read_text().splitlines() if line.strip()]
    for t in sorted(out.glob("*.tar")):
        with tarfile.open(t) as tf:
            found += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    return found


def _summary(out: Path) -> dict:
    return json.loads(sorted(out.glob("summary*.json"))[0].read_text())


def _build(src, out, **kw):
    from facemakeup.data.build import build

    return build(src, out, progress=False, **kw)


# ------------------------------------------------------------------------------ defect 1: key collisions

def test_keys_of_sub_x_and_sub__x_do_not_collide(tmp_path, analyzer):
    a, b = _variants(tmp_path / "v", 2)  # astronaut, Grace Hopper
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.jpg").write_bytes(a.read_bytes())
    (src / "sub__x.jpg").write_bytes(b.read_bytes())
    out = tmp_path / "out"
    _build(src, out)
    recs = _records(out)
    assert len(recs) == 2 and len({r["key"] for r in recs}) == 2
    files = [{r["id_embedding"], r["face"][0], r["shading"], r["parsing"]} for r in recs]
    assert not files[0] & files[1]  # no output file shared
    for r in recs:  # each record's ID embedding is its own photo's
        photo = np.asarray(Image.open(r["image"]).convert("RGB"))
        own = analyzer.get_face(photo).embedding
        assert float(np.load(out / r["id_embedding"]) @ own) > 0.99


def test_source_key_rule():
    from facemakeup.data.build import source_key

    assert source_key("sub/x.jpg", b"1") != source_key("sub__x.jpg", b"1")  # same bytes, other name
    assert source_key("x.jpg", b"1") != source_key("x.jpg", b"2")  # same name, other bytes
    k = source_key("a b/ü/" + "n" * 200 + ".jpg", b"1")
    assert len(k) <= 93 and all(c.isalnum() or c in "._-" for c in k)


# ------------------------------------------------------------------ defect 2: a photo deleted after recording

def test_photo_deleted_after_recording_is_a_counted_skip(tmp_path):
    import torch

    from facemakeup.data.dataset import FaceCaptionMaskDataset

    src, out = tmp_path / "src", tmp_path / "out"
    paths = _variants(src, 3)
    _build(src, out)
    paths[0].unlink()
    again = _build(src, out)  # used to crash writing the contact sheet
    assert again["ok"] and again["records_with_missing_photo"] == 1 and (out / "contact.png").is_file()
    ds = FaceCaptionMaskDataset(out, resolution=64, mask_resolution=8)
    assert len(ds) == 2 and ds.skipped["missing_files"] == 1
    assert len([ds[i] for i in range(len(ds))]) == 2  # a whole epoch
    Path(ds.records[1].path(ds.records[1].id_embedding)).unlink()  # vanishes mid-training
    torch.manual_seed(0)
    item = ds[1]
    assert item["key"] == ds.records[0].key and ds.skipped["unreadable_later"] == 1


def test_records_of_unknown_version_or_damaged_are_counted_skips(tmp_path):
    from facemakeup.data.record import SCHEMA_VERSION, Record, read_records
    from facemakeup.errors import RecordError

    src, out = tmp_path / "src", tmp_path / "out"
    _variants(src, 1)
    _build(src, out)
    good = _records(out)[0]
    assert good["schema_version"] == SCHEMA_VERSION
    (out / "records-99998.jsonl").write_text(json.dumps({**good, "schema_version": 99}) + "\n"
                                             + json.dumps({**good, "kps": [[1, 2]]}) + "\n")
    records, skipped = read_records(out)
    assert [r.key for r in records] == [good["key"]] and skipped == {"unknown_schema_version": 1, "invalid": 1}
    with pytest.raises(RecordError, match="schema_version 99"):
        Record.from_json({**good, "schema_version": 99})
    with pytest.raises(RecordError, match="missing fields .'face'"):
        Record.from_json({k: v for k, v in good.items() if k != "face"})
    r = Record.from_json(good, root=out)
    assert Record.from_json(r.to_json(), root=out) == r and r.to_json() == good  # round trip
    assert r.missing_files() == []


# -------------------------------------------------------------- defect 3: concurrent builds, other plans

def test_a_second_build_on_a_locked_out_is_refused_and_a_stale_lock_taken_over(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _variants(src, 2)
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",  # holds OUT/build.lock as a running build does (flock + its JSON)
                               "import fcntl, json, os, sys, time\n"
                               f"fd = os.open({str(out / 'build.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', 'started': 't'}).encode())\n"
                               "print('held', flush=True)\ntime.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"being built by another build-dataset .*pid.: {holder.pid}"):
            _build(src, out)
        assert not list(out.glob("records-*.jsonl"))
    finally:
        holder.kill()  # dies holding the lock: the file stays, the flock goes with the process
        holder.wait()
    from facemakeup.data.build import BuildLock
    from facemakeup.errors import BuildLockedError, PlanMismatchError

    assert issubclass(BuildLockedError, Exception)
    summary = _build(src, out)
    assert summary["ok"] and summary["took_over_stale_lock"]["pid"] == holder.pid
    assert not (out / "build.lock").exists()
    with BuildLock(out) as lock:  # a clean exit leaves nothing stale
        assert lock.stale is None
        with pytest.raises(BuildLockedError):
            BuildLock(out).__enter__()
    with pytest.raises(PlanMismatchError, match="limit"):
        _build(src, out, limit=1)  # another plan on the same OUT (the old --shard duplicated records)
    assert len(_records(out)) == 2


# -------------------------------------------------------------- defect 4: a re-run verifies done shards

def test_rerun_repairs_a_recorded_photos_missing_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _variants(src, 2)
    _build(src, out)
    recs_before = _records(out)
    rec = recs_before[0]
    emb = (out / rec["id_embedding"]).read_bytes()
    (out / rec["id_embedding"]).unlink()
    (out / rec["atrribute_parsing_masks"][0]["mask"]).unlink()
    again = _build(src, out)
    assert (out / rec["id_embedding"]).read_bytes() == emb and (out / rec["atrribute_parsing_masks"][0]["mask"]).is_file()
    assert again["ok"] and len(again["shards"]["repaired"]) == 1
    assert rec["key"] in again["shards"]["repaired"][0]["reason"] and "missing" in again["shards"]["repaired"][0]["reason"]
    assert sorted(r["key"] for r in _records(out)) == sorted(r["key"] for r in recs_before)
    third = _build(src, out)
    assert third["shards"]["repaired"] == [] and third["shards"]["processed_this_run"] == 0


# ------------------------------------------- defect 5: exit status, disk full, summary of a no-op re-run

def test_exit_status_is_1_when_nothing_was_built(tmp_path):
    import skimage.data
    from click.testing import CliRunner

    from facemakeup.cli import main

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skimage.data.rocket()).save(src / "rocket.png")
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.png")
    res = CliRunner().invoke(main, ["build-dataset", str(src), str(tmp_path / "out")])
    assert res.exit_code == 1 and "no record was built" in res.output and "no_face 2" in res.output


def test_noop_rerun_keeps_models_and_the_summary_lists_everything(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _variants(src, 2)
    first = _build(src, out)
    again = _build(src, out)
    assert again["models"] == first["models"] and again["shards"]["processed_this_run"] == 0
    assert {"detector", "recognizer", "parser", "text_detector", "tokenizer"} <= set(_summary(out)["models"])
    assert set(again["shard_seconds"]) == {str(i) for i in range(again["shards"]["total"])}
    assert again["records"] == 2 and again["rejects_by_reason"] == {} and again["failures"] == []


class _FileSizeLimit:
    """RLIMIT_FSIZE: writes past ``limit`` bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old)
        signal.signal(signal.SIGXFSZ, self.handler)


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".part" in p.name or (p.is_file() and p.stat().st_size == 0 and p.suffix == ".png")]


def test_disk_full_leaves_no_part_files_and_no_torn_contact_sheet(tmp_path):
    from facemakeup.data.build import build

    src = tmp_path / "src"
    _variants(src, 2)
    build(src, tmp_path / "warm", progress=False)  # models loaded and cached before the limit
    out = tmp_path / "out"
    with _FileSizeLimit(200_000):  # record files fit (< 100 kB), the contact sheet (~300 kB) does not
        summary = build(src, out, progress=False)
    assert not summary["ok"] and "contact sheet" in summary["failures"][0]["reason"]
    assert not (out / "contact.png").exists() and _leftovers(out) == [] and not (out / ".staging").exists()
    out2 = tmp_path / "out2"
    with _FileSizeLimit(20_000):  # the 224 px face crop (~80 kB) does not fit: every shard fails
        summary = build(src, out2, progress=False)
    assert not summary["ok"] and len(summary["shards"]["failed"]) == summary["shards"]["total"]
    assert all("File too large" in f["reason"] for f in summary["failures"])
    assert _leftovers(out2) == [] and not (out2 / ".staging").exists() and _records(out2) == []
    again = build(src, out2, progress=False)  # space again: the failed shards are redone
    assert again["ok"] and again["records"] == 2 and Image.open(out2 / "contact.png").size == (1024, 320)


# ------------------------------------------------------------------------------------- distributors

@pytest.mark.slow
def test_dask_builds_the_same_records(tmp_path):
    """--distributor dask with its own LocalCluster, and with the address of a running scheduler."""
    from dask.distributed import LocalCluster

    src = tmp_path / "src"
    _variants(src, 2)
    a = _build(src, tmp_path / "a")
    b = _build(src, tmp_path / "b", distributor="dask", workers=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        c = _build(src, tmp_path / "c", distributor="dask", scheduler=cluster.scheduler_address)
    assert b["ok"] and c["ok"] and b["distributor"] == c["distributor"] == "dask" and c["scheduler"].startswith("tcp://")
    ra = _records(tmp_path / "a")
    assert ra == _records(tmp_path / "b") == _records(tmp_path / "c") and a["records"] == 2
    for r in ra:
        emb = (tmp_path / "a" / r["id_embedding"]).read_bytes()
        assert emb == (tmp_path / "b" / r["id_embedding"]).read_bytes() == (tmp_path / "c" / r["id_embedding"]).read_bytes()


def test_bad_distributor_options(tmp_path):
    from click.testing import CliRunner

    from facemakeup.cli import main

    res = CliRunner().invoke(main, ["build-dataset", str(tmp_path), str(tmp_path / "out"), "--distributor", "ray"])
    assert res.exit_code == 2 and "'local', 'dask'" in res.output
    with pytest.raises(ValueError, match="distributor='dask'"):
        _build(tmp_path, tmp_path / "out", scheduler="tcp://127.0.0.1:8786")


# ----------------------------------------------------------------------------- kill -9, two at once

def _cli(src, out, *extra):
    return [sys.executable, "-m", "facemakeup.cli", "build-dataset", str(src), str(out), *extra]


def _file_hashes(out: Path) -> dict:
    import hashlib

    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in out.rglob("*") if p.is_file() and p.parts[len(out.parts)] in ("Mask", "id", "faces", "shading", "parsing")}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["records", "webdataset"])
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_build(tmp_path, fmt):
    src = tmp_path / "photos"
    _variants(src, 8)
    t0 = time.time()
    subprocess.run(_cli(src, tmp_path / "a", "--format", fmt), check=True, capture_output=True)
    full = time.time() - t0
    b = tmp_path / "b"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(_cli(src, b, "--workers", "2", "--format", fmt), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        keys = [r["key"] for r in _records(b)]
        assert len(keys) == len(set(keys))  # never a duplicate, even between kills
    subprocess.run(_cli(src, b, "--format", fmt), check=True, capture_output=True)
    ra, rb = _records(tmp_path / "a"), _records(b)
    assert sorted(r["key"] for r in rb) == sorted(r["key"] for r in ra) and len(ra) == 8
    assert sorted(map(json.dumps, rb)) == sorted(map(json.dumps, ra))
    assert _file_hashes(b) == _file_hashes(tmp_path / "a")
    if fmt == "webdataset":  # each shard committed whole: byte-identical tars, no stray loose files
        import hashlib

        tars = {t.name: hashlib.sha256(t.read_bytes()).hexdigest() for t in (tmp_path / "a").glob("*.tar")}
        assert tars and tars == {t.name: hashlib.sha256(t.read_bytes()).hexdigest() for t in b.glob("*.tar")}
        assert not any((b / d).exists() for d in ("Mask", "id", "faces", "shading", "parsing"))
    assert _leftovers(b) == [] and not (b / ".staging").exists()


@pytest.mark.slow
def test_two_builds_at_once_the_second_is_refused(tmp_path):
    src, out = tmp_path / "photos", tmp_path / "out"
    _variants(src, 24)  # enough work that the first build still holds the lock when the second starts
    first = subprocess.Popen(_cli(src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "build.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(_cli(src, out), capture_output=True, text=True)
    assert second.returncode == 4 and "is being built by another build-dataset" in second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    keys = [r["key"] for r in _records(out)]
    assert len(keys) == len(set(keys)) == 24
