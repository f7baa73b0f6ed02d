"""The Face-MakeUpV2 training loop on accelerate: prepare, step, checkpoint, resume, log, sample.

What trains: the ID projection, the IP k/v and the LoRA of ``FaceIDAdapter`` and the ShadingNet
(``ControlNetModel.from_unet``), wrapped in one ``nn.Module`` (``Trainable``) for
``accelerator.prepare`` (diffusers' example scripts; IP-Adapter's ``tutorial_train.py``). The UNet,
VAE, text and image encoders are frozen, in the mixed-precision dtype; trainable weights stay fp32.
On an SDXL backbone (``sdxl``, ``tiny-xl``) the text conditioning is ``FaceMakeUpXLPipeline``'s own
(``encode_prompt``: both text encoders, the pooled embedding; ``_add_time_ids``), passed to the UNet
and the ShadingNet as ``added_cond_kwargs``, and the samples come from ``FaceMakeUpXLPipeline``.

Determinism: every random draw of a sample (caption choice, noise, timestep, dropouts, VAE
sampling) comes from a generator seeded by ``(seed, global sample position)``, and the data order
from a permutation seeded by ``(seed, epoch)``. So a run stopped at step 10 and resumed to 20 ends
bit-identical to one run straight to 20, and N processes with batch b see the same samples, noise
and timesteps as one process with batch N*b (the losses differ only by float summation order).

Run layout (``RUN_DIR``): ``config.yaml``, ``metrics.jsonl``, ``eval.jsonl`` (held-out attention
IoU), ``loss.png``, ``tensorboard/``, ``samples/step-XXXXXX.png``, ``checkpoint-STEP/`` (accelerate
state + ``face_adapter/`` + ``shadingnet/`` + ``backbone.json`` + ``config.yaml`` + ``trainer_state.json``),
``final/`` (``face_adapter/``, ``shadingnet/``, ``backbone.json``, ``config.yaml``, ``provenance.json``) and
``summary.json``. ``backbone.json`` (``model.backbone``) records the backbone and its UNet layout, so
``facemakeup convert`` and ``generate --adapter RUN_DIR/final`` need no ``--model``.

Example:
    >>> from facemakeup.train import preset, train
    >>> train(preset("tiny"), "data/fcm", "runs/tiny", max_steps=300)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..data.captions import Caption, Phrase, token_indices
from ..data.dataset import FaceCaptionMaskDataset
from ..errors import FaceMakeUpError
from ..model.capture import AttentionCapture, supervised_layers
from ..model.id_adapter import FaceIDAdapter
from .config import ConfigError, TrainConfig, differing_keys, load_config, save_config, to_dict
from .losses import diffusion_loss, id_loss, mask_alignment_loss, predicted_x0

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: The frozen models of ``load_frozen`` (``text_encoder_2`` on SDXL only).
FROZEN = ("vae", "text_encoder", "text_encoder_2", "unet", "image_encoder")


class NonFiniteLossError(FaceMakeUpError, RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


# ---------------------------------------------------------------------------------------------- models
class Trainable(nn.Module):
    """The trained weights in one module: ``adapter`` (FaceIDAdapter) and ``shadingnet`` (or None).

    The frozen UNet is held outside the module tree (no parameters, not in ``state_dict``); the
    adapter must be attached to it. ``forward`` is Face-MakeUpV2's conditional UNet call.

    Args:
        adapter, shadingnet, unet: as above. backbone: the config's ``backbone``, recorded beside the
            weights by ``save_weights`` (``None``: nothing recorded). vae_scale_factor: image pixels per
            latent pixel of that backbone.
    """

    def __init__(self, adapter: FaceIDAdapter, shadingnet, unet, backbone: str | None = None, vae_scale_factor: int = 8):
        super().__init__()
        self.adapter = adapter
        self.shadingnet = shadingnet
        self._unet = (unet,)  # a tuple: not registered as a submodule
        self.backbone, self.vae_scale_factor = backbone, vae_scale_factor

    def forward(self, noisy_latents, timesteps, text_embeds, id_embeds, clip_embeds, shading, added_cond_kwargs: dict | None = None):
        """Noise (or v) prediction.

        Args:
            noisy_latents: ``(B, 4, h, w)``; timesteps: ``(B,)`` int64; text_embeds: ``(B, 77, D)``;
            id_embeds: ``(B, 512)``; clip_embeds: ``(B, L, C)``; shading: ``(B, 3, H, W)`` in [0, 1].
            added_cond_kwargs: SDXL's ``{"text_embeds": (B, P) pooled, "time_ids": (B, 6)}`` for the UNet
                and the ShadingNet, or ``None`` (SD 1.5).

        Returns:
            ``(B, 4, h, w)`` UNet output.
        """
        unet = self._unet[0]
        tokens = self.adapter.project(id_embeds, clip_embeds)  # (B, T, D) ID tokens
        tokens = tokens.to(text_embeds.dtype)
        residuals = {}
        if self.shadingnet is not None:  # ShadingNet attends to the ID tokens only (Face-MakeUp V1/V2)
            down, mid = self.shadingnet(noisy_latents, timesteps, encoder_hidden_states=tokens,
                                        controlnet_cond=shading.to(noisy_latents.dtype), added_cond_kwargs=added_cond_kwargs,
                                        return_dict=False)
            residuals = {"down_block_additional_residuals": [r.to(noisy_latents.dtype) for r in down],
                         "mid_block_additional_residual": mid.to(noisy_latents.dtype)}
        return unet(noisy_latents, timesteps, encoder_hidden_states=(text_embeds, [tokens[:, None]]), added_cond_kwargs=added_cond_kwargs,
                    **residuals).sample


def load_frozen(cfg: TrainConfig) -> dict:
    """The frozen components of ``cfg.backbone``: ``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
    ``noise_scheduler`` (DDPM, the backbone's schedule), ``sample_scheduler`` (what the pipeline samples
    with: DDIM on SD 1.5, the backbone's own scheduler on SDXL), ``image_encoder``, ``feature_extractor``,
    and on SDXL ``text_encoder_2`` and ``tokenizer_2``; all with ``requires_grad`` off.

    ``tiny`` / ``tiny-xl`` are the deterministic ``--model`` backbones; any other backbone is read by the
    pipeline of its family (``pipeline.backbone_family``: SD 1.5 or SDXL).

    Raises:
        ModelNotFoundError: the backbone or image encoder cannot be loaded (what to download is said).
        ConfigError: a VAE with ``latents_mean`` / ``latents_std`` (not supported for training).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if cfg.backbone in ("tiny", "tiny-xl"):
        from ..model.tiny import tiny_components, tiny_xl_components

        parts = tiny_xl_components() if cfg.backbone == "tiny-xl" else tiny_components()  # the deterministic --model backbones
    else:
        from ..pipeline import FaceMakeUpPipeline, backbone_family

        xl = backbone_family(cfg.backbone) == "sdxl"
        if xl:
            from ..pipeline_xl import FaceMakeUpXLPipeline as cls
        else:
            cls = FaceMakeUpPipeline
        pipe = cls.from_backbone(cfg.backbone, image_encoder=cfg.image_encoder, lora_rank=0)
        pipe.face_adapter.detach()
        names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "image_encoder", "feature_extractor")
        parts = {k: getattr(pipe, k) for k in names + (("text_encoder_2", "tokenizer_2") if xl else ())}
    if getattr(parts["vae"].config, "latents_mean", None) is not None:
        raise ConfigError(f"backbone {cfg.backbone}: its VAE normalises latents with latents_mean/latents_std, which training does not "
                          "support; use a backbone whose VAE has only a scaling_factor (SD 1.5, SDXL)")
    scheduler = parts.pop("scheduler")
    sched_config = scheduler.config
    parts["noise_scheduler"] = DDPMScheduler.from_config(sched_config)
    parts["sample_scheduler"] = type(scheduler).from_config(sched_config) if "text_encoder_2" in parts else DDIMScheduler.from_config(sched_config)
    for name in FROZEN:
        if name in parts:
            parts[name].requires_grad_(False).eval()
    return parts


def build_trainable(cfg: TrainConfig, parts: dict) -> Trainable:
    """Fresh (seeded) or ``init_*`` adapter and ShadingNet for ``parts["unet"]`` (still plain)."""
    from ..model.loaders import load_checkpoint
    from ..model.shadingnet import shadingnet_from_unet

    unet, vae = parts["unet"], parts["vae"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(cfg.seed)

    def init_from(path: str, what: str):
        ckpt = load_checkpoint(path, unet, vae_scale_factor=scale)  # any layout the loaders read
        part = ckpt.adapter if what == "adapter" else ckpt.controlnet
        if part is None:
            raise ConfigError(f"init_{what}: {path} ({ckpt.layout}) holds no {'ID adapter' if what == 'adapter' else 'ControlNet'}")
        return part

    shadingnet = None
    if cfg.train_shadingnet:
        shadingnet = init_from(cfg.init_shadingnet, "shadingnet") if cfg.init_shadingnet else shadingnet_from_unet(unet, scale)
        shadingnet = shadingnet if shadingnet.dtype == torch.float32 else shadingnet.to(dtype=torch.float32)
    clip_dim = parts["image_encoder"].config.hidden_size
    if cfg.init_adapter:
        adapter = init_from(cfg.init_adapter, "adapter")
    else:
        adapter = FaceIDAdapter.for_unet(unet, clip_dim, lora_rank=cfg.lora_rank, num_tokens=cfg.num_tokens)
    adapter = adapter if adapter.dtype == torch.float32 else adapter.to(dtype=torch.float32)
    if cfg.lora_rank == 0 or adapter.config.lora_rank == 0:
        raise ConfigError("lora_rank must be > 0 for training (Face-MakeUp trains LoRA on every attention layer)")
    return Trainable(adapter.requires_grad_(True), shadingnet.requires_grad_(True) if shadingnet is not None else None, unet,
                     backbone=cfg.backbone, vae_scale_factor=scale)


# ---------------------------------------------------------------------------------------------- data
def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and runs)."""
    h = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class TrainingSamples(Dataset):
    """``FaceCaptionMaskDataset`` items addressed by *global sample position*, deterministic per position.

    Position g maps to record ``perm_e[g % N]`` of epoch ``e = g // N`` (permutation seeded by
    ``(seed, e)``); the sample's own randomness (caption choice) is seeded by ``(seed, g)``. Records
    with missing files are left out at construction and counted (``skipped``). With ``records``
    holding ``phrases`` (facemakeup-built data), token indices are recomputed with the backbone's
    tokenizer, so a backbone with another tokenizer (the tiny one) supervises the right positions.

    Args:
        base: the dataset (its ``records`` are filtered in place).
        seed: run seed. caption: fixed caption kind for evaluation, or None (random).
        records: which records (indices into ``base.records`` after filtering); None = all.
    """

    def __init__(self, base: FaceCaptionMaskDataset, seed: int, records: list[int] | None = None, caption: str | None = None):
        self.base, self.seed, self.caption = base, seed, caption
        self.indices = list(range(len(base.records))) if records is None else list(records)
        if not self.indices:
            raise ValueError("no records to train on")

    def __len__(self) -> int:
        return len(self.indices)

    def record_index(self, position: int) -> int:
        n = len(self.indices)
        epoch, k = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, "epoch", epoch)))
        return self.indices[int(perm[k])]

    def item(self, i: int, position: int) -> dict:
        base = self.base
        saved = base.caption
        try:
            if self.caption is not None:
                base.caption = self.caption
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.seed, "sample", position))
                sample = base[i]
        finally:
            base.caption = saved
        retokenize(sample, (base.records[i].phrases or {}).get(sample["caption_kind"]), base.tokenizer, base.max_masks)
        sample["position"] = position
        return sample

    def __getitem__(self, position: int) -> dict:
        return self.item(self.record_index(position), position)


def retokenize(sample: dict, phrases: list | None, tokenizer, max_masks: int) -> None:
    """Recompute ``sample["token_indices"]`` in place with ``tokenizer`` from the record's phrase texts
    (facemakeup-built data), so a backbone with another tokenizer supervises the right positions."""
    if not phrases:
        return
    text, cursor, found = sample["caption"], 0, []
    for ph in phrases[:max_masks]:
        start = text.find(ph["phrase"], cursor)
        found.append(Phrase(ph["phrase"], ph.get("region", ""), max(start, 0)))
        cursor = max(start, 0) + len(ph["phrase"])
    token_indices(tokenizer, Caption(text, sample["caption_kind"], found))
    tokens = torch.zeros_like(sample["token_indices"])
    for k, ph in enumerate(found):
        tokens[k, [t for t in ph.token_indices if t < tokens.shape[1]]] = True
    sample["token_indices"] = tokens


class StreamSamples(IterableDataset):
    """Training samples streamed from tar shards (``data.FaceCaptionMaskShards``), numbered by global
    position as ``PositionSampler`` numbers them, each sample's randomness seeded by ``(seed, position)``.

    ``start_batches`` (set before the DataLoader is made) resumes after that many batches of this process:
    the sample offset a checkpoint stores, divided by the batch size.
    """

    def __init__(self, shards, seed: int, batch_size: int):
        self.shards, self.seed, self.batch_size, self.start_batches = shards, seed, batch_size, 0

    def __iter__(self):
        for position, entry in self.shards.stream(self.start_batches, self.batch_size):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.seed, "sample", position))
                try:
                    sample = self.shards._item(entry)
                except (OSError, KeyError) as err:
                    raise FaceMakeUpError(f"sample {entry[0].key} of {entry[1].get('__url__')} cannot be read: {err}") from err
            retokenize(sample, (entry[0].phrases or {}).get(sample["caption_kind"]), self.shards.tokenizer, self.shards.max_masks)
            sample["position"] = position
            yield sample


def open_stream(cfg: TrainConfig, shards, tokenizer) -> tuple[StreamSamples, list[dict]]:
    """Tar shards as ``(training stream, held-out samples)``: the first ``cfg.holdout`` samples of the last
    shard (file order, read whole by every process; fewer if it has fewer) are held out and left out of
    the stream, which reshuffles the shards every epoch (``shuffle_buffer`` 1,000 samples) and never ends.

    Raises:
        FileNotFoundError: no shards. ValueError: the last shard has no readable sample (or, when the
        stream is read, a process / worker is left with none).
    """
    from ..data.dataset import FaceCaptionMaskShards
    from ..data.formats import sample_stem

    kw = dict(resolution=cfg.resolution, mask_resolution=cfg.mask_resolution, tokenizer=tokenizer, max_masks=cfg.max_masks)
    stream = FaceCaptionMaskShards(shards, seed=cfg.seed, shuffle_buffer=1000, epochs=None, **kw)
    last = FaceCaptionMaskShards(stream.urls[-1], caption="attribute", split=False, **kw)
    held = []
    for _, entry in last.stream():
        if len(held) == cfg.holdout:
            break
        held.append(entry)
    if not held:
        raise ValueError(f"{stream.urls[-1]}: no readable sample in the last shard (the held-out samples come from it)")
    stream.exclude = frozenset(sample_stem(r.key) for r, _ in held)
    samples = []
    for r, sample in held:
        item = last._item((r, sample))
        retokenize(item, (r.phrases or {}).get("attribute"), tokenizer, cfg.max_masks)
        samples.append({**item, "position": 0})
    return StreamSamples(stream, cfg.seed, cfg.train_batch_size), samples


class PositionSampler(Sampler):
    """Global sample positions of this process, from ``start_step`` on (for the DataLoader)."""

    def __init__(self, start_step: int, stop_step: int, batch: int, accum: int, num_processes: int, rank: int):
        self.args = (start_step, stop_step, batch, accum, num_processes, rank)

    def __iter__(self):
        start, stop, b, accum, procs, rank = self.args
        for step in range(start, stop):
            for a in range(accum):
                first = ((step * accum + a) * procs + rank) * b
                yield from range(first, first + b)

    def __len__(self) -> int:
        start, stop, b, accum, _, _ = self.args
        return (stop - start) * accum * b


def collate(samples: list[dict]) -> dict:
    """Stack tensors; keep strings as lists."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else (torch.tensor(vals) if isinstance(vals[0], int) else vals)
    return out


def open_dataset(cfg: TrainConfig, data_dir, tokenizer) -> tuple[FaceCaptionMaskDataset, list[int], list[int], list[str]]:
    """The dataset with unusable records removed; ``(dataset, train indices, held-out indices, skipped keys)``.

    Raises:
        FileNotFoundError: no records. ValueError: fewer usable records than ``holdout + 1``.
    """
    from ..data.record import read_records

    base = FaceCaptionMaskDataset(data_dir, resolution=cfg.resolution, mask_resolution=cfg.mask_resolution,
                                  tokenizer=tokenizer, max_masks=cfg.max_masks)  # records with missing files left out
    kept = {r.key for r in base.records}
    if str(data_dir).endswith(".json"):  # a Face-MakeUpV2 JSON: its keep rule's drops are counted, not named
        skipped = [f"(Face-MakeUpV2 item {n})" for n in range(sum(base.skipped.values()))]
        if cfg.id_loss_weight > 0 and any(r.kps is None for r in base.records):
            raise ValueError(f"{data_dir}: Face-MakeUpV2 items without keypoints (their data has none): the ID loss needs them; "
                             "set id_loss_weight=0 or use data built by facemakeup")
    else:
        skipped = sorted(r.key for r in read_records(data_dir, check_files=False)[0] if r.key not in kept)
    base.records = sorted(base.records, key=lambda r: r.key)
    if len(base.records) <= cfg.holdout:
        raise ValueError(f"{data_dir}: {len(base.records)} usable records ({len(skipped)} skipped for missing files), "
                         f"need more than holdout={cfg.holdout}")
    n_train = len(base.records) - cfg.holdout
    return base, list(range(n_train)), list(range(n_train, len(base.records))), skipped


# ---------------------------------------------------------------------------------------------- encoders
class Encoders:
    """The frozen encoders' work on a batch (no gradient), with optional per-record caches.

    On SDXL (``text_encoder_2`` in ``parts``) the text side is ``FaceMakeUpXLPipeline``'s own
    ``encode_prompt`` and ``_add_time_ids`` (one owner of SDXL's text conditioning for training and
    generation), on a pipeline object made of the frozen parts (no adapter).
    """

    def __init__(self, parts: dict, cfg: TrainConfig, device, dtype):
        self.vae, self.text_encoder, self.image_encoder = parts["vae"], parts["text_encoder"], parts["image_encoder"]
        self.tokenizer, self.processor = parts["tokenizer"], parts["feature_extractor"]
        self.device, self.dtype, self.cache = device, dtype, ({} if cfg.cache else None)
        self.empty_ids = self.tokenizer("", padding="max_length", max_length=self.tokenizer.model_max_length,
                                        return_tensors="pt").input_ids[0]  # (77,)
        self._uncond = None
        self.resolution = cfg.resolution
        self.xl = None
        if "text_encoder_2" in parts:
            from ..pipeline_xl import FaceMakeUpXLPipeline

            self.xl = FaceMakeUpXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
                                           tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=parts["unet"],
                                           scheduler=parts["noise_scheduler"], face_adapter=None)

    @torch.no_grad()
    def latent_dist(self, pixels: torch.Tensor, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, std)``, each ``(B, 4, h, w)``, of images in [-1, 1]."""
        todo = [i for i, k in enumerate(keys) if self.cache is None or ("lat", k) not in self.cache]
        if todo:
            dist = self.vae.encode(pixels[todo].to(self.device, self.dtype)).latent_dist
            for j, i in enumerate(todo):
                if self.cache is not None:
                    self.cache[("lat", keys[i])] = (dist.mean[j].float(), dist.std[j].float())
            if self.cache is None:
                return dist.mean.float(), dist.std.float()
        mean, std = zip(*(self.cache[("lat", k)] for k in keys))
        return torch.stack(mean), torch.stack(std)

    @torch.no_grad()
    def text(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, 77, D)`` last hidden state of the text encoder (SD 1.5)."""
        return self.text_encoder(ids.to(self.device))[0]

    @torch.no_grad()
    def conditioning(self, batch: dict, drop_text: torch.Tensor | None = None) -> tuple[torch.Tensor, dict | None]:
        """The text conditioning of a batch, the empty caption where ``drop_text`` (``(B,)`` bool) is set.

        SD 1.5: ``(text_encoder(input_ids) (B, 77, 768), None)``. SDXL: ``FaceMakeUpXLPipeline.encode_prompt``
        of the captions, ``(B, 77, 768 + 1280)`` (penultimate states of both encoders), and
        ``{"text_embeds": (B, 1280) pooled, "time_ids": (B, 6)}``: ``_add_time_ids`` of original size =
        target size = (resolution, resolution) and crop (0, 0), as diffusers' ``train_controlnet_sdxl.py``
        and the pipeline's defaults at that size.
        """
        if self.xl is None:
            ids = batch["input_ids"] if drop_text is None else torch.where(drop_text[:, None], self.empty_ids[None], batch["input_ids"])
            return self.text(ids), None
        drop = [False] * len(batch["caption"]) if drop_text is None else drop_text.tolist()
        captions = ["" if d else c for c, d in zip(batch["caption"], drop)]
        embeds, _, pooled, _ = self.xl.encode_prompt(captions, None, None, None, self.device, do_cfg=False)  # (B, 77, D), (B, P)
        size = (self.resolution, self.resolution)
        time_ids = self.xl._add_time_ids(size, (0, 0), size, embeds.dtype).to(self.device).repeat(len(captions), 1)  # (B, 6)
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}

    def _clip_pixels(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_encoder.config.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device, self.dtype)  # (B, 3, S, S) CLIP-normalised

    @torch.no_grad()
    def clip(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """``(B, L, C)`` CLIP ``hidden_states[-2]`` of face crops ``(B, 3, S, S)`` in [0, 1]."""
        todo = [i for i, k in enumerate(keys) if self.cache is None or ("clip", k) not in self.cache]
        if todo:
            feats = self.image_encoder(self._clip_pixels(images[todo]), output_hidden_states=True).hidden_states[-2]
            if self.cache is None:
                return feats
            for j, i in enumerate(todo):
                self.cache[("clip", keys[i])] = feats[j]
        return torch.stack([self.cache[("clip", k)] for k in keys])

    @torch.no_grad()
    def uncond_clip(self) -> torch.Tensor:
        """``(1, L, C)`` features of the zero image (zero after CLIP normalisation, as the pipeline)."""
        if self._uncond is None:
            size = self.image_encoder.config.image_size
            zeros = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
            self._uncond = self.image_encoder(zeros, output_hidden_states=True).hidden_states[-2]
        return self._uncond


def sample_draws(cfg: TrainConfig, positions, latent_shape, num_timesteps: int) -> dict:
    """Per-sample random draws, each from a generator seeded by ``(seed, position)``."""
    noise, eps, t, drop_text, drop_clip = [], [], [], [], []
    for g in positions.tolist():
        gen = torch.Generator().manual_seed(_seed(cfg.seed, "draw", g))
        noise.append(torch.randn(latent_shape, generator=gen))
        eps.append(torch.randn(latent_shape, generator=gen))
        t.append(int(torch.randint(0, num_timesteps, (1,), generator=gen)))
        u = torch.rand(2, generator=gen)
        drop_text.append(bool(u[0] < cfg.text_dropout))
        drop_clip.append(bool(u[1] < cfg.clip_image_dropout))
    return {"noise": torch.stack(noise), "eps": torch.stack(eps), "timesteps": torch.tensor(t, dtype=torch.long),
            "drop_text": torch.tensor(drop_text), "drop_clip": torch.tensor(drop_clip)}


def map_capture(cfg: TrainConfig, unet, vae_scale_factor: int) -> AttentionCapture:
    """The ``AttentionCapture`` of the mask-alignment loss: the cross-attention layers of ``unet`` whose query
    grid is ``(resolution / map_attention_stride)^2`` (``model.capture.supervised_layers``; SD 1.5 at 512 px:
    ``down_blocks.1`` + ``up_blocks.2``, SDXL at 1024 px: ``down_blocks.1`` + ``up_blocks.1``, see ``train.config``).

    Raises:
        ConfigError: no layer of the UNet runs at that grid (the grids it has are named).
    """
    side = cfg.resolution // cfg.map_attention_stride
    try:
        layers = supervised_layers(unet, cfg.resolution, cfg.map_attention_stride, vae_scale_factor)
    except ValueError as err:
        raise ConfigError(f"map_attention_stride: {err}") from None
    return AttentionCapture(side * side, layers=layers)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def attention_iou(model: Trainable, enc: Encoders, scheduler, samples: list[dict], cfg: TrainConfig,
                  timesteps=(250, 500, 750), seed: int = 0) -> float:
    """Mean IoU between thresholded caption-token attention and the phrase masks (held-out records).

    For each record, timestep and valid (mask, tokens) pair: the attention of the supervised layers
    (query grid (resolution / map_attention_stride)^2) averaged over layers, heads and the phrase's
    tokens, min-max normalised and thresholded at 0.5, against the mask resized bilinearly to that
    grid and binarised at 0.5 (as the loss). Noise is seeded by ``seed``.

    Returns:
        IoU in [0, 1], averaged over all pairs and timesteps.
    """
    unet = model._unet[0]
    side = cfg.resolution // cfg.map_attention_stride
    capture = map_capture(cfg, unet, model.vae_scale_factor)
    capture.install(unet)
    try:
        batch = collate(samples)
        keys = batch["key"]
        mean, std = enc.latent_dist(batch["pixel_values"], keys)
        latents = mean * enc.vae.config.scaling_factor
        text, added = enc.conditioning(batch)
        clip = enc.clip(batch["clip_image"], keys)
        ious = []
        for t in timesteps:
            gen = torch.Generator().manual_seed(_seed(seed, "iou", t))
            noise = torch.randn(latents.shape, generator=gen).to(latents)
            ts = torch.full((len(latents),), t, dtype=torch.long, device=latents.device)
            noisy = scheduler.add_noise(latents, noise, ts)
            capture.clear()
            model(noisy.to(enc.dtype), ts, text, batch["id_embedding"].to(enc.device), clip, batch["shading"].to(enc.device), added)
            b = len(latents)
            maps = torch.stack([m.float().view(b, -1, side * side, m.shape[-1]).mean(1) for m in capture.maps]).mean(0)  # (B, HW, T)
            masks = F.interpolate(batch["masks"].float(), size=(side, side), mode="bilinear", align_corners=False) > 0.5  # (B, M, s, s)
            for i in range(b):
                for k in range(masks.shape[1]):
                    tok = batch["token_indices"][i, k]
                    if not batch["mask_valid"][i, k] or not tok.any():
                        continue
                    a = maps[i][:, tok.to(maps.device)].mean(-1)  # (HW,)
                    a = (a - a.min()) / (a.max() - a.min()).clamp(min=1e-12)
                    pred = (a > 0.5).view(side, side).cpu()
                    gt = masks[i, k].cpu()
                    union = (pred | gt).sum().item()
                    ious.append((pred & gt).sum().item() / union if union else 1.0)
        return float(np.mean(ious)) if ious else float("nan")
    finally:
        capture.remove()


def sample_grid(model: Trainable, parts: dict, samples: list[dict], cfg: TrainConfig, path: Path) -> None:
    """Images from fixed held-out references and seeds through ``FaceMakeUpPipeline`` (``FaceMakeUpXLPipeline``
    on SDXL, with its default guidance); one row per reference: the training image, its shading map,
    then one image per seed. Saved as PNG."""
    from PIL import Image

    from ..pipeline import FaceMakeUpPipeline

    adapter, unet = model.adapter, model._unet[0]
    capture = adapter._capture
    adapter.detach()
    try:
        common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet,
                      scheduler=parts["sample_scheduler"], face_adapter=adapter, image_encoder=parts["image_encoder"],
                      feature_extractor=parts["feature_extractor"], controlnet=model.shadingnet)
        if "text_encoder_2" in parts:
            from ..pipeline_xl import FaceMakeUpXLPipeline

            pipe = FaceMakeUpXLPipeline(text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"], **common)
        else:
            pipe = FaceMakeUpPipeline(**common)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for s in samples:
            face = np.round(s["clip_image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            cells = [((s["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8),
                     np.round(s["shading"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)]
            for seed in cfg.sample_seeds:
                out = pipe(s["caption"], id_embeds=s["id_embedding"][None], face_images=[face], num_inference_steps=cfg.sample_steps,
                           height=cfg.resolution, width=cfg.resolution, seed=int(seed), output_type="np",
                           shading_image=s["shading"][None] if model.shadingnet is not None else None)
                cells.append((out.images[0] * 255).round().astype(np.uint8))
            rows.append(np.concatenate(cells, axis=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    finally:
        adapter.detach()
        adapter.attach(unet, capture=capture)


def plot_losses(metrics_path: Path, out: Path) -> None:
    """``loss.png``: one curve per loss term of ``metrics.jsonl`` against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    terms = [k for k in ("loss", "loss_mse", "loss_map", "loss_id") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3), squeeze=False)
    for ax, k in zip(axes[0], terms):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts), lw=0.8)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(run_dir: Path) -> Path | None:
    """The ``checkpoint-STEP`` folder with the largest STEP (holding ``trainer_state.json``), or None."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def save_weights(model: Trainable, folder: Path) -> None:
    """The "Ours" layout: ``face_adapter/`` (FaceIDAdapter), when trained ``shadingnet/`` (ControlNetModel), and
    ``backbone.json`` (``model.backbone.write_backbone``: the backbone and its UNet layout) when ``model.backbone`` is set."""
    from ..model.backbone import write_backbone

    model.adapter.save_pretrained(folder / "face_adapter")
    if model.shadingnet is not None:
        model.shadingnet.save_pretrained(folder / "shadingnet")
    if model.backbone is not None:
        write_backbone(folder, model.backbone, model._unet[0], model.vae_scale_factor)


def load_weights(model: Trainable, folder: Path) -> None:
    """Copy weights saved by ``save_weights`` into ``model`` in place (shared modules stay shared)."""
    from diffusers import ControlNetModel

    model.adapter.load_state_dict(FaceIDAdapter.from_pretrained(folder / "face_adapter").state_dict(), strict=True)
    if model.shadingnet is not None:
        model.shadingnet.load_state_dict(ControlNetModel.from_pretrained(folder / "shadingnet").state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, data_dir, run_dir, max_steps: int | None = None, resume: bool = False,
          arcface: nn.Module | None = None, align=None) -> dict:
    """Train (or continue training) Face-MakeUpV2's adapter and ShadingNet.

    Args:
        cfg: the resolved config. run_dir: the run folder.
        data_dir: a ``build-dataset`` records folder, a Face-MakeUpV2 JSON (its roots beside it), or tar
            shards (a folder, glob, brace pattern or fsspec URL: ``data.is_shards``), streamed and resumed
            from the sample offset in the checkpoint.
        max_steps: stop this invocation at this global step (default ``cfg.num_train_steps``).
        resume: continue from the latest ``checkpoint-STEP`` in ``run_dir`` (a fresh start if none).
        arcface, align: the ID loss's ArcFace module and alignment (default: ``faces.arcface_torch``).

    Returns:
        The run summary (also written to ``run_dir/summary.json``).

    Raises:
        ConfigError: resuming with a config that differs (keys listed), or ``run_dir`` already holds
            checkpoints without ``resume``.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        FileNotFoundError / ValueError: no usable data.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from tqdm import tqdm

    from ..provenance import environment

    run_dir = Path(run_dir)
    stop = min(max_steps if max_steps is not None else cfg.num_train_steps, cfg.num_train_steps)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")))
    main = accelerator.is_main_process
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is not None and not resume:
        raise ConfigError(f"{run_dir} already holds {ckpt.name}: continue it with resume, or choose another run folder")
    if ckpt is not None:
        diff = differing_keys(load_config(ckpt / "config.yaml"), cfg)
        if diff:
            listed = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"cannot resume {ckpt}: the config differs in {sorted(diff)} ({listed})")
    elif resume:
        logger.warning("no checkpoint in %s: starting a new run", run_dir)
    if cfg.id_loss_weight > 0 and arcface is None:  # the offline ArcFace (w600k_mbf) as a differentiable torch module
        from functools import partial

        from ..faces.arcface_torch import align_faces, load_arcface_torch

        arcface = load_arcface_torch()
        align = partial(align_faces, fill=-1.0)  # images in [-1, 1]: black outside the photo, as norm_crop
    if cfg.id_loss_weight > 0 and align is None:
        raise ConfigError("an ArcFace module for the ID loss needs its align function too")

    # 1. Models: frozen backbone in the mixed-precision dtype, trainable weights in fp32
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    parts = load_frozen(cfg)
    model = build_trainable(cfg, parts)
    device = accelerator.device
    for name in (n for n in FROZEN if n in parts):
        parts[name].to(device)
        if parts[name].dtype != weight_dtype:
            parts[name].to(dtype=weight_dtype)
    model.to(device)
    capture = map_capture(cfg, parts["unet"], model.vae_scale_factor) if cfg.map_loss_weight > 0 else None
    model.adapter.attach(parts["unet"], capture=capture)
    if cfg.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
        if model.shadingnet is not None:
            model.shadingnet.enable_gradient_checkpointing()
    if arcface is not None:
        arcface = arcface.to(device).requires_grad_(False).eval()
    noise_scheduler = parts["noise_scheduler"]
    enc = Encoders(parts, cfg, device, weight_dtype)

    # 2. Data (records with missing files are skipped and counted; tar shards are streamed)
    from ..data.dataset import is_shards

    streamed = is_shards(data_dir)
    if streamed:
        train_set, holdout = open_stream(cfg, data_dir, parts["tokenizer"])
        train_idx, holdout_idx, skipped = [], list(range(len(holdout))), []
    else:
        base, train_idx, holdout_idx, skipped = open_dataset(cfg, data_dir, parts["tokenizer"])
        if skipped:
            logger.warning("%d records skipped for missing files (first: %s)", len(skipped), skipped[:5])
        train_set = TrainingSamples(base, cfg.seed, train_idx)
        holdout = [TrainingSamples(base, cfg.seed, holdout_idx, caption="attribute").item(i, 0) for i in holdout_idx]

    # 3. Optimiser, schedule; accelerate; checkpoints hold loadable weights (save/load hooks)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.num_train_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)  # stepped by us once per optimiser step, whatever the process count

    def save_hook(models, weights, output_dir):
        if main:
            for m in models:
                save_weights(accelerator.unwrap_model(m), Path(output_dir))
        weights.clear()

    def load_hook(models, input_dir):
        while models:
            load_weights(accelerator.unwrap_model(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    unwrapped = accelerator.unwrap_model(model)

    start = 0
    metrics_path = run_dir / "metrics.jsonl"
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        start = state["step"]
        offset = state.get("sample_offset", start * cfg.gradient_accumulation_steps * cfg.train_batch_size)
        if main and metrics_path.is_file():  # drop lines logged after the checkpoint (they will be redone)
            keep = [line for line in metrics_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start]
            metrics_path.write_text("".join(line + "\n" for line in keep))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in to_dict(cfg).items()}
    accelerator.init_trackers("train", config=hparams)

    def evaluate(step: int) -> None:
        unwrapped.eval()
        iou = attention_iou(unwrapped, enc, noise_scheduler, holdout, cfg, seed=cfg.seed)
        unwrapped.train()
        if main:
            with open(run_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "heldout_attn_iou": iou, "records": len(holdout)}) + "\n")
            accelerator.log({"heldout_attn_iou": iou}, step=step)

    def checkpoint(step: int) -> None:
        folder = run_dir / f"checkpoint-{step}"
        accelerator.save_state(str(folder))
        if main:
            save_config(cfg, folder / "config.yaml")
            batches = step * cfg.gradient_accumulation_steps  # of each process: the stream's resume point
            (folder / "trainer_state.json").write_text(json.dumps({"step": step, "sample_offset": batches * cfg.train_batch_size}))
            if cfg.checkpoints_total_limit:
                old = sorted((int(CHECKPOINT_RE.match(p.name).group(1)), p) for p in run_dir.glob("checkpoint-*") if CHECKPOINT_RE.match(p.name))
                for _, p in old[: max(len(old) - cfg.checkpoints_total_limit, 0)]:
                    shutil.rmtree(p)
        accelerator.wait_for_everyone()

    if start == 0:
        evaluate(0)
    procs, rank = accelerator.num_processes, accelerator.process_index
    if streamed:  # resume after this process's batches of the checkpoint (its stored sample offset)
        train_set.start_batches = (offset // cfg.train_batch_size) if ckpt is not None else 0
        loader = DataLoader(train_set, batch_size=cfg.train_batch_size, collate_fn=collate, num_workers=cfg.num_workers)
    else:
        sampler = PositionSampler(start, stop, cfg.train_batch_size, cfg.gradient_accumulation_steps, procs, rank)
        loader = DataLoader(train_set, batch_size=cfg.train_batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers)
    batches = iter(loader)
    latent_side = cfg.resolution // (2 ** (len(parts["vae"].config.block_out_channels) - 1))
    latent_shape = (parts["unet"].config.in_channels, latent_side, latent_side)
    scaling = parts["vae"].config.scaling_factor
    unwrapped.train()
    t_start = time.time()

    # 4. Steps
    progress = tqdm(range(start, stop), desc="train", disable=not main, initial=0)
    for step in progress:
        t0 = time.perf_counter()
        logs = {"loss": 0.0, "loss_mse": 0.0}
        if capture is not None:
            logs["loss_map"] = 0.0
        if cfg.id_loss_weight > 0:
            logs["loss_id"] = 0.0
        for micro in range(cfg.gradient_accumulation_steps):
            batch = next(batches)
            keys = batch["key"]
            draws = sample_draws(cfg, batch["position"], latent_shape, noise_scheduler.config.num_train_timesteps)
            mean, std = enc.latent_dist(batch["pixel_values"], keys)
            latents = (mean + std * draws["eps"].to(device)) * scaling  # (B, 4, h, w) sampled posterior
            noise, timesteps = draws["noise"].to(device), draws["timesteps"].to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            text, added = enc.conditioning(batch, draws["drop_text"])  # text dropout: the empty caption
            clip = enc.clip(batch["clip_image"], keys)
            clip = torch.where(draws["drop_clip"].to(device)[:, None, None], enc.uncond_clip().expand_as(clip), clip)  # CLIP-image dropout
            sync = micro == cfg.gradient_accumulation_steps - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                if capture is not None:
                    capture.clear()
                pred = model(noisy.to(weight_dtype), timesteps, text, batch["id_embedding"].to(device), clip, batch["shading"].to(device), added)
                mse = diffusion_loss(pred, latents, noise, timesteps, noise_scheduler)
                loss = mse
                terms = {"loss_mse": mse.detach()}
                if capture is not None:  # normalised by the global number of (mask, tokens) pairs
                    msum, count = mask_alignment_loss(capture.maps, batch["masks"].to(device), batch["token_indices"].to(device),
                                                      batch["mask_valid"].to(device), reduction="sum")
                    total_count = accelerator.reduce(count.detach().clone(), reduction="sum")
                    map_loss = msum * procs / total_count.clamp(min=1)
                    capture.clear()
                    loss = loss + cfg.map_loss_weight * map_loss
                    terms["loss_map"] = map_loss.detach()
                if cfg.id_loss_weight > 0:
                    sel = timesteps < cfg.id_loss_max_timestep
                    n_sel = accelerator.reduce(sel.sum().float(), reduction="sum")
                    id_term = pred.sum() * 0.0
                    if sel.any():
                        x0 = predicted_x0(noisy[sel], pred[sel], timesteps[sel], noise_scheduler)  # (N, 4, h, w)
                        images = parts["vae"].decode((x0 / scaling).to(weight_dtype)).sample.float()  # (N, 3, H, W) in [-1, 1]
                        kps = batch["kps"][sel.cpu()].to(device)
                        with torch.no_grad():
                            ref = arcface(align(batch["pixel_values"][sel.cpu()].to(device), kps)).float()
                        id_term = id_loss(images, kps, ref, arcface, align).sum()
                    id_value = id_term * procs / n_sel.clamp(min=1)
                    loss = loss + cfg.id_loss_weight * id_value
                    terms["loss_id"] = id_value.detach()
            reduced = accelerator.reduce(loss.detach().clone(), reduction="mean")
            if not torch.isfinite(reduced):
                last = latest_checkpoint(run_dir)
                raise NonFiniteLossError(f"the loss became {reduced.item()} at step {step + 1}; stopped without saving. "
                                         f"Last good checkpoint: {last if last else 'none'}. Lower learning_rate or check the data.")
            accelerator.backward(loss / cfg.gradient_accumulation_steps)
            logs["loss"] += reduced.item() / cfg.gradient_accumulation_steps
            for k, v in terms.items():
                logs[k] += accelerator.reduce(v.clone(), reduction="mean").item() / cfg.gradient_accumulation_steps
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        logs["lr"] = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        logs["step_time_s"] = time.perf_counter() - t0
        if main and (done % cfg.log_every == 0 or done == stop):
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": done, **logs}) + "\n")
            accelerator.log(logs, step=done)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
        if done % cfg.checkpoint_every == 0 or done == stop:
            checkpoint(done)
            if main:
                plot_losses(metrics_path, run_dir / "loss.png")
        if main and holdout and ((cfg.sample_every and done % cfg.sample_every == 0) or done == stop):
            sample_grid(unwrapped, parts, holdout[: cfg.num_sample_references], cfg, run_dir / "samples" / f"step-{done:06d}.png")

    # 5. Final weights, held-out attention IoU, summary
    evaluate(stop)
    summary = {"task": "train", "data": str(data_dir), "start_step": start, "stop_step": stop, "num_train_steps": cfg.num_train_steps,
               "records_train": None if streamed else len(train_idx), "records_holdout": len(holdout_idx), "records_skipped": len(skipped),
               "streamed": streamed,
               "skipped_keys": skipped[:100], "num_processes": procs, "wall_s": round(time.time() - t_start, 2), **environment()}
    if main:
        final = run_dir / "final"
        save_weights(unwrapped, final)
        save_config(cfg, final / "config.yaml")
        (final / "provenance.json").write_text(json.dumps({**summary, "config": to_dict(cfg)}, indent=2))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if metrics_path.is_file():
            plot_losses(metrics_path, run_dir / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
