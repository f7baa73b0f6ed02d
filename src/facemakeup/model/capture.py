"""Text cross-attention probabilities of chosen UNet layers, for Face-MakeUpV2's mask-alignment loss.

Face-MakeUpV2 (docs/sources.md, "V2 differences") supervises the softmax attention of the caption
tokens in the cross-attention layers whose query grid is (resolution/16)^2 (32x32 at 512 px:
``down_blocks.1`` and ``up_blocks.2`` of SD 1.5, 5 layers). ``supervised_layers`` names the layers
of any UNet at a given grid from its config (``attention_grids``: the grid each cross-attention layer
runs at); on SDXL at 1024 px the same stride gives ``down_blocks.1`` and ``up_blocks.1`` (10 layers,
``train.config``'s docstring says why). ``AttentionCapture`` records exactly those layers'
probabilities, ``(B*heads, HW, 77)`` per layer, with their autograd graph, while the UNet runs its
usual fused attention: forward hooks on each chosen layer's ``to_q`` and ``to_k`` take the query and
the text keys (after LoRA, when the peft layers are in place) and form ``softmax(q k^T / sqrt(d))``.
Only the chosen layers pay this extra ``QK^T``; without a capture installed nothing is hooked and
nothing is computed.

Example:
    >>> layers = supervised_layers(unet, resolution=512, stride=16, vae_scale_factor=8)  # SD 1.5: 5 layers
    >>> capture = AttentionCapture(query_length=32 * 32, layers=layers)
    >>> adapter.attach(unet, capture=capture)          # or capture.install(unet)
    >>> unet(latents, t, encoder_hidden_states=(text, [tokens])).sample
    >>> probs = capture.maps                            # list of (B*heads, 1024, 77) tensors
    >>> capture.clear()
"""

from __future__ import annotations

import torch


def attention_grids(unet, latent_side: int) -> dict[str, int]:
    """The query grid side of every cross-attention layer of ``unet`` for square latents of ``latent_side``.

    Read from the UNet's structure as diffusers builds it: down block ``i`` runs its attentions at
    ``latent_side / 2**i`` (every down block but the last ends in a downsampler), the mid block at the
    lowest level ``latent_side / 2**(n-1)``, up block ``j`` at ``latent_side / 2**(n-1-j)`` (every up
    block but the last ends in an upsampler), n = ``len(block_out_channels)``.

    Args:
        unet: a ``UNet2DConditionModel`` (on any device, meta included; nothing is run).
        latent_side: latent side in latent pixels (image side / the VAE's scale factor).

    Returns:
        ``{layer name: grid side}``, e.g. ``{"down_blocks.1.attentions.0.transformer_blocks.0.attn2": 32, ...}``,
        in ``named_modules`` order.
    """
    levels = len(unet.config.block_out_channels)
    grids = {}
    for name, module in unet.named_modules():
        if not (getattr(module, "is_cross_attention", False) and hasattr(module, "to_q")):
            continue
        part, _, rest = name.partition(".")
        if part == "down_blocks":
            level = int(rest.split(".")[0])
        elif part == "up_blocks":
            level = levels - 1 - int(rest.split(".")[0])
        else:  # mid_block
            level = levels - 1
        grids[name] = latent_side // 2**level
    return grids


def supervised_layers(unet, resolution: int, stride: int, vae_scale_factor: int) -> list[str]:
    """Names of the cross-attention layers of ``unet`` whose query grid is ``resolution / stride`` per side
    (the layers the mask-alignment loss supervises).

    Args:
        unet: a ``UNet2DConditionModel``. resolution: training image side in pixels. stride: image pixels
            per attention-map pixel (``TrainConfig.map_attention_stride``). vae_scale_factor: image
            pixels per latent pixel.

    Returns:
        The layer names (``attention_grids`` order). SD 1.5 at 512 px / 16: ``down_blocks.1`` (2) and
        ``up_blocks.2`` (3); SDXL at 1024 px / 16: ``down_blocks.1`` (2 x 2) and ``up_blocks.1`` (3 x 2).

    Raises:
        ValueError: no cross-attention layer runs at that grid (the grids the UNet has are listed).
    """
    grids = attention_grids(unet, resolution // vae_scale_factor)
    side = resolution // stride
    names = [name for name, s in grids.items() if s == side]
    if not names:
        have = sorted(set(grids.values()), reverse=True)
        raise ValueError(f"no cross-attention layer of this UNet runs at {side}x{side} for {resolution} px images with stride {stride}: "
                         f"its grids are {have} per side (strides {[resolution // s for s in have if s]})")
    return names


class AttentionCapture:
    """Records text cross-attention probabilities of chosen UNet layers (by name and query length).

    Args:
        query_length: HW of the layers to record (e.g. ``(512 // 16) ** 2 = 1024`` for SD 1.5 at
            512 px); a hooked layer called with another query length records nothing.
        layers: the names of the cross-attention layers to hook (``supervised_layers``); ``None`` hooks
            every cross-attention layer and records those whose query length is ``query_length``.

    Attributes:
        maps: one ``(B*heads, HW, T)`` float tensor per recorded layer call, in call order (down
            blocks, then up blocks), batch-major as diffusers' ``head_to_batch_dim``: row
            ``b * heads + h``. T is the text length (77). Cleared by ``clear()``.
        names: the module name of each entry of ``maps``.
        enabled: set ``False`` to pause recording (e.g. while sampling) without removing the hooks.
    """

    def __init__(self, query_length: int, layers: list[str] | None = None):
        if query_length <= 0:
            raise ValueError(f"query_length must be a positive number of attention positions (HW), got {query_length}")
        self.query_length = int(query_length)
        self.layers = None if layers is None else list(layers)
        self.maps: list[torch.Tensor] = []
        self.names: list[str] = []
        self.enabled = True
        self._handles = []
        self._hooked: list[str] = []
        self._query: torch.Tensor | None = None

    @property
    def installed(self) -> bool:
        """Whether hooks are in place."""
        return bool(self._handles)

    @property
    def hooked(self) -> list[str]:
        """Names of the layers whose ``to_q`` / ``to_k`` carry this capture's hooks (empty when not installed)."""
        return list(self._hooked)

    def install(self, unet) -> None:
        """Hook the ``layers`` of ``unet`` (every cross-attention layer when ``None``). Call after the LoRA
        layers are injected, so the hooked ``to_q``/``to_k`` are the ones the UNet runs.

        Raises:
            ValueError: already installed (``remove()`` first), or a name of ``layers`` that is not a
                cross-attention layer of ``unet``.
        """
        if self._handles:
            raise ValueError("this AttentionCapture is already installed: remove() it first")
        cross = {name: module for name, module in unet.named_modules()
                 if getattr(module, "is_cross_attention", False) and hasattr(module, "to_q")}
        if self.layers is not None:
            unknown = [n for n in self.layers if n not in cross]
            if unknown:
                raise ValueError(f"not cross-attention layers of this UNet: {unknown[:3]}; it has {len(cross)}, e.g. {list(cross)[:2]}")
        for name, module in cross.items():
            if self.layers is not None and name not in self.layers:
                continue
            self._handles.append(module.to_q.register_forward_hook(self._on_query))
            self._handles.append(module.to_k.register_forward_hook(self._make_on_key(name, module)))
            self._hooked.append(name)

    def remove(self) -> None:
        """Remove the hooks and drop recorded maps."""
        for h in self._handles:
            h.remove()
        self._handles, self._hooked = [], []
        self.clear()

    def clear(self) -> None:
        """Drop the recorded maps (call after each loss computation)."""
        self.maps, self.names, self._query = [], [], None

    def _on_query(self, module, inputs, output):
        # output: (B, HW, heads*d) queries of this layer
        self._query = output if self.enabled and output.shape[1] == self.query_length else None

    def _make_on_key(self, name: str, attn):
        def on_key(module, inputs, key):
            query, self._query = self._query, None
            if query is None:
                return
            b, n, inner = query.shape
            heads, d = attn.heads, inner // attn.heads
            q = query.view(b, n, heads, d).transpose(1, 2)  # (B, heads, HW, d)
            k = key.view(b, -1, heads, d).transpose(1, 2)  # (B, heads, T, d)
            scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # (B, heads, HW, T)
            probs = scores.float().softmax(dim=-1).to(query.dtype)
            self.maps.append(probs.reshape(b * heads, n, -1))  # (B*heads, HW, T)
            self.names.append(name)

        return on_key
