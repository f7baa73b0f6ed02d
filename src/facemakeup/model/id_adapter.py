"""The ID channel of Face-MakeUp: IP-Adapter-FaceID-PlusV2 with decoupled cross-attention and LoRA.

Face-MakeUp V1/V2 (REFERENCE.md, "V1 architecture") condition SD 1.5 on a reference face through
the IP-Adapter-FaceID-PlusV2 structure (Ye et al. 2023, arXiv 2308.06721; h94/IP-Adapter-FaceID):

1. the 512-D ArcFace ``normed_embedding`` -> MLP (512 -> 1024 -> GELU -> 4*768) -> LayerNorm ->
   4 ID tokens; a Perceiver resampler (depth 4, 64-d heads) takes them as queries over the CLIP
   ViT-H-14 ``hidden_states[-2]`` of the face crop (257x1280); ``tokens = x + s_scale * out``;
2. every cross-attention layer adds ``scale * Attention(q, to_k_ip(tokens), to_v_ip(tokens))`` to
   the text attention (decoupled cross-attention); ``to_k_ip``/``to_v_ip`` start as copies of
   ``to_k``/``to_v``;
3. LoRA (rank 128) on ``to_q``/``to_k``/``to_v``/``to_out.0`` of every attention layer.

The blocks are diffusers' and peft's: ``IPAdapterFaceIDPlusImageProjection`` (1),
``IPAdapterAttnProcessor2_0`` (2) and peft LoRA layers (3). ``FaceIDAdapter`` owns all their
trainable weights in one ``ModelMixin`` (one config, one safetensors file) and *shares* them into a
UNet with ``attach``: the processors and the peft layers hold the adapter's own ``nn.Linear``
objects, so training, ``.to()`` and saving see one set of weights. ``detach`` restores the plain UNet.

Example:
    >>> adapter = FaceIDAdapter.for_unet(unet, clip_embed_dim=1280, lora_rank=128)
    >>> adapter.attach(unet)
    >>> tokens = adapter.project(id_embeds, clip_embeds, s_scale=1.0)  # (N, 4, 768)
    >>> noise = unet(latents, t, encoder_hidden_states=(text_embeds, [tokens[:, None]])).sample
"""

from __future__ import annotations

import weakref

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection
from peft import LoraConfig
from torch import nn

#: Name of the peft adapter that carries the ID channel's LoRA inside the UNet.
LORA_ADAPTER_NAME = "facemakeup_id"
#: Attention projections that get LoRA (IP-Adapter-FaceID: q, k, v and out of every attention).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _key(name: str) -> str:
    """``nn.ModuleDict`` keys may not contain dots: 'a.b.c' -> 'a__b__c'."""
    return name.replace(".", "__")


class FaceIDAdapter(ModelMixin, ConfigMixin):
    """ID projection + decoupled cross-attention weights + LoRA, for one UNet layout.

    Args:
        attn_layers: one ``[name, hidden_size, cross_attention_dim]`` per attention module of the
            UNet (``name`` without ``.processor``; ``cross_attention_dim`` ``None`` for
            self-attention). ``for_unet`` fills it.
        cross_attention_dim: width of the ID tokens and the text embeddings (768 for SD 1.5).
        clip_embed_dim: width of the CLIP image encoder's hidden states (1280 for ViT-H-14).
        id_embed_dim: width of the ArcFace embedding (512).
        num_tokens: number of ID tokens (4).
        resampler_depth: Perceiver resampler blocks (4).
        resampler_heads: Perceiver heads of 64 channels each (12 for SD 1.5: 768 / 64).
        lora_rank: LoRA rank (128 in Face-MakeUp; 0 disables LoRA).

    The LoRA scaling is ``lora_alpha / rank`` with ``lora_alpha = rank``, i.e. 1, as in IP-Adapter's
    ``LoRAAttnProcessor``.
    """

    @register_to_config
    def __init__(
        self,
        attn_layers: list,
        cross_attention_dim: int = 768,
        clip_embed_dim: int = 1280,
        id_embed_dim: int = 512,
        num_tokens: int = 4,
        resampler_depth: int = 4,
        resampler_heads: int = 12,
        lora_rank: int = 128,
    ):
        super().__init__()
        self.image_proj = IPAdapterFaceIDPlusImageProjection(
            embed_dims=cross_attention_dim,
            output_dims=cross_attention_dim,
            hidden_dims=clip_embed_dim,
            id_embeddings_dim=id_embed_dim,
            depth=resampler_depth,
            dim_head=64,
            heads=resampler_heads,
            num_tokens=num_tokens,
            ffproj_ratio=2,  # 512 -> 1024 -> 4*768, as in IP-Adapter-FaceID-PlusV2
        )
        self.ip_kv = nn.ModuleDict()
        self.lora = nn.ModuleDict()
        for name, hidden, cross in attn_layers:
            if cross is not None:
                self.ip_kv[_key(name)] = nn.ModuleDict(
                    {
                        "to_k_ip": nn.Linear(cross_attention_dim, hidden, bias=False),
                        "to_v_ip": nn.Linear(cross_attention_dim, hidden, bias=False),
                    }
                )
            if lora_rank > 0:
                ctx = cross if cross is not None else hidden
                shapes = {"to_q": (hidden, hidden), "to_k": (ctx, hidden), "to_v": (ctx, hidden), "to_out.0": (hidden, hidden)}
                for target, (fan_in, fan_out) in shapes.items():
                    down = nn.Linear(fan_in, lora_rank, bias=False)  # default init = peft's LoRA A init
                    up = nn.Linear(lora_rank, fan_out, bias=False)
                    nn.init.zeros_(up.weight)  # a fresh LoRA changes nothing
                    self.lora[_key(f"{name}.{target}")] = nn.ModuleDict({"down": down, "up": up})
        # The UNet we are attached to, held by a weak reference: a plain attribute would register
        # the whole UNet as a submodule of the adapter (its parameters, state_dict and .to()).
        self._attached_ref = None
        self._capture = None
        self._ip_scale = 1.0
        self._fused = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_unet(cls, unet, clip_embed_dim: int = 1280, lora_rank: int = 128, num_tokens: int = 4) -> "FaceIDAdapter":
        """A fresh adapter shaped for ``unet``, initialised as in Face-MakeUp's training.

        ``to_k_ip``/``to_v_ip`` are copies of each layer's ``to_k``/``to_v``; LoRA ``up`` weights are
        zero, so the UNet's text path is unchanged at start; the projection has PyTorch's default init.

        Args:
            unet: a ``UNet2DConditionModel`` (without adapters attached).
            clip_embed_dim: hidden size of the CLIP image encoder (1280 for ViT-H-14).
            lora_rank: LoRA rank (Face-MakeUp: 128).
            num_tokens: number of ID tokens (Face-MakeUp: 4).

        Returns:
            A ``FaceIDAdapter`` on the UNet's device and dtype.
        """
        cross_dim = unet.config.cross_attention_dim
        layers = _attention_layers(unet)
        adapter = cls(
            attn_layers=layers,
            cross_attention_dim=cross_dim,
            clip_embed_dim=clip_embed_dim,
            num_tokens=num_tokens,
            resampler_heads=max(cross_dim // 64, 1),
            lora_rank=lora_rank,
        )
        with torch.no_grad():
            for name, _, cross in layers:
                if cross is not None:
                    attn = unet.get_submodule(name)
                    adapter.ip_kv[_key(name)]["to_k_ip"].weight.copy_(attn.to_k.weight)
                    adapter.ip_kv[_key(name)]["to_v_ip"].weight.copy_(attn.to_v.weight)
        return _like(adapter, unet)

    # ------------------------------------------------------------------ attach / scale / detach
    def attach(self, unet, capture=None) -> None:
        """Install the ID channel into ``unet`` (IP-Adapter processors and peft LoRA layers).

        Args:
            unet: a plain ``UNet2DConditionModel`` whose attention layout matches ``attn_layers``.
            capture: an optional ``model.capture.AttentionCapture`` to install after the LoRA layers
                (it records text cross-attention probabilities for the mask-alignment loss);
                ``detach`` removes it. ``None`` (inference) hooks nothing.

        Raises:
            ValueError: the UNet's attention layers differ from this adapter's config, or the
                UNet already carries an ID channel.
        """
        layers = _attention_layers(unet)
        expected = [list(layer) for layer in self.config.attn_layers]
        if [list(layer) for layer in layers] != expected:
            raise ValueError(
                "this FaceIDAdapter was made for another UNet layout: "
                f"{len(expected)} attention layers expected, the UNet has {len(layers)} (or their sizes differ)"
            )
        if self.attached_unet is not None or LORA_ADAPTER_NAME in getattr(unet, "peft_config", {}):
            raise ValueError("the UNet already carries an ID channel; call detach() first")

        processors = {}
        for name, hidden, cross in layers:
            if cross is None:
                processors[f"{name}.processor"] = AttnProcessor2_0()
                continue
            proc = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=cross, num_tokens=[self.config.num_tokens], scale=self._ip_scale)
            kv = self.ip_kv[_key(name)]
            proc.to_k_ip = nn.ModuleList([kv["to_k_ip"]])  # shared, not copied
            proc.to_v_ip = nn.ModuleList([kv["to_v_ip"]])
            processors[f"{name}.processor"] = proc
        unet.set_attn_processor(processors)

        if self.config.lora_rank > 0:
            rank = self.config.lora_rank
            unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)), adapter_name=LORA_ADAPTER_NAME)
            for name, _, _ in layers:
                for target in LORA_TARGETS:
                    layer = unet.get_submodule(f"{name}.{target}")
                    pair = self.lora[_key(f"{name}.{target}")]
                    layer.lora_A[LORA_ADAPTER_NAME] = pair["down"]  # shared, not copied
                    layer.lora_B[LORA_ADAPTER_NAME] = pair["up"]
        if capture is not None:
            capture.install(unet)
        self._capture = capture
        self._attached_ref = weakref.ref(unet)

    @property
    def attached_unet(self):
        """The UNet this adapter is attached to, or ``None``."""
        return self._attached_ref() if self._attached_ref is not None else None

    def set_ip_scale(self, scale: float) -> None:
        """Weight of the ID attention in every cross-attention layer (Face-MakeUp default 0.6).

        ``0`` skips the ID attention altogether (the output is the text-only UNet's, plus LoRA).
        """
        self._ip_scale = float(scale)
        if self.attached_unet is not None:
            for proc in self.attached_unet.attn_processors.values():
                if isinstance(proc, IPAdapterAttnProcessor2_0):
                    proc.scale = [self._ip_scale]

    @property
    def lora_fused(self) -> bool:
        """Whether the LoRA is currently merged into the attached UNet's weights."""
        return self._fused

    def fuse_lora(self) -> None:
        """Merge the LoRA into the attached UNet's weights (peft ``merge``), for inference.

        The per-step LoRA matmuls disappear (most of the ID channel's cost). While fused, changing the
        LoRA weights (training) has no effect: ``unfuse_lora`` first. ``detach`` unfuses by itself.

        Raises:
            ValueError: the adapter is not attached.
        """
        unet = self.attached_unet
        if unet is None:
            raise ValueError("attach the adapter to a UNet before fusing its LoRA")
        if self.config.lora_rank > 0 and not self._fused:
            unet.fuse_lora(adapter_names=[LORA_ADAPTER_NAME])
            self._fused = True

    def unfuse_lora(self) -> None:
        """Take the fused LoRA back out of the UNet's weights (peft ``unmerge``)."""
        if self._fused:
            self.attached_unet.unfuse_lora()
            self._fused = False

    def detach(self) -> None:
        """Remove the ID channel from the UNet it was attached to (plain processors, no LoRA layers).

        The adapter keeps its weights; ``attach`` installs them again.
        """
        unet = self.attached_unet
        if unet is None:
            return
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self.unfuse_lora()
        unet.set_attn_processor(AttnProcessor2_0())
        if self.config.lora_rank > 0:
            unet.unload_lora()
        self._attached_ref = None

    # ------------------------------------------------------------------ ID tokens
    def project(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, s_scale: float = 1.0) -> torch.Tensor:
        """ID tokens from ArcFace and CLIP features (IP-Adapter-FaceID-PlusV2 ``ProjPlusModel``).

        Args:
            id_embeds: ``(N, 512)`` float ArcFace ``normed_embedding`` (zeros for the unconditional branch).
            clip_embeds: ``(N, 257, C)`` float CLIP ``hidden_states[-2]`` of the face crops
                (C = ``clip_embed_dim``; the features of a zero image for the unconditional branch).
            s_scale: weight of the resampler's output added to the MLP tokens ("shortcut"; Face-MakeUp
                demo 1.0, V2 web demo 0.7).

        Returns:
            ``(N, num_tokens, cross_attention_dim)`` ID tokens, in the adapter's dtype.
        """
        if id_embeds.ndim != 2 or clip_embeds.ndim != 3 or len(id_embeds) != len(clip_embeds):
            raise ValueError(
                f"expected id_embeds (N, {self.config.id_embed_dim}) and clip_embeds (N, L, "
                f"{self.config.clip_embed_dim}), got {tuple(id_embeds.shape)} and {tuple(clip_embeds.shape)}"
            )
        proj = self.image_proj
        proj.clip_embeds = clip_embeds[:, None].to(self.dtype)  # (N, 1, L, C): diffusers' layout
        proj.shortcut, proj.shortcut_scale = True, float(s_scale)
        try:
            return proj(id_embeds.to(self.dtype))  # (N, 4, D)
        finally:
            proj.clip_embeds = None

    # ------------------------------------------------------------------ checkpoint conversion
    @classmethod
    def from_ip_adapter_state_dict(cls, state_dict: dict, unet) -> "FaceIDAdapter":
        """Build an adapter from an IP-Adapter-FaceID-PlusV2 checkpoint (h94 / Face-MakeUp V1 format).

        The format (``ip-adapter-faceid-plusv2_sd15.bin``): ``{"image_proj": {...}, "ip_adapter":
        {...}}``; ``ip_adapter`` numbers the UNet's attention processors in ``unet.attn_processors``
        order (0, 1, 2, ...) and holds ``{i}.to_k_ip.weight``/``{i}.to_v_ip.weight`` for
        cross-attention and ``{i}.to_{q,k,v,out}_lora.{down,up}.weight`` for every layer.

        Args:
            state_dict: the loaded checkpoint (``torch.load``) or a flat safetensors dict with
                ``image_proj.`` / ``ip_adapter.`` prefixes.
            unet: the UNet it belongs to (gives the layer layout).

        Returns:
            A ``FaceIDAdapter`` holding exactly those weights.

        Raises:
            ValueError: the checkpoint is not FaceID-PlusV2, or keys are missing or unexpected
                (all are listed).
        """
        if "image_proj" not in state_dict:  # flat safetensors layout
            nested = {"image_proj": {}, "ip_adapter": {}}
            for k, v in state_dict.items():
                head, _, rest = k.partition(".")
                if head in nested:
                    nested[head][rest] = v
            state_dict = nested
        image_proj, ip = state_dict["image_proj"], state_dict["ip_adapter"]
        if "perceiver_resampler.proj_in.weight" not in image_proj:
            raise ValueError("not an IP-Adapter-FaceID-Plus checkpoint: image_proj has no perceiver_resampler")

        layers = _attention_layers(unet)
        downs = [k for k in ip if k.endswith("_lora.down.weight")]
        rank = ip[downs[0]].shape[0] if downs else 0
        cross_dim = image_proj["norm.weight"].shape[0]
        adapter = cls(
            attn_layers=layers,
            cross_attention_dim=cross_dim,
            clip_embed_dim=image_proj["perceiver_resampler.proj_in.weight"].shape[1],
            id_embed_dim=image_proj["proj.0.weight"].shape[1],
            num_tokens=image_proj["proj.2.weight"].shape[0] // cross_dim,
            resampler_heads=image_proj["perceiver_resampler.layers.0.0.to_q.weight"].shape[0] // 64,
            lora_rank=rank,
        )
        # diffusers' own key conversion for the projection (the same one load_ip_adapter uses)
        proj = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False)
        ours = {f"image_proj.{k}": v for k, v in proj.state_dict().items()}
        wanted = {}  # their key -> our key
        for i, (name, _, cross) in enumerate(layers):
            if cross is not None:
                for p in ("to_k_ip", "to_v_ip"):
                    wanted[f"{i}.{p}.weight"] = f"ip_kv.{_key(name)}.{p}.weight"
            for target in LORA_TARGETS if rank else ():
                theirs = target.replace(".0", "") + "_lora"
                for part in ("down", "up"):
                    wanted[f"{i}.{theirs}.{part}.weight"] = f"lora.{_key(name + '.' + target)}.{part}.weight"
        missing = sorted(set(wanted) - set(ip))
        unexpected = sorted(set(ip) - set(wanted))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match this UNet ({len(layers)} attention layers): "
                f"missing {len(missing)} keys {missing[:8]}, unexpected {len(unexpected)} keys {unexpected[:8]}"
            )
        ours.update({our: ip[their] for their, our in wanted.items()})
        adapter.load_state_dict(ours, strict=True)
        return _like(adapter, unet)


def _like(module, ref):
    """``module`` on ``ref``'s device, cast only if the dtype differs (diffusers warns on any cast)."""
    module = module.to(ref.device)
    return module if module.dtype == ref.dtype else module.to(dtype=ref.dtype)


def _attention_layers(unet) -> list[list]:
    """``[name, hidden_size, cross_attention_dim or None]`` for every attention module of ``unet``,
    in ``unet.attn_processors`` order (the order IP-Adapter checkpoints number them in)."""
    layers = []
    for proc_name in unet.attn_processors:
        name = proc_name[: -len(".processor")]
        attn = unet.get_submodule(name)
        base_k = attn.to_k.base_layer if hasattr(attn.to_k, "base_layer") else attn.to_k
        hidden = base_k.out_features
        cross = base_k.in_features if attn.is_cross_attention else None
        layers.append([name, hidden, cross])
    return layers
