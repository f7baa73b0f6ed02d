"""``facemakeup download``: photo URLs (FaceCaption-15M, LAION-Face, a URL list) -> WebDataset tar shards, via img2dataset.

img2dataset (Beaumont 2021, github.com/rom1504/img2dataset) is the field's downloader: shards of
``number_sample_per_shard`` URLs, a process pool of thread pools, retries, per-shard stats
(``SSSSS_stats.json``: count, successes, failed_to_download, failed_to_resize, status_dict),
incremental (re-running finishes the missing shards), any fsspec output folder. We run it with
``resize_mode="no"`` and ``skip_reencode=True``: every photo is decoded once (so an HTML page or a
truncated file counts as failed, never stored), JPEGs are kept byte for byte and other formats
re-encoded as JPEG at quality 95, never resized, so a source's ``box`` stays in the photo's pixels.
The other parquet columns (FaceCaption-15M: ``_id``, ``caption``, ``laion_caption``, ``box``) go into
each sample's ``.json`` beside ``url``, ``key``, ``status``, ``width``, ``height``, ``sha256``;
``build-dataset`` reads them (``build.Source.meta``).

Inputs (``download``):
- FaceCaption-15M (Dai et al. 2024, the parquet on the hub ``OpenFace-CQUPT/FaceCaption-15M``):
  columns ``url``, ``_id``, ``caption`` (a list of face captions), ``laion_caption``, ``box``
  (``"[x1,y1,x2,y2]"``); 13.2-13.4M rows.
- LAION-Face (Zheng et al. 2022, FaRL): a list of LAION-400M ``SAMPLE_ID`` s (``laion_face_ids.pth``,
  or a text file of one id a line) over LAION-400M's metadata parquets (``URL``, ``TEXT``, ...):
  ``laion_face_parquet`` keeps the listed rows in one parquet, which is then downloaded.
- A ``.txt`` list of URLs, one a line.

How img2dataset is installed: its declared pins (``opencv-python-headless``, ``webdataset<0.3``,
``wandb``, ``albumentations<2``, ``pandas<3``) would replace mediapipe's cv2 and our webdataset, and
``wandb`` needs protobuf >= 5 (mediapipe pins 4). So it is installed ``--no-deps`` (``IMG2DATASET``;
``.ci/run`` and the README do it) beside what it really runs on here: fsspec, pyarrow, pandas, fire,
exifread-nocycle, webdataset (facemakeup's own dependencies). Its package imports ``wandb`` and
``albumentations`` at the top but uses them only for wandb logging and for resizing / blurring, none
of which we ask for: ``_runner`` runs it in a child process that first puts an ``_Unavailable`` module
under each name that is not installed, raising ``ImportError`` (with how to install it) on any use.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import FaceMakeUpInputError, ModelNotFoundError

logger = logging.getLogger(__name__)

#: The img2dataset this facemakeup runs (installed with ``pip install --no-deps``).
IMG2DATASET = "img2dataset==1.47.0"
#: FaceCaption-15M's columns kept in every sample's JSON (when present).
FACECAPTION_COLUMNS = ("_id", "caption", "laion_caption", "box")
URL_COLUMNS = ("url", "URL")
#: Names img2dataset writes itself into a sample's JSON (its ``arguments_validator``): not keepable columns.
IMG2DATASET_RESERVED = frozenset({"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
                                  "error_message", "exif", "md5", "sha256", "sha512"})


def img2dataset_available() -> bool:
    """Whether img2dataset is installed (located without importing it)."""
    import importlib.util

    return importlib.util.find_spec("img2dataset") is not None


def _input_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    from .build import _open_binary

    with _open_binary(path) as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def laion_face_parquet(ids: str | os.PathLike, laion_parquets: list[str], out: str | os.PathLike) -> dict:
    """LAION-Face as one parquet: the rows of LAION-400M's metadata parquets whose ``SAMPLE_ID`` is listed.

    Args:
        ids: ``laion_face_ids.pth`` (a tensor or list of ids, read with ``torch.load(weights_only=True)``)
            or a text file of one integer id a line.
        laion_parquets: LAION-400M metadata parquets (paths or fsspec URLs), each with ``SAMPLE_ID`` and ``URL``.
        out: the parquet to write.

    Returns:
        ``{"ids", "rows", "parquets"}``: listed ids, rows kept, parquets read.

    Raises:
        FaceMakeUpInputError: a parquet has no ``SAMPLE_ID`` / ``URL`` column, or the id file is unreadable.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .build import _open_binary

    ids = Path(ids)
    try:
        if ids.suffix in (".pth", ".pt"):
            import torch

            values = torch.load(ids, map_location="cpu", weights_only=True)
            values = values.tolist() if hasattr(values, "tolist") else list(values)
        else:
            values = [int(line) for line in ids.read_text().split() if line.strip()]
    except (OSError, ValueError, RuntimeError) as err:
        raise FaceMakeUpInputError(f"{ids}: not a LAION-Face id list ({err}); give laion_face_ids.pth or a text file of ids") from None
    wanted = pa.array(np.asarray(values, dtype=np.int64))
    tables = []
    for path in laion_parquets:
        with _open_binary(path) as f:
            table = pq.read_table(f)
        missing = {"SAMPLE_ID", "URL"} - set(table.column_names)
        if missing:
            raise FaceMakeUpInputError(f"{path}: no column {sorted(missing)}; LAION-400M's metadata parquets have SAMPLE_ID and URL")
        tables.append(table.filter(pc.is_in(table["SAMPLE_ID"].cast(pa.int64()), value_set=wanted)))
    kept = pa.concat_tables(tables) if tables else pa.table({"SAMPLE_ID": [], "URL": []})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(kept, out)
    return {"ids": len(values), "rows": kept.num_rows, "parquets": len(laion_parquets)}


def download(input: str, out: str, processes: int = 1, threads: int = 64, samples_per_shard: int = 10000,
             timeout: int = 10, retries: int = 2, url_column: str | None = None, keep_columns: list[str] | None = None,
             laion_face_ids: str | None = None, progress: bool = True) -> dict:
    """Download the photos of a parquet or URL list into WebDataset tar shards in ``out`` (img2dataset).

    Args:
        input: a parquet (FaceCaption-15M; LAION-400M metadata with ``laion_face_ids``; a local path or an
            fsspec URL), or a ``.txt`` list of URLs. With ``laion_face_ids``, a comma-separated list or glob
            of LAION parquets.
        out: the output folder (local or fsspec URL): ``SSSSS.tar`` (``KEY.jpg`` + ``KEY.json``),
            ``SSSSS.parquet``, ``SSSSS_stats.json``, and ``download_summary.json``.
        processes, threads: img2dataset's process count and threads per process.
        samples_per_shard: URLs per shard. timeout: seconds per URL. retries: tries per URL after the first.
        url_column: the URL column (default: ``url`` or ``URL``, whichever the parquet has).
        keep_columns: columns saved in each sample's JSON (default: every column but the URL one).
        laion_face_ids: LAION-Face's id list: ``input`` is then LAION-400M's metadata parquet(s).
        progress: show img2dataset's output.

    Returns:
        The summary (also ``out/download_summary.json``): urls, downloaded, failed (by status message),
        shards, seconds, the options and versions (provenance). Failed URLs never stop the run.

    Raises:
        ModelNotFoundError: img2dataset is not installed (the message gives the ``pip install --no-deps`` line).
        FaceMakeUpInputError: the input is missing, or a parquet lacks the URL column or a kept column.
        RuntimeError: img2dataset itself failed (its exit status and last output lines).
    """
    import fsspec

    from ..provenance import environment
    from .build import is_url

    if not img2dataset_available():
        raise ModelNotFoundError(f"img2dataset is not installed: `pip install --no-deps {IMG2DATASET}` (its own pins would "
                                 "replace mediapipe's OpenCV; facemakeup already has what it needs)")
    work = None
    if laion_face_ids is not None:
        import glob as globlib

        parquets = [p for part in input.split(",") for p in (sorted(globlib.glob(part)) or [part])]
        for p in parquets:
            if not is_url(p) and not Path(p).is_file():
                raise FaceMakeUpInputError(f"{p}: no such LAION-400M metadata parquet")
        work = (out.rstrip("/") + "_input") if is_url(out) else str(Path(out).with_name(Path(out).name + "_input"))
        Path(work).mkdir(parents=True, exist_ok=True) if not is_url(work) else None
        joined = f"{work}/laion_face.parquet"
        stats = laion_face_parquet(laion_face_ids, parquets, joined)
        logger.info("LAION-Face: %d of %d ids found in %d parquets", stats["rows"], stats["ids"], stats["parquets"])
        input = joined
    if not is_url(input) and not Path(input).is_file():
        raise FaceMakeUpInputError(f"{input}: no such parquet or URL list")
    if str(input).endswith(".txt"):
        input_format, url_col, keep = "txt", "url", []
    else:
        input_format = "parquet"
        columns = _input_columns(input)
        url_col = url_column or next((c for c in URL_COLUMNS if c in columns), None)
        if url_col is None or url_col not in columns:
            raise FaceMakeUpInputError(f"{input}: no URL column {url_column or ' / '.join(URL_COLUMNS)} (columns: {columns}); "
                                       "name it with url_column")
        keep = [c for c in columns if c != url_col and (c == "caption" or c not in IMG2DATASET_RESERVED)] \
            if keep_columns is None else list(keep_columns)
        absent = [c for c in keep if c not in columns]
        if absent:
            raise FaceMakeUpInputError(f"{input}: no column {absent} to keep (columns: {columns})")
    # img2dataset reserves some names for its own JSON fields; a parquet "caption" column goes through its caption_col
    # (kept as is in the JSON, and as KEY.txt), FaceCaption-15M's list of face captions included
    caption_col = "caption" if "caption" in keep else None
    reserved = [c for c in keep if c in IMG2DATASET_RESERVED and c != "caption"]
    if reserved:
        raise FaceMakeUpInputError(f"{input}: columns {reserved} clash with img2dataset's own JSON fields; rename them or do not keep them")
    extra = [c for c in keep if c != "caption"]
    options = dict(url_list=str(input), output_folder=str(out), processes_count=processes, thread_count=threads,
                   number_sample_per_shard=samples_per_shard, timeout=timeout, retries=retries, input_format=input_format,
                   url_col=url_col, caption_col=caption_col, save_additional_columns=extra or None, output_format="webdataset", resize_mode="no",
                   skip_reencode=True, encode_format="jpg", encode_quality=95, extract_exif=False, incremental_mode="incremental",
                   enable_wandb=False, distributor="multiprocessing")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "facemakeup.data._img2dataset_run", json.dumps(options)],
                          stdout=None if progress else subprocess.PIPE, stderr=subprocess.STDOUT if not progress else None, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip().splitlines()[-5:] if not progress else []
        raise RuntimeError(f"img2dataset exited with status {proc.returncode}: {' | '.join(tail) or 'see its output above'}")
    fs, root = fsspec.core.url_to_fs(str(out))
    shards, total, ok, by_status = 0, 0, 0, {}
    for path in sorted(fs.glob(f"{root}/*_stats.json")):
        with fs.open(path) as f:
            s = json.load(f)
        shards += 1
        total += s["count"]
        ok += s["successes"]
        for status, n in s.get("status_dict", {}).items():
            if status != "success":
                by_status[status] = by_status.get(status, 0) + n
    summary = {"task": "download", "input": str(input), "out": str(out), "laion_face_ids": laion_face_ids, "urls": total,
               "downloaded": ok, "failed": total - ok, "failed_by_status": dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
               "shards": shards, "seconds": round(time.time() - t0, 2), "kept_columns": keep, "url_column": url_col,
               "img2dataset_options": options, "img2dataset": IMG2DATASET, **environment()}
    with fs.open(f"{root}/download_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary
