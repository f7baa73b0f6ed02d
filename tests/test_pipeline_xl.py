"""FaceMakeUpXLPipeline on tiny random SDXL-shaped components: parity with diffusers' SDXL pipeline +
load_ip_adapter, the ControlNet path against its written-out formula, loading, saving, unloading."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from facemakeup import FaceMakeUpXLPipeline
from facemakeup.model.loaders import adapter_from_state_dict
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, tiny_xl_components
from facemakeup.pipeline import backbone_family, load_pipeline

CLIP = 32  # the tiny image encoder's width


@pytest.fixture(scope="module")
def parts():
    return tiny_xl_components(seed=0)


@pytest.fixture(scope="module")
def state(parts):
    return random_faceid_plusv2_state_dict(parts["unet"], CLIP, seed=4)


def ours_and_diffusers(parts, state, controlnet=None):
    """Our SDXL pipeline and diffusers' StableDiffusionXLPipeline + load_ip_adapter, on copies of one tiny model."""
    mine = {k: copy.deepcopy(v) for k, v in parts.items()}
    ours = FaceMakeUpXLPipeline(face_adapter=adapter_from_state_dict(state, mine["unet"]), controlnet=controlnet, **mine)
    ours.set_progress_bar_config(disable=True)
    theirs = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ref = StableDiffusionXLPipeline(**theirs, image_encoder=None, feature_extractor=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(copy.deepcopy(state), subfolder="", weight_name="", image_encoder_folder=None)
    return ours, ref


def _inputs(ours, seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    id_embeds = F.normalize(torch.randn(1, 512, generator=g), dim=-1)
    face = (torch.rand(32, 32, 3, generator=g).numpy() * 255).astype(np.uint8)
    latents = torch.randn(batch, 4, 32, 32, generator=g)
    return id_embeds, face, ours.encode_face_images([face], "cpu"), ours.uncond_clip_embeds("cpu"), latents


def _diffusers_faceid_plus(ref, id_embeds, clip, uncond, rows, scale, s_scale):
    """diffusers' documented FaceID-PlusV2 inputs: the projection's clip_embeds (CFG halves, a row per
    image) and the shortcut, the ID embeddings (negative = zeros) as ip_adapter_image_embeds."""
    ref.set_ip_adapter_scale(scale)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds = torch.cat([uncond.expand(rows, -1, -1), clip.expand(rows, -1, -1)])[:, None]
    proj.shortcut, proj.shortcut_scale = True, s_scale
    return [torch.cat([torch.zeros_like(id_embeds), id_embeds])[:, None]]  # (2, 1, 512)


@pytest.mark.parametrize("negative_prompt, images_per_prompt", [(None, 1), ("blurry, lowres", 2)])
def test_matches_diffusers_sdxl_with_load_ip_adapter(parts, state, negative_prompt, images_per_prompt):
    ours, ref = ours_and_diffusers(parts, state)
    id_embeds, face, clip, uncond, latents = _inputs(ours, seed=1, batch=images_per_prompt)
    kw = dict(num_inference_steps=3, output_type="latent", latents=latents, negative_prompt=negative_prompt,
              num_images_per_prompt=images_per_prompt)
    mine = ours("a face", id_embeds=id_embeds, face_images=[face], ip_scale=0.7, s_scale=0.8, **kw).images
    embeds = _diffusers_faceid_plus(ref, id_embeds, clip, uncond, images_per_prompt, 0.7, 0.8)
    theirs = ref("a face", ip_adapter_image_embeds=embeds, **kw).images
    assert (mine - theirs).abs().max().item() < 1e-4
    # micro-conditioning reaches the UNet: another original_size changes the result, as in diffusers
    other = ours("a face", id_embeds=id_embeds, face_images=[face], ip_scale=0.7, s_scale=0.8, original_size=(32, 32), **kw).images
    theirs_other = ref("a face", ip_adapter_image_embeds=embeds, original_size=(32, 32), **kw).images
    assert (other - theirs_other).abs().max().item() < 1e-4 and (other - mine).abs().max().item() > 1e-4


def test_decoded_images_match_diffusers(parts, state):
    ours, ref = ours_and_diffusers(parts, state)
    id_embeds, face, clip, uncond, latents = _inputs(ours, seed=2)
    kw = dict(num_inference_steps=2, output_type="np", latents=latents, guidance_scale=6.0)
    mine = ours("a portrait", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, ip_scale=0.5, **kw)
    theirs = ref("a portrait", ip_adapter_image_embeds=_diffusers_faceid_plus(ref, id_embeds, clip, uncond, 1, 0.5, 1.0), **kw).images
    assert mine.images.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(mine.images, theirs, atol=1e-4)
    assert mine.id_tokens.shape == (1, 4, 64)  # 4 ID tokens at SDXL's context width (tiny: 32 + 32)


def test_precomputed_text_embeddings_equal_the_prompt(parts, state):
    ours, _ = ours_and_diffusers(parts, state)
    id_embeds, face, clip, uncond, latents = _inputs(ours, seed=3)
    kw = dict(id_embeds=id_embeds, clip_embeds=clip, num_inference_steps=1, output_type="latent", latents=latents)
    a = ours("a face", negative_prompt="ugly", **kw).images
    pos, neg, pooled, neg_pooled = ours.encode_prompt(["a face"], None, ["ugly"], None, "cpu")
    assert pos.shape == (1, 77, 64) and pooled.shape == (1, 32)
    b = ours(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled, **kw).images
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ours(prompt_embeds=pos, **kw)


def test_shadingnet_path_is_the_written_out_formula(parts, state):
    """One Euler step without CFG: the ControlNet (from_unet of the SDXL UNet) reads the map in [0, 1],
    attends to the ID tokens only and gets SDXL's added conditions; its residuals go into the UNet that
    diffusers' load_ip_adapter built (InstantID's IdentityNet wiring)."""
    net = shadingnet_from_unet(parts["unet"], 2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ours, ref = ours_and_diffusers(parts, state, controlnet=copy.deepcopy(net))
    id_embeds, face, clip, uncond, latents = _inputs(ours, seed=6)
    cmap = (torch.rand(64, 64, 3, generator=g).numpy() * 255).astype(np.uint8)
    mine = ours("a face", id_embeds=id_embeds, clip_embeds=clip, shading_image=cmap, guidance_scale=1.0, ip_scale=0.6,
                controlnet_conditioning_scale=0.8, latents=latents, num_inference_steps=1, output_type="latent").images

    pos, _, pooled, _ = ours.encode_prompt(["a face"], None, None, None, "cpu", do_cfg=False)
    tokens = ours.face_adapter.project(id_embeds, clip, 1.0)  # (1, 4, D)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    scheduler = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x = scheduler.scale_model_input(latents * scheduler.init_noise_sigma, t)
    cond = torch.from_numpy(cmap).permute(2, 0, 1)[None].float() / 255
    down, mid = net(x, t, encoder_hidden_states=tokens, controlnet_cond=cond, conditioning_scale=0.8, added_cond_kwargs=added,
                    return_dict=False)
    ref.set_ip_adapter_scale(0.6)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = clip[:, None], True, 1.0
    noise = ref.unet(x, t, encoder_hidden_states=pos, added_cond_kwargs={**added, "image_embeds": [id_embeds[:, None]]},
                     down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    theirs = scheduler.step(noise, t, latents * scheduler.init_noise_sigma).prev_sample
    assert (mine - theirs).abs().max().item() < 1e-4
    none = ours("a face", id_embeds=id_embeds, clip_embeds=clip, condition="none", guidance_scale=1.0, ip_scale=0.6,
                latents=latents, num_inference_steps=1, output_type="latent").images
    assert (none - mine).abs().max().item() > 1e-4  # the ControlNet acts; "none" leaves it out


def test_unload_restores_the_unet_bit_exactly(parts, state):
    ours, _ = ours_and_diffusers(parts, state)
    plain = {k: v.clone() for k, v in parts["unet"].state_dict().items()}
    ours.face_adapter.fuse_lora()
    ours.unload_face_adapter()
    assert ours.face_adapter is None and not hasattr(ours.unet, "peft_config")
    assert type(ours.unet.attn_processors["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]).__name__ == "AttnProcessor2_0"
    after = ours.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in plain.items())
    with pytest.raises(ValueError, match="no face adapter loaded"):
        ours("a face", id_embeds=torch.zeros(1, 512), num_inference_steps=1)


def test_from_backbone_save_pretrained_and_load_pipeline(tmp_path, parts, state):
    backbone = tmp_path / "sdxl"
    plain = StableDiffusionXLPipeline(**{k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                      image_encoder=None, feature_extractor=None)
    plain.save_pretrained(backbone)
    encoder = tmp_path / "clip"
    parts["image_encoder"].save_pretrained(encoder)
    parts["feature_extractor"].save_pretrained(encoder)
    adapter = tmp_path / "ip-adapter-faceid-plusv2_sdxl.bin"
    torch.save(state, adapter)
    assert backbone_family(backbone) == "sdxl" and backbone_family("tiny-xl") == "sdxl" and backbone_family("tiny") == "sd15"

    pipe = load_pipeline(str(backbone), image_encoder=str(encoder), adapter=str(adapter))
    assert isinstance(pipe, FaceMakeUpXLPipeline) and isinstance(pipe.scheduler, EulerDiscreteScheduler)  # the folder's scheduler
    pipe.set_progress_bar_config(disable=True)
    id_embeds, face, clip, uncond, latents = _inputs(pipe, seed=7)
    kw = dict(id_embeds=id_embeds, face_images=[face], num_inference_steps=2, output_type="latent", latents=latents)
    before = pipe("a face", **kw).images
    ours, _ = ours_and_diffusers(parts, state)
    torch.testing.assert_close(ours("a face", **kw).images, before)  # from files == from the same components

    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "FaceMakeUpXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert backbone_family(tmp_path / "saved") == "sdxl"
    again = load_pipeline(str(tmp_path / "saved"))
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(again("a face", **kw).images, before, rtol=0, atol=1e-5)


def test_tiny_xl_runs_from_a_photo(astronaut):
    pipe = load_pipeline("tiny-xl")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, FaceMakeUpXLPipeline) and pipe.controlnet is not None
    out = pipe("a smiling woman", reference_image=astronaut, num_inference_steps=2, seed=0, output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and out.shading_image.shape == (64, 64, 3)
    assert out.id_embeds.shape == (1, 512) and out.faces[0].fit is not None


# ---------------------------------------------------------------------------- published SDXL layouts through the pipeline
def _saved_layout(tmp_path, parts, layout, seed):
    from facemakeup.model.tiny import random_ip_adapter_state_dict

    state = random_ip_adapter_state_dict(parts["unet"], layout, seed=seed)
    path = tmp_path / {"ip-adapter-faceid": "ip-adapter-faceid_sdxl.bin", "instantid": "ip-adapter.bin"}[layout]
    torch.save(state, path)
    return state, path


@pytest.mark.parametrize("layout", ["ip-adapter-faceid", "instantid"])
def test_arcface_only_layouts_match_diffusers_sdxl(tmp_path, parts, layout):
    """FaceID and InstantID read the ArcFace embedding only (no image encoder): `load_face_adapter` on a
    pipeline built without one, against diffusers' SDXL pipeline + load_ip_adapter of the same file."""
    state, path = _saved_layout(tmp_path, parts, layout, seed=8)
    mine = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ours = FaceMakeUpXLPipeline(face_adapter=None, **mine)
    ours.set_progress_bar_config(disable=True)
    assert ours.load_face_adapter(path) == layout and not ours.reads_clip
    ref = StableDiffusionXLPipeline(**{k: copy.deepcopy(v) for k, v in mine.items()}, image_encoder=None, feature_extractor=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)
    g = torch.Generator().manual_seed(9)
    ids = torch.randn(1, 512, generator=g) * (20.0 if layout == "instantid" else 1.0)  # InstantID: the raw embedding
    latents = torch.randn(1, 4, 32, 32, generator=g)
    kw = dict(num_inference_steps=2, output_type="latent", latents=latents, negative_prompt="blurry")
    mine_out = ours("a face", id_embeds=ids, ip_scale=0.8, **kw).images
    ref.set_ip_adapter_scale(0.8)
    neg_and_pos = torch.cat([torch.zeros_like(ids), ids])[:, None]  # (2, 1, 512)
    if layout == "instantid":
        neg_and_pos = neg_and_pos[:, :, None]  # (2, 1 image, 1 token, 512): InstantID's reshape([1, -1, 512])
    theirs = ref("a face", ip_adapter_image_embeds=[neg_and_pos], **kw).images
    assert (mine_out - theirs).abs().max().item() < 1e-4
    assert (ours("a face", id_embeds=ids, ip_scale=0.0, **kw).images - mine_out).abs().max().item() > 1e-4


def test_instantid_identitynet_is_the_written_out_formula(tmp_path, parts):
    """InstantID's pipeline, written out for one Euler step without CFG: the IdentityNet (an SDXL ControlNet)
    reads the keypoint map and attends to the 16 ID tokens (not the text), with SDXL's added conditions;
    the UNet reads text + ID tokens (IP attention scaled by ip_scale) plus the residuals."""
    from facemakeup.faces.conditions import keypoint_map

    _, path = _saved_layout(tmp_path, parts, "instantid", seed=10)
    net = shadingnet_from_unet(parts["unet"], 2)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    net.save_pretrained(tmp_path / "ControlNetModel")
    mine = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ours = FaceMakeUpXLPipeline(face_adapter=None, **mine)
    ours.set_progress_bar_config(disable=True)
    ours.load_face_adapter(path)
    ours.load_face_adapter(path)  # reloading replaces, never stacks
    from facemakeup.model.loaders import load_checkpoint

    ours.register_modules(controlnet=load_checkpoint(tmp_path / "ControlNetModel", ours.unet).controlnet)
    ids = torch.randn(1, 512, generator=g) * 20.0
    latents = torch.randn(1, 4, 32, 32, generator=g)
    kps = np.array([[24, 26], [40, 26], [32, 34], [26, 44], [38, 44]], np.float32)
    kmap = keypoint_map(kps, 5.0, 64, 64)
    out = ours("a face", id_embeds=ids, shading_image=kmap, condition="keypoints", guidance_scale=1.0, ip_scale=0.8,
               controlnet_conditioning_scale=0.8, latents=latents, num_inference_steps=1, output_type="latent").images

    ref = StableDiffusionXLPipeline(**{k: copy.deepcopy(v) for k, v in mine.items()}, image_encoder=None, feature_extractor=None)
    ref.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)
    ref.set_ip_adapter_scale(0.8)
    tokens = ref.unet.encoder_hid_proj.image_projection_layers[0](ids.reshape(1, -1, 512))  # (1, 16, D): prompt_image_emb
    pos, _, pooled, _ = ours.encode_prompt(["a face"], None, None, None, "cpu", do_cfg=False)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    scheduler = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x0 = latents * scheduler.init_noise_sigma
    x = scheduler.scale_model_input(x0, t)
    cond = torch.from_numpy(kmap).permute(2, 0, 1)[None].float() / 255
    down, mid = net(x, t, encoder_hidden_states=tokens, controlnet_cond=cond, conditioning_scale=0.8, added_cond_kwargs=added,
                    return_dict=False)
    noise = ref.unet(x, t, encoder_hidden_states=pos, added_cond_kwargs={**added, "image_embeds": [ids[:, None, None]]},
                     down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    theirs = scheduler.step(noise, t, x0).prev_sample
    assert (out - theirs).abs().max().item() < 1e-4


def test_raw_embedding_for_instantid_and_normed_for_faceid(tmp_path, parts, astronaut):
    """InstantID reads insightface's raw `embedding`, FaceID its `normed_embedding`: what a photo's Face gives each."""
    from facemakeup.faces import FaceAnalyzer

    face = FaceAnalyzer(threads=1).get_face(astronaut)
    assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5 and face.embedding_norm > 1.5
    mine = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ours = FaceMakeUpXLPipeline(face_adapter=None, **mine)
    for layout, scale in (("instantid", face.embedding_norm), ("ip-adapter-faceid", 1.0)):
        _, path = _saved_layout(tmp_path, parts, layout, seed=12)
        ours.load_face_adapter(path)
        torch.testing.assert_close(ours.face_id_embeds([face]), torch.from_numpy(face.embedding[None] * scale))
