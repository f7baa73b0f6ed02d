"""The three layouts a FaceCaptionMask dataset is written in and read from.

- ``records`` (``data.record``): ``records-SSSSS.jsonl`` + loose files (``Mask/``, ``faces/``, ``id/``,
  ``shading/``, ``parsing/``, ``images/``). The record's own layout; ``record.py`` reads and writes it.
- ``webdataset``: tar shards ``SSSSS.tar`` (STYLE.md 20; webdataset's and img2dataset's convention): one
  sample = the files sharing a key, told apart by extension: ``STEM.jpg`` (the photo, its own suffix),
  ``STEM.json`` (the record, ``Record.to_json``, its file fields naming these members), ``STEM.face.png``,
  ``STEM.shading.png``, ``STEM.parsing.png``, ``STEM.id.npy``, ``STEM.attribute_J.png`` and
  ``STEM.emotion_J.png`` (the phrase masks, J as in the record's mask lists). ``STEM`` = ``sample_stem(key)``.
- ``face-makeup-v2``: the layout Face-MakeUpV2's ``train/mask/lora/train.py`` reads through
  ``dataset/MaskDataset.py::Dataset4ShortCaptionRandomText`` (docs/sources.md): ``train.json`` (a list of
  items) and five roots, fixed here as ``images/`` (``--data_root_path``), ``faces/`` (``--face_img_dir``),
  ``face_id/`` (``--face_id_dir``), ``shading/`` (``--control_img_dir``) and ``Mask/`` (``--parsing_mask_dir``,
  holding ``Attribute/`` and ``Emotion/``). Per item: ``image`` (``STEM.EXT`` under ``images/``; the shading
  map has the same name under ``shading/``, encoded in that suffix's format), ``face`` (``[STEM.jpg]`` under
  ``faces/``; ``STEM.pt`` under ``face_id/`` is the ArcFace embedding, a float32 tensor (1, 512), the name
  their code derives with ``.replace(".jpg", ".pt")``), ``face_attribute_caption``,
  ``face_emotion_caption``, ``atrribute_parsing_masks`` (their spelling) and ``emotion_parsing_masks``
  (``[{"mask": "STEM_J.png", "token_indices": [...], "phrase", "region"}]``, the file under
  ``Mask/Attribute/`` or ``Mask/Emotion/``), and ``facemakeup`` (``key``, ``kps``): keys their code ignores.

Why ``STEM`` and not the key: webdataset splits a member name at its first dot, and V2's ``.replace``
would also rewrite a ``.jpg`` inside a key; ``sample_stem`` maps the key's dots to ``_`` (still unique:
the key ends in a hash of the photo's name and bytes).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .record import Record

FORMATS = ("records", "webdataset", "face-makeup-v2")
#: Face-MakeUpV2's five roots (their train.py's flags) under a face-makeup-v2 build, and its JSON.
V2_ROOTS = {"data_root": "images", "face_root": "faces", "face_id_root": "face_id", "control_root": "shading",
            "parsing_root": "Mask"}
V2_JSON = "train.json"
V2_FLAGS = {"data_root": "--data_root_path", "face_root": "--face_img_dir", "face_id_root": "--face_id_dir",
            "control_root": "--control_img_dir", "parsing_root": "--parsing_mask_dir"}
#: Per-shard item lists of a face-makeup-v2 build (``train.json`` is their concatenation, in shard order).
V2_PARTS = "parts"
_V2_SUBDIR = {"attribute": "Attribute", "emotion": "Emotion"}
_V2_FIELD = {"attribute": "atrribute_parsing_masks", "emotion": "emotion_parsing_masks"}


def sample_stem(key: str) -> str:
    """The file stem of a record in the tar and V2 layouts: ``key`` with ``.`` replaced by ``_``."""
    return key.replace(".", "_")


def _suffix(path: str) -> str:
    return Path(path).suffix.lower() or ".jpg"


# ------------------------------------------------------------------------------------------------ webdataset

def webdataset_sample(record: Record, files: dict[str, bytes], photo: bytes) -> dict:
    """One tar sample (webdataset's dict: ``__key__`` + extension -> bytes) of a record.

    Args:
        record: the record as the builder made it (file fields relative to OUT, or the photo's path).
        files: its files, path (as in the record) -> bytes; the photo is ``photo``.
        photo: the photo's bytes.
    """
    stem = sample_stem(record.key)
    members = {record.image: f"{stem}{_suffix(record.image)}", record.face[0]: f"{stem}.face.png",
               record.id_embedding: f"{stem}.id.npy", record.shading: f"{stem}.shading.png", record.parsing: f"{stem}.parsing.png"}
    for kind, entries in (("attribute", record.atrribute_parsing_masks), ("emotion", record.emotion_parsing_masks)):
        for j, e in enumerate(entries):
            members[e["mask"]] = f"{stem}.{kind}_{j}.png"
    obj = _renamed(record, members).to_json()
    sample = {"__key__": stem, "json": json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")}
    for old, new in members.items():
        sample[new.split(".", 1)[1]] = photo if old == record.image else files[old]
    return sample


def _renamed(record: Record, names: dict[str, str]) -> Record:
    """``record`` with every file field mapped through ``names`` (phrases' mask paths too)."""
    obj = record.to_json()
    for k in ("image", "id_embedding", "shading", "parsing"):
        obj[k] = names[obj[k]]
    obj["face"] = [names[p] for p in obj["face"]]
    for k in ("atrribute_parsing_masks", "emotion_parsing_masks"):
        obj[k] = [{**e, "mask": names[e["mask"]]} for e in obj[k]]
    obj["phrases"] = {kind: [{**e, "mask": names.get(e["mask"], e["mask"])} for e in entries] for kind, entries in obj["phrases"].items()}
    return Record.from_json(obj)


def record_from_sample(sample: dict) -> Record:
    """The ``Record`` of a tar sample (``json`` member; its file fields name the sample's members).

    Raises:
        RecordError: no ``json`` member, or not a valid record.
    """
    from ..errors import RecordError

    blob = sample.get("json")
    if blob is None:
        raise RecordError(f"sample {sample.get('__key__')!r} of {sample.get('__url__')} has no .json member")
    try:
        obj = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"sample {sample.get('__key__')!r}: its .json is not JSON ({err})") from None
    return Record.from_json(obj)


def member_ext(name: str) -> str:
    """A member name's extension as webdataset splits it (everything after the first dot of the base name)."""
    return name.rsplit("/", 1)[-1].split(".", 1)[1]


def write_tar(path: str | os.PathLike, samples: list[dict]) -> None:
    """Write samples to one tar shard with webdataset's ``TarWriter`` (modification times 0: the same
    samples give the same bytes, so a redone shard is byte-identical)."""
    import webdataset as wds

    with open(path, "wb") as f, wds.TarWriter(f, mtime=0) as sink:
        for s in samples:
            sink.write(s)


# ------------------------------------------------------------------------------------------------ face-makeup-v2

def _encode(array_or_png: bytes | np.ndarray, suffix: str) -> bytes:
    """An image (PNG bytes or an array) encoded in the format of ``suffix`` (JPEG at quality 95)."""
    im = Image.open(io.BytesIO(array_or_png)) if isinstance(array_or_png, bytes) else Image.fromarray(array_or_png)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, "PNG")
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def v2_item(record: Record, files: dict[str, bytes], photo: bytes) -> tuple[dict, dict[str, bytes]]:
    """A record as one Face-MakeUpV2 item and its files under the five roots (see the module docstring).

    Returns:
        ``(item, files)``: the JSON item and ``{path relative to OUT: bytes}``.
    """
    import torch

    stem = sample_stem(record.key)
    ext = _suffix(record.image)
    out = {f"images/{stem}{ext}": photo, f"shading/{stem}{ext}": _encode(files[record.shading], ext),
           f"faces/{stem}.jpg": _encode(files[record.face[0]], ".jpg")}
    emb = torch.from_numpy(np.load(io.BytesIO(files[record.id_embedding])).astype(np.float32).reshape(1, -1))  # (1, 512)
    buf = io.BytesIO()
    torch.save(emb, buf)
    out[f"face_id/{stem}.pt"] = buf.getvalue()
    item = {"image": f"{stem}{ext}", "face": [f"{stem}.jpg"], "face_attribute_caption": record.face_attribute_caption,
            "face_emotion_caption": record.face_emotion_caption}
    for kind, entries in (("attribute", record.atrribute_parsing_masks), ("emotion", record.emotion_parsing_masks)):
        phrases = record.phrases.get(kind, [])
        listed = []
        for j, e in enumerate(entries):
            name = f"{stem}_{j}.png"
            out[f"Mask/{_V2_SUBDIR[kind]}/{name}"] = files[e["mask"]]
            extra = {k: phrases[j][k] for k in ("phrase", "region") if j < len(phrases) and k in phrases[j]}
            listed.append({"mask": name, "token_indices": list(e["token_indices"]), **extra})
        item[_V2_FIELD[kind]] = listed
    item["facemakeup"] = {"key": record.key, "kps": record.kps}
    return item, out


def v2_roots(json_path: str | os.PathLike, **roots) -> dict[str, Path]:
    """The five roots of a V2 JSON: the given ones, else ``V2_ROOTS``' folder names beside the JSON.

    Raises:
        TypeError: an unknown root name.
    """
    unknown = set(roots) - set(V2_ROOTS)
    if unknown:
        raise TypeError(f"unknown Face-MakeUpV2 roots {sorted(unknown)}; known: {sorted(V2_ROOTS)}")
    base = Path(json_path).parent
    return {k: Path(roots[k]) if roots.get(k) is not None else base / v for k, v in V2_ROOTS.items()}


@dataclass(frozen=True)
class V2Entry:
    """One Face-MakeUpV2 item as the dataset reads it: absolute paths, its captions' masks.

    ``captions`` maps ``"attribute"`` / ``"emotion"`` (only the usable ones: V2's keep rule) to
    ``(text, [(mask path, token indices), ...])``; ``phrases`` (facemakeup exports only) per kind the
    ``{"phrase", "region"}`` of each mask, as a record's; ``kps`` ``(5, 2)`` pixels or ``None`` (V2's own
    data has none).
    """

    key: str
    image: Path
    face: Path
    id_embedding: Path
    shading: Path
    captions: dict
    kps: list | None
    phrases: dict | None


def read_v2_json(json_path: str | os.PathLike, **roots) -> tuple[list[V2Entry], dict]:
    """The usable items of a Face-MakeUpV2 JSON, with V2's keep rule, plus files it does not check.

    Kept, as ``Dataset4ShortCaptionRandomText`` keeps: the embedding (``face[0]`` with ``.jpg`` -> ``.pt``
    under ``face_id_root``) and the shading map (``image`` under ``control_root``) exist, and every mask of
    at least one caption exists; only such captions are used. Also required here (their loader would
    crash on them later): the photo and the face crop exist.

    Returns:
        ``(entries, skipped)``: entries in JSON order; ``skipped`` counts by reason (``"missing_files"``,
        ``"invalid"``).

    Raises:
        FileNotFoundError: no such JSON. RecordError: not a JSON list.
    """
    from ..errors import RecordError

    r = v2_roots(json_path, **roots)
    try:
        items = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordError(f"{json_path}: not JSON ({err}); Face-MakeUpV2's data is a JSON list of items") from None
    if not isinstance(items, list):
        raise RecordError(f"{json_path}: a Face-MakeUpV2 JSON is a list of items, got {type(items).__name__}")
    entries, skipped = [], {}
    for n, item in enumerate(items):
        try:
            face = item["face"][0]
            image = item["image"]
            emb = r["face_id_root"] / face.replace(".jpg", ".pt")
            shading = r["control_root"] / image
            captions = {}
            for kind in ("attribute", "emotion"):
                text, masks = item.get(f"face_{kind}_caption"), item.get(_V2_FIELD[kind])
                if text is None or masks is None:
                    continue
                paths = [(r["parsing_root"] / _V2_SUBDIR[kind] / m["mask"], list(m["token_indices"])) for m in masks]
                if all(p.is_file() for p, _ in paths):
                    captions[kind] = (text, paths)
        except (KeyError, TypeError, IndexError, AttributeError):
            skipped["invalid"] = skipped.get("invalid", 0) + 1
            continue
        if not (emb.is_file() and shading.is_file() and captions) or not (r["data_root"] / image).is_file() \
                or not (r["face_root"] / face).is_file():
            skipped["missing_files"] = skipped.get("missing_files", 0) + 1
            continue
        ours = item.get("facemakeup") or {}
        listed = {kind: item.get(_V2_FIELD[kind], []) for kind in captions}
        phrases = None  # phrase texts (facemakeup exports): token indices can be recomputed for another tokenizer
        if all(isinstance(m, dict) and m.get("phrase") for ms in listed.values() for m in ms):
            phrases = {kind: [{"phrase": m["phrase"], "region": m.get("region", "")} for m in ms] for kind, ms in listed.items()}
        entries.append(V2Entry(key=str(ours.get("key", f"{n:08d}-{Path(image).stem}")), image=r["data_root"] / image,
                               face=r["face_root"] / face, id_embedding=emb, shading=shading, captions=captions,
                               kps=ours.get("kps"), phrases=phrases))
    return entries, skipped


# ------------------------------------------------------------------------------------------------ conversion

def export_records(records: str | os.PathLike, out: str | os.PathLike, format: str, progress: bool = True) -> dict:
    """Write a records folder again in another layout, without analysing any photo again.

    Each ``records-SSSSS.jsonl`` becomes ``OUT/SSSSS.tar`` (``webdataset``) or ``OUT/parts/SSSSS.json`` plus its
    files (``face-makeup-v2``, then ``OUT/train.json``), written as ``build-dataset --format`` writes them:
    the same bytes as a build straight into that format (tested).

    Args:
        records: a ``build-dataset`` records folder. out: the output folder (created).
        format: ``"webdataset"`` or ``"face-makeup-v2"``.

    Returns:
        ``{"records", "shards", "skipped"}``: records written, shards, records skipped (missing files ...).

    Raises:
        ValueError: unknown format. FileNotFoundError: no records.
    """
    from tqdm import tqdm

    from .record import read_jsonl, records_files, write_atomic

    if format not in ("webdataset", "face-makeup-v2"):
        raise ValueError(f"format must be 'webdataset' or 'face-makeup-v2', got {format!r}")
    files_ = records_files(records)
    if not files_:
        raise FileNotFoundError(f"{records}: no records-*.jsonl")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped, all_items = 0, 0, []
    for f in tqdm(files_, desc=f"export {format}", disable=not progress):
        tag = f.stem.split("-", 1)[1]
        samples, items = [], []
        for obj in read_jsonl(f):
            r = Record.from_json(obj, root=f.parent)
            if r.missing_files():
                skipped += 1
                continue
            blobs = {p: r.path(p).read_bytes() for p in r.files() if p != r.image}
            photo = r.path(r.image).read_bytes()
            if format == "webdataset":
                samples.append(webdataset_sample(r, blobs, photo))
            else:
                item, extra = v2_item(r, blobs, photo)
                for rel, blob in extra.items():
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_bytes(blob)
                items.append(item)
            written += 1
        if format == "webdataset":
            tmp = out / f".{tag}.tar.part{os.getpid()}"
            write_tar(tmp, samples)
            os.replace(tmp, out / f"{tag}.tar")
        else:
            write_atomic(out / V2_PARTS / f"{tag}.json", json.dumps(items, ensure_ascii=False).encode("utf-8"))
            all_items += items
    if format == "face-makeup-v2":
        write_atomic(out / V2_JSON, json.dumps(all_items, ensure_ascii=False).encode("utf-8"))
    return {"records": written, "shards": len(files_), "skipped": skipped}
