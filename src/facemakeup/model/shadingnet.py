"""ShadingNet: Face-MakeUpV2's ControlNet over the rendered shading map.

A ``diffusers.ControlNetModel`` copied from the UNet (``ControlNetModel.from_unet``: encoder and
mid block weights copied, zero-initialised output convolutions, so a fresh ShadingNet changes
nothing), fed the grey shading map (``faces.render.shading_map``) as ``controlnet_cond`` in [0, 1],
and, as in Face-MakeUp V1/V2, attending to the 4 ID tokens only (not the text) in its
cross-attention. Its residuals are added to the UNet's skip connections, scaled by
``controlnet_conditioning_scale`` (V1 demo 0.2, V2 web demo 0.5).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from diffusers import ControlNetModel

from .checkpoint import read_checkpoint


def shadingnet_from_unet(unet, vae_scale_factor: int = 8) -> ControlNetModel:
    """A fresh ShadingNet for ``unet`` (3-channel conditioning image), on its device and dtype.

    Args:
        unet: the ``UNet2DConditionModel`` to copy.
        vae_scale_factor: image pixels per latent pixel (8 for SD 1.5); the conditioning encoder
            downsamples the shading map by this much (diffusers' default channels 16, 32, 96, 256
            for 8; fewer stages for smaller factors).

    Raises:
        ValueError: the UNet carries adapter layers (copy it before ``FaceIDAdapter.attach``, or
            ``detach`` first).
    """
    if getattr(unet, "peft_config", None) or any(type(p).__name__.startswith("IPAdapter") for p in unet.attn_processors.values()):
        raise ValueError("the UNet carries the ID adapter's layers: make the ShadingNet from the plain UNet (detach the adapter first)")
    stages = int(round(math.log2(vae_scale_factor)))
    channels = (16, 32, 96, 256)[: stages + 1]
    net = ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=channels)
    return net.to(unet.device) if net.dtype == unet.dtype else net.to(unet.device, unet.dtype)


def load_shadingnet(path: str | os.PathLike, unet, vae_scale_factor: int = 8) -> ControlNetModel:
    """Load ShadingNet weights.

    Args:
        path: a ``ControlNetModel.save_pretrained`` folder (or a folder holding one as ``shadingnet/``); a Face-MakeUp V1/V2 checkpoint file
            (``model.bin``: a pickle whose ``"controlnet"`` entry is the ControlNet state dict); or a
            ``.safetensors``/``.bin`` ControlNet state dict.
        unet: the plain UNet the ShadingNet was copied from (gives its layout).
        vae_scale_factor: image pixels per latent pixel (see ``shadingnet_from_unet``).

    Returns:
        The ``ControlNetModel``, on the UNet's device and dtype (a folder loads as saved).

    Raises:
        ModelNotFoundError: nothing at ``path``.
        ValueError: the weights do not fit (missing and unexpected keys, or differing UNet config keys, listed).
    """
    path = Path(path)
    if (path / "shadingnet").is_dir():  # a training run's folder ("final/", "checkpoint-STEP/")
        path = path / "shadingnet"
    if path.is_dir():
        net = ControlNetModel.from_pretrained(path)
        keys = ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim", "in_channels")
        differ = {k: (net.config[k], unet.config[k]) for k in keys if list(np.atleast_1d(net.config[k])) != list(np.atleast_1d(unet.config[k]))}
        if differ:
            raise ValueError(f"the ShadingNet in {path} was made from another UNet: "
                             + ", ".join(f"{k} {a} vs the UNet's {b}" for k, (a, b) in differ.items()))
        return net
    state = read_checkpoint(path, "download the Face-MakeUpV2 checkpoint (its model.bin holds 'controlnet') and pass it "
                                  "with --shadingnet, or use --shadingnet init for an untrained one")
    state = state.get("controlnet", state)
    net = shadingnet_from_unet(unet, vae_scale_factor)
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit a ControlNet of this UNet: missing {len(result.missing_keys)} keys "
            f"{result.missing_keys[:5]}, unexpected {len(result.unexpected_keys)} keys {result.unexpected_keys[:5]}"
        )
    return net
