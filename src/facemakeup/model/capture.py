"""Text cross-attention probabilities of chosen UNet layers, for Face-MakeUpV2's mask-alignment loss.

Face-MakeUpV2 (docs/sources.md, "V2 differences") supervises the softmax attention of the caption
tokens in the cross-attention layers whose query grid is (resolution/16)^2 (32x32 at 512 px:
``down_blocks.1`` and ``up_blocks.2`` of SD 1.5, 5 layers). ``AttentionCapture`` records exactly
those probabilities, ``(B*heads, HW, 77)`` per layer, with their autograd graph, while the UNet runs
its usual fused attention: forward hooks on each cross-attention layer's ``to_q`` and ``to_k`` take
the query and the text keys (after LoRA, when the peft layers are in place) and form
``softmax(q k^T / sqrt(d))``. Only layers whose query length equals ``query_length`` pay this extra
``QK^T``; without a capture installed nothing is hooked and nothing is computed.

Example:
    >>> capture = AttentionCapture(query_length=32 * 32)
    >>> adapter.attach(unet, capture=capture)          # or capture.install(unet)
    >>> unet(latents, t, encoder_hidden_states=(text, [tokens])).sample
    >>> probs = capture.maps                            # list of (B*heads, 1024, 77) tensors
    >>> capture.clear()
"""

from __future__ import annotations

import torch


class AttentionCapture:
    """Records text cross-attention probabilities of the UNet layers with a given query length.

    Args:
        query_length: HW of the layers to record (e.g. ``(512 // 16) ** 2 = 1024`` for SD 1.5 at
            512 px); other layers are not touched.

    Attributes:
        maps: one ``(B*heads, HW, T)`` float tensor per recorded layer call, in call order (down
            blocks, then up blocks), batch-major as diffusers' ``head_to_batch_dim``: row
            ``b * heads + h``. T is the text length (77). Cleared by ``clear()``.
        names: the module name of each entry of ``maps``.
        enabled: set ``False`` to pause recording (e.g. while sampling) without removing the hooks.
    """

    def __init__(self, query_length: int):
        if query_length <= 0:
            raise ValueError(f"query_length must be a positive number of attention positions (HW), got {query_length}")
        self.query_length = int(query_length)
        self.maps: list[torch.Tensor] = []
        self.names: list[str] = []
        self.enabled = True
        self._handles = []
        self._query: torch.Tensor | None = None

    @property
    def installed(self) -> bool:
        """Whether hooks are in place."""
        return bool(self._handles)

    def install(self, unet) -> None:
        """Hook every cross-attention layer of ``unet`` (call after the LoRA layers are injected, so
        the hooked ``to_q``/``to_k`` are the ones the UNet runs).

        Raises:
            ValueError: already installed (``remove()`` first).
        """
        if self._handles:
            raise ValueError("this AttentionCapture is already installed: remove() it first")
        for name, module in unet.named_modules():
            if getattr(module, "is_cross_attention", False) and hasattr(module, "to_q"):
                self._handles.append(module.to_q.register_forward_hook(self._on_query))
                self._handles.append(module.to_k.register_forward_hook(self._make_on_key(name, module)))

    def remove(self) -> None:
        """Remove the hooks and drop recorded maps."""
        for h in self._handles:
            h.remove()
        self._handles = []
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
