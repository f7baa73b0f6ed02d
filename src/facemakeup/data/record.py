"""The FaceCaptionMask record: one accepted photo, as a versioned, validated type, read and written only here.

Face-MakeUpV2's fields keep their names and spelling (docs/sources.md "Dataset record"): ``image``,
``face``, ``face_attribute_caption``, ``face_emotion_caption``, ``atrribute_parsing_masks`` and
``emotion_parsing_masks`` (each entry ``{"mask": PATH, "token_indices": [int, ...]}``). Ours:
``key`` (collision-free, see ``data.build.source_key``), ``id_embedding`` (``.npy``), ``kps``
(``(5, 2)`` keypoints in photo pixels), ``bbox``, ``pose``, ``sh``, ``shading``, ``parsing``,
``attributes`` (CelebA attribute probabilities), ``gender``, ``age``, ``emotion``, ``source`` (where the
photo came from and its SHA-256), the phrases with their regions, every filter's verdict and
``schema_version``.

Records are JSON lines in ``records-*.jsonl`` files; paths inside a record are relative to the
folder of its records file (or absolute: photos of a folder input are referenced, not copied).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import RecordError

#: The version written by this facemakeup; readers refuse others with ``RecordError``.
SCHEMA_VERSION = 1
#: Folders of a built dataset that hold a record's files (never records files): not searched.
DATA_FOLDERS = frozenset({"Mask", "id", "faces", "shading", "parsing", "images", "done", "face_id", "parts"})


@dataclass(frozen=True)
class Record:
    """One FaceCaptionMask record (see the module docstring for the fields' meaning).

    ``root`` (not serialised) is the folder relative paths are resolved against; ``path(p)`` resolves one.
    """

    key: str
    image: str
    face: list
    face_attribute_caption: str
    face_emotion_caption: str
    atrribute_parsing_masks: list
    emotion_parsing_masks: list
    id_embedding: str
    kps: list
    bbox: list
    pose: dict
    sh: list
    sh_basis: list
    shading: str
    parsing: str
    attributes: dict
    gender: dict
    age: float | None
    emotion: dict
    width: int
    height: int
    det_score: float
    clip_box: list
    fitter: str
    phrases: dict
    curation: dict
    source: dict
    schema_version: int = SCHEMA_VERSION
    root: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        _validate(self)

    def to_json(self) -> dict:
        """The JSON object of this record (every field but ``root``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}

    @classmethod
    def from_json(cls, obj: dict, root: str | os.PathLike | None = None) -> "Record":
        """A record from its JSON object.

        Raises:
            RecordError: unknown ``schema_version`` (or none), missing or unexpected fields, or malformed
                values (e.g. ``kps`` not 5 x 2).
        """
        if not isinstance(obj, dict):
            raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}")
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError(f"record {obj.get('key')!r} has schema_version {version!r}; this facemakeup reads version "
                              f"{SCHEMA_VERSION}: rebuild the dataset with this version or use the facemakeup that wrote it")
        names = {f.name for f in fields(cls)} - {"root"}
        missing, extra = names - set(obj), set(obj) - names
        if missing or extra:
            raise RecordError(f"record {obj.get('key')!r}: missing fields {sorted(missing)}, unexpected fields {sorted(extra)}")
        try:
            return cls(**obj, root=Path(root) if root is not None else None)
        except (TypeError, KeyError, AttributeError) as err:
            raise RecordError(f"record {obj.get('key')!r}: malformed value ({err}); rebuild the dataset") from None

    def path(self, p: str) -> Path:
        """A path of this record resolved against ``root`` (absolute paths are returned as they are)."""
        return Path(p) if os.path.isabs(p) or self.root is None else self.root / p

    def files(self) -> list[str]:
        """Every file the record refers to (photo, CLIP crop, ID embedding, shading, parsing, masks), as stored."""
        masks = [e["mask"] for e in self.atrribute_parsing_masks + self.emotion_parsing_masks]
        return [self.image, *self.face, self.id_embedding, self.shading, self.parsing, *masks]

    def missing_files(self) -> list[str]:
        """The files of ``files()`` that do not exist."""
        return [p for p in self.files() if not self.path(p).is_file()]


def _validate(r: Record) -> None:
    def bad(what):
        raise RecordError(f"record {r.key!r}: {what}; the records file is damaged or not a FaceCaptionMask record: rebuild it")

    if not isinstance(r.key, str) or not r.key:
        bad("key must be a non-empty string")
    for name in ("image", "id_embedding", "shading", "parsing", "face_attribute_caption", "face_emotion_caption"):
        if not isinstance(getattr(r, name), str):
            bad(f"{name} must be a string")
    if not (isinstance(r.face, list) and r.face and all(isinstance(p, str) for p in r.face)):
        bad("face must be a non-empty list of paths")
    for name in ("atrribute_parsing_masks", "emotion_parsing_masks"):
        for e in getattr(r, name):
            if not (isinstance(e, dict) and set(e) == {"mask", "token_indices"} and isinstance(e["mask"], str)
                    and all(isinstance(i, int) and 0 <= i < 77 for i in e["token_indices"])):
                bad(f"{name} entries must be {{mask: path, token_indices: [0..76]}}, got {e!r}")
    if not (len(r.kps) == 5 and all(len(p) == 2 for p in r.kps)):
        bad(f"kps must be 5 (x, y) points, got {r.kps!r}")
    if len(r.bbox) != 4:
        bad(f"bbox must be [x0, y0, x1, y1], got {r.bbox!r}")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file (empty lines skipped).

    Raises:
        RecordError: a line is not valid JSON (the file is damaged).
    """
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{n}: not a JSON line ({err}); the file is damaged: rebuild it") from None
    return out


def records_files(root: str | os.PathLike) -> list[Path]:
    """Every ``records-*.jsonl`` under ``root`` (outside hidden folders and ``DATA_FOLDERS``), in path
    order; or ``[root]`` for a file."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in DATA_FOLDERS]
        found += [Path(folder) / n for n in names if n.startswith("records-") and n.endswith(".jsonl")]
    return sorted(found)


def read_records(root: str | os.PathLike, check_files: bool = True) -> tuple[list[Record], Counter]:
    """The valid records of a built dataset folder (every ``records-*.jsonl`` under it) or of one file.

    A record of an unknown ``schema_version``, an invalid one, or one whose files are missing (with
    ``check_files``) is skipped and counted, never raised: one bad record must not stop an epoch.

    Returns:
        ``(records, skipped)``: ``Record`` list (``root`` = its records file's folder) and a
        ``Counter`` of skips by reason (``"missing_files"``, ``"unknown_schema_version"``, ``"invalid"``).

    Raises:
        FileNotFoundError: ``root`` has no records file.
    """
    files = records_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no FaceCaptionMask records (records-*.jsonl); build them with `facemakeup build-dataset`")
    records, skipped = [], Counter()
    for f in files:
        try:
            rows = read_jsonl(f)
        except RecordError:
            skipped["invalid"] += 1
            continue
        for obj in rows:
            try:
                r = Record.from_json(obj, root=f.parent)
            except RecordError:
                skipped["unknown_schema_version" if isinstance(obj, dict) and obj.get("schema_version") != SCHEMA_VERSION
                        else "invalid"] += 1
                continue
            if check_files and r.missing_files():
                skipped["missing_files"] += 1
                continue
            records.append(r)
    return records, skipped


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary ``.NAME.partPID`` file, fsynced and renamed into place.

    A crash leaves either the old file or the new one, never a torn one; the temporary file is
    removed when the write fails (e.g. the disk is full) and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: list) -> None:
    """Write ``Record``s and/or dicts as one JSON line each, atomically (``write_atomic``)."""
    text = "".join(json.dumps(r.to_json() if isinstance(r, Record) else r, ensure_ascii=False) + "\n" for r in rows)
    write_atomic(path, text.encode("utf-8"))
