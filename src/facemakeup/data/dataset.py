"""``FaceCaptionMaskDataset``: the records of ``data.build`` as training samples.

Face-MakeUpV2's ``MaskDataset`` (docs/sources.md "Dataset record") picks, for every sample, one of the
two captions at random (attribute or emotion) together with that caption's phrase masks and token
indices. Ours does the same and also yields what the ID and shading channels need.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .captions import clip_tokenizer
from .record import Record, read_records

logger = logging.getLogger(__name__)


class FaceCaptionMaskDataset(Dataset):
    """Training samples from FaceCaptionMask records.

    Args:
        root: the dataset folder written by ``facemakeup build-dataset`` (every ``records-*.jsonl``
            under it) or one records file; relative paths are resolved against the records file's folder.
        resolution: side of the training image in pixels (512 for SD 1.5). The photo is resized so
            its shorter side is ``resolution`` and centre-cropped; masks and keypoints go through the same crop.
        mask_resolution: side of the returned masks (64 = SD 1.5's latent grid at 512 px; Face-MakeUpV2
            resizes them to 32x32 in its loss).
        caption: ``"random"`` (the paper: attribute or emotion caption with probability 1/2 each),
            ``"attribute"`` or ``"emotion"``.
        tokenizer: SD 1.5 folder / hub id or a ``CLIPTokenizer``; ``None`` = ``captions.clip_tokenizer()``.
        max_masks: phrase masks per sample are padded / cut to this many.

    Records of an unknown ``schema_version``, invalid ones and ones whose files are missing are
    skipped when the dataset is made; ``skipped`` counts them by reason. A file that disappears or
    cannot be read later (during training) makes ``__getitem__`` serve the next readable record
    instead, with a warning, and count it in ``skipped["unreadable_later"]`` (of this process).

    Each item is a dict:
        ``pixel_values`` ``(3, R, R)`` float32 in [-1, 1] (the VAE's range); ``input_ids`` ``(77,)`` int64;
        ``caption`` str and ``caption_kind``; ``masks`` ``(max_masks, M, M)`` float32 in [0, 1] (area-averaged);
        ``token_indices`` ``(max_masks, 77)`` bool (which input_ids positions each mask supervises);
        ``mask_valid`` ``(max_masks,)`` bool; ``id_embedding`` ``(512,)`` float32 unit norm;
        ``clip_image`` ``(3, S, S)`` float32 in [0, 1] (the CLIP crop; normalise with the image encoder's
        processor); ``shading`` ``(3, R, R)`` float32 in [0, 1]; ``kps`` ``(5, 2)`` float32 (x, y) in
        pixels of ``pixel_values`` (left eye, right eye, nose tip, left and right mouth corner); ``key`` str.

    Raises:
        FileNotFoundError: no readable record under ``root``.
    """

    def __init__(self, root, resolution: int = 512, mask_resolution: int = 64, caption: str = "random",
                 tokenizer=None, max_masks: int = 6):
        if caption not in ("random", "attribute", "emotion"):
            raise ValueError(f"caption must be 'random', 'attribute' or 'emotion', got {caption!r}")
        self.records, self.skipped = read_records(root)
        if self.skipped:
            logger.warning("%s: skipped %s", root, dict(self.skipped))
        if not self.records:
            raise FileNotFoundError(f"{root}: no readable FaceCaptionMask record (skipped: {dict(self.skipped)})")
        self.resolution, self.mask_resolution, self.caption, self.max_masks = resolution, mask_resolution, caption, max_masks
        self.tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else clip_tokenizer(tokenizer)

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def square(width: int, height: int) -> tuple[int, int, int, int]:
        """The centred square ``(x0, y0, x1, y1)`` of a ``width`` x ``height`` photo that becomes the training image."""
        s = min(width, height)
        return (width - s) // 2, (height - s) // 2, (width - s) // 2 + s, (height - s) // 2 + s

    def __getitem__(self, index: int) -> dict:
        for k in range(len(self.records)):
            r = self.records[(index + k) % len(self.records)]
            try:
                return self._item(r)
            except OSError as err:  # FileNotFoundError, or PIL's UnidentifiedImageError for a damaged file
                self.skipped["unreadable_later"] += 1
                logger.warning("record %s: %s; serving the next record instead", r.key, err)
        raise FileNotFoundError(f"no record's files can be read any more ({len(self.records)} records)")

    def _item(self, r: Record) -> dict:
        kind = self.caption if self.caption != "random" else ("attribute" if torch.rand(()) < 0.5 else "emotion")
        text = r.face_attribute_caption if kind == "attribute" else r.face_emotion_caption
        entries = r.atrribute_parsing_masks if kind == "attribute" else r.emotion_parsing_masks
        with Image.open(r.path(r.image)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            box = self.square(*im.size)
            photo = im.resize((self.resolution, self.resolution), Image.BICUBIC, box=box)
        # keypoints: the same box -> R x R map as the image (continuous pixel coordinates)
        scale = self.resolution / (box[2] - box[0])
        kps = (torch.tensor(r.kps, dtype=torch.float32) - torch.tensor(box[:2], dtype=torch.float32)) * scale
        ids = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids[0]
        n = self.tokenizer.model_max_length
        masks = torch.zeros(self.max_masks, self.mask_resolution, self.mask_resolution)
        tokens = torch.zeros(self.max_masks, n, dtype=torch.bool)
        valid = torch.zeros(self.max_masks, dtype=torch.bool)
        for k, e in enumerate(entries[: self.max_masks]):
            with Image.open(r.path(e["mask"])) as m:
                m = m.convert("L").resize((self.mask_resolution, self.mask_resolution), Image.BOX, box=self.square(*m.size))
            masks[k] = torch.from_numpy(np.asarray(m, np.float32) / 255.0)
            tokens[k, [i for i in e["token_indices"] if i < n]] = True
            valid[k] = True
        with Image.open(r.path(r.face[0])) as f:
            clip_image = torch.from_numpy(np.asarray(f.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
        with Image.open(r.path(r.shading)) as s:
            shading = torch.from_numpy(np.asarray(s.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR), np.float32) / 255.0)
        return {
            "key": r.key,
            "pixel_values": torch.from_numpy(np.asarray(photo, np.float32) / 127.5 - 1.0).permute(2, 0, 1),
            "input_ids": ids, "caption": text, "caption_kind": kind,
            "masks": masks, "token_indices": tokens, "mask_valid": valid,
            "id_embedding": torch.from_numpy(np.load(r.path(r.id_embedding)).astype(np.float32)),
            "clip_image": clip_image, "shading": shading.permute(2, 0, 1), "kps": kps,
        }
