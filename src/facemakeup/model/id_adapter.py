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

Other peft LoRAs in the same UNet (a user's LCM-LoRA, a style LoRA, loaded by diffusers'
``load_lora_weights``) coexist with ours: the LoRA is one more peft adapter (``LORA_ADAPTER_NAME``)
in the same wrapper layers, attaching keeps the adapters that were active, and removing ours (``detach``,
``fuse_lora``) deletes only ``LORA_ADAPTER_NAME`` and unwraps the layers that held only it. Its weight
(peft's ``scaling``, set by ``set_adapters``) survives fusing and re-attaching.

Example:
    >>> adapter = FaceIDAdapter.for_unet(unet, clip_embed_dim=1280, lora_rank=128)
    >>> adapter.attach(unet)
    >>> tokens = adapter.project(id_embeds, clip_embeds, s_scale=1.0)  # (N, 4, 768)
    >>> noise = unet(latents, t, encoder_hidden_states=(text_embeds, [tokens[:, None]])).sample
"""

from __future__ import annotations

import warnings
import weakref

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import (IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection,
                                         IPAdapterPlusImageProjection)
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
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
        self._merged_before: set[str] = set()  # peft adapters already merged into our layers when we fused
        self._lora_scales: dict[str, float] = {}  # {layer name: weight} of our LoRA where it is not 1.0
        self._fused_scale = 1.0  # the lora_scale of the current fuse
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
        """Wrap every LoRA target of ``unet`` in a peft layer holding this adapter's own linears.

        Other peft adapters already in ``unet`` stay as they were: those active stay active (ours is
        added to them), merged ones merged, a disabled LoRA stays disabled. Our per-layer weights are put back.
        """
        if self.config.lora_rank == 0:
            return
        rank = self.config.lora_rank
        active, disabled = peft_active_adapters(unet), peft_disabled(unet)
        # peft unmerges every merged LoRA when it adds an adapter; adding ours changes no base weight, so the
        # merged ones stay merged: their bookkeeping is set aside while ours goes in
        merged = {m: list(m.merged_adapters) for m in unet.modules() if isinstance(m, BaseTunerLayer) and m.merged_adapters}
        for m in merged:
            m.merged_adapters.clear()
        try:
            with warnings.catch_warnings():  # peft: "Already found a `peft_config` attribute": another LoRA, on purpose
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)), adapter_name=LORA_ADAPTER_NAME)
        finally:
            for m, names in merged.items():
                m.merged_adapters.extend(names)
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                full = f"{name}.{target}"
                layer = unet.get_submodule(full)
                pair = self.lora[_key(full)]
                layer.lora_A[LORA_ADAPTER_NAME] = pair["down"]  # shared, not copied
                layer.lora_B[LORA_ADAPTER_NAME] = pair["up"]
                if full in self._lora_scales:
                    layer.set_scale(LORA_ADAPTER_NAME, self._lora_scales[full])
        if active:  # diffusers' add_adapter leaves only the new adapter active
            unet.set_adapter([*active, LORA_ADAPTER_NAME])
        if disabled:
            unet.disable_lora()

    def _remove_lora(self, unet) -> None:
        """Take our LoRA out of ``unet``'s peft layers (its linears stay in this adapter).

        Alone in the UNet: every peft wrapper goes (``unload_lora``), the plain ``nn.Linear`` layers
        are back. Beside other adapters: only ours is deleted, the layers that held only ours are
        unwrapped, and the other adapters keep their active/inactive state.
        """
        if self.config.lora_rank == 0 or LORA_ADAPTER_NAME not in getattr(unet, "peft_config", {}):
            return
        self._lora_scales = self.lora_layer_scales(unet)
        if set(unet.peft_config) == {LORA_ADAPTER_NAME}:
            unet.unload_lora()
            return
        active = [a for a in peft_active_adapters(unet) if a != LORA_ADAPTER_NAME]
        with warnings.catch_warnings():  # peft names a new active adapter; we set ours below
            warnings.simplefilter("ignore")
            unet.delete_adapters(LORA_ADAPTER_NAME)
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                full = f"{name}.{target}"
                layer = unet.get_submodule(full)
                if isinstance(layer, BaseTunerLayer) and not layer._all_available_adapter_names() and not layer.merged_adapters:
                    parent, child = full.rsplit(".", 1)
                    setattr(unet.get_submodule(parent), child, layer.get_base_layer())
        if getattr(unet, "peft_config", None):
            unet.set_adapter(active)

    def lora_layer_scales(self, unet=None) -> dict[str, float]:
        """``{layer name: weight}`` of our LoRA where its weight is not 1.0: read from the peft layers
        while they hold it (``set_adapters`` writes there), else the weights kept by this adapter."""
        unet = unet if unet is not None else self.attached_unet
        if unet is None or LORA_ADAPTER_NAME not in getattr(unet, "peft_config", {}):
            return dict(self._lora_scales)
        scales = {}
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                full = f"{name}.{target}"
                value = float(unet.get_submodule(full).scaling[LORA_ADAPTER_NAME])  # weight * alpha / r, alpha = r
                if value != 1.0:
                    scales[full] = value
        return scales

    def set_lora_layer_scales(self, scales: dict[str, float]) -> None:
        """Put back weights read by ``lora_layer_scales`` (into the peft layers when they hold our LoRA)."""
        self._lora_scales = dict(scales)
        unet = self.attached_unet
        if unet is None or LORA_ADAPTER_NAME not in getattr(unet, "peft_config", {}):
            return
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                full = f"{name}.{target}"
                unet.get_submodule(full).set_scale(LORA_ADAPTER_NAME, self._lora_scales.get(full, 1.0))

    @property
    def lora_in_peft(self) -> bool:
        """Whether our LoRA is in the attached UNet's peft layers (attached, with LoRA, not fused)."""
        unet = self.attached_unet
        return unet is not None and LORA_ADAPTER_NAME in getattr(unet, "peft_config", {})

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

    def fuse_lora(self, lora_scale: float = 1.0, safe_fusing: bool = False) -> None:
        """Merge the LoRA into the attached UNet's weights, for inference.

        ``W <- W + lora_scale * weight * up @ down`` (``weight``: our adapter's weight per layer, 1.0
        unless ``set_adapters`` changed it), then our LoRA leaves the peft layers (``_remove_lora``),
        so the UNet runs plain ``nn.Linear`` layers where no other LoRA sits: the per-step LoRA cost
        disappears. The original weights are kept, so ``unfuse_lora``/``detach`` restore them
        bit-exactly. While fused, changing the LoRA weights (training) has no effect: ``unfuse_lora`` first.

        Args:
            lora_scale: multiplies the merged delta (diffusers' ``fuse_lora(lora_scale=...)``).
            safe_fusing: refuse (and leave the UNet as it was) when a merged weight is not finite.

        Raises:
            ValueError: the adapter is not attached, or ``safe_fusing`` found NaN/inf.
        """
        unet = self.attached_unet
        if unet is None:
            raise ValueError("attach the adapter to a UNet before fusing its LoRA")
        if self.config.lora_rank == 0 or self.lora_fused:
            return
        self._merged_before = self._peft_merged(unet)
        self._remove_lora(unet)  # back to the plain linears (weights untouched); keeps our weights
        originals = {}
        with torch.no_grad():
            for name, _, _ in self.config.attn_layers:
                for target in LORA_TARGETS:
                    full = f"{name}.{target}"
                    linear = _base(unet.get_submodule(full))
                    pair = self.lora[_key(full)]
                    originals[full] = linear.weight.detach().clone()
                    scale = float(lora_scale) * self._lora_scales.get(full, 1.0)
                    delta = scale * (pair["up"].weight.float() @ pair["down"].weight.float())  # (out, in)
                    linear.weight.add_(delta.to(linear.weight.dtype))
                    if safe_fusing and not torch.isfinite(linear.weight).all():
                        self._unfused_weights = originals
                        self._restore_weights()
                        self._add_lora(unet)
                        raise ValueError(f"fusing the face adapter's LoRA gives non-finite weights in {full}; not fused")
        self._unfused_weights = originals
        self._fused_scale = float(lora_scale)

    @property
    def fused_lora_scale(self) -> float:
        """The ``lora_scale`` the LoRA was fused with (meaningful while ``lora_fused``)."""
        return self._fused_scale

    def unfuse_lora(self, reinsert: bool = True) -> None:
        """Put the original weights back (bit-exact) and the LoRA layers in again.

        Args:
            reinsert: put our LoRA back into the peft layers. ``False`` leaves it out (no effect on the
                UNet) until ``fuse_lora`` or ``insert_lora``: the pipeline's ``fuse_lora``/``unfuse_lora``
                use it to merge or unmerge other LoRAs in between (adding a peft adapter would make peft
                unmerge every merged one).

        Raises:
            ValueError: another LoRA was fused into the same layers after ours (unfuse it first:
                ``FaceMakeUpPipeline.unfuse_lora`` unfuses in the right order).
        """
        if not self.lora_fused:
            return
        self._restore_weights()
        if reinsert:
            self._add_lora(self.attached_unet)

    def insert_lora(self) -> None:
        """Put our LoRA back into the attached UNet's peft layers after ``unfuse_lora(reinsert=False)``
        (nothing to do when it is there or fused)."""
        unet = self.attached_unet
        if unet is not None and self.config.lora_rank > 0 and not self.lora_fused and not self.lora_in_peft:
            self._add_lora(unet)

    def _peft_merged(self, unet) -> set[str]:
        """Names of the peft adapters merged into our LoRA target layers."""
        merged = set()
        for name, _, _ in self.config.attn_layers:
            for target in LORA_TARGETS:
                layer = unet.get_submodule(f"{name}.{target}")
                if isinstance(layer, BaseTunerLayer):
                    merged.update(layer.merged_adapters)
        return merged

    def _restore_weights(self) -> None:
        unet = self.attached_unet
        later = self._peft_merged(unet) - self._merged_before
        if later:
            raise ValueError(f"the LoRA(s) {sorted(later)} were fused into the UNet after the face adapter's LoRA: unfuse them "
                             "first (the pipeline's unfuse_lora() unfuses in the right order)")
        with torch.no_grad():
            for full, weight in self._unfused_weights.items():
                _base(unet.get_submodule(full)).weight.copy_(weight)
        self._unfused_weights = None

    def detach(self) -> None:
        """Remove the ID channel from the UNet it was attached to.

        The UNet gets back its own attention processors, no LoRA layers of ours and its original
        weights (bit-exact, also after ``fuse_lora``); other peft LoRAs in it stay, as they were.
        The adapter keeps its weights (and its LoRA's weight); ``attach`` installs them again.

        Raises:
            ValueError: another LoRA was fused into the same layers after ours (``unfuse_lora``).
        """
        unet = self.attached_unet
        if unet is None:
            return
        if self.lora_fused:
            self._restore_weights()
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self._remove_lora(unet)
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


def _base(layer):
    """The ``nn.Linear`` under a peft wrapper (or the layer itself)."""
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


def peft_active_adapters(model) -> list[str]:
    """The active peft adapters of ``model`` (those of its first peft layer; diffusers sets all
    layers alike), ``[]`` without peft layers."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            return list(module.active_adapters)
    return []


def peft_disabled(model) -> bool:
    """Whether ``model``'s peft layers are disabled (diffusers' ``disable_lora``)."""
    return any(isinstance(m, BaseTunerLayer) and m.disable_adapters for m in model.modules())


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
