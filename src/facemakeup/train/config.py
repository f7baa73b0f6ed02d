"""Training configuration: one typed dataclass, four presets, YAML in and out.

``sd15`` is Face-MakeUpV2's recipe (docs/sources.md "V2 differences", "Training"): 512 px, AdamW
lr 1e-4, weight decay 0.01, LoRA rank 128, 4 ID tokens, text dropout 0.05, CLIP-image dropout 0.5,
mask-alignment weight 1e-3 on the 32x32 layers, mixed precision with the trainable weights in fp32.
``tiny`` trains the ``--model tiny`` backbone on a CPU in minutes (32 px, 16x16 latents and attention maps).

``sdxl`` is the same recipe on ``stabilityai/stable-diffusion-xl-base-1.0`` at its 1024 px, bf16, with
gradient checkpointing, batch 2 x 4 accumulation steps (the paper's 8 per process). Text conditioning
is SDXL's (both text encoders, the pooled embedding, ``add_time_ids``), computed by
``FaceMakeUpXLPipeline.encode_prompt`` / ``_add_time_ids`` so training and generation agree, with the
micro-conditioning diffusers' ``train_controlnet_sdxl.py`` uses: original size = target size =
(resolution, resolution), crop (0, 0), which is also what the pipeline passes by default.
``tiny-xl`` trains the ``--model tiny-xl`` backbone on a CPU, as ``tiny``.

Which layers the mask-alignment loss supervises on SDXL. SD 1.5 at 512 px supervises the query grid
(512/16)^2 = 32x32: ``down_blocks.1`` + ``up_blocks.2``, the first attention level below the top one
(latent stride 2) and its mirror in the up path. SDXL keeps ``map_attention_stride=16``: at 1024 px
that is 64x64, ``down_blocks.1`` (2 attentions x 2 transformer layers) + ``up_blocks.1`` (3 x 2): 10
layers (``model.capture.supervised_layers``). Why these and not SDXL's 32x32 layers (``down_blocks.2``,
the mid block, ``up_blocks.0``; 60 layers): (1) one map pixel covers the same 16x16 image pixels as in the
paper, so a phrase mask (hair, eyes, mouth) keeps the detail the paper supervised; at 32x32 on 1024 px a
cell is 32x32 pixels and small regions fall below the 0.5 binarisation; (2) they sit where SD 1.5's do,
after one downsampling of the latent (latent stride 2, the level whose down and mirrored up blocks the
paper picks); SDXL has no attention at the top level, so on SDXL they are also the finest maps it has;
(3) the extra ``QK^T`` and the kept probabilities for the loss are 10 layers x 10 heads x 4096 x 77
per sample, against 60 x 20 x 1024 x 77 for the 32x32 layers. ``tiny-xl`` (32 px, VAE /2) uses stride 4
for the same place in its UNet: ``down_blocks.1`` + ``up_blocks.1`` at 8x8.

Example:
    >>> cfg = preset("tiny")
    >>> cfg = apply_overrides(cfg, ["learning_rate=3e-4", "map_loss_weight=0"])
    >>> save_config(cfg, "run/config.yaml"); load_config("run/config.yaml") == cfg
    True
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import FaceMakeUpError


class ConfigError(FaceMakeUpError, ValueError):
    """A training configuration key or value is invalid; the message lists the valid keys or the allowed values."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``RUN_DIR/config.yaml`` and in every checkpoint).

    ``--max-steps`` is not here: it only says where one invocation stops; the schedule's length is
    ``num_train_steps``.
    """

    # --- models
    backbone: str = "tiny"  # "tiny" / "tiny-xl" (deterministic random --model backbones) or an SD 1.5 / SDXL hub id or diffusers folder
    image_encoder: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # CLIP image encoder (ignored for backbones "tiny" / "tiny-xl")
    init_adapter: str | None = None  # start from these FaceIDAdapter weights (file or folder); None = fresh
    init_shadingnet: str | None = None  # start from these ShadingNet weights; None = copy of the UNet (from_unet)
    lora_rank: int = 128  # LoRA rank on q/k/v/out of every attention layer (Face-MakeUp: 128)
    num_tokens: int = 4  # ID tokens (Face-MakeUp: 4)
    train_shadingnet: bool = True  # train the ShadingNet (ControlNet over the shading map); False = no ShadingNet
    # --- data
    resolution: int = 512  # training image side in pixels
    mask_resolution: int = 64  # side of the phrase masks as loaded (resized again to each attention grid)
    max_masks: int = 6  # phrase masks per sample
    holdout: int = 8  # the last records (by key) kept out of training: sample grids and attention IoU
    text_dropout: float = 0.05  # probability of training on the empty caption
    clip_image_dropout: float = 0.5  # probability of the CLIP features of the zero image (the pipeline's unconditional image)
    cache: bool = False  # cache VAE latent distributions and CLIP image features per record (frozen encoders)
    # --- optimisation
    num_train_steps: int = 100000  # length of the schedule (warm-up, decay); --max-steps may stop earlier
    train_batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step
    learning_rate: float = 1e-4  # AdamW (Face-MakeUp: 1e-4)
    weight_decay: float = 0.01  # AdamW (Face-MakeUp: 0.01)
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.999  # AdamW
    adam_epsilon: float = 1e-8  # AdamW
    max_grad_norm: float = 1.0  # gradient clipping (0 = none)
    lr_scheduler: str = "constant_with_warmup"  # diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0  # warm-up steps of the schedule
    mixed_precision: str = "no"  # "no", "fp16" or "bf16": frozen models in that dtype, trainable weights in fp32
    gradient_checkpointing: bool = False  # recompute UNet/ShadingNet activations in the backward pass
    seed: int = 42  # all randomness of a step derives from (seed, step)
    # --- losses
    map_loss_weight: float = 1e-3  # weight of the mask-alignment loss (0 = off: no attention maps recorded)
    map_attention_stride: int = 16  # image pixels per attention-map pixel of the supervised layers (SD 1.5: 512/32, SDXL: 1024/64)
    id_loss_weight: float = 0.0  # weight of the ID loss (0 = off; the paper gives no value)
    id_loss_max_timestep: int = 400  # the ID loss applies to samples with timestep below this
    # --- logging, checkpoints, samples
    log_every: int = 1  # steps between metrics.jsonl lines
    checkpoint_every: int = 1000  # steps between checkpoint-STEP folders
    checkpoints_total_limit: int | None = None  # keep at most this many checkpoints (oldest deleted)
    sample_every: int = 1000  # steps between sample grids (0 = only at the end)
    num_sample_references: int = 2  # held-out references per grid
    sample_seeds: list = field(default_factory=lambda: [42, 43])  # seeds of the grid's columns
    sample_steps: int = 30  # DDIM steps of the samples
    num_workers: int = 0  # DataLoader workers


#: Keys that may change between a checkpoint and its resume (they do not change the weights).
RESUMABLE_KEYS = frozenset({"log_every", "checkpoint_every", "checkpoints_total_limit", "sample_every", "num_sample_references",
                            "sample_seeds", "sample_steps", "num_workers"})

PRESETS = {
    "sd15": dict(
        backbone="stable-diffusion-v1-5/stable-diffusion-v1-5", resolution=512, lora_rank=128, num_tokens=4,
        learning_rate=1e-4, weight_decay=0.01, train_batch_size=8, text_dropout=0.05, clip_image_dropout=0.5,
        map_loss_weight=1e-3, map_attention_stride=16, mixed_precision="bf16", num_train_steps=680000,
        checkpoint_every=5000, sample_every=5000,
    ),
    "tiny": dict(
        backbone="tiny", resolution=32, mask_resolution=32, lora_rank=4, num_tokens=4, learning_rate=1e-3,
        train_batch_size=4, map_loss_weight=1e-3, map_attention_stride=2, mixed_precision="no", num_train_steps=300,
        lr_warmup_steps=10, checkpoint_every=100, sample_every=100, sample_steps=10, holdout=8,
    ),
    "sdxl": dict(
        backbone="stabilityai/stable-diffusion-xl-base-1.0", resolution=1024, mask_resolution=128, lora_rank=128, num_tokens=4,
        learning_rate=1e-4, weight_decay=0.01, train_batch_size=2, gradient_accumulation_steps=4, text_dropout=0.05,
        clip_image_dropout=0.5, map_loss_weight=1e-3, map_attention_stride=16, mixed_precision="bf16", gradient_checkpointing=True,
        num_train_steps=680000, checkpoint_every=5000, sample_every=5000,
    ),
    "tiny-xl": dict(
        backbone="tiny-xl", resolution=32, mask_resolution=32, lora_rank=4, num_tokens=4, learning_rate=1e-3,
        train_batch_size=4, map_loss_weight=1e-3, map_attention_stride=4, mixed_precision="no", num_train_steps=300,
        lr_warmup_steps=10, checkpoint_every=100, sample_every=100, sample_steps=10, holdout=8,
    ),
}


def valid_keys() -> list[str]:
    """All config keys, in declaration order."""
    return [f.name for f in fields(TrainConfig)]


def preset(name: str) -> TrainConfig:
    """The ``tiny``, ``sd15``, ``sdxl`` or ``tiny-xl`` preset.

    Raises:
        ConfigError: unknown name.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return TrainConfig(**PRESETS[name])


def _check(cfg: TrainConfig) -> TrainConfig:
    """Value checks (each names the key and the allowed values)."""
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {cfg.mixed_precision!r}")
    for key in ("resolution", "num_train_steps", "train_batch_size", "gradient_accumulation_steps", "map_attention_stride", "log_every",
                "checkpoint_every", "mask_resolution", "max_masks"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be a positive integer, got {getattr(cfg, key)!r}")
    if cfg.resolution % cfg.map_attention_stride:
        raise ConfigError(f"resolution {cfg.resolution} must be a multiple of map_attention_stride {cfg.map_attention_stride}")
    for key in ("text_dropout", "clip_image_dropout"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {getattr(cfg, key)!r}")
    for key in ("map_loss_weight", "id_loss_weight", "learning_rate", "weight_decay", "max_grad_norm"):
        if not isinstance(getattr(cfg, key), (int, float)) or getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be a number >= 0, got {getattr(cfg, key)!r}")
    return cfg


def _coerce(key: str, value):
    """YAML reads ``1e-4`` as a string and ``1`` as an int: give float keys floats; reject wrong types."""
    kind = {f.name: f.type for f in fields(TrainConfig)}[key]
    if kind == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    expected = {"float": float, "int": int, "bool": bool, "str": str, "list": list}.get(kind.split(" |")[0])
    if value is None and "None" in kind:
        return value
    if expected is str and isinstance(value, bool):
        raise ConfigError(f"{key} must be a string, got {value!r}: quote it in YAML ({key}: \"no\"), which reads no/yes as booleans")
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{key} must be of type {kind}, got {value!r}")
    return value


def from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the dataclass defaults) updated with ``values``.

    Raises:
        ConfigError: unknown keys (all listed, with the valid ones) or invalid values.
    """
    unknown = sorted(set(values) - set(valid_keys()))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(valid_keys())}")
    values = {k: _coerce(k, v) for k, v in values.items()}
    cfg = dataclasses.replace(base if base is not None else TrainConfig(), **values)
    return _check(cfg)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain dict (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (every key, declaration order)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def load_config(path: str | os.PathLike, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config (a subset of keys is fine; the rest come from ``base`` or the defaults).

    Raises:
        ConfigError: not a mapping, unknown keys, invalid values.
    """
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of keys to values")
    return from_dict(values, base)


def apply_overrides(cfg: TrainConfig, items: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` strings (values parsed as YAML: ``3e-4``, ``true``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: an item without ``=``, or an unknown key / invalid value.
    """
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {item!r}")
        key = key.strip()
        kind = {f.name: f.type for f in fields(TrainConfig)}.get(key, "")
        if kind.startswith("str"):  # strings stay as typed (YAML would read "no" as false)
            values[key] = None if raw in ("null", "~") and "None" in kind else raw
        else:
            values[key] = yaml.safe_load(raw)
    return from_dict(values, cfg)


def differing_keys(a: TrainConfig, b: TrainConfig, ignore=RESUMABLE_KEYS) -> dict:
    """``{key: (a's value, b's value)}`` for every key that differs, except ``ignore``."""
    da, db = to_dict(a), to_dict(b)
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}
