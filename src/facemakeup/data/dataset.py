"""``FaceCaptionMaskDataset``: FaceCaptionMask data as training samples, from any of its three layouts.

Face-MakeUpV2's ``Dataset4ShortCaptionRandomText`` (docs/sources.md "Dataset record") picks, for every
sample, one of the two captions at random (attribute or emotion) together with that caption's phrase
masks and token indices. Ours does the same and also yields what the ID and shading channels need, from
a records folder, a Face-MakeUpV2 JSON with its five roots, or WebDataset tar shards (streamed, from
any fsspec URL: ``FaceCaptionMaskShards``). ``data.formats`` describes the layouts.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, IterableDataset

from .captions import clip_tokenizer
from .formats import V2Entry, member_ext, read_v2_json, record_from_sample
from .record import Record, read_records

logger = logging.getLogger(__name__)


def is_shards(path) -> bool:
    """Whether ``path`` names WebDataset tar shards (not a records folder or a V2 JSON): an fsspec URL,
    a ``.tar`` file, a glob or brace pattern, or a folder holding ``*.tar`` and no ``records-*.jsonl``."""
    s = str(path)
    if "://" in s or s.endswith(".tar") or glob.has_magic(s) or ("{" in s and ".." in s):
        return True
    p = Path(s)
    return p.is_dir() and any(p.glob("*.tar")) and not any(p.rglob("records-*.jsonl"))


class _Files:
    """How one sample's files are opened: ``open(ref)`` -> binary file object; ``embedding(ref)`` -> ``(512,)``."""

    def __init__(self, opener):
        self.opener = opener

    def open(self, ref):
        return self.opener(ref)

    def embedding(self, ref) -> torch.Tensor:
        name = str(ref)
        with self.open(ref) as f:
            if name.endswith(".pt"):  # Face-MakeUpV2's (1, 512) tensor
                value = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
                return value.reshape(-1).float()
            return torch.from_numpy(np.load(io.BytesIO(f.read())).astype(np.float32).reshape(-1))


def _entry_parts(entry) -> dict:
    """The format-independent view of a record / V2 item / tar sample: key, captions (kind -> (text,
    [(mask ref, token indices)])), image / face / shading / id_embedding refs, kps or None, opener."""
    if isinstance(entry, V2Entry):
        return {"key": entry.key, "captions": entry.captions, "image": entry.image, "face": entry.face, "shading": entry.shading,
                "id_embedding": entry.id_embedding, "kps": entry.kps, "files": _Files(lambda p: open(p, "rb"))}
    r, sample = entry if isinstance(entry, tuple) else (entry, None)
    if sample is None:
        files = _Files(lambda p: open(r.path(p), "rb"))
    else:  # a tar sample: the record's file fields are member names
        files = _Files(lambda p: io.BytesIO(sample[member_ext(p)]))
    captions = {"attribute": (r.face_attribute_caption, [(e["mask"], e["token_indices"]) for e in r.atrribute_parsing_masks]),
                "emotion": (r.face_emotion_caption, [(e["mask"], e["token_indices"]) for e in r.emotion_parsing_masks])}
    return {"key": r.key, "captions": captions, "image": r.image, "face": r.face[0], "shading": r.shading,
            "id_embedding": r.id_embedding, "kps": r.kps, "files": files}


class _ItemMaker:
    """The item of one entry (shared by the map-style and the streamed datasets); see ``FaceCaptionMaskDataset``."""

    def _setup(self, resolution, mask_resolution, caption, tokenizer, max_masks):
        if caption not in ("random", "attribute", "emotion"):
            raise ValueError(f"caption must be 'random', 'attribute' or 'emotion', got {caption!r}")
        self.resolution, self.mask_resolution, self.caption, self.max_masks = resolution, mask_resolution, caption, max_masks
        self.tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else clip_tokenizer(tokenizer)

    @staticmethod
    def square(width: int, height: int) -> tuple[int, int, int, int]:
        """The centred square ``(x0, y0, x1, y1)`` of a ``width`` x ``height`` photo that becomes the training image."""
        s = min(width, height)
        return (width - s) // 2, (height - s) // 2, (width - s) // 2 + s, (height - s) // 2 + s

    def _kind(self, available) -> str:
        if self.caption != "random":
            return self.caption if self.caption in available else available[0]
        if len(available) == 2:  # the paper: attribute or emotion, 1/2 each
            return "attribute" if torch.rand(()) < 0.5 else "emotion"
        return available[int(torch.randint(len(available), ()))]

    def _item(self, entry) -> dict:
        e = _entry_parts(entry)
        files = e["files"]
        kind = self._kind([k for k in ("attribute", "emotion") if k in e["captions"]])
        text, entries = e["captions"][kind]
        with files.open(e["image"]) as fh, Image.open(fh) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            box = self.square(*im.size)
            photo = im.resize((self.resolution, self.resolution), Image.BICUBIC, box=box)
        # keypoints: the same box -> R x R map as the image (continuous pixel coordinates); unknown = NaN
        scale = self.resolution / (box[2] - box[0])
        if e["kps"] is None:
            kps = torch.full((5, 2), float("nan"))
        else:
            kps = (torch.tensor(e["kps"], dtype=torch.float32) - torch.tensor(box[:2], dtype=torch.float32)) * scale
        ids = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids[0]
        n = self.tokenizer.model_max_length
        masks = torch.zeros(self.max_masks, self.mask_resolution, self.mask_resolution)
        tokens = torch.zeros(self.max_masks, n, dtype=torch.bool)
        valid = torch.zeros(self.max_masks, dtype=torch.bool)
        for k, (ref, token_indices) in enumerate(entries[: self.max_masks]):
            with files.open(ref) as fh, Image.open(fh) as m:
                m = m.convert("L").resize((self.mask_resolution, self.mask_resolution), Image.BOX, box=self.square(*m.size))
            masks[k] = torch.from_numpy(np.asarray(m, np.float32) / 255.0)
            tokens[k, [i for i in token_indices if i < n]] = True
            valid[k] = True
        with files.open(e["face"]) as fh, Image.open(fh) as f:
            clip_image = torch.from_numpy(np.asarray(f.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
        with files.open(e["shading"]) as fh, Image.open(fh) as s:
            s = s.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR, box=self.square(*s.size))
            shading = torch.from_numpy(np.asarray(s, np.float32) / 255.0)
        return {
            "key": e["key"],
            "pixel_values": torch.from_numpy(np.asarray(photo, np.float32) / 127.5 - 1.0).permute(2, 0, 1),
            "input_ids": ids, "caption": text, "caption_kind": kind,
            "masks": masks, "token_indices": tokens, "mask_valid": valid,
            "id_embedding": files.embedding(e["id_embedding"]),
            "clip_image": clip_image, "shading": shading.permute(2, 0, 1), "kps": kps,
        }


class FaceCaptionMaskDataset(_ItemMaker, Dataset):
    """Training samples from FaceCaptionMask data: a records folder, a Face-MakeUpV2 JSON, or tar shards.

    Args:
        root: the dataset folder written by ``facemakeup build-dataset`` (every ``records-*.jsonl``
            under it) or one records file, relative paths resolved against the records file's folder;
            or a Face-MakeUpV2 JSON (``.json``: a ``--format face-makeup-v2`` build's ``train.json`` or
            V2's own data), read with V2's keep rule (``formats.read_v2_json``), its five roots from
            ``v2_roots``; or WebDataset shards (``is_shards``): then the object made is a
            ``FaceCaptionMaskShards`` (streamed, an ``IterableDataset``) with these arguments.
        resolution: side of the training image in pixels (512 for SD 1.5). The photo is resized so
            its shorter side is ``resolution`` and centre-cropped; masks and keypoints go through the same crop.
        mask_resolution: side of the returned masks (64 = SD 1.5's latent grid at 512 px; Face-MakeUpV2
            resizes them to 32x32 in its loss).
        caption: ``"random"`` (the paper: attribute or emotion caption with probability 1/2 each),
            ``"attribute"`` or ``"emotion"``.
        tokenizer: SD 1.5 folder / hub id or a ``CLIPTokenizer``; ``None`` = ``captions.clip_tokenizer()``.
        max_masks: phrase masks per sample are padded / cut to this many.
        data_root, face_root, face_id_root, control_root, parsing_root: a V2 JSON's five roots (V2's
            train.py flags ``--data_root_path``, ``--face_img_dir``, ``--face_id_dir``, ``--control_img_dir``,
            ``--parsing_mask_dir``); each defaults to ``images/``, ``faces/``, ``face_id/``, ``shading/``,
            ``Mask/`` beside the JSON.

    Records of an unknown ``schema_version``, invalid ones and ones whose files are missing (for a V2
    JSON: items its keep rule drops, or whose photo or face crop is missing) are skipped when the
    dataset is made; ``skipped`` counts them by reason. ``records`` holds the ``Record`` (or
    ``formats.V2Entry``) of each item. A file that disappears or
    cannot be read later (during training) makes ``__getitem__`` serve the next readable record
    instead, with a warning, and count it in ``skipped["unreadable_later"]`` (of this process).

    Each item is a dict:
        ``pixel_values`` ``(3, R, R)`` float32 in [-1, 1] (the VAE's range); ``input_ids`` ``(77,)`` int64;
        ``caption`` str and ``caption_kind``; ``masks`` ``(max_masks, M, M)`` float32 in [0, 1] (area-averaged);
        ``token_indices`` ``(max_masks, 77)`` bool (which input_ids positions each mask supervises);
        ``mask_valid`` ``(max_masks,)`` bool; ``id_embedding`` ``(512,)`` float32 unit norm;
        ``clip_image`` ``(3, S, S)`` float32 in [0, 1] (the CLIP crop; normalise with the image encoder's
        processor); ``shading`` ``(3, R, R)`` float32 in [0, 1]; ``kps`` ``(5, 2)`` float32 (x, y) in
        pixels of ``pixel_values`` (left eye, right eye, nose tip, left and right mouth corner; NaN for V2's
        own data, which has none); ``key`` str. A V2 item with only one usable caption always gives that one.

    Raises:
        FileNotFoundError: no readable record under ``root``.
    """

    def __new__(cls, root=None, *args, **kwargs):
        if cls is FaceCaptionMaskDataset and root is not None and is_shards(root):
            return FaceCaptionMaskShards(root, *args, **kwargs)  # streamed; not an instance of this class
        return super().__new__(cls)

    def __init__(self, root, resolution: int = 512, mask_resolution: int = 64, caption: str = "random",
                 tokenizer=None, max_masks: int = 6, **v2_roots):
        self._setup(resolution, mask_resolution, caption, tokenizer, max_masks)
        if str(root).endswith(".json") and Path(root).is_file():
            self.records, skipped = read_v2_json(root, **v2_roots)
            self.skipped = Counter(skipped)
            what = "usable Face-MakeUpV2 item"
        else:
            if v2_roots:
                raise TypeError(f"{sorted(v2_roots)} are the roots of a Face-MakeUpV2 JSON; {root} is not a .json file")
            self.records, self.skipped = read_records(root)
            what = "readable FaceCaptionMask record"
        if self.skipped:
            logger.warning("%s: skipped %s", root, dict(self.skipped))
        if not self.records:
            raise FileNotFoundError(f"{root}: no {what} (skipped: {dict(self.skipped)})")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        for k in range(len(self.records)):
            r = self.records[(index + k) % len(self.records)]
            try:
                return self._item(r)
            except (OSError, KeyError) as err:  # FileNotFoundError, PIL's UnidentifiedImageError, a missing tar member
                self.skipped["unreadable_later"] += 1
                logger.warning("record %s: %s; serving the next record instead", r.key, err)
        raise FileNotFoundError(f"no record's files can be read any more ({len(self.records)} records)")



def _shard_seed(*parts) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(",".join(map(str, parts)).encode()).digest()[:8], "little")


def worker_batches_done(batches: int, worker: int, workers: int) -> int:
    """How many of a process's first ``batches`` batches DataLoader worker ``worker`` of ``workers`` made:
    torch's loader takes batch k from worker ``k % workers`` (in order)."""
    return max(0, (batches - worker + workers - 1) // workers)


class FaceCaptionMaskShards(_ItemMaker, IterableDataset):
    """FaceCaptionMask samples streamed from WebDataset tar shards (``--format webdataset`` builds).

    The reading is webdataset's (``split_by_node``, ``split_by_worker``, ``tar_file_expander``,
    ``group_by_keys``, ``shuffle``); shards open through fsspec, so any fsspec URL works (``s3://``,
    ``gs://``, ``hf://``, local paths). Per epoch e: the shard list is shuffled with a generator seeded
    by ``(seed, e)`` (when ``shuffle_buffer`` > 0), split by node (``torch.distributed`` rank / world
    size, or ``RANK`` / ``WORLD_SIZE``) and then by DataLoader worker, and the samples pass through a
    ``shuffle_buffer``-sample buffer seeded by ``(seed, e, rank, worker)``. So the stream of every
    (rank, worker) is a pure function of (seed, shards), and ``stream(start_batches=B)`` resumes it after
    B batches by skipping (not decoding) the samples before.

    Args:
        shards: what ``build.expand_shards`` expands: a folder or URL of ``*.tar``, a glob, a brace
            pattern, one ``.tar``, or a list of them.
        resolution, mask_resolution, caption, tokenizer, max_masks: as ``FaceCaptionMaskDataset``.
        seed: the stream's seed. shuffle_buffer: samples in the shuffle buffer (0 = file order, shards in order).
        epochs: passes over the shards (``None`` = endless, as training reads).
        exclude: sample keys (``formats.sample_stem``) to leave out (the training run's held-out samples).
        split: split the shards by node and DataLoader worker (``False``: every reader sees all of them).

    Iterating yields the items of ``FaceCaptionMaskDataset``. A sample whose record or files are
    unusable is skipped and counted in ``skipped`` (of the process that read it), with a warning.

    Raises:
        FileNotFoundError: no shard matches.
    """

    def __init__(self, shards, resolution: int = 512, mask_resolution: int = 64, caption: str = "random", tokenizer=None,
                 max_masks: int = 6, seed: int = 0, shuffle_buffer: int = 0, epochs: int | None = 1, exclude=(), split: bool = True):
        from .build import expand_shards

        self._setup(resolution, mask_resolution, caption, tokenizer, max_masks)
        specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
        self.urls = sorted({u for spec in specs for u in expand_shards(str(spec))})
        self.seed, self.shuffle_buffer, self.epochs, self.exclude = seed, shuffle_buffer, epochs, frozenset(exclude)
        self.skipped: Counter = Counter()
        self.split = split

    def _raw(self, epoch: int, rank: int, world: int, worker: int, workers: int):
        """Raw samples (webdataset dicts) of one epoch for (rank, worker), shuffled; ``(node, worker)`` split by webdataset."""
        import webdataset as wds

        from .build import _open_binary

        urls = list(self.urls)
        if self.shuffle_buffer > 0:
            random.Random(_shard_seed(self.seed, "shards", epoch)).shuffle(urls)
        mine = list(wds.split_by_worker(wds.split_by_node(urls))) if self.split else urls
        if not mine:
            raise ValueError(f"{len(urls)} shards for {world} processes x {workers} DataLoader workers: each needs at least one "
                             "shard; write smaller shards (build-dataset --shard-size) or use fewer workers")
        streams = ({"url": u, "stream": _open_binary(u)} for u in mine)
        samples = wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(streams))
        samples = (s for s in samples if s["__key__"] not in self.exclude)
        if self.shuffle_buffer > 1:
            rng = random.Random(_shard_seed(self.seed, "samples", epoch, rank, worker))
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        return samples

    def stream(self, start_batches: int = 0, batch_size: int = 1):
        """``(position, entry)`` for this process and DataLoader worker, resuming after ``start_batches`` batches.

        ``position`` is the sample's global position in the run's order (as ``train.loop.PositionSampler``
        numbers them): sample j of the process's batch k is ``(k * world + rank) * batch_size + j``, and
        batch k comes from worker ``k % workers``. ``entry`` is ``(Record, sample)`` for ``_item``.
        """
        import webdataset as wds

        rank, world, worker, workers = wds.utils.pytorch_worker_info() if self.split else (0, 1, 0, 1)
        done = worker_batches_done(start_batches, worker, workers)
        skip, count, epoch = done * batch_size, 0, 0
        while self.epochs is None or epoch < self.epochs:
            before = count
            for sample in self._raw(epoch, rank, world, worker, workers):
                if skip:
                    skip -= 1
                    count += 1
                    continue
                m, j = divmod(count, batch_size)  # this worker's batch m -> the process's batch m * workers + worker
                count += 1
                try:
                    entry = (record_from_sample(sample), sample)
                    missing = [f for f in entry[0].files() if member_ext(f) not in sample]
                    if missing:
                        raise KeyError(f"members {missing} missing")
                except Exception as err:  # noqa: BLE001 - a bad sample must not stop an epoch
                    self.skipped["invalid"] += 1
                    logger.warning("%s: sample %s skipped: %s", sample.get("__url__"), sample.get("__key__"), err)
                    count -= 1
                    continue
                yield ((m * workers + worker) * world + rank) * batch_size + j, entry
            if count == before and self.epochs is None:  # an endless stream with nothing in it would spin forever
                raise ValueError(f"process {rank} / DataLoader worker {worker}: no usable sample in its shards "
                                 f"{list(wds.split_by_worker(wds.split_by_node(self.urls))) if self.split else self.urls} "
                                 "(all held out or unreadable)")
            epoch += 1

    def __iter__(self):
        for _, entry in self.stream():
            try:
                yield self._item(entry)
            except (OSError, KeyError) as err:
                self.skipped["unreadable"] += 1
                logger.warning("sample %s: %s; skipped", entry[0].key, err)
