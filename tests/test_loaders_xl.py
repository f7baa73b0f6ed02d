"""SDXL identity checkpoints through the loaders: h94's FaceID / FaceID-PlusV2 / Portrait SDXL files (and the
separate LoRA file), InstantID's ip-adapter.bin and IdentityNet folder.

Each file is built with the published key names at the tiny SDXL UNet's sizes (``model.tiny``), saved, and
read two ways: by ours (``load_checkpoint`` -> ``FaceIDAdapter.attach`` + ``project``, ID tokens passed
explicitly) and by diffusers' own ``StableDiffusionXLPipeline.load_ip_adapter`` (+ ``load_lora_weights`` for
the separate LoRA), with the same latents, text context and ``text_embeds``/``time_ids``. The published
shapes themselves are checked against the real SDXL-base UNet layout and the files' sizes on the hub.
"""

import copy
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, StableDiffusionXLPipeline, UNet2DConditionModel

from facemakeup.errors import CheckpointLayoutError
from facemakeup.model import FaceIDAdapter
from facemakeup.model.loaders import (detect_layout, export_lora_state_dict, load_checkpoint, read_state_dict, write_checkpoint,
                                      write_lora_file)
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import (TINY_XL_TEXT_DIMS, random_ip_adapter_state_dict, separate_lora_state_dict, tiny_components,
                                   tiny_xl_components)

D = sum(TINY_XL_TEXT_DIMS)  # the tiny SDXL UNet's cross-attention width (SDXL: 768 + 1280 = 2048)
CLIP = 32  # the tiny CLIP's hidden width (ViT-H-14: 1280)
#: layouts whose ArcFace input is insightface's normed_embedding (the others read the raw embedding)
NORMED = ("ip-adapter-faceid", "ip-adapter-faceid-plus", "ip-adapter-faceid-portrait")


@pytest.fixture(scope="module")
def xl():
    return tiny_xl_components(seed=3)


def save(state, path):
    """A nested state as h94 ships it (.bin pickle) or flat with group prefixes (.safetensors); a flat LoRA dict as is."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{g}.{k}": v for g, part in state.items() for k, v in part.items()} if "ip_adapter" in state else state
        save_file({k: v.contiguous() for k, v in flat.items()}, path)
    else:
        torch.save(state, path)
    return path


def public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def inputs(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return dict(latents=torch.randn(n, 4, 32, 32, generator=g), text=torch.randn(n, 77, D, generator=g),
                added={"text_embeds": torch.randn(n, TINY_XL_TEXT_DIMS[1], generator=g),
                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(n, 1)},
                ids=torch.randn(n, 512, generator=g) * 1.2, clip=torch.randn(n, 65, CLIP, generator=g))


def id_embeds(x, layout):
    return F.normalize(x["ids"], dim=-1) if layout in NORMED else x["ids"]  # InstantID feeds face_info["embedding"]


def ours_noise(unet, ckpt_adapter, x, layout, scale=0.7, s_scale=0.8):
    """Our path: attach, project, pass the tokens explicitly: encoder_hidden_states=(text, [tokens[:, None]])."""
    adapter = ckpt_adapter
    adapter.attach(unet)
    adapter.set_ip_scale(scale)
    ids = id_embeds(x, layout)
    if adapter.config.multi_face == "concat":  # Portrait: both faces' tokens, concatenated, for every sample
        tokens = adapter.project(ids).reshape(1, -1, D).repeat(len(ids), 1, 1)  # (n, 2 * 16, D)
    else:
        tokens = adapter.project(ids, x["clip"], s_scale)  # (n, T, D)
    return unet(x["latents"], 500, encoder_hidden_states=(x["text"], [tokens[:, None]]), added_cond_kwargs=x["added"]).sample


def diffusers_pipeline(xl, folder, weight_name, lora_file=None):
    parts = {k: copy.deepcopy(v) for k, v in xl.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLPipeline(**parts, image_encoder=None, feature_extractor=None)
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weight_name, image_encoder_folder=None)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file))
    return pipe


def diffusers_noise(pipe, x, layout, scale=0.7, s_scale=0.8):
    """diffusers' documented path: set_ip_adapter_scale; PlusV2's clip_embeds + shortcut on the projection;
    ``image_embeds`` of shape (batch, images, ...) in ``added_cond_kwargs``."""
    pipe.set_ip_adapter_scale(scale)
    ids = id_embeds(x, layout)
    n = len(ids)
    if layout == "ip-adapter-faceid-plus":
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds, proj.shortcut, proj.shortcut_scale = x["clip"][:, None], True, s_scale
        embeds = ids[:, None]  # (n, 1, 512)
    elif layout == "instantid":
        embeds = ids[:, None, None]  # (n, 1 image, 1 token, 512): InstantID's reshape([1, -1, 512])
    elif layout == "ip-adapter-faceid-portrait-unnorm":
        embeds = ids[None, :, None].repeat(n, 1, 1, 1)  # (n, 2 faces, 1 token, 512)
    elif layout == "ip-adapter-faceid-portrait":
        embeds = ids[None].repeat(n, 1, 1)  # (n, 2 faces, 512)
    else:
        embeds = ids[:, None]  # (n, 1, 512)
    return pipe.unet(x["latents"], 500, encoder_hidden_states=x["text"], added_cond_kwargs={**x["added"], "image_embeds": [embeds]}).sample


LAYOUTS = ["ip-adapter-faceid", "ip-adapter-faceid-plus", "instantid", "ip-adapter-faceid-portrait", "ip-adapter-faceid-portrait-unnorm"]
FILES = {"ip-adapter-faceid": "ip-adapter-faceid_sdxl.bin", "ip-adapter-faceid-plus": "ip-adapter-faceid-plusv2_sdxl.bin",
         "instantid": "ip-adapter.bin", "ip-adapter-faceid-portrait": "ip-adapter-faceid-portrait_sdxl.bin",
         "ip-adapter-faceid-portrait-unnorm": "ip-adapter-faceid-portrait_sdxl_unnorm.bin"}


# ---------------------------------------------------------------------------- parity with diffusers' own path
@pytest.mark.parametrize("layout", LAYOUTS)
def test_unet_output_matches_diffusers_load_ip_adapter(tmp_path, xl, layout):
    state = random_ip_adapter_state_dict(xl["unet"], layout, clip_dim=CLIP, seed=LAYOUTS.index(layout) + 1)
    path = save(state, tmp_path / FILES[layout])
    x = inputs(seed=4)
    unet = copy.deepcopy(xl["unet"])
    ckpt = load_checkpoint(path, unet)
    assert ckpt.layout == layout and ckpt.controlnet is None
    mine = ours_noise(unet, ckpt.adapter, x, layout)
    pipe = diffusers_pipeline(xl, tmp_path, FILES[layout])
    theirs = diffusers_noise(pipe, x, layout)
    diff = (mine - theirs).abs().max().item()
    print(f"{layout}: max abs diff vs diffusers {diff:.2e}")
    assert diff < 1e-4
    # the ID channel acts (a zero scale changes the output) and, for FaceID, so does the LoRA
    ckpt.adapter.set_ip_scale(0.0)
    tokens = torch.zeros(2, ckpt.adapter.config.num_tokens, D)
    off = unet(x["latents"], 500, encoder_hidden_states=(x["text"], [tokens[:, None]]), added_cond_kwargs=x["added"]).sample
    assert (off - mine).abs().max().item() > 1e-3
    if ckpt.adapter.config.lora_rank:
        ckpt.adapter.detach()
        plain = unet(x["latents"], 500, encoder_hidden_states=x["text"], added_cond_kwargs=x["added"]).sample
        assert (plain - off).abs().max().item() > 1e-4  # the LoRA changes the text path


@pytest.mark.parametrize("layout", ["ip-adapter-faceid", "ip-adapter-faceid-plus", "instantid"])
def test_detach_restores_the_sdxl_unet_bit_exactly(tmp_path, xl, layout):
    unet = copy.deepcopy(xl["unet"])
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    procs = {k: type(v) for k, v in unet.attn_processors.items()}
    x = inputs(seed=5)
    before = unet(x["latents"], 10, encoder_hidden_states=x["text"], added_cond_kwargs=x["added"]).sample
    ckpt = load_checkpoint(save(random_ip_adapter_state_dict(unet, layout, clip_dim=CLIP, seed=9), tmp_path / "a.bin"), unet)
    ours_noise(unet, ckpt.adapter, x, layout)
    if ckpt.adapter.config.lora_rank:
        ckpt.adapter.fuse_lora()
    ckpt.adapter.detach()
    assert not hasattr(unet, "peft_config") and {k: type(v) for k, v in unet.attn_processors.items()} == procs
    for k, v in unet.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert torch.equal(unet(x["latents"], 10, encoder_hidden_states=x["text"], added_cond_kwargs=x["added"]).sample, before)


# ---------------------------------------------------------------------------- InstantID's Resampler, written out
def ref_resampler(p, emb):
    """InstantID's ``ip_adapter/resampler.py`` ``Resampler`` (IP-Adapter's): learned queries, PerceiverAttention
    over concat(features, queries) with the (q * s) @ (k * s) scaling, s = dim_head ** -1/4, FeedForward, proj_out + LN."""
    x = F.linear(emb, p["proj_in.weight"], p["proj_in.bias"])  # (n, L, width)
    lat = p["latents"].repeat(len(emb), 1, 1)  # (n, 16, width)
    width = lat.shape[-1]
    for i in range(4):
        q_ = f"layers.{i}."
        xn = F.layer_norm(x, (width,), p[q_ + "0.norm1.weight"], p[q_ + "0.norm1.bias"])
        ln = F.layer_norm(lat, (width,), p[q_ + "0.norm2.weight"], p[q_ + "0.norm2.bias"])
        q = F.linear(ln, p[q_ + "0.to_q.weight"])
        k, v = F.linear(torch.cat([xn, ln], dim=1), p[q_ + "0.to_kv.weight"]).chunk(2, dim=-1)
        heads = q.shape[-1] // 64
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, 64).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        s = 1 / math.sqrt(math.sqrt(64))
        out = (torch.softmax((q * s) @ (k * s).transpose(-2, -1), dim=-1) @ v).permute(0, 2, 1, 3).reshape(len(emb), lat.shape[1], -1)
        lat = F.linear(out, p[q_ + "0.to_out.weight"]) + lat
        ff = F.layer_norm(lat, (width,), p[q_ + "1.0.weight"], p[q_ + "1.0.bias"])
        lat = F.linear(F.gelu(F.linear(ff, p[q_ + "1.1.weight"])), p[q_ + "1.3.weight"]) + lat
    out = F.linear(lat, p["proj_out.weight"], p["proj_out.bias"])
    return F.layer_norm(out, (out.shape[-1],), p["norm_out.weight"], p["norm_out.bias"])


def test_instantid_tokens_are_its_resampler_over_a_1_token_sequence(tmp_path, xl):
    state = random_ip_adapter_state_dict(xl["unet"], "instantid", seed=2)
    adapter = load_checkpoint(save(state, tmp_path / "ip-adapter.bin"), xl["unet"]).adapter
    cfg = adapter.config
    assert (cfg.projection, cfg.num_tokens, cfg.lora_rank, cfg.resampler_dim, cfg.resampler_heads) == ("resampler", 16, 0, 40, 1)
    emb = torch.randn(3, 512, generator=torch.Generator().manual_seed(1)) * 25  # antelopev2's raw embedding
    tokens = adapter.project(emb)  # (3, 16, D): each face a (1, 512) sequence
    torch.testing.assert_close(tokens, ref_resampler(state["image_proj"], emb[:, None]), rtol=0, atol=1e-5)
    # several embeddings of one image: one sequence the 16 queries attend to, as InstantID's reshape([1, -1, 512])
    torch.testing.assert_close(adapter.project(emb[None]), ref_resampler(state["image_proj"], emb[None]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected id_embeds \(N, 512\) or \(N, L, 512\)"):
        adapter.project(emb[:, :100])


# ---------------------------------------------------------------------------- the separate LoRA file
@pytest.mark.parametrize("naming", ["h94-sdxl", "h94-sdxl-bare", "kohya"])
@pytest.mark.parametrize("layout", ["ip-adapter-faceid", "ip-adapter-faceid-plus"])
def test_separate_lora_file_gives_the_same_adapter_as_the_bin(tmp_path, xl, layout, naming):
    full = random_ip_adapter_state_dict(xl["unet"], layout, clip_dim=CLIP, seed=7)
    ip_only, lora = separate_lora_state_dict(full, xl["unet"], naming=naming)
    save(full, tmp_path / "full.bin")
    save(ip_only, tmp_path / "ipkv.bin")
    save(lora, tmp_path / "lora.safetensors")
    whole = load_checkpoint(tmp_path / "full.bin", xl["unet"])
    split = load_checkpoint(tmp_path / "ipkv.bin", xl["unet"], lora=tmp_path / "lora.safetensors")
    assert split.layout == whole.layout == layout
    assert public(split.adapter.config) == public(whole.adapter.config)
    for k, v in whole.adapter.state_dict().items():
        assert torch.equal(split.adapter.state_dict()[k], v), k  # the very same tensors


def test_separate_lora_matches_diffusers_load_lora_weights(tmp_path, xl):
    """ip-k/v-only file + kohya LoRA file with alpha = rank / 2: diffusers' load_ip_adapter + load_lora_weights
    (peft scale alpha / r) vs ours (the scale folded into up)."""
    full = random_ip_adapter_state_dict(xl["unet"], "ip-adapter-faceid", seed=8)
    ip_only, lora = separate_lora_state_dict(full, xl["unet"], naming="kohya", alpha=2.0)  # rank 4: scale 0.5
    save(ip_only, tmp_path / "ipkv.bin")
    save(lora, tmp_path / "lora_kohya.safetensors")
    _, lora_h94 = separate_lora_state_dict(full, xl["unet"], naming="h94-sdxl", alpha=2.0)
    save(lora_h94, tmp_path / "lora_h94.safetensors")
    x = inputs(seed=6)
    unet = copy.deepcopy(xl["unet"])
    ckpt = load_checkpoint(tmp_path / "ipkv.bin", unet, lora=tmp_path / "lora_h94.safetensors")
    mine = ours_noise(unet, ckpt.adapter, x, "ip-adapter-faceid")
    theirs = diffusers_noise(diffusers_pipeline(xl, tmp_path, "ipkv.bin", tmp_path / "lora_kohya.safetensors"), x, "ip-adapter-faceid")
    diff = (mine - theirs).abs().max().item()
    print(f"ip-adapter-faceid + separate LoRA (alpha = r / 2): max abs diff vs diffusers {diff:.2e}")
    assert diff < 1e-4
    # the folded scale is the only difference from the .bin's LoRA (scale 1)
    key = next(k for k in ckpt.adapter.state_dict() if k.endswith(".up.weight"))
    bin_adapter = load_checkpoint(save(full, tmp_path / "full.bin"), xl["unet"]).adapter
    torch.testing.assert_close(ckpt.adapter.state_dict()[key], 0.5 * bin_adapter.state_dict()[key], rtol=0, atol=0)


def test_exported_lora_file_round_trips_and_diffusers_reads_it(tmp_path, xl):
    full = random_ip_adapter_state_dict(xl["unet"], "ip-adapter-faceid", seed=10)
    ckpt = load_checkpoint(save(full, tmp_path / "full.bin"), xl["unet"])
    write_lora_file(tmp_path / "lora.safetensors", ckpt.adapter)
    lora = read_state_dict(tmp_path / "lora.safetensors")
    assert len(lora) == 3 * 4 * len(xl["unet"].attn_processors)  # down, up, alpha per projection
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in lora
    ip_only, _ = separate_lora_state_dict(full, xl["unet"])
    save(ip_only, tmp_path / "ipkv.bin")
    back = load_checkpoint(tmp_path / "ipkv.bin", xl["unet"], lora=tmp_path / "lora.safetensors")
    for k, v in ckpt.adapter.state_dict().items():
        assert torch.equal(back.adapter.state_dict()[k], v), k
    x = inputs(seed=7)
    mine = ours_noise(copy.deepcopy(xl["unet"]), ckpt.adapter, x, "ip-adapter-faceid")
    theirs = diffusers_noise(diffusers_pipeline(xl, tmp_path, "ipkv.bin", tmp_path / "lora.safetensors"), x, "ip-adapter-faceid")
    assert (mine - theirs).abs().max().item() < 1e-4
    portrait = load_checkpoint(save(random_ip_adapter_state_dict(xl["unet"], "instantid"), tmp_path / "i.bin"), xl["unet"])
    with pytest.raises(ValueError, match="has no LoRA to export"):
        export_lora_state_dict(portrait.adapter)


def test_separate_lora_errors_are_named(tmp_path, xl):
    full = random_ip_adapter_state_dict(xl["unet"], "ip-adapter-faceid-plus", clip_dim=CLIP, seed=3)
    ip_only, lora = separate_lora_state_dict(full, xl["unet"])
    save(full, tmp_path / "full.bin")
    save(ip_only, tmp_path / "ipkv.bin")
    save(lora, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointLayoutError, match=r"already holds its LoRA .*leave it out"):
        load_checkpoint(tmp_path / "full.bin", xl["unet"], lora=tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointLayoutError, match=r"nearest known: ip-adapter-faceid-plus .*missing \d+ keys .*_lora.*pass that file as the LoRA"):
        load_checkpoint(tmp_path / "ipkv.bin", xl["unet"])  # the LoRA forgotten
    short = dict(lora)
    gone = [k for k in short if "mid_block_attentions_0_transformer_blocks_0_attn1_q_proj" in k]
    for k in gone:
        del short[k]
    with pytest.raises(CheckpointLayoutError, match=r"missing 1 modules \['mid_block.attentions.0.transformer_blocks.0.attn1.to_q'\]"):
        load_checkpoint(tmp_path / "ipkv.bin", xl["unet"], lora=save(short, tmp_path / "short.safetensors"))
    text = {**lora, "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)}
    with pytest.raises(CheckpointLayoutError, match="text-encoder LoRA keys"):
        load_checkpoint(tmp_path / "ipkv.bin", xl["unet"], lora=save(text, tmp_path / "te.safetensors"))
    sd15 = tiny_components()["unet"]
    _, other = separate_lora_state_dict(random_ip_adapter_state_dict(sd15, "ip-adapter-faceid"), sd15)
    with pytest.raises(CheckpointLayoutError, match="does not fit this UNet's attention layers"):
        load_checkpoint(tmp_path / "ipkv.bin", xl["unet"], lora=save(other, tmp_path / "sd15_lora.safetensors"))
    with pytest.raises(CheckpointLayoutError, match="not a folder"):
        load_checkpoint(tmp_path, xl["unet"], lora=tmp_path / "lora.safetensors")


# ---------------------------------------------------------------------------- detection, family refusals
@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_sdxl_layout_is_detected_from_keys_and_shapes(tmp_path, xl, layout, suffix):
    state = random_ip_adapter_state_dict(xl["unet"], layout, clip_dim=CLIP)
    assert detect_layout(state, xl["unet"]) == layout
    ckpt = load_checkpoint(save(state, tmp_path / f"any_name{suffix}"), xl["unet"])  # the name says nothing
    assert ckpt.layout == layout
    cfg = ckpt.adapter.config
    expected = {"ip-adapter-faceid": ("mlp", 4, 4, "mix"), "ip-adapter-faceid-plus": ("plus", 4, 4, "mix"),
                "ip-adapter-faceid-portrait": ("mlp", 16, 0, "concat"), "ip-adapter-faceid-portrait-unnorm": ("resampler", 16, 0, "concat"),
                "instantid": ("resampler", 16, 0, "mix")}[layout]
    assert (cfg.projection, cfg.num_tokens, cfg.lora_rank, cfg.multi_face) == expected
    assert cfg.cross_attention_dim == D and len(cfg.attn_layers) == len(xl["unet"].attn_processors) == 22


@pytest.mark.parametrize("layout", ["ip-adapter-faceid", "ip-adapter-faceid-plus", "ip-adapter-faceid-portrait", "instantid"])
def test_a_file_for_the_other_family_names_the_family_it_is_for(tmp_path, xl, layout):
    sd15 = tiny_components()["unet"]
    for_sd15 = random_ip_adapter_state_dict(sd15, layout, clip_dim=CLIP)
    with pytest.raises(CheckpointLayoutError, match=rf"this is a tiny SD 1\.5 checkpoint \(layout {layout}: cross-attention width 32, "
                                                    r"8 attention processors\); this UNet is tiny SDXL \(cross-attention width 64, 22 "
                                                    r"attention processors\): load it with a tiny SD 1\.5 backbone\. Differing shapes: .*"
                                                    r"\(64,\) here"):
        load_checkpoint(save(for_sd15, tmp_path / "sd15.bin"), xl["unet"])
    for_xl = random_ip_adapter_state_dict(xl["unet"], layout, clip_dim=CLIP)
    with pytest.raises(CheckpointLayoutError, match=rf"this is a tiny SDXL checkpoint \(layout {layout}: cross-attention width 64.*"
                                                    r"load it with a tiny SDXL backbone\. Differing shapes: \['image_proj\.\w+\.weight \(64,\) "
                                                    r"vs \(32,\) here', 'ip_adapter\.1\.to_k_ip\.weight \(32, 64\) vs \(32, 32\) here', "
                                                    r"'22 attention processors vs 8 here'\]"):
        load_checkpoint(save(for_xl, tmp_path / "xl.safetensors"), sd15)


def test_a_real_width_sdxl_file_on_an_sd15_unet_says_sdxl(xl):
    """Widths name the family: 2048 is SDXL. A UNet of the tiny layout at SDXL's width gives such a file."""
    torch.manual_seed(0)
    wide = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=2048,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=8, norm_num_groups=8)
    state = random_ip_adapter_state_dict(wide, "ip-adapter-faceid", rank=2)
    sd15 = tiny_components()["unet"]
    with pytest.raises(CheckpointLayoutError, match=r"^this is an SDXL checkpoint \(layout ip-adapter-faceid: cross-attention width 2048, "
                                                    r"8 attention processors\); this UNet is tiny SD 1\.5 .*load it with an SDXL backbone"):
        detect_layout(state, sd15)


def test_cli_convert_refuses_the_other_family_with_exit_status_5(tmp_path, xl):
    from click.testing import CliRunner

    from facemakeup.cli import main

    save(random_ip_adapter_state_dict(tiny_xl_components()["unet"], "instantid"), tmp_path / "ip-adapter.bin")
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(tmp_path / "ip-adapter.bin"), str(tmp_path / "x"), "--to", "ours", "--model", "tiny"])
    assert res.exit_code == 5, res.output
    assert "this is a tiny SDXL checkpoint (layout instantid" in res.output and "load it with a tiny SDXL backbone" in res.output
    res = runner.invoke(main, ["convert", str(tmp_path / "ip-adapter.bin"), str(tmp_path / "ours"), "--to", "ours", "--model", "tiny-xl"])
    assert res.exit_code == 0 and "layout instantid (ID adapter) -> ours" in res.output, res.output
    res = runner.invoke(main, ["convert", str(tmp_path / "ours"), str(tmp_path / "back.bin"), "--to", "ip-adapter", "--model", "tiny-xl"])
    assert res.exit_code == 0, res.output
    a, b = torch.load(tmp_path / "ip-adapter.bin", weights_only=True), torch.load(tmp_path / "back.bin", weights_only=True)
    assert all(a[g].keys() == b[g].keys() and all(torch.equal(a[g][k], b[g][k]) for k in a[g]) for g in a)


# ---------------------------------------------------------------------------- convert round trips
@pytest.mark.parametrize("layout", LAYOUTS)
def test_convert_round_trips_every_sdxl_layout(tmp_path, xl, layout):
    state = random_ip_adapter_state_dict(xl["unet"], layout, clip_dim=CLIP, seed=11)
    path = save(state, tmp_path / FILES[layout])
    first = load_checkpoint(path, xl["unet"])
    reference = first.adapter.state_dict()
    x = inputs(seed=8)
    expected = ours_noise(copy.deepcopy(xl["unet"]), first.adapter, x, layout)
    first.adapter.detach()
    for to, dst in (("ours", tmp_path / "ours"), ("ip-adapter", tmp_path / "back.bin"), ("ip-adapter", tmp_path / "back.safetensors")):
        write_checkpoint(dst, first.adapter, None, to)
        again = load_checkpoint(dst, xl["unet"])
        assert again.layout == ("ours" if to == "ours" else layout)
        assert public(again.adapter.config) == public(first.adapter.config)
        for k, v in again.adapter.state_dict().items():
            assert torch.equal(v, reference[k]), (dst.name, k)  # the very same weights, bit for bit
        torch.testing.assert_close(ours_noise(copy.deepcopy(xl["unet"]), again.adapter, x, layout), expected, rtol=0, atol=1e-5)
    raw = torch.load(tmp_path / "back.bin", weights_only=True)  # ours -> theirs: the published keys and tensors
    for group in ("image_proj", "ip_adapter"):
        assert raw[group].keys() == state[group].keys()
        assert all(torch.equal(raw[group][k], state[group][k]) for k in state[group]), group
    with pytest.raises(ValueError, match="FaceID-PlusV2 layout") if layout != "ip-adapter-faceid-plus" else nullcontext():
        write_checkpoint(tmp_path / "v2", first.adapter, None, "face-makeup-v2")


def test_face_makeup_model_bin_on_sdxl_with_its_controlnet(tmp_path, xl):
    """Face-MakeUp's model.bin layout works at SDXL's shapes too: PlusV2 + a ControlNet copied from the SDXL UNet."""
    state = random_ip_adapter_state_dict(xl["unet"], "ip-adapter-faceid-plus", clip_dim=CLIP, seed=12)
    net = shadingnet_from_unet(xl["unet"], 2)
    state["controlnet"] = net.state_dict()
    ckpt = load_checkpoint(save(state, tmp_path / "model.bin"), xl["unet"], vae_scale_factor=2)
    assert ckpt.layout == "face-makeup" and ckpt.controlnet is not None
    write_checkpoint(tmp_path / "v2", ckpt.adapter, ckpt.controlnet, "face-makeup-v2")
    raw = torch.load(tmp_path / "v2" / "model.bin", weights_only=True)
    assert all(torch.equal(raw["controlnet"][k], v) for k, v in net.state_dict().items())
    assert load_checkpoint(tmp_path / "v2" / "model.bin", xl["unet"], vae_scale_factor=2).layout == "face-makeup"


# ---------------------------------------------------------------------------- InstantID's IdentityNet folder
def test_instantid_identitynet_folder_loads_as_the_controlnet(tmp_path, xl):
    net = ControlNetModel.from_unet(xl["unet"], conditioning_channels=3, conditioning_embedding_out_channels=(16, 32))
    net.save_pretrained(tmp_path / "ControlNetModel")  # InstantX/InstantID: config.json + diffusion_pytorch_model.safetensors
    ckpt = load_checkpoint(tmp_path / "ControlNetModel", xl["unet"])
    assert ckpt.layout == "ours" and ckpt.adapter is None
    assert all(torch.equal(ckpt.controlnet.state_dict()[k], v) for k, v in net.state_dict().items())
    # adapter and IdentityNet of one run, as a user passes them: the ip-adapter.bin file and the folder
    save(random_ip_adapter_state_dict(xl["unet"], "instantid"), tmp_path / "ip-adapter.bin")
    assert load_checkpoint(tmp_path / "ip-adapter.bin", xl["unet"]).layout == "instantid"
    with pytest.raises(CheckpointLayoutError, match=r"made from another UNet \(this is a tiny SDXL ControlNet: load it with a tiny SDXL "
                                                    r"backbone\): .*cross_attention_dim 64 vs the UNet's 32"):
        load_checkpoint(tmp_path / "ControlNetModel", tiny_components()["unet"])


def test_an_ours_folder_for_sdxl_on_an_sd15_unet_names_the_family(tmp_path, xl):
    adapter = FaceIDAdapter.for_unet(xl["unet"], clip_embed_dim=CLIP, lora_rank=2)
    write_checkpoint(tmp_path / "run", adapter, None, "ours")
    with pytest.raises(CheckpointLayoutError, match=r"trained for another UNet \(this is a tiny SDXL adapter, cross-attention width 64; "
                                                    r"the UNet's is 32: load it with a tiny SDXL backbone\)"):
        load_checkpoint(tmp_path / "run", tiny_components()["unet"])


# ---------------------------------------------------------------------------- the published shapes at full size
def _published(unet, layout):
    """The documented key shapes of the real files (docs/checkpoints.md, SDXL), as meta tensors for ``unet``."""
    def t(*shape):
        return torch.empty(shape, device="meta")

    d = unet.config.cross_attention_dim
    if layout in ("ip-adapter-faceid", "ip-adapter-faceid-plus", "ip-adapter-faceid-portrait"):
        tokens = 16 if layout.endswith("portrait") else 4
        proj = {"proj.0.weight": t(1024, 512), "proj.0.bias": t(1024), "proj.2.weight": t(tokens * d, 1024), "proj.2.bias": t(tokens * d),
                "norm.weight": t(d), "norm.bias": t(d)}
        if layout.endswith("plus"):
            r = "perceiver_resampler."
            proj.update({r + "proj_in.weight": t(d, 1280), r + "proj_in.bias": t(d), r + "proj_out.weight": t(d, d), r + "proj_out.bias": t(d),
                         r + "norm_out.weight": t(d), r + "norm_out.bias": t(d)})
            blocks, width, inner = r + "layers.", d, d
    else:  # InstantID: Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=512, output_dim=2048)
        width, inner, blocks = 1280, 1280, "layers."
        proj = {"latents": t(1, 16, width), "proj_in.weight": t(width, 512), "proj_in.bias": t(width), "proj_out.weight": t(d, width),
                "proj_out.bias": t(d), "norm_out.weight": t(d), "norm_out.bias": t(d)}
    if "perceiver_resampler.proj_in.weight" in proj or "latents" in proj:
        for i in range(4):
            p = f"{blocks}{i}."
            proj.update({p + "0.norm1.weight": t(width), p + "0.norm1.bias": t(width), p + "0.norm2.weight": t(width), p + "0.norm2.bias": t(width),
                         p + "0.to_q.weight": t(inner, width), p + "0.to_kv.weight": t(2 * inner, width), p + "0.to_out.weight": t(width, inner),
                         p + "1.0.weight": t(width), p + "1.0.bias": t(width), p + "1.1.weight": t(4 * width, width),
                         p + "1.3.weight": t(width, 4 * width)})
    ip = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden, ctx = attn.to_k.out_features, attn.to_k.in_features
        if layout in ("ip-adapter-faceid", "ip-adapter-faceid-plus"):
            for n, fan_in in (("to_q", hidden), ("to_k", ctx), ("to_v", ctx), ("to_out", hidden)):
                ip[f"{i}.{n}_lora.down.weight"], ip[f"{i}.{n}_lora.up.weight"] = t(128, fan_in), t(hidden, 128)
        if attn.is_cross_attention:
            ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = t(hidden, d), t(hidden, d)
    return {"image_proj": proj, "ip_adapter": ip}


#: (layout, bytes on the hub, slack, bytes per value): h94/IP-Adapter-FaceID and InstantX/InstantID LFS pointers
#: (exact sizes; the Portrait file's only as the hub shows it, "750 MB").
HUB_FILES = [("ip-adapter-faceid", 1_071_149_741, 200_000, 2), ("ip-adapter-faceid-plus", 1_487_555_181, 200_000, 2),
             ("ip-adapter-faceid-portrait", 750_000_000, 500_000, 2), ("instantid", 1_691_134_141, 200_000, 4)]


@pytest.mark.parametrize("layout, size, slack, item", HUB_FILES)
def test_published_shapes_fit_the_sdxl_base_layout_and_the_file_sizes(layout, size, slack, item):
    from facemakeup.model.backbone import layout_unet

    unet, _ = layout_unet("sdxl")  # SDXL-base's UNet layout on the meta device: 140 processors, 70 cross-attention
    state = _published(unet, layout)
    assert detect_layout(state, unet) == layout
    values = sum(v.numel() for part in state.values() for v in part.values())
    assert abs(size - values * item) < slack  # what is left is the pickle's own bookkeeping (or the rounding)
    if layout == "ip-adapter-faceid":  # the separate LoRA file: 560 modules of rank 128 (fp16) + float32 alphas + header
        lora = sum(v.numel() for k, v in state["ip_adapter"].items() if "_lora." in k)
        assert 0 < 371_842_896 - (lora * 2 + 560 * 4) < 300_000
    tiny = tiny_components()["unet"]
    with pytest.raises(CheckpointLayoutError, match="load it with an SDXL backbone"):
        detect_layout(state, tiny)
