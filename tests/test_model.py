"""The ID channel against diffusers' own IP-Adapter-FaceID-PlusV2 path, and its checkpoint I/O."""

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from facemakeup.model import FaceIDAdapter
from facemakeup.model.loaders import adapter_from_state_dict
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, tiny_components
from facemakeup.pipeline import FaceMakeUpPipeline

RANK = 4


@pytest.fixture(scope="module")
def parts():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def checkpoint(parts):
    return random_faceid_plusv2_state_dict(parts["unet"], parts["image_encoder"].config.hidden_size)


def ours_and_diffusers(parts, checkpoint):
    """Our pipeline and diffusers' StableDiffusionPipeline + load_ip_adapter on copies of one tiny model."""
    mine = {k: copy.deepcopy(v) for k, v in parts.items()}
    adapter = adapter_from_state_dict(checkpoint, mine["unet"])
    ours = FaceMakeUpPipeline(face_adapter=adapter, **mine)

    theirs = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ref = StableDiffusionPipeline(**theirs, safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    ref.load_ip_adapter(copy.deepcopy(checkpoint), subfolder="", weight_name="", image_encoder_folder=None)
    return ours, ref


def test_noise_prediction_matches_diffusers_load_ip_adapter(parts, checkpoint):
    ours, ref = ours_and_diffusers(parts, checkpoint)
    torch.manual_seed(0)
    id_embeds = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    clip = torch.randn(2, 65, 32)
    text = torch.randn(2, 77, 32)
    latents = torch.randn(2, 4, 32, 32)
    for scale, s_scale in ((0.6, 1.0), (1.3, 0.7)):
        ours.face_adapter.set_ip_scale(scale)
        tokens = ours.face_adapter.project(id_embeds, clip, s_scale)  # (2, 4, 32)
        mine = ours.unet(latents, 500, encoder_hidden_states=(text, [tokens[:, None]])).sample

        ref.set_ip_adapter_scale(scale)
        proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds, proj.shortcut, proj.shortcut_scale = clip[:, None], True, s_scale
        theirs = ref.unet(latents, 500, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [id_embeds[:, None]]}).sample

        assert (mine - theirs).abs().max().item() < 1e-4
        assert (mine - ref.unet(latents, 500, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [0 * id_embeds[:, None]]}).sample).abs().max() > 1e-3


def test_whole_pipeline_matches_diffusers(parts, checkpoint):
    """Two DDIM steps with CFG through both pipelines from the same noise give the same latents."""
    ours, ref = ours_and_diffusers(parts, checkpoint)
    torch.manual_seed(1)
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    face = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    clip = ours.encode_face_images([face], "cpu")  # (1, 65, 32)
    uncond = ours.uncond_clip_embeds("cpu")
    latents = torch.randn(1, 4, 32, 32)
    kw = dict(num_inference_steps=2, guidance_scale=7.5, output_type="latent", latents=latents)

    mine = ours("a face", id_embeds=id_embeds, face_images=[face], ip_scale=0.6, s_scale=1.0, **kw).images

    ref.set_ip_adapter_scale(0.6)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([uncond, clip])[:, None], True, 1.0
    neg_and_pos = torch.cat([torch.zeros_like(id_embeds), id_embeds])[:, None]  # (2, 1, 512): CFG halves
    theirs = ref("a face", ip_adapter_image_embeds=[neg_and_pos], **kw).images
    assert (mine - theirs).abs().max().item() < 1e-4


def test_ip_scale_zero_and_fresh_adapter_leave_the_unet_unchanged(parts):
    unet = copy.deepcopy(parts["unet"])
    torch.manual_seed(2)
    latents, text = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 32)
    plain = unet(latents, 10, encoder_hidden_states=text).sample
    adapter = FaceIDAdapter.for_unet(unet, clip_embed_dim=32, lora_rank=RANK)  # LoRA up = 0
    adapter.attach(unet)
    tokens = adapter.project(torch.randn(1, 512), torch.randn(1, 65, 32))
    adapter.set_ip_scale(0.0)
    torch.testing.assert_close(unet(latents, 10, encoder_hidden_states=(text, [tokens[:, None]])).sample, plain, rtol=0, atol=1e-5)
    adapter.set_ip_scale(1.0)
    assert (unet(latents, 10, encoder_hidden_states=(text, [tokens[:, None]])).sample - plain).abs().max() > 1e-3
    adapter.detach()
    assert not hasattr(unet, "peft_config")
    torch.testing.assert_close(unet(latents, 10, encoder_hidden_states=text).sample, plain, rtol=0, atol=1e-6)


def test_adapter_weights_are_shared_with_the_unet(parts, checkpoint):
    unet = copy.deepcopy(parts["unet"])
    adapter = adapter_from_state_dict(checkpoint, unet)
    adapter.attach(unet)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert unet.get_submodule(name).processor.to_k_ip[0] is adapter.ip_kv[name.replace(".", "__")]["to_k_ip"]
    assert unet.get_submodule(name + ".to_q").lora_A["facemakeup_id"] is adapter.lora[(name + ".to_q").replace(".", "__")]["down"]
    # weights are those of the checkpoint (processor index 1 is this layer)
    torch.testing.assert_close(adapter.ip_kv[name.replace(".", "__")]["to_v_ip"].weight, checkpoint["ip_adapter"]["1.to_v_ip.weight"])
    with pytest.raises(ValueError, match="already carries"):
        adapter.attach(unet)
    # the adapter owns only its own weights, not the UNet it is attached to
    assert not any(k.startswith(("down_blocks", "up_blocks", "mid_block")) for k in adapter.state_dict())
    assert sum(p.numel() for p in adapter.parameters()) < sum(p.numel() for p in unet.parameters())


def test_adapter_save_load_round_trip(tmp_path, parts, checkpoint):
    adapter = adapter_from_state_dict(checkpoint, copy.deepcopy(parts["unet"]))
    adapter.save_pretrained(tmp_path)
    again = FaceIDAdapter.from_pretrained(tmp_path)
    assert again.config.lora_rank == RANK and again.config.attn_layers == adapter.config.attn_layers
    for (k, a), (k2, b) in zip(adapter.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_fused_lora_gives_the_same_noise_and_detach_restores_the_unet(parts, checkpoint):
    unet = copy.deepcopy(parts["unet"])
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    adapter = adapter_from_state_dict(checkpoint, unet)
    adapter.attach(unet)
    torch.manual_seed(3)
    latents, text = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 32)
    tokens = adapter.project(torch.randn(1, 512), torch.randn(1, 65, 32))
    call = lambda: unet(latents, 10, encoder_hidden_states=(text, [tokens[:, None]])).sample  # noqa: E731
    unfused = call()
    adapter.fuse_lora()
    layer = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    assert type(layer) is torch.nn.Linear  # plain layers while fused: no per-step LoRA work
    assert not torch.equal(layer.weight, base["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    torch.testing.assert_close(call(), unfused, rtol=1e-4, atol=1e-5)
    adapter.detach()  # unfuses first
    for k, v in unet.state_dict().items():
        assert torch.equal(v, base[k]), k  # bit-exact
    with pytest.raises(ValueError, match="attach the adapter"):
        adapter.fuse_lora()
