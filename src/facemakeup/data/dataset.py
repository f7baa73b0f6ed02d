"""``FaceCaptionMaskDataset``: the records of ``data.build`` as training samples.

Face-MakeUpV2's ``MaskDataset`` (REFERENCE.md "Dataset record") picks, for every sample, one of the
two captions at random (attribute or emotion) together with that caption's phrase masks and token
indices. Ours does the same and also yields what the ID and shading channels need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .captions import clip_tokenizer


def read_records(root: str | os.PathLike) -> list[dict]:
    """All records of a built dataset folder (every ``records-*.jsonl``, in name order), or of one JSONL file.

    Raises:
        FileNotFoundError: no records there.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.glob("records-*.jsonl"))
    records = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise FileNotFoundError(f"{root}: no FaceCaptionMask records (records-*.jsonl)")
    return records


class FaceCaptionMaskDataset(Dataset):
    """Training samples from FaceCaptionMask records.

    Args:
        root: the dataset folder written by ``facemakeup build-dataset`` (or one ``records-*.jsonl``;
            relative paths in the records are resolved against its folder).
        resolution: side of the training image in pixels (512 for SD 1.5). The photo is resized so
            its shorter side is ``resolution`` and centre-cropped; masks go through the same crop.
        mask_resolution: side of the returned masks (64 = SD 1.5's latent grid at 512 px; Face-MakeUpV2
            resizes them to 32x32 in its loss).
        caption: ``"random"`` (the paper: attribute or emotion caption with probability 1/2 each),
            ``"attribute"`` or ``"emotion"``.
        tokenizer: SD 1.5 folder / hub id or a ``CLIPTokenizer``; ``None`` = ``captions.clip_tokenizer()``.
        max_masks: phrase masks per sample are padded / cut to this many.

    Each item is a dict:
        ``pixel_values`` ``(3, R, R)`` float32 in [-1, 1] (the VAE's range); ``input_ids`` ``(77,)`` int64;
        ``caption`` str and ``caption_kind``; ``masks`` ``(max_masks, M, M)`` float32 in [0, 1] (area-averaged);
        ``token_indices`` ``(max_masks, 77)`` bool (which input_ids positions each mask supervises);
        ``mask_valid`` ``(max_masks,)`` bool; ``id_embedding`` ``(512,)`` float32 unit norm;
        ``clip_image`` ``(3, S, S)`` float32 in [0, 1] (the CLIP crop; normalise with the image encoder's
        processor); ``shading`` ``(3, R, R)`` float32 in [0, 1]; ``kps`` ``(5, 2)`` float32, the record's 5 face
        keypoints (x, y) in pixels of the returned ``pixel_values`` (after the crop and resize); ``key`` str.
    """

    def __init__(self, root, resolution: int = 512, mask_resolution: int = 64, caption: str = "random",
                 tokenizer=None, max_masks: int = 6):
        if caption not in ("random", "attribute", "emotion"):
            raise ValueError(f"caption must be 'random', 'attribute' or 'emotion', got {caption!r}")
        root = Path(root)
        self.root = root.parent if root.is_file() else root
        self.records = read_records(root)
        self.resolution, self.mask_resolution, self.caption, self.max_masks = resolution, mask_resolution, caption, max_masks
        self.tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else clip_tokenizer(tokenizer)

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, p: str) -> Path:
        return Path(p) if os.path.isabs(p) else self.root / p

    def _square(self, img: Image.Image, size: int, resample) -> Image.Image:
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return img.resize((size, size), resample, box=box)

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        kind = self.caption if self.caption != "random" else ("attribute" if torch.rand(()) < 0.5 else "emotion")
        text = r["face_attribute_caption"] if kind == "attribute" else r["face_emotion_caption"]
        entries = r["atrribute_parsing_masks"] if kind == "attribute" else r["emotion_parsing_masks"]
        with Image.open(self._path(r["image"])) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
        side = min(photo.size)  # the centred square of _square, in photo pixels
        offset = torch.tensor([(photo.size[0] - side) // 2, (photo.size[1] - side) // 2], dtype=torch.float32)
        kps = (torch.tensor(r["kps"], dtype=torch.float32) - offset) * (self.resolution / side)  # (5, 2) training-image px
        photo = self._square(photo, self.resolution, Image.BICUBIC)
        ids = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids[0]
        n = self.tokenizer.model_max_length
        masks = torch.zeros(self.max_masks, self.mask_resolution, self.mask_resolution)
        tokens = torch.zeros(self.max_masks, n, dtype=torch.bool)
        valid = torch.zeros(self.max_masks, dtype=torch.bool)
        for k, e in enumerate(entries[: self.max_masks]):
            with Image.open(self._path(e["mask"])) as m:
                m = self._square(m.convert("L"), self.mask_resolution, Image.BOX)
            masks[k] = torch.from_numpy(np.asarray(m, np.float32) / 255.0)
            tokens[k, [i for i in e["token_indices"] if i < n]] = True
            valid[k] = True
        with Image.open(self._path(r["face"][0])) as f:
            clip_image = torch.from_numpy(np.asarray(f.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
        with Image.open(self._path(r["shading"])) as s:
            shading = torch.from_numpy(np.asarray(s.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR), np.float32) / 255.0)
        return {
            "key": r["key"],
            "pixel_values": torch.from_numpy(np.asarray(photo, np.float32) / 127.5 - 1.0).permute(2, 0, 1),
            "input_ids": ids, "caption": text, "caption_kind": kind,
            "masks": masks, "token_indices": tokens, "mask_valid": valid,
            "id_embedding": torch.from_numpy(np.load(self._path(r["id_embedding"])).astype(np.float32)),
            "clip_image": clip_image, "shading": shading.permute(2, 0, 1), "kps": kps,
        }
