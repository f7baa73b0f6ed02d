"""Every checkpoint layout against the published forward pass, written out here; convert round trips; unload.

Each layout's checkpoint is built with exactly the published key names (h94/IP-Adapter-FaceID,
Face-MakeUp V1/V2), scaled down to the tiny UNet, and run two ways: through ``FaceMakeUpPipeline``
after ``load_face_adapter``, and through diffusers' ``StableDiffusionPipeline`` with the reference
IP-Adapter attention processor and projections below (IP-Adapter's ``LoRAIPAttnProcessor`` /
``IPAttnProcessor``, ``MLPProjModel``, ``ProjPlusModel``: tokens appended to the text embeddings,
as IP-Adapter's own ``generate`` does).
"""

import copy
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from facemakeup.errors import CheckpointError, CheckpointLayoutError
from facemakeup.model.loaders import load_checkpoint, write_checkpoint
from facemakeup.model.tiny import tiny_components
from facemakeup.pipeline import FaceMakeUpPipeline
from facemakeup.model.tiny import random_faceid_plusv2_state_dict

D = 32  # the tiny UNet's cross-attention width
CLIP = 32  # the tiny CLIP's hidden width


def _w(g, *shape):
    return torch.randn(*shape, generator=g) * 0.05


def faceid_state_dict(unet, seed: int = 0, tokens: int = 4, lora: bool = True, rank: int = 4) -> dict:
    """h94 ``ip-adapter-faceid_sd15.bin`` (``lora=True``, 4 tokens) or ``-portrait_sd15.bin``
    (``lora=False``, 16 tokens): ``MLPProjModel`` + numbered processor weights."""
    g = torch.Generator().manual_seed(seed)
    proj = {"proj.0.weight": _w(g, 1024, 512), "proj.0.bias": _w(g, 1024), "proj.2.weight": _w(g, tokens * D, 1024),
            "proj.2.bias": _w(g, tokens * D), "norm.weight": 1 + _w(g, D), "norm.bias": _w(g, D)}
    ip = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden, ctx = attn.to_k.out_features, attn.to_k.in_features
        if lora:
            for t, fan_in in (("to_q", hidden), ("to_k", ctx), ("to_v", ctx), ("to_out", hidden)):
                ip[f"{i}.{t}_lora.down.weight"] = _w(g, rank, fan_in)
                ip[f"{i}.{t}_lora.up.weight"] = _w(g, hidden, rank)
        if attn.is_cross_attention:
            ip[f"{i}.to_k_ip.weight"] = _w(g, hidden, D)
            ip[f"{i}.to_v_ip.weight"] = _w(g, hidden, D)
    return {"image_proj": proj, "ip_adapter": ip}


# ---------------------------------------------------------------------------- the published forward pass
def ref_mlp(p, id_embeds, tokens):
    """IP-Adapter-FaceID ``MLPProjModel``: Linear -> GELU -> Linear -> reshape -> LayerNorm."""
    x = F.linear(F.gelu(F.linear(id_embeds, p["proj.0.weight"], p["proj.0.bias"])), p["proj.2.weight"], p["proj.2.bias"])
    x = x.reshape(-1, tokens, D)
    return F.layer_norm(x, (D,), p["norm.weight"], p["norm.bias"])


def ref_plus(p, id_embeds, clip, shortcut, s_scale):
    """IP-Adapter-FaceID ``ProjPlusModel`` with ``FacePerceiverResampler`` / ``PerceiverAttention``."""
    x = ref_mlp(p, id_embeds, 4)
    r = "perceiver_resampler."
    feats = F.linear(clip, p[r + "proj_in.weight"], p[r + "proj_in.bias"])
    lat = x
    for i in range(4):
        q_ = f"{r}layers.{i}."
        xn = F.layer_norm(feats, (D,), p[q_ + "0.norm1.weight"], p[q_ + "0.norm1.bias"])
        ln = F.layer_norm(lat, (D,), p[q_ + "0.norm2.weight"], p[q_ + "0.norm2.bias"])
        q = F.linear(ln, p[q_ + "0.to_q.weight"])
        k, v = F.linear(torch.cat([xn, ln], dim=1), p[q_ + "0.to_kv.weight"]).chunk(2, dim=-1)
        heads = q.shape[-1] // 64
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, 64).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scale = 1 / math.sqrt(math.sqrt(64))
        w = torch.softmax((q * scale) @ (k * scale).transpose(-2, -1), dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(lat.shape[0], lat.shape[1], -1)
        lat = F.linear(out, p[q_ + "0.to_out.weight"]) + lat
        ff = F.layer_norm(lat, (D,), p[q_ + "1.0.weight"], p[q_ + "1.0.bias"])
        lat = F.linear(F.gelu(F.linear(ff, p[q_ + "1.1.weight"])), p[q_ + "1.3.weight"]) + lat
    out = F.layer_norm(F.linear(lat, p[r + "proj_out.weight"], p[r + "proj_out.bias"]), (D,), p[r + "norm_out.weight"], p[r + "norm_out.bias"])
    return x + s_scale * out if shortcut else out


class RefProcessor:
    """IP-Adapter's ``LoRAIPAttnProcessor`` / ``LoRAAttnProcessor`` / ``IPAttnProcessor`` formula:
    the last ``num_tokens`` context tokens are the ID tokens; ``text_attn + scale * ip_attn``;
    LoRA ``x @ down.T @ up.T`` added to q, k, v and out."""

    def __init__(self, weights: dict, num_tokens: int, scale: float):
        self.w, self.num_tokens, self.scale = weights, num_tokens, scale

    def lora(self, name, x):
        if f"{name}_lora.down.weight" not in self.w:
            return 0
        return F.linear(F.linear(x, self.w[f"{name}_lora.down.weight"]), self.w[f"{name}_lora.up.weight"])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        query = attn.to_q(hidden_states) + self.lora("to_q", hidden_states)
        ip = None
        if encoder_hidden_states is None:
            context = hidden_states
        else:
            end = encoder_hidden_states.shape[1] - self.num_tokens
            context, ip = encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]
        key = attn.to_k(context) + self.lora("to_k", context)
        value = attn.to_v(context) + self.lora("to_v", context)
        q, k, v = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, None), v))
        if ip is not None:
            ik = attn.head_to_batch_dim(F.linear(ip, self.w["to_k_ip.weight"]))
            iv = attn.head_to_batch_dim(F.linear(ip, self.w["to_v_ip.weight"]))
            out = out + self.scale * attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, ik, None), iv))
        out = attn.to_out[0](out) + self.lora("to_out", out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def reference_pipeline(parts, state, num_tokens, scale):
    """diffusers' plain ``StableDiffusionPipeline`` with the reference processors holding ``state``'s weights."""
    sd = StableDiffusionPipeline(**{k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ip = state["ip_adapter"]
    procs = {}
    for i, name in enumerate(sd.unet.attn_processors):
        weights = {k.split(".", 1)[1]: v for k, v in ip.items() if k.split(".")[0] == str(i)}
        procs[name] = RefProcessor(weights, num_tokens, scale)
    sd.unet.set_attn_processor(procs)
    sd.set_progress_bar_config(disable=True)
    return sd


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def parts():
    return tiny_components(seed=11)


def ours_pipeline(parts, controlnet=None):
    pipe = FaceMakeUpPipeline(face_adapter=None, controlnet=controlnet, **{k: copy.deepcopy(v) for k, v in parts.items()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    return dict(id_embeds=F.normalize(torch.randn(n, 512, generator=g), dim=-1), clip=torch.randn(n, 65, CLIP, generator=g),
                uncond=torch.randn(1, 65, CLIP, generator=g), latents=torch.randn(1, 4, 32, 32, generator=g))


LAYOUTS = {  # name: (state builder, file name, shortcut, tokens per face, references)
    "ip-adapter-faceid": (lambda u: faceid_state_dict(u, 1), "ip-adapter-faceid_sd15.bin", None, 4, 1),
    "ip-adapter-faceid-plus": (lambda u: random_faceid_plusv2_state_dict(u, CLIP, 2), "ip-adapter-faceid-plus_sd15.bin", False, 4, 1),
    "ip-adapter-faceid-plusv2": (lambda u: random_faceid_plusv2_state_dict(u, CLIP, 3), "ip-adapter-faceid-plusv2_sd15.safetensors", True, 4, 1),
    "ip-adapter-faceid-portrait": (lambda u: faceid_state_dict(u, 4, tokens=16, lora=False), "ip-adapter-faceid-portrait_sd15.bin", None, 16, 3),
}


def save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{g}.{k}": v.contiguous() for g, part in state.items() for k, v in part.items()}, path)
    else:
        torch.save(state, path)
    return path


def run_ours(pipe, x, ip_scale, s_scale, **kw):
    pos, neg = pipe.encode_prompt(["a face"], None, "cpu")
    clip = dict(clip_embeds=x["clip"], uncond_clip_embeds=x["uncond"]) if pipe.face_adapter.config.projection == "plus" else {}
    return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, id_embeds=x["id_embeds"], ip_scale=ip_scale, s_scale=s_scale,
                latents=x["latents"], num_inference_steps=2, output_type="latent", **clip, **kw).images


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_the_published_forward_pass(tmp_path, parts, layout):
    build, filename, shortcut, tokens, n = LAYOUTS[layout]
    state = build(parts["unet"])
    path = save(state, tmp_path / filename)
    ours = ours_pipeline(parts)
    detected = ours.load_face_adapter(path, shortcut=shortcut)
    assert detected == layout.replace("plusv2", "plus")  # Plus and PlusV2 share their keys
    x = inputs(seed=5, n=n)
    mine = run_ours(ours, x, ip_scale=0.7, s_scale=0.8)

    p = state["image_proj"]
    if "perceiver_resampler.proj_in.weight" in p:
        tok = ref_plus(p, x["id_embeds"], x["clip"], bool(shortcut), 0.8)
        uncond = ref_plus(p, torch.zeros_like(x["id_embeds"]), x["uncond"], bool(shortcut), 0.8)
    else:  # Portrait: each face its own 16 tokens, concatenated (IP-Adapter's multi-face reshape)
        tok = ref_mlp(p, x["id_embeds"], tokens).reshape(1, -1, D)
        uncond = ref_mlp(p, torch.zeros_like(x["id_embeds"]), tokens).reshape(1, -1, D)
    ref = reference_pipeline(parts, state, tok.shape[1], 0.7)
    pos, neg = ref.encode_prompt("a face", "cpu", 1, True)
    theirs = ref(prompt_embeds=torch.cat([pos, tok], 1), negative_prompt_embeds=torch.cat([neg, uncond], 1), latents=x["latents"],
                 num_inference_steps=2, output_type="latent").images
    assert (mine - theirs).abs().max().item() < 1e-4
    # the ID channel acts: a zero scale gives another result
    assert (run_ours(ours, x, ip_scale=0.0, s_scale=0.8) - mine).abs().max().item() > 1e-3


def _perturbed(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_ in net.parameters():
            p_.add_(0.05 * torch.randn(p_.shape, generator=g))
    return net


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_face_makeup_model_bin_with_its_controlnet(tmp_path, parts, astronaut, version):
    """V1/V2 ``model.bin``: FaceID-PlusV2 + ``controlnet`` in one pickle. V1's ControlNet reads the
    keypoint map, V2's the shading map; both attend to the ID tokens only."""
    from facemakeup.faces import FaceAnalyzer
    from facemakeup.faces.conditions import condition_map
    from facemakeup.model.shadingnet import shadingnet_from_unet

    state = random_faceid_plusv2_state_dict(parts["unet"], CLIP, 7)
    net = _perturbed(shadingnet_from_unet(parts["unet"], 2), 8)
    state["controlnet"] = net.state_dict()
    path = save(state, tmp_path / "model.bin")
    ckpt = load_checkpoint(path, parts["unet"], vae_scale_factor=2)
    assert ckpt.layout == "face-makeup"
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt.controlnet.state_dict()[k], v)

    ours = ours_pipeline(parts)
    ours.load_face_adapter(path, load_controlnet=True)
    assert ours.controlnet is not None
    condition = "keypoints" if version == "v1" else "shading"
    face = FaceAnalyzer(threads=1, fitter="mediapipe").get_face(astronaut)
    cmap = condition_map(face, condition, 5.0, 64, 64)
    x = inputs(seed=6)
    pos, neg = ours.encode_prompt(["a face"], None, "cpu")
    mine = ours(prompt_embeds=pos, id_embeds=x["id_embeds"], clip_embeds=x["clip"], shading_image=cmap, condition=condition,
                guidance_scale=1.0, ip_scale=0.6, controlnet_conditioning_scale=0.8, latents=x["latents"],
                num_inference_steps=1, output_type="latent").images

    # reference: one DDIM step, no CFG; the ControlNet sees the map in [0, 1] and the ID tokens only
    tok = ref_plus(state["image_proj"], x["id_embeds"], x["clip"], True, 1.0)
    ref = reference_pipeline(parts, state, 4, 0.6)
    ref.scheduler.set_timesteps(1)
    t = ref.scheduler.timesteps[0]
    cond = torch.from_numpy(cmap).permute(2, 0, 1)[None].float() / 255
    down, mid = net(x["latents"], t, encoder_hidden_states=tok, controlnet_cond=cond, conditioning_scale=0.8, return_dict=False)
    noise = ref.unet(x["latents"], t, encoder_hidden_states=torch.cat([pos, tok], 1), down_block_additional_residuals=down,
                     mid_block_additional_residual=mid).sample
    theirs = ref.scheduler.step(noise, t, x["latents"]).prev_sample
    assert (mine - theirs).abs().max().item() < 1e-4
    none = ours(prompt_embeds=pos, id_embeds=x["id_embeds"], clip_embeds=x["clip"], condition="none", guidance_scale=1.0,
                latents=x["latents"], num_inference_steps=1, output_type="latent").images
    assert (none - mine).abs().max().item() > 1e-4  # the ControlNet acts, and "none" leaves it out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_convert_round_trips_give_identical_outputs(tmp_path, parts, layout):
    build, filename, shortcut, _, n = LAYOUTS[layout]
    path = save(build(parts["unet"]), tmp_path / filename)
    first = load_checkpoint(path, parts["unet"], shortcut=shortcut)
    x = inputs(seed=9, n=n)
    targets = ["ours"] + (["ip-adapter", "face-makeup-v2"] if first.adapter.config.projection == "plus" else [])
    direct = ours_pipeline(parts)
    direct.load_face_adapter(path, shortcut=shortcut)
    expected = run_ours(direct, x, 0.6, 1.0)
    reference = direct.face_adapter.state_dict()
    for to in targets:
        dst = tmp_path / to / ("model.safetensors" if to == "ip-adapter" else "")
        write_checkpoint(dst, first.adapter, None, to)
        pipe = ours_pipeline(parts)
        pipe.load_face_adapter(tmp_path / to / "model.bin" if to == "face-makeup-v2" else dst, shortcut=shortcut)
        for key in ("attn_layers", "projection", "shortcut", "multi_face", "num_tokens", "lora_rank", "clip_embed_dim"):
            assert pipe.face_adapter.config[key] == direct.face_adapter.config[key], (to, key)
        for k, v in pipe.face_adapter.state_dict().items():
            assert torch.equal(v, reference[k]), (to, k)  # the very same weights, bit for bit
        # ... hence the same latents, up to float32 rounding (CPU GEMM results depend on buffer alignment)
        torch.testing.assert_close(run_ours(pipe, x, 0.6, 1.0), expected, rtol=0, atol=1e-4)
    # ours -> theirs -> ours: the exported keys are the published ones
    if "ip-adapter" in targets:
        again = load_checkpoint(tmp_path / "ip-adapter" / "model.safetensors", parts["unet"], shortcut=shortcut)
        for (k, a), (k2, b) in zip(first.adapter.state_dict().items(), again.adapter.state_dict().items()):
            assert k == k2 and torch.equal(a, b)


def test_convert_writes_face_makeup_v2_with_the_controlnet(tmp_path, parts):
    from facemakeup.model.shadingnet import shadingnet_from_unet

    net = _perturbed(shadingnet_from_unet(parts["unet"], 2), 3)
    ckpt = load_checkpoint(save(random_faceid_plusv2_state_dict(parts["unet"], CLIP, 1), tmp_path / "a.bin"), parts["unet"])
    write_checkpoint(tmp_path / "ours", ckpt.adapter, net, "ours")
    back = load_checkpoint(tmp_path / "ours", parts["unet"])
    assert back.layout == "ours" and back.controlnet is not None
    write_checkpoint(tmp_path / "v2", back.adapter, back.controlnet, "face-makeup-v2")
    raw = torch.load(tmp_path / "v2" / "model.bin", weights_only=True)
    assert set(raw) == {"image_proj", "ip_adapter", "controlnet"}
    assert set(raw["image_proj"]) == set(random_faceid_plusv2_state_dict(parts["unet"], CLIP)["image_proj"])
    for k, v in net.state_dict().items():
        assert torch.equal(raw["controlnet"][k], v)
    assert load_checkpoint(tmp_path / "v2" / "model.bin", parts["unet"], vae_scale_factor=2).layout == "face-makeup"
    # the component folders alone load too
    assert load_checkpoint(tmp_path / "ours" / "shadingnet", parts["unet"]).adapter is None
    assert load_checkpoint(tmp_path / "ours" / "face_adapter", parts["unet"]).controlnet is None
    portrait = load_checkpoint(save(faceid_state_dict(parts["unet"], tokens=16, lora=False), tmp_path / "p.bin"), parts["unet"])
    with pytest.raises(ValueError, match="FaceID-PlusV2 layout"):
        write_checkpoint(tmp_path / "x.bin", portrait.adapter, None, "face-makeup-v2")
    # Portrait writes its own IP-Adapter layout: the published keys and tensors again
    write_checkpoint(tmp_path / "p_back.bin", portrait.adapter, None, "ip-adapter")
    raw_a, raw_b = torch.load(tmp_path / "p.bin", weights_only=True), torch.load(tmp_path / "p_back.bin", weights_only=True)
    for group in ("image_proj", "ip_adapter"):
        assert raw_a[group].keys() == raw_b[group].keys() and all(torch.equal(raw_a[group][k], raw_b[group][k]) for k in raw_a[group])


# ---------------------------------------------------------------------------- unload, scales
def test_unload_restores_the_plain_unet_bit_exactly(tmp_path, parts):
    plain = copy.deepcopy(parts["unet"])
    base = {k: v.clone() for k, v in plain.state_dict().items()}
    procs = {k: type(v) for k, v in plain.attn_processors.items()}
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, D, generator=g)
    before = plain(latents, 10, encoder_hidden_states=text).sample

    pipe = ours_pipeline(parts)
    pipe.load_face_adapter(save(random_faceid_plusv2_state_dict(parts["unet"], CLIP, 5), tmp_path / "a.bin"))
    pipe.face_adapter.fuse_lora()
    pipe.load_face_adapter(save(faceid_state_dict(parts["unet"], 6), tmp_path / "b.bin"))  # replaces the first
    pipe.face_adapter.fuse_lora()
    pipe.unload_face_adapter()
    assert pipe.face_adapter is None and not hasattr(pipe.unet, "peft_config")
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert torch.equal(pipe.unet(latents, 10, encoder_hidden_states=text).sample, before)
    with pytest.raises(ValueError, match="no face adapter loaded"):
        pipe("a face", id_embeds=torch.zeros(1, 512), clip_embeds=torch.zeros(1, 65, CLIP), num_inference_steps=1)


def test_set_face_adapter_scale_per_block(tmp_path, parts):
    pipe = ours_pipeline(parts)
    pipe.load_face_adapter(save(random_faceid_plusv2_state_dict(parts["unet"], CLIP, 5), tmp_path / "a.bin"))
    scales = lambda: {n[: -len(".processor")]: p.scale for n, p in pipe.unet.attn_processors.items() if hasattr(p, "scale")}  # noqa: E731
    assert set(map(tuple, scales().values())) == {(0.6,)}  # the default after loading
    pipe.set_face_adapter_scale({"up": {"block_1": [0.0, 1.0]}, "mid": 0.5})
    got = scales()
    assert got["up_blocks.1.attentions.1.transformer_blocks.0.attn2"] == [1.0]
    assert got["up_blocks.1.attentions.0.transformer_blocks.0.attn2"] == [0.0]
    assert got["mid_block.attentions.0.transformer_blocks.0.attn2"] == [0.5]
    assert got["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == [0.0]  # not named: 0, as diffusers
    x = inputs(seed=1)
    pipe.set_face_adapter_scale({"down": 0.6, "mid": 0.6, "up": 0.6})
    per_block = run_ours(pipe, x, None, 1.0)
    assert torch.equal(per_block, run_ours(pipe, x, 0.6, 1.0))
    with pytest.raises(ValueError, match=r"no up.block_0 with attention layers; blocks \(attentions\): down.block_0 \(1\), up.block_1 \(2\)"):
        pipe.set_face_adapter_scale({"up": {"block_0": 1.0}})
    with pytest.raises(ValueError, match="up.block_1 has 2 attention layers, got 3 scales"):
        pipe.set_face_adapter_scale({"up": {"block_1": [1, 1, 1]}})
    with pytest.raises(ValueError, match="must be 'down', 'mid', 'up'"):
        pipe.set_face_adapter_scale({"middle": 1.0})


# ---------------------------------------------------------------------------- errors
def test_unknown_layout_names_the_nearest_and_the_differing_keys(tmp_path, parts):
    state = random_faceid_plusv2_state_dict(parts["unet"], CLIP)
    del state["ip_adapter"]["3.to_k_ip.weight"]
    state["ip_adapter"]["99.to_k_ip.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointLayoutError, match=r"nearest known: ip-adapter-faceid-plus .*missing 1 keys \['ip_adapter.3.to_k_ip.weight'\], "
                                                    r"unexpected 1 keys \['ip_adapter.99.to_k_ip.weight'\]"):
        load_checkpoint(save(state, tmp_path / "odd.bin"), parts["unet"])
    sdxl_like = faceid_state_dict(parts["unet"])
    sdxl_like["ip_adapter"]["1.to_k_ip.weight"] = torch.zeros(64, 2048)
    with pytest.raises(CheckpointLayoutError, match=r"keys are those of ip-adapter-faceid but 1 shapes do not fit"):
        load_checkpoint(save(sdxl_like, tmp_path / "xl.bin"), parts["unet"])
    with pytest.raises(CheckpointLayoutError, match="without face_adapter/ or shadingnet/"):
        load_checkpoint(tmp_path, parts["unet"])


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_truncated_file_is_named(tmp_path, parts, suffix):
    path = save(faceid_state_dict(parts["unet"]), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cut{suffix} \(\d+ bytes\) .*download it again"):
        load_checkpoint(cut, parts["unet"])


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, parts, capsys):
    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"x": Payload()}, "ip_adapter": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, parts["unet"])
    assert "asks for print" in str(err.value) and "tensors only" in str(err.value)
    assert "weights_only" not in str(err.value)  # never advise loading it with code
    assert "this must never run" not in capsys.readouterr().out
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(CheckpointError, match="tensors only"):
        load_checkpoint(legacy, parts["unet"])


# ---------------------------------------------------------------------------- keypoint map
def test_draw_kps_matches_instantid_facts():
    from facemakeup.faces.conditions import KPS_COLOURS, draw_kps

    kps = np.array([[30.0, 40], [90, 40], [60, 70], [35, 100], [85, 100]])
    img = draw_kps(kps, 128, 128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    for (x, y), colour in zip(kps, KPS_COLOURS):
        assert tuple(img[int(y), int(x)]) == colour  # full-colour circles
        assert tuple(img[int(y), int(x) + 9]) == colour and tuple(img[int(y) + 12, int(x) + 12]) != colour  # radius 10
    # limb eye->nose at 60% of the eye's colour, ~8 px thick (stick width 4), between the circles
    mid = ((kps[0] + kps[2]) / 2).astype(int)
    assert tuple(img[mid[1], mid[0]]) == (153, 0, 0)
    normal = np.array([kps[2][1] - kps[0][1], kps[0][0] - kps[2][0]]) / np.hypot(*(kps[2] - kps[0]))
    off = np.round(mid + 7 * normal).astype(int)
    assert tuple(img[off[1], off[0]]) == (0, 0, 0)
    assert img[0, 0].sum() == 0  # black background
    with pytest.raises(ValueError, match="5 finite"):
        draw_kps(kps[:4], 64, 64)


def test_keypoint_map_lines_up_with_the_shading_crop(astronaut):
    from facemakeup.faces import FaceAnalyzer
    from facemakeup.faces.conditions import condition_map, crop_transform

    face = FaceAnalyzer(threads=1, fitter="mediapipe").get_face(astronaut)
    kmap, smap = condition_map(face, "keypoints", 5.0, 96, 128), condition_map(face, "shading", 5.0, 96, 128)
    assert kmap.shape == smap.shape == (96, 128, 3)
    scale, cx, cy = crop_transform(face.kps, 5.0, 96, 128)
    nose = ((face.kps[2][0] - cx) * scale + 64, (face.kps[2][1] - cy) * scale + 48)
    assert tuple(kmap[int(nose[1]), int(nose[0])]) == (0, 0, 255)
    assert smap[int(nose[1]), int(nose[0])].max() > 0  # the rendered face is under the drawn nose
    with pytest.raises(ValueError, match="condition must be"):
        condition_map(face, "depth")


# ---------------------------------------------------------------------------- CLI
def test_cli_convert_and_generate_with_keypoints(tmp_path, astronaut):
    from click.testing import CliRunner
    from PIL import Image

    from facemakeup.cli import main

    unet = tiny_components()["unet"]  # `--model tiny`'s UNet layout
    save(random_faceid_plusv2_state_dict(unet, CLIP, 4), tmp_path / "plusv2.bin")
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(tmp_path / "plusv2.bin"), str(tmp_path / "ours"), "--to", "ours", "--model", "tiny"])
    assert res.exit_code == 0, res.output
    assert "layout ip-adapter-faceid-plus (ID adapter) -> ours" in res.output
    res = runner.invoke(main, ["convert", str(tmp_path / "ours"), str(tmp_path / "back.bin"), "--to", "ip-adapter", "--model", "tiny"])
    assert res.exit_code == 0, res.output
    raw_a, raw_b = torch.load(tmp_path / "plusv2.bin", weights_only=True), torch.load(tmp_path / "back.bin", weights_only=True)
    for group in ("image_proj", "ip_adapter"):
        assert raw_a[group].keys() == raw_b[group].keys()
        assert all(torch.equal(raw_a[group][k], raw_b[group][k]) for k in raw_a[group])
    res = runner.invoke(main, ["convert", str(tmp_path / "plusv2.bin"), str(tmp_path / "x"), "--to", "ours"])  # SD 1.5 layout
    assert res.exit_code == 5 and "this is a tiny SD 1.5 checkpoint" in res.output and "load it with a tiny SD 1.5 backbone" in res.output

    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    res = runner.invoke(main, ["generate", "--reference", str(tmp_path / "astronaut.png"), "--prompt", "a face", "--out", str(tmp_path / "gen"),
                               "--model", "tiny", "--steps", "1", "--condition", "keypoints"])
    assert res.exit_code == 0, res.output
    kmap = np.asarray(Image.open(tmp_path / "gen" / "keypoints.png"))
    assert kmap.shape == (64, 64, 3) and {(255, 0, 0), (0, 0, 255)} <= {tuple(p) for p in kmap.reshape(-1, 3)}
