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

from diffusers import ControlNetModel


def shadingnet_from_unet(unet, vae_scale_factor: int = 8, load_weights: bool = True) -> ControlNetModel:
    """A fresh ShadingNet for ``unet`` (3-channel conditioning image), on its device and dtype.

    Checkpoints (Face-MakeUp's ``model.bin``, ControlNet folders) are read by ``model.loaders``.

    Args:
        unet: the ``UNet2DConditionModel`` to copy.
        vae_scale_factor: image pixels per latent pixel (8 for SD 1.5); the conditioning encoder
            downsamples the shading map by this much (diffusers' default channels 16, 32, 96, 256
            for 8; fewer stages for smaller factors).
        load_weights: copy the UNet's weights (a fresh ShadingNet); ``False`` only builds the layout
            (for loading a checkpoint into it; the UNet's weights are not read).

    Raises:
        ValueError: the UNet carries adapter layers (copy it before ``FaceIDAdapter.attach``, or
            ``detach`` first).
    """
    adapted = getattr(unet, "peft_config", None) or any(type(p).__name__.startswith("IPAdapter") for p in unet.attn_processors.values())
    if load_weights and adapted:
        raise ValueError("the UNet carries the ID adapter's layers: make the ShadingNet from the plain UNet (detach the adapter first)")
    stages = int(round(math.log2(vae_scale_factor)))
    channels = (16, 32, 96, 256)[: stages + 1]
    net = ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=channels,
                                    load_weights_from_unet=load_weights)
    if unet.device.type == "meta":
        return net
    return net.to(unet.device) if net.dtype == unet.dtype else net.to(unet.device, unet.dtype)
