"""The ID channel of Face-MakeUp and the IP-Adapter-FaceID family: decoupled cross-attention and LoRA.

Face-MakeUp V1/V2 (docs/sources.md, "V1 architecture") condition SD 1.5 on a reference face through
the IP-Adapter-FaceID-PlusV2 structure (Ye et al. 2023, arXiv 2308.06721; h94/IP-Adapter-FaceID):

1. ID tokens from the 512-D ArcFace ``normed_embedding``: MLP (512 -> 1024 -> GELU -> T*768) ->
   LayerNorm -> T tokens (``projection="mlp"``: IP-Adapter-FaceID and -Portrait, no CLIP); with
   ``projection="plus"`` a Perceiver resampler (depth 4, 64-d heads) then takes the 4 MLP tokens as
   queries over the CLIP ViT-H-14 ``hidden_states[-2]`` of the face crop (257x1280), and the tokens
   are ``x + s_scale * out`` (PlusV2, ``shortcut=True``) or ``out`` (Plus, ``shortcut=False``);
2. every cross-attention layer adds ``scale * Attention(q, to_k_ip(tokens), to_v_ip(tokens))`` to
   the text attention (decoupled cross-attention); ``to_k_ip``/``to_v_ip`` start as copies of
   ``to_k``/``to_v``;
3. LoRA (rank 128) on ``to_q``/``to_k``/``to_v``/``to_out.0`` of every attention layer (none in
   IP-Adapter-FaceID-Portrait: ``lora_rank=0``).

A third projection, ``projection="resampler"``, is InstantID's (Wang et al. 2024, arXiv 2401.07519;
InstantX/InstantID ``ip-adapter.bin``): IP-Adapter's ``Resampler``, 16 learned queries attending to the
ArcFace embedding read as a 1-token sequence (dim 1280, depth 4, 20 heads of 64 for SDXL), decoupled
cross-attention, no LoRA; IP-Adapter-FaceID-Portrait-SDXL-unnorm has the same structure at width 2048
with 12 heads. The same classes serve SD 1.5 and SDXL UNets: every width comes from the UNet or the
checkpoint.

Several references: Face-MakeUp mixes them before the projection (``multi_face="mix"``); Portrait
gives each face its own tokens and concatenates them (``multi_face="concat"``, 16 tokens per face).

The blocks are diffusers' and peft's: ``IPAdapterFaceIDPlusImageProjection`` /
``IPAdapterFaceIDImageProjection`` / ``IPAdapterPlusImageProjection`` (1), ``IPAdapterAttnProcessor2_0``
(2) and peft LoRA layers (3).
``FaceIDAdapter`` owns all their trainable weights in one ``ModelMixin`` (one config, one
safetensors file) and *shares* them into a UNet with ``attach``: the processors and the peft layers
hold the adapter's own ``nn.Linear`` objects, so training, ``.to()`` and saving see one set of
weights. ``detach`` restores the plain UNet bit-exactly. Checkpoints of other layouts are read by
``facemakeup.model.loaders``.

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
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import (IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection,
                                         IPAdapterPlusImageProjection)
from peft import LoraConfig
from torch import nn

#: Name of the peft adapter that carries the ID channel's LoRA inside the UNet.
LORA_ADAPTER_NAME = "facemakeup_id"
#: Attention projections that get LoRA (IP-Adapter-FaceID: q, k, v and out of every attention).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: ID projections: "plus" (ArcFace + CLIP, Perceiver resampler), "mlp" (ArcFace only) or "resampler"
#: (learned queries over the ArcFace embedding: InstantID).
PROJECTIONS = ("plus", "mlp", "resampler")
#: How several reference faces enter: averaged before the projection, or one token set each.
MULTI_FACE = ("mix", "concat")


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
        clip_embed_dim: width of the CLIP image encoder's hidden states (1280 for ViT-H-14); unused
            by the ``"mlp"`` projection.
        id_embed_dim: width of the ArcFace embedding (512).
        num_tokens: ID tokens per face (4; IP-Adapter-FaceID-Portrait and InstantID: 16, the
            resampler's learned queries).
        resampler_depth: Perceiver resampler blocks (4).
        resampler_heads: Perceiver heads of 64 channels each (12 for SD 1.5: 768 / 64; SDXL PlusV2:
            32; InstantID: 20).
        resampler_dim: ``"resampler"`` only: the resampler's hidden width (InstantID: 1280;
            Portrait-SDXL-unnorm: 2048); ``None`` = ``cross_attention_dim``. The ``"plus"``
            resampler always works at ``cross_attention_dim``.
        lora_rank: LoRA rank (128 in Face-MakeUp; 0 = no LoRA, as IP-Adapter-FaceID-Portrait).
        projection: ``"plus"`` (ArcFace + CLIP through the Perceiver resampler: FaceID-Plus/PlusV2,
            Face-MakeUp), ``"mlp"`` (ArcFace only: FaceID, FaceID-Portrait) or ``"resampler"``
            (``num_tokens`` learned queries attending to the ArcFace embedding: InstantID, diffusers'
            ``IPAdapterPlusImageProjection``).
        shortcut: with ``"plus"``, the tokens are ``mlp + s_scale * resampler`` (PlusV2, Face-MakeUp)
            instead of the resampler's output alone (FaceID-Plus).
        multi_face: ``"mix"`` (references averaged before the projection, Face-MakeUp's ``mix``) or
            ``"concat"`` (each reference its own ``num_tokens`` tokens, concatenated: Portrait).
        mlp_ratio: hidden width of the ID MLP over ``id_embed_dim`` (2: 512 -> 1024).
        id_embedding: which ArcFace vector the projection was trained on: ``"normed"`` (InsightFace's
            ``normed_embedding``, unit L2 norm: IP-Adapter-FaceID, Face-MakeUp) or ``"raw"`` (its
            ``embedding`` before normalisation: InstantID, IP-Adapter-FaceID-Portrait-unnorm).

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
        projection: str = "plus",
        shortcut: bool = True,
        multi_face: str = "mix",
        mlp_ratio: int = 2,
        resampler_dim: int | None = None,
        id_embedding: str = "normed",
    ):
        super().__init__()
        if id_embedding not in ("normed", "raw"):
            raise ValueError(f"id_embedding must be 'normed' or 'raw', got {id_embedding!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if multi_face not in MULTI_FACE:
            raise ValueError(f"multi_face must be one of {MULTI_FACE}, got {multi_face!r}")
        if projection == "plus":
            self.image_proj = IPAdapterFaceIDPlusImageProjection(
                embed_dims=cross_attention_dim,
                output_dims=cross_attention_dim,
                hidden_dims=clip_embed_dim,
                id_embeddings_dim=id_embed_dim,
                depth=resampler_depth,
                dim_head=64,
                heads=resampler_heads,
                num_tokens=num_tokens,
                ffproj_ratio=mlp_ratio,  # 512 -> 1024 -> 4*768, as in IP-Adapter-FaceID-PlusV2
            )
        elif projection == "resampler":
            self.image_proj = IPAdapterPlusImageProjection(
                embed_dims=id_embed_dim,  # proj_in reads the ArcFace embedding
                output_dims=cross_attention_dim,
                hidden_dims=resampler_dim or cross_attention_dim,
                depth=resampler_depth,
                dim_head=64,
                heads=resampler_heads,
                num_queries=num_tokens,
                ffn_ratio=4,  # IP-Adapter's Resampler ff_mult, as InstantID builds it
            )
        else:
            self.image_proj = IPAdapterFaceIDImageProjection(
                image_embed_dim=id_embed_dim, cross_attention_dim=cross_attention_dim, mult=mlp_ratio, num_tokens=num_tokens
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
        self._ip_scale: float | dict = 1.0
        self._saved_processors = None  # the UNet's own processors, put back by detach()
        self._unfused_weights = None  # {layer name: original weight} while the LoRA is fused
        self._capture = None  # the attention-map capture of training, if attached with one

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_unet(cls, unet, clip_embed_dim: int = 1280, lora_rank: int = 128, num_tokens: int = 4, **config) -> "FaceIDAdapter":
        """A fresh adapter shaped for ``unet``, initialised as in Face-MakeUp's training.

        ``to_k_ip``/``to_v_ip`` are copies of each layer's ``to_k``/``to_v``; LoRA ``up`` weights are
        zero, so the UNet's text path is unchanged at start; the projection has PyTorch's default init.
        Works for SD 1.5 and SDXL UNets alike (widths come from the UNet).

        Args:
            unet: a ``UNet2DConditionModel`` (without adapters attached).
            clip_embed_dim: hidden size of the CLIP image encoder (1280 for ViT-H-14).
            lora_rank: LoRA rank (Face-MakeUp: 128).
            num_tokens: number of ID tokens (Face-MakeUp: 4).
            **config: other ``FaceIDAdapter`` arguments (``projection``, ``shortcut``, ``multi_face``,
                ``resampler_dim``, ``resampler_heads``). ``resampler_heads`` defaults to the resampler
                width / 64 (InstantID-style: ``projection="resampler", num_tokens=16, lora_rank=0,
                resampler_dim=1280`` gives 20 heads).

        Returns:
            A ``FaceIDAdapter`` on the UNet's device and dtype.
        """
        cross_dim = unet.config.cross_attention_dim
        layers = attention_layers(unet)
        width = config.get("resampler_dim") if config.get("projection") == "resampler" else None
        config.setdefault("resampler_heads", max((width or cross_dim) // 64, 1))
        adapter = cls(
            attn_layers=layers,
            cross_attention_dim=cross_dim,
            clip_embed_dim=clip_embed_dim,
            num_tokens=num_tokens,
            lora_rank=lora_rank,
            **config,
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
        layers = attention_layers(unet)
        expected = [list(layer) for layer in self.config.attn_layers]
        if [list(layer) for layer in layers] != expected:
            raise ValueError(
                "this FaceIDAdapter was made for another UNet layout: "
                f"{len(expected)} attention layers expected, the UNet has {len(layers)} (or their sizes differ)"
            )
        if self.attached_unet is not None or LORA_ADAPTER_NAME in getattr(unet, "peft_config", {}):
            raise ValueError("the UNet already carries an ID channel; call detach() first")
        if any(isinstance(p, IPAdapterAttnProcessor2_0) for p in unet.attn_processors.values()):
            raise ValueError("the UNet already carries IP-Adapter processors (another adapter); remove them first")

        self._saved_processors = dict(unet.attn_processors)
        processors = dict(self._saved_processors)
        for name, hidden, cross in layers:
            if cross is None:
                continue
            proc = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=cross, num_tokens=[self.config.num_tokens], scale=1.0)
            kv = self.ip_kv[_key(name)]
            proc.to_k_ip = nn.ModuleList([kv["to_k_ip"]])  # shared, not copied
            proc.to_v_ip = nn.ModuleList([kv["to_v_ip"]])
            processors[f"{name}.processor"] = proc
        unet.set_attn_processor(processors)
        self._attached_ref = weakref.ref(unet)
        self._add_lora(unet)
        self.set_ip_scale(self._ip_scale)
        if capture is not None:  # after the LoRA layers: it hooks the (wrapped) to_q / to_k
            capture.install(unet)
        self._capture = capture

    def _add_lora(self, unet) -> None:
        """Wrap every LoRA target of ``unet`` in a peft layer holding this adapter's own linears."""
        if self.config.lora_rank == 0:
            return
        rank = self.config.lora_rank
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)), adapter_name=LORA_ADAPTER_NAME)
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                layer = unet.get_submodule(f"{name}.{target}")
                pair = self.lora[_key(f"{name}.{target}")]
                layer.lora_A[LORA_ADAPTER_NAME] = pair["down"]  # shared, not copied
                layer.lora_B[LORA_ADAPTER_NAME] = pair["up"]

    @property
    def attached_unet(self):
        """The UNet this adapter is attached to, or ``None``."""
        return self._attached_ref() if self._attached_ref is not None else None

    @property
    def ip_scale(self) -> float | dict:
        """The current ID-attention weight: a float, or ``{attention layer name: float}``."""
        return self._ip_scale

    def set_ip_scale(self, scale: float | dict) -> None:
        """Weight of the ID attention in every cross-attention layer (Face-MakeUp default 0.6).

        Args:
            scale: one float for all layers, or ``{layer name: float}`` with one entry per
                cross-attention layer of ``attn_layers`` (``name`` without ``.processor``; layers
                left out get 0). ``0`` skips the ID attention of a layer altogether.

        Raises:
            ValueError: a layer name that is not a cross-attention layer of this adapter.
        """
        if isinstance(scale, dict):
            cross = {name for name, _, c in self.config.attn_layers if c is not None}
            unknown = sorted(set(scale) - cross)
            if unknown:
                raise ValueError(f"no cross-attention layer named {unknown[:3]}; valid: {sorted(cross)[:3]} ...")
            scale = {name: float(scale.get(name, 0.0)) for name in sorted(cross)}
        else:
            scale = float(scale)
        self._ip_scale = scale
        unet = self.attached_unet
        if unet is not None:
            for proc_name, proc in unet.attn_processors.items():
                if isinstance(proc, IPAdapterAttnProcessor2_0):
                    name = proc_name[: -len(".processor")]
                    proc.scale = [scale[name] if isinstance(scale, dict) else scale]

    @property
    def lora_fused(self) -> bool:
        """Whether the LoRA is currently merged into the attached UNet's weights."""
        return self._unfused_weights is not None

    def fuse_lora(self) -> None:
        """Merge the LoRA into the attached UNet's weights, for inference.

        ``W <- W + up @ down`` (scaling 1), then the peft wrappers are removed, so the UNet runs its
        plain ``nn.Linear`` layers: the per-step LoRA cost disappears. The original weights are kept,
        so ``unfuse_lora``/``detach`` restore them bit-exactly. While fused, changing the LoRA weights
        (training) has no effect: ``unfuse_lora`` first.

        Raises:
            ValueError: the adapter is not attached.
        """
        unet = self.attached_unet
        if unet is None:
            raise ValueError("attach the adapter to a UNet before fusing its LoRA")
        if self.config.lora_rank == 0 or self.lora_fused:
            return
        unet.unload_lora()  # back to the plain linears (weights untouched)
        originals = {}
        with torch.no_grad():
            for name, _, _ in self.config.attn_layers:
                for target in LORA_TARGETS:
                    full = f"{name}.{target}"
                    linear = unet.get_submodule(full)
                    pair = self.lora[_key(full)]
                    originals[full] = linear.weight.detach().clone()
                    delta = pair["up"].weight.float() @ pair["down"].weight.float()  # (out, in)
                    linear.weight.add_(delta.to(linear.weight.dtype))
        self._unfused_weights = originals

    def unfuse_lora(self) -> None:
        """Put the original weights back (bit-exact) and the LoRA layers in again."""
        if not self.lora_fused:
            return
        self._restore_weights()
        self._add_lora(self.attached_unet)

    def _restore_weights(self) -> None:
        unet = self.attached_unet
        with torch.no_grad():
            for full, weight in self._unfused_weights.items():
                unet.get_submodule(full).weight.copy_(weight)
        self._unfused_weights = None

    def detach(self) -> None:
        """Remove the ID channel from the UNet it was attached to.

        The UNet gets back its own attention processors, no LoRA layers and its original weights
        (bit-exact, also after ``fuse_lora``). The adapter keeps its weights; ``attach`` installs
        them again.
        """
        unet = self.attached_unet
        if unet is None:
            return
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        if self.lora_fused:
            self._restore_weights()
        elif self.config.lora_rank > 0:
            unet.unload_lora()
        unet.set_attn_processor(self._saved_processors)
        self._saved_processors = None
        self._attached_ref = None

    # ------------------------------------------------------------------ ID tokens
    def project(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor | None = None, s_scale: float = 1.0) -> torch.Tensor:
        """ID tokens from ArcFace (and, for ``projection="plus"``, CLIP) features.

        IP-Adapter-FaceID's ``MLPProjModel`` (``"mlp"``) or ``ProjPlusModel`` (``"plus"``), or
        IP-Adapter's ``Resampler`` as InstantID feeds it (``"resampler"``: its pipeline reshapes the
        embedding to ``(1, -1, 512)``, i.e. one face is a 1-token sequence; several embeddings of one
        image form a longer sequence the same 16 queries attend to).

        Args:
            id_embeds: ``(N, 512)`` float ArcFace embedding (zeros for the unconditional branch):
                insightface's ``normed_embedding`` (unit length) for IP-Adapter-FaceID(-Plus, -Portrait)
                and Face-MakeUp; its unnormalised ``embedding`` (norm about 20-30) for InstantID (its
                pipeline and demos pass ``face_info['embedding']``) and FaceID-Portrait-SDXL-unnorm.
                ``"resampler"`` also takes ``(N, L, 512)``: L embeddings read as one sequence.
            clip_embeds: ``(N, 257, C)`` float CLIP ``hidden_states[-2]`` of the face crops
                (C = ``clip_embed_dim``; the features of a zero image for the unconditional branch).
                Needed by ``"plus"``, ignored by ``"mlp"`` and ``"resampler"``.
            s_scale: weight of the resampler's output added to the MLP tokens ("shortcut"; Face-MakeUp
                demo 1.0, V2 web demo 0.7). Used only by ``"plus"`` with ``shortcut=True``.

        Returns:
            ``(N, num_tokens, cross_attention_dim)`` ID tokens, in the adapter's dtype.

        Raises:
            ValueError: wrong shapes, or no ``clip_embeds`` for a ``"plus"`` projection.
        """
        projection = self.config.projection
        plus = projection == "plus"
        dim = self.config.id_embed_dim
        ok_id = (id_embeds.ndim == 2 or (projection == "resampler" and id_embeds.ndim == 3)) and id_embeds.shape[-1] == dim
        if not ok_id or (plus and (clip_embeds is None or clip_embeds.ndim != 3 or len(id_embeds) != len(clip_embeds))):
            raise ValueError(
                f"expected id_embeds (N, {dim})" + (f" or (N, L, {dim})" if projection == "resampler" else "")
                + (f" and clip_embeds (N, L, {self.config.clip_embed_dim})" if plus else "")
                + f", got {tuple(id_embeds.shape)} and {None if clip_embeds is None else tuple(clip_embeds.shape)}"
            )
        proj = self.image_proj
        if projection == "resampler":
            seq = id_embeds if id_embeds.ndim == 3 else id_embeds[:, None]  # (N, L, 512): InstantID's (1, -1, 512)
            return proj(seq.to(self.dtype))  # (N, T, D)
        if not plus:
            return proj(id_embeds.to(self.dtype))  # (N, T, D)
        proj.clip_embeds = clip_embeds[:, None].to(self.dtype)  # (N, 1, L, C): diffusers' layout
        proj.shortcut, proj.shortcut_scale = bool(self.config.shortcut), float(s_scale)
        try:
            return proj(id_embeds.to(self.dtype))  # (N, T, D)
        finally:
            proj.clip_embeds = None


def _like(module, ref):
    """``module`` on ``ref``'s device, cast only if the dtype differs (diffusers warns on any cast)."""
    module = module.to(ref.device)
    return module if module.dtype == ref.dtype else module.to(dtype=ref.dtype)


def attention_layers(unet) -> list[list]:
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
