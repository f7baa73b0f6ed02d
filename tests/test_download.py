"""``facemakeup download``: a FaceCaption-15M-shaped parquet of URLs served on 127.0.0.1 -> tar shards ->
``build-dataset`` -> ``train`` (slow); a source box chooses the face; LAION-Face's id join."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MAX_REQUESTS = 200  # the server answers at most this many requests, then 503
MAX_SECONDS = 600  # and shuts itself down after this long


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def two_face_photo() -> tuple[np.ndarray, list[int], list[int]]:
    """The astronaut (large) and Grace Hopper (smaller) side by side: ``(photo, box of the large face, of the small face)``."""
    import matplotlib.cbook
    import skimage.data

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    canvas = np.full((600, 1100, 3), 200, np.uint8)
    canvas[40:552, 0:512] = skimage.data.astronaut()
    canvas[100:484, 700:1000] = np.asarray(Image.fromarray(hopper).resize((300, 384)))
    return canvas, [180, 60, 330, 260], [790, 150, 940, 360]


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    served = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).served += 1
        if type(self).served > MAX_REQUESTS:
            self.send_response(503)
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if body.startswith(b"<") else "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def photo_server():
    """A bounded HTTP server on 127.0.0.1 (at most ``MAX_REQUESTS`` answers, ``MAX_SECONDS`` of life, stopped
    after the test): ``(base URL, files dict to fill: path -> bytes)``."""
    handler = type("Handler", (_Handler,), {"files": {}, "served": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    timer = threading.Timer(MAX_SECONDS, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.files
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def facecaption_parquet(path: Path, base: str, files: dict) -> list[dict]:
    """A FaceCaption-15M-shaped parquet (``_id``, ``url``, ``caption`` list, ``laion_caption``, ``box`` JSON string):
    a portrait, a two-face photo whose box names the smaller face, an HTML page, a 404. Returns the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import skimage.data

    two, _, small = two_face_photo()
    files.update({"/astronaut.jpg": _jpeg(skimage.data.astronaut()), "/two.jpg": _jpeg(two), "/page.html": b"<html>no image</html>"})
    rows = [
        {"_id": 101, "url": f"{base}/astronaut.jpg", "caption": ["a woman with brown hair smiling"], "laion_caption": "astronaut",
         "box": "[180,60,330,260]"},
        {"_id": 102, "url": f"{base}/two.jpg", "caption": ["an old woman with gray hair and eyeglasses"], "laion_caption": "two",
         "box": json.dumps(small)},
        {"_id": 103, "url": f"{base}/page.html", "caption": ["x"], "laion_caption": "html", "box": "[0,0,10,10]"},
        {"_id": 104, "url": f"{base}/missing.jpg", "caption": ["y"], "laion_caption": "404", "box": "[0,0,10,10]"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def _run(*args, timeout=900):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "facemakeup.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_download_build_train_from_a_facecaption_parquet(photo_server, tmp_path):
    from facemakeup.data.download import img2dataset_available

    if not img2dataset_available():
        pytest.skip("img2dataset is not installed (pip install --no-deps img2dataset==1.47.0, as .ci/run does)")
    base, files = photo_server
    rows = facecaption_parquet(tmp_path / "fc.parquet", base, files)
    shards = tmp_path / "shards"
    res = _run("download", tmp_path / "fc.parquet", shards, "--threads", "4", "--timeout", "5", "--retries", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((shards / "download_summary.json").read_text())
    assert summary["urls"] == 4 and summary["downloaded"] == 2 and summary["failed"] == 2  # 404 + not an image, counted
    assert sum(summary["failed_by_status"].values()) == 2 and "downloaded 2 of 4 URLs" in res.stdout
    assert sorted(shards.glob("*.tar")) and sorted(shards.glob("*_stats.json"))

    out = tmp_path / "fcm"
    res = _run("build-dataset", shards, out)  # DIR_OF_TARS OUT
    assert res.returncode == 0, res.stdout + res.stderr
    recs = [json.loads(line) for f in sorted(out.glob("records-*.jsonl")) for line in f.read_text().splitlines()]
    by_id = {r["source"]["meta"]["_id"]: r for r in recs}
    assert sorted(by_id) == [101, 102]
    for i, r in by_id.items():
        row = next(x for x in rows if x["_id"] == i)
        assert r["source"]["meta"]["url"] == row["url"] and r["source"]["meta"]["caption"] == row["caption"]
        assert r["curation"]["box"]["passed"]
    _, large, small = two_face_photo()
    x0, y0, x1, y1 = by_id[102]["bbox"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert small[0] < cx < small[2] and small[1] < cy < small[3]  # the box's face, not the larger main face
    assert by_id[102]["curation"]["group"]["value"] == 2  # two faces recorded, the source's choice stands

    source = tmp_path / "fcm-source"  # FaceCaption's own caption as the attribute caption
    res = _run("build-dataset", shards, source, "--captioner", "source", "--format", "webdataset")
    assert res.returncode == 0, res.stdout + res.stderr
    from facemakeup.data import FaceCaptionMaskDataset

    items = {it["key"]: it for it in FaceCaptionMaskDataset(source, resolution=32, mask_resolution=8, caption="attribute")}
    assert sorted(it["caption"] for it in items.values()) == sorted(r["caption"][0] for r in rows[:2])
    assert any(it["mask_valid"].any() for it in items.values())  # phrases matched to regions ("gray hair", "eyeglasses")

    run = tmp_path / "run"  # train 2 steps on the shards
    res = _run("train", "--preset", "tiny", "--data", source, "--out", run, "--max-steps", "2", "--set", "holdout=1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "streamed shards" in res.stdout and (run / "final" / "face_adapter").is_dir()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 2


def test_download_refuses_bad_input_before_starting(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from facemakeup.cli import main
    from facemakeup.data.download import img2dataset_available

    if not img2dataset_available():
        pytest.skip("img2dataset is not installed")
    pq.write_table(pa.table({"link": ["http://127.0.0.1:9/x.jpg"]}), tmp_path / "p.parquet")
    res = CliRunner().invoke(main, ["download", str(tmp_path / "p.parquet"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "no URL column" in res.output and not (tmp_path / "o").exists()
    res = CliRunner().invoke(main, ["download", str(tmp_path / "nothing.parquet"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such parquet" in res.output


def test_laion_face_ids_select_rows_of_laion_parquets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from facemakeup.data.download import laion_face_parquet

    for k in range(2):
        pq.write_table(pa.table({"SAMPLE_ID": [10 * k + i for i in range(5)], "URL": [f"u{k}{i}" for i in range(5)],
                                 "TEXT": [f"t{k}{i}" for i in range(5)]}), tmp_path / f"part-{k}.parquet")
    torch.save(torch.tensor([1, 3, 12, 99]), tmp_path / "laion_face_ids.pth")
    stats = laion_face_parquet(tmp_path / "laion_face_ids.pth", sorted(map(str, tmp_path.glob("part-*.parquet"))), tmp_path / "lf.parquet")
    assert stats == {"ids": 4, "rows": 3, "parquets": 2}
    assert pq.read_table(tmp_path / "lf.parquet").column("URL").to_pylist() == ["u01", "u03", "u12"]
    (tmp_path / "ids.txt").write_text("4\n10\n")
    assert laion_face_parquet(tmp_path / "ids.txt", [str(tmp_path / "part-1.parquet")], tmp_path / "lf2.parquet")["rows"] == 1
