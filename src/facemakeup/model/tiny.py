"""Tiny, randomly initialised components with SD 1.5's and SDXL's classes, for tests, ``--model tiny``
and ``--model tiny-xl``.

Nothing here is trained: a pipeline built from these makes noise, not faces. Its use is to run the
whole code path (loading, saving, the ID channel, the CLI) on any machine in seconds, as diffusers'
``get_dummy_components`` do in its tests (STYLE.md 13).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer,
                          CLIPVisionConfig, CLIPVisionModelWithProjection)
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: Cross-attention width of the tiny UNet (SD 1.5: 768).
TINY_CROSS_DIM = 32
#: Input side of the tiny CLIP image encoder (CLIP ViT-H-14: 224).
TINY_CLIP_SIZE = 32
#: Widths of the tiny SDXL's two text encoders; their penultimate states are concatenated (SDXL: 768 + 1280).
TINY_XL_TEXT_DIMS = (32, 32)


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary (514 tokens) and no merges.

    Same class, special tokens and padding as SD 1.5's tokenizer; words are split into characters.
    """
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_components(seed: int = 0, sample_size: int = 32) -> dict:
    """Build a tiny SD 1.5-shaped set of components.

    Args:
        seed: torch seed for the random weights.
        sample_size: latent side of the UNet; images are ``2 * sample_size`` pixels (the tiny VAE
            downsamples by 2).

    Returns:
        dict with ``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``,
        ``image_encoder``, ``feature_extractor`` (all float32, CPU).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = _tiny_vae(sample_size)
    text_encoder = CLIPTextModel(_tiny_text_config(TINY_CROSS_DIM))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_tokenizer(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        **_tiny_image_encoder(),
    }


def tiny_xl_components(seed: int = 0, sample_size: int = 32) -> dict:
    """Build a tiny SDXL-shaped set of components (``--model tiny-xl``).

    The shape of SDXL's UNet at a tiny width: three levels, the first without attention, the two
    others with transformer depth 1 and 2 (SDXL: 2 and 10), linear projections, ``text_time``
    micro-conditioning (6 size/crop numbers of ``addition_time_embed_dim`` each plus the pooled
    text embedding of the second encoder); two text encoders whose penultimate hidden states are
    concatenated into the cross-attention context (``TINY_XL_TEXT_DIMS``; SDXL: 768 + 1280 = 2048);
    an Euler scheduler as in SDXL-base's ``scheduler/`` folder.

    Args:
        seed: torch seed for the random weights.
        sample_size: latent side; images are ``2 * sample_size`` pixels (the tiny VAE downsamples by 2).

    Returns:
        dict with ``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``, ``tokenizer_2``,
        ``unet``, ``scheduler``, ``image_encoder``, ``feature_extractor`` (all float32, CPU).
    """
    torch.manual_seed(seed)
    d1, d2 = TINY_XL_TEXT_DIMS
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        cross_attention_dim=d1 + d2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + d2,
        norm_num_groups=8,
    )
    vae = _tiny_vae(sample_size)
    text_encoder = CLIPTextModel(_tiny_text_config(d1))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(d2, projection_dim=d2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tiny_tokenizer(),
        "tokenizer_2": tiny_tokenizer(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        **_tiny_image_encoder(),
    }


def _tiny_vae(sample_size: int) -> AutoencoderKL:
    """A 2-level ``AutoencoderKL`` (downsampling by 2) for images of ``2 * sample_size`` pixels."""
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )


def _tiny_text_config(hidden: int, projection_dim: int = 512) -> CLIPTextConfig:
    """A 2-layer CLIP text tower over ``tiny_tokenizer``'s 514 tokens."""
    return CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
                          projection_dim=projection_dim)


def _tiny_image_encoder() -> dict:
    """``image_encoder`` (a 3-layer CLIP vision tower, 32 px input, width 32) and its ``feature_extractor``."""
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=3, num_attention_heads=4,
                         image_size=TINY_CLIP_SIZE, patch_size=4)
    )
    size = {"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE}
    return {"image_encoder": encoder.eval(), "feature_extractor": CLIPImageProcessorPil(size={"shortest_edge": TINY_CLIP_SIZE}, crop_size=size)}


def random_faceid_plusv2_state_dict(unet: UNet2DConditionModel, clip_dim: int, seed: int = 0, rank: int = 4,
                                    std: float = 0.05) -> dict:
    """Random weights in h94's ``ip-adapter-faceid-plusv2_sd15.bin`` layout, sized for ``unet``.

    The key names and shapes of IP-Adapter's ``ProjPlusModel`` + ``FacePerceiverResampler``
    (``image_proj``: a 512 -> 1024 -> 4 x d MLP with LayerNorm, a 4-layer perceiver resampler
    from ``clip_dim``) and of its attention processors (``ip_adapter``: ``{i}.to_{q,k,v,out}_lora``
    down/up of ``rank`` for every processor ``i`` in ``unet.attn_processors`` order, and
    ``{i}.to_{k,v}_ip`` for the cross-attention ones), d = the UNet's cross-attention width.
    For tests and speed benchmarks of the loaders: the values mean nothing.

    Args:
        unet: the UNet the weights are for. clip_dim: the CLIP image encoder's hidden size.
        seed: ``torch.Generator`` seed. rank: LoRA rank. std: standard deviation of the weights
            (LayerNorm weights are 1 + that noise).

    Returns:
        ``{"image_proj": {...}, "ip_adapter": {...}}`` of float32 tensors.
    """
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * std

    d = unet.config.cross_attention_dim
    inner = 64 * max(d // 64, 1)
    r = "perceiver_resampler."
    proj = {"proj.0.weight": w(1024, 512), "proj.0.bias": w(1024), "proj.2.weight": w(4 * d, 1024), "proj.2.bias": w(4 * d),
            "norm.weight": 1 + w(d), "norm.bias": w(d),
            r + "proj_in.weight": w(d, clip_dim), r + "proj_in.bias": w(d), r + "proj_out.weight": w(d, d), r + "proj_out.bias": w(d),
            r + "norm_out.weight": 1 + w(d), r + "norm_out.bias": w(d)}
    for i in range(4):
        p = f"{r}layers.{i}."
        proj.update({p + "0.norm1.weight": 1 + w(d), p + "0.norm1.bias": w(d), p + "0.norm2.weight": 1 + w(d), p + "0.norm2.bias": w(d),
                     p + "0.to_q.weight": w(inner, d), p + "0.to_kv.weight": w(2 * inner, d), p + "0.to_out.weight": w(d, inner),
                     p + "1.0.weight": 1 + w(d), p + "1.0.bias": w(d), p + "1.1.weight": w(4 * d, d), p + "1.3.weight": w(d, 4 * d)})
    ip = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden, ctx = attn.to_k.out_features, attn.to_k.in_features
        for t, fan_in in (("to_q", hidden), ("to_k", ctx), ("to_v", ctx), ("to_out", hidden)):
            ip[f"{i}.{t}_lora.down.weight"] = w(rank, fan_in)
            ip[f"{i}.{t}_lora.up.weight"] = w(hidden, rank)
        if attn.is_cross_attention:
            ip[f"{i}.to_k_ip.weight"] = w(hidden, d)
            ip[f"{i}.to_v_ip.weight"] = w(hidden, d)
    return {"image_proj": proj, "ip_adapter": ip}


#: Layouts ``random_ip_adapter_state_dict`` builds (the names ``model.loaders.detect_layout`` returns).
RANDOM_LAYOUTS = ("ip-adapter-faceid", "ip-adapter-faceid-plus", "ip-adapter-faceid-portrait",
                  "ip-adapter-faceid-portrait-unnorm", "instantid")


def random_ip_adapter_state_dict(unet: UNet2DConditionModel, layout: str, clip_dim: int = 32, seed: int = 0, rank: int = 4,
                                 std: float = 0.05, lora: bool = True, resampler_dim: int | None = None,
                                 resampler_heads: int | None = None) -> dict:
    """Random weights in one published IP-Adapter-family layout, sized for ``unet`` (SD 1.5 or SDXL).

    The key names and shapes of (d = the UNet's cross-attention width; processors ``i`` in
    ``unet.attn_processors`` order, ``{i}.to_{k,v}_ip`` on the cross-attention ones):

    - ``"ip-adapter-faceid"``: h94 ``ip-adapter-faceid_sd15.bin`` / ``_sdxl.bin``: ``MLPProjModel``
      (512 -> 1024 -> 4 x d, LayerNorm d) + ``{i}.to_{q,k,v,out}_lora.{down,up}`` of ``rank`` on every
      processor (``lora=False``: IP k/v only, the file a separate ``*_lora.safetensors`` goes with);
    - ``"ip-adapter-faceid-plus"``: ``-plusv2_sd15.bin`` / ``-plusv2_sdxl.bin``:
      ``random_faceid_plusv2_state_dict`` (``lora=False`` drops its LoRA);
    - ``"ip-adapter-faceid-portrait"``: ``-portrait_sd15.bin`` / ``-portrait_sdxl.bin``: ``MLPProjModel``
      with 16 tokens, no LoRA;
    - ``"ip-adapter-faceid-portrait-unnorm"``: ``-portrait_sdxl_unnorm.bin``: IP-Adapter's ``Resampler``
      at width d (16 queries, ``resampler_heads`` default d * 12 / 2048, at least 1), no LoRA;
    - ``"instantid"``: InstantID ``ip-adapter.bin``: ``Resampler`` (16 queries over the 512-D embedding,
      width ``resampler_dim`` default d * 1280 / 2048, heads default width / 64, at least 1), no LoRA.

    For tests and speed benchmarks of the loaders: the values mean nothing.

    Args:
        unet: the UNet the weights are for. layout: one of ``RANDOM_LAYOUTS``.
        clip_dim: the CLIP image encoder's hidden size (Plus only). seed: ``torch.Generator`` seed.
        rank: LoRA rank. std: standard deviation of the weights (LayerNorm weights are 1 + that noise).
        lora: FaceID / Plus: include the LoRA (as h94's ``.bin`` files do).
        resampler_dim, resampler_heads: the Resampler's width and heads (see above).

    Returns:
        ``{"image_proj": {...}, "ip_adapter": {...}}`` of float32 tensors.

    Raises:
        ValueError: unknown ``layout``.
    """
    if layout not in RANDOM_LAYOUTS:
        raise ValueError(f"layout must be one of {RANDOM_LAYOUTS}, got {layout!r}")
    if layout == "ip-adapter-faceid-plus":
        state = random_faceid_plusv2_state_dict(unet, clip_dim, seed, rank, std)
        if not lora:
            state["ip_adapter"] = {k: v for k, v in state["ip_adapter"].items() if "_lora." not in k}
        return state
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * std

    d = unet.config.cross_attention_dim
    if layout in ("ip-adapter-faceid", "ip-adapter-faceid-portrait"):
        tokens = 4 if layout == "ip-adapter-faceid" else 16
        proj = {"proj.0.weight": w(1024, 512), "proj.0.bias": w(1024), "proj.2.weight": w(tokens * d, 1024),
                "proj.2.bias": w(tokens * d), "norm.weight": 1 + w(d), "norm.bias": w(d)}
    else:
        width = d if layout == "ip-adapter-faceid-portrait-unnorm" else (resampler_dim or max(d * 1280 // 2048, 1))
        heads = resampler_heads or max((d * 12 // 2048) if layout == "ip-adapter-faceid-portrait-unnorm" else width // 64, 1)
        inner = 64 * heads
        proj = {"latents": w(1, 16, width) * 20, "proj_in.weight": w(width, 512), "proj_in.bias": w(width),
                "proj_out.weight": w(d, width), "proj_out.bias": w(d), "norm_out.weight": 1 + w(d), "norm_out.bias": w(d)}
        for i in range(4):
            p = f"layers.{i}."
            proj.update({p + "0.norm1.weight": 1 + w(width), p + "0.norm1.bias": w(width), p + "0.norm2.weight": 1 + w(width),
                         p + "0.norm2.bias": w(width), p + "0.to_q.weight": w(inner, width), p + "0.to_kv.weight": w(2 * inner, width),
                         p + "0.to_out.weight": w(width, inner), p + "1.0.weight": 1 + w(width), p + "1.0.bias": w(width),
                         p + "1.1.weight": w(4 * width, width), p + "1.3.weight": w(width, 4 * width)})
    with_lora = lora and layout == "ip-adapter-faceid"
    ip = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden, ctx = attn.to_k.out_features, attn.to_k.in_features
        if with_lora:
            for t, fan_in in (("to_q", hidden), ("to_k", ctx), ("to_v", ctx), ("to_out", hidden)):
                ip[f"{i}.{t}_lora.down.weight"] = w(rank, fan_in)
                ip[f"{i}.{t}_lora.up.weight"] = w(hidden, rank)
        if attn.is_cross_attention:
            ip[f"{i}.to_k_ip.weight"] = w(hidden, d)
            ip[f"{i}.to_v_ip.weight"] = w(hidden, d)
    return {"image_proj": proj, "ip_adapter": ip}


def separate_lora_state_dict(state: dict, unet: UNet2DConditionModel, naming: str = "h94-sdxl",
                             alpha: float | None = None) -> tuple[dict, dict]:
    """Split an IP-Adapter-FaceID(-Plus) state dict into an IP-k/v-only file and its separate LoRA file.

    The LoRA file has the keys of h94's ``ip-adapter-faceid*_lora.safetensors``: one kohya module per
    attention projection of the UNet, ``<module>.lora_down.weight`` (rank, in), ``.lora_up.weight``
    (out, rank), and with ``naming="h94-sdxl"`` ``.alpha`` (float32 scalar). Module names:

    - ``"kohya"``: ``lora_unet_<layer with _>_<to_q|to_k|to_v|to_out_0>`` (h94's SD 1.5 LoRA files; no alpha);
    - ``"h94-sdxl"``: ``lora_unet_<layer with _>_<q_proj|k_proj|v_proj|out_proj>`` (h94's SDXL LoRA files, as
      ComfyUI reports their keys in cubiq/ComfyUI_IPAdapter_plus#210; the file size fits 560 modules of rank
      128 in float16 with float32 alphas);
    - ``"h94-sdxl-bare"``: the same without the ``lora_unet_`` prefix (as that ComfyUI log prints them).

    Args:
        state: ``{"image_proj", "ip_adapter"}`` with ``{i}.to_{q,k,v,out}_lora`` keys (e.g.
            ``random_ip_adapter_state_dict(unet, "ip-adapter-faceid")``).
        unet: the UNet it is for (processor numbering). naming: see above.
        alpha: the ``.alpha`` written (default: the rank, i.e. LoRA scale 1); with ``"kohya"`` only if given.

    Returns:
        ``(state without LoRA keys, LoRA file dict)``; tensors are shared, not copied.

    Raises:
        ValueError: unknown ``naming`` or no LoRA in ``state``.
    """
    names = {"kohya": ("lora_unet_", {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out_0"}),
             "h94-sdxl": ("lora_unet_", {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}),
             "h94-sdxl-bare": ("", {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"})}
    if naming not in names:
        raise ValueError(f"naming must be one of {sorted(names)}, got {naming!r}")
    ip = state["ip_adapter"]
    if not any("_lora." in k for k in ip):
        raise ValueError("the state dict holds no LoRA (ip_adapter.*_lora.*)")
    prefix, projections = names[naming]
    lora = {}
    for i, proc in enumerate(unet.attn_processors):
        layer = proc[: -len(".processor")].replace(".", "_")
        for ours, theirs in projections.items():
            module = f"{prefix}{layer}_{theirs}"
            down = ip[f"{i}.{ours}_lora.down.weight"]
            lora[f"{module}.lora_down.weight"] = down
            lora[f"{module}.lora_up.weight"] = ip[f"{i}.{ours}_lora.up.weight"]
            if naming != "kohya" or alpha is not None:
                lora[f"{module}.alpha"] = torch.tensor(float(down.shape[0] if alpha is None else alpha))
    rest = {**state, "ip_adapter": {k: v for k, v in ip.items() if "_lora." not in k}}
    return rest, lora
#: The UNet modules LCM-LoRA (latent-consistency/lcm-lora-sdv1-5, -sdxl) puts LoRA on (rank 64).
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def random_lora_state_dict(unet: UNet2DConditionModel, rank: int = 4, seed: int = 0, std: float = 0.02,
                           targets: tuple[str, ...] = LCM_LORA_TARGETS) -> dict:
    """Random LoRA weights for ``unet`` in diffusers' format (what ``save_lora_weights`` writes and
    ``load_lora_weights`` reads): ``unet.<module>.lora_A.weight`` ``(rank, in)`` and ``.lora_B.weight``
    ``(out, rank)`` (convolutions: ``(rank, in, k, k)`` and ``(out, rank, 1, 1)``), standard deviation
    ``std``, on the modules named by ``targets`` (default: LCM-LoRA's). Built by peft on ``unet``,
    which is left as it was (no peft layers). For tests and speed benchmarks: the values mean nothing.

    Args:
        unet: the UNet the LoRA is for (plain: no peft layers).
        rank: LoRA rank (``lora_alpha`` = rank, scaling 1). seed: ``torch.Generator`` seed.

    Returns:
        ``{key: float32 CPU tensor}``; save with ``StableDiffusionPipeline.save_lora_weights(DIR,
        unet_lora_layers=sd)`` after stripping the ``unet.`` prefix, or pass to ``load_lora_weights``.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = "random_lora"
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)), adapter_name=name)
    try:
        g = torch.Generator().manual_seed(seed)
        state = get_peft_model_state_dict(unet, adapter_name=name)
        return {f"unet.{k}": (torch.randn(v.shape, generator=g) * std) for k, v in state.items()}
    finally:
        unet.unload_lora()
