"""Which backbone weights are for: the weightless layout UNets, and the backbone record of a training run.

An ID adapter and a ShadingNet fit one UNet attention layout. ``layout_unet`` builds that UNet without
weights (``accelerate.init_empty_weights``: shapes only, no memory, nothing read) for readers that need
only the layout, such as ``facemakeup convert``:

- ``"sd15"``: SD 1.5's UNet (``SD15_UNET_CONFIG``); ``"sdxl"``: SDXL-base's (``SDXL_UNET_CONFIG``);
- ``"tiny"`` / ``"tiny-xl"``: the UNets of ``model.tiny`` (``--model tiny`` / ``tiny-xl``);
- a training run's weights folder (``final/``, ``checkpoint-STEP/``): the UNet its ``backbone.json`` records;
- a backbone folder (``unet/config.json``, ``vae/config.json``) or a hub id (its ``unet/config.json``).

A training run leaves ``backbone.json`` beside its weights (``write_backbone``, in ``final/`` and every
``checkpoint-STEP/``)::

    {"backbone": "tiny-xl", "family": "sdxl", "vae_scale_factor": 2, "unet": {...the UNet's config...}}

``backbone`` is the config's ``backbone`` (``tiny``, ``tiny-xl``, a hub id or a folder), ``family``
``"sd15"`` or ``"sdxl"`` (``unet_family``), ``unet`` the UNet config without diffusers' private keys, so
the layout is known offline even when the backbone itself is elsewhere. ``read_backbone`` reads it, and
for runs written before it existed, the ``backbone`` key of the folder's ``config.yaml``.

Example:
    >>> unet, vae_scale_factor = layout_unet("sdxl")          # on the meta device: 2.6 B parameters, 0 bytes
    >>> read_backbone("runs/tiny-xl/final")["backbone"]
    'tiny-xl'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import ModelNotFoundError

logger = logging.getLogger(__name__)

#: The file a training run writes beside its weights.
BACKBONE_FILE = "backbone.json"
#: The ``--model`` names of the built-in layouts.
NAMED_LAYOUTS = ("sd15", "sdxl", "tiny", "tiny-xl")

#: SD 1.5's UNet (``stable-diffusion-v1-5/stable-diffusion-v1-5`` ``unet/config.json``): diffusers'
#: ``UNet2DConditionModel`` defaults (block_out_channels 320/640/1280/1280, 2 layers per block, 3
#: cross-attention down blocks and a plain one) with these three values.
SD15_UNET_CONFIG = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}

#: SDXL-base's UNet, the layout keys of ``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json``
#: (the other keys are diffusers' defaults there too): three levels 320/640/1280, the first without
#: attention, transformer depth 1/2/10 (the first value is unused: that level has no attention), head
#: dims 5/10/20 (diffusers' name for the number of heads of SDXL), linear projections, a 2048-wide context
#: (CLIP ViT-L 768 + OpenCLIP bigG 1280) and the ``text_time`` micro-conditioning (6 numbers x 256 + the
#: 1280-wide pooled text embedding = 2816).
SDXL_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "use_linear_projection": True,
    "cross_attention_dim": 2048, "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32, "norm_eps": 1e-05,
}


def unet_family(unet_or_config) -> str:
    """``"sdxl"`` for a UNet (or its config) with SDXL's ``text_time`` micro-conditioning, else ``"sd15"``."""
    config = getattr(unet_or_config, "config", unet_or_config)
    return "sdxl" if dict(config).get("addition_embed_type") == "text_time" else "sd15"


def _empty_unet(config: dict):
    """A ``UNet2DConditionModel`` of ``config`` on the meta device (no weights allocated)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def _vae_scale(folder: Path) -> int:
    """Image pixels per latent pixel of a backbone folder's VAE (8 when it has no ``vae/config.json``, as SD's)."""
    config = folder / "vae" / "config.json"
    blocks = json.loads(config.read_text())["block_out_channels"] if config.is_file() else [0] * 4
    return 2 ** (len(blocks) - 1)


def layout_unet(model: str | os.PathLike, local_files_only: bool | None = None):
    """``(UNet2DConditionModel, vae_scale_factor)`` with the attention layout of ``model``, for reading
    and writing checkpoints; the UNet holds no weights (meta device) except for the tiny ones.

    Args:
        model: ``"sd15"``, ``"sdxl"``, ``"tiny"``, ``"tiny-xl"``, a training run's weights folder (with
            ``backbone.json`` or ``config.yaml``), a diffusers backbone folder, or a hub id.
        local_files_only: for a hub id, never download its ``unet/config.json`` (default: ``HF_HUB_OFFLINE``).

    Raises:
        ModelNotFoundError: ``model`` is none of these, or a hub id whose config cannot be had.
    """
    name = str(model)
    if name in ("tiny", "tiny-xl"):
        from .tiny import tiny_components, tiny_xl_components

        parts = tiny_components() if name == "tiny" else tiny_xl_components()
        return parts["unet"], 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    if name == "sd15":
        return _empty_unet(SD15_UNET_CONFIG), 8
    if name == "sdxl":
        return _empty_unet(SDXL_UNET_CONFIG), 8
    folder = Path(name)
    record = read_backbone(folder) if folder.is_dir() else None
    if record is not None:
        return record_unet(record)
    if (folder / "unet" / "config.json").is_file():
        return _empty_unet(json.loads((folder / "unet" / "config.json").read_text())), _vae_scale(folder)
    if folder.exists() or name.count("/") != 1:
        raise ModelNotFoundError(f"{name}: not 'sd15', 'sdxl', 'tiny', 'tiny-xl', a training run's weights folder ({BACKBONE_FILE}), "
                                 "a diffusers backbone folder (unet/config.json) or a hub id (owner/name)")
    from diffusers import UNet2DConditionModel

    try:
        config = UNet2DConditionModel.load_config(name, subfolder="unet", local_files_only=bool(local_files_only) or None)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"the UNet config of {name} is not on disk and could not be downloaded ({type(err).__name__}): "
                                 f"run `hf download {name} unet/config.json vae/config.json --local-dir DIR` and pass DIR, or "
                                 "name the layout: 'sd15' or 'sdxl'") from err
    return _empty_unet(config), 8


def record_unet(record: dict):
    """``(UNet, vae_scale_factor)`` of a ``read_backbone`` record: its stored UNet config (meta device), or for
    records without one (runs written before ``backbone.json``) the layout of its backbone.

    Raises:
        ModelNotFoundError: as ``layout_unet`` for the record's backbone.
    """
    if record.get("unet"):
        return _empty_unet(record["unet"]), int(record["vae_scale_factor"])
    backbone = str(record["backbone"])
    if backbone in NAMED_LAYOUTS or (Path(backbone) / "unet" / "config.json").is_file():
        return layout_unet(backbone)
    # runs written before backbone.json trained FaceMakeUpPipeline only: an SD 1.5 backbone
    logger.info("%s records backbone %s, not on this machine: using the SD 1.5 layout", record["source"], backbone)
    return layout_unet("sd15")


def write_backbone(folder: str | os.PathLike, backbone: str, unet, vae_scale_factor: int) -> Path:
    """Write ``folder/backbone.json`` for weights trained on ``unet`` (format: module docstring).

    Args:
        folder: the weights folder (created if missing). backbone: the run config's ``backbone``.
        unet: the plain backbone UNet (its config is recorded). vae_scale_factor: image pixels per latent pixel.

    Returns:
        The path written.
    """
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items() if not k.startswith("_")}
    record = {"backbone": str(backbone), "family": unet_family(config), "vae_scale_factor": int(vae_scale_factor), "unet": config}
    path = Path(folder) / BACKBONE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path


def read_backbone(path: str | os.PathLike) -> dict | None:
    """The backbone that the weights at ``path`` were trained on, or ``None`` when ``path`` is no training run's folder.

    Reads ``backbone.json`` of ``path`` (a weights folder), or of its parent when ``path`` is its
    ``face_adapter/`` or ``shadingnet/``; for runs written before that file, the ``backbone`` key of the
    folder's ``config.yaml`` (such runs trained SD 1.5 or ``tiny``).

    Returns:
        ``{"backbone": str, "family": "sd15" | "sdxl", "vae_scale_factor": int | None, "unet": dict | None,
        "source": the file read}``, or ``None``.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    folders = [path, path.parent] if path.name in ("face_adapter", "shadingnet") else [path]
    for folder in folders:
        record_file = folder / BACKBONE_FILE
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                return None
            if not isinstance(record, dict) or not isinstance(record.get("backbone"), str):
                return None
            return {"backbone": record["backbone"], "family": record.get("family", "sd15"),
                    "vae_scale_factor": record.get("vae_scale_factor"), "unet": record.get("unet"), "source": str(record_file)}
        config = folder / "config.yaml"
        if config.is_file() and ((folder / "face_adapter").is_dir() or (folder / "shadingnet").is_dir()):
            import yaml

            try:
                values = yaml.safe_load(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return None
            if isinstance(values, dict) and isinstance(values.get("backbone"), str):
                backbone = values["backbone"]
                return {"backbone": backbone, "family": "sdxl" if backbone == "tiny-xl" else "sd15", "vae_scale_factor": None,
                        "unet": None, "source": str(config)}
    return None


def describe(record: dict) -> str:
    """``"tiny-xl (SDXL)"``: a record's backbone and family, for messages."""
    return f"{record['backbone']} ({'SDXL' if record['family'] == 'sdxl' else 'SD 1.5'})"
