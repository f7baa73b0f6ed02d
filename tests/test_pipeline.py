"""FaceMakeUpPipeline on tiny random components: round trips, reference mixing, input checks."""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from facemakeup.errors import ModelNotFoundError, NoFaceError
from facemakeup.model import FaceIDAdapter
from facemakeup.model.tiny import tiny_components
from facemakeup.pipeline import FaceMakeUpPipeline, load_pipeline

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny")
    with torch.no_grad():  # a trained-looking adapter: non-zero LoRA so that it matters in the round trip
        for p in pipe.face_adapter.lora.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe


def test_save_load_round_trip(tmp_path, pipe, astronaut):
    kw = dict(reference_image=astronaut, num_inference_steps=STEPS, seed=3, output_type="np")
    before = pipe("a portrait", **kw)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "FaceMakeUpPipeline" and index["face_adapter"] == ["facemakeup.model.id_adapter", "FaceIDAdapter"]
    with safe_open(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "processor" in k]  # the UNet is saved plain
    again = FaceMakeUpPipeline.from_pretrained(tmp_path)
    after = again("a portrait", **kw)
    np.testing.assert_allclose(after.images, before.images, atol=1e-5)
    torch.testing.assert_close(after.id_tokens, before.id_tokens)
    # the pipeline that was saved still works the same (adapter re-attached)
    np.testing.assert_allclose(pipe("a portrait", **kw).images, before.images, atol=1e-6)


def test_fresh_adapter_at_ip_scale_zero_equals_stable_diffusion(astronaut):
    parts = tiny_components(seed=5)
    ref = StableDiffusionPipeline(**{k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = FaceMakeUpPipeline(face_adapter=FaceIDAdapter.for_unet(parts["unet"], 32, lora_rank=4), **parts)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=STEPS, output_type="np", latents=latents, negative_prompt="blurry")
    a = ours("a portrait", reference_image=astronaut, ip_scale=0.0, **kw).images
    b = ref("a portrait", **kw).images
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = ours("a portrait", reference_image=astronaut, ip_scale=1.0, **kw).images
    assert np.abs(c - b).max() > 1e-3  # the ID channel does act


def test_seed_batch_and_images_per_prompt(pipe, astronaut):
    out = pipe(["a", "b"], reference_image=astronaut, num_images_per_prompt=2, num_inference_steps=STEPS, seed=1, output_type="np")
    assert out.images.shape == (4, 64, 64, 3)
    assert out.images.min() >= 0 and out.images.max() <= 1
    same = pipe(["a", "b"], reference_image=astronaut, num_images_per_prompt=2, num_inference_steps=STEPS, seed=1, output_type="np")
    np.testing.assert_array_equal(out.images, same.images)
    other = pipe(["a", "b"], reference_image=astronaut, num_images_per_prompt=2, num_inference_steps=STEPS, seed=2, output_type="np")
    assert np.abs(other.images - out.images).max() > 1e-3
    assert len(out.faces) == 1 and out.id_embeds.shape == (1, 512) and out.face_images[0].shape == (32, 32, 3)


def test_reference_mixing_by_weight(pipe, astronaut):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    kw = dict(num_inference_steps=1, seed=0, output_type="latent")
    one = pipe("x", reference_image=astronaut, **kw)
    two = pipe("x", reference_image=[astronaut, flipped], reference_weights=[1, 0], **kw)
    torch.testing.assert_close(two.id_tokens, one.id_tokens)
    torch.testing.assert_close(two.images, one.images)
    mixed = pipe("x", reference_image=[astronaut, flipped], reference_weights=[3, 1], **kw)
    assert mixed.reference_weights == [0.75, 0.25]
    # inputs are mixed before the projection: ArcFace embeddings and CLIP features, 3:1
    clip = pipe.encode_face_images(mixed.face_images, "cpu")
    expected = pipe.face_adapter.project(0.75 * mixed.id_embeds[:1] + 0.25 * mixed.id_embeds[1:], 0.75 * clip[:1] + 0.25 * clip[1:])
    torch.testing.assert_close(mixed.id_tokens, expected, rtol=1e-5, atol=1e-6)
    assert (mixed.id_tokens - one.id_tokens).abs().max() > 1e-4


def test_precomputed_inputs_match_reference_image(pipe, astronaut):
    kw = dict(num_inference_steps=1, seed=0, output_type="latent")
    out = pipe("x", reference_image=astronaut, **kw)
    assert out.shading_image.shape == (64, 64, 3)  # the tiny pipeline has a ShadingNet
    with pytest.raises(ValueError, match="also pass `shading_image`"):
        pipe("x", id_embeds=out.id_embeds, face_images=out.face_images, **kw)
    again = pipe("x", id_embeds=out.id_embeds, face_images=out.face_images, shading_image=out.shading_image, **kw)
    torch.testing.assert_close(again.images, out.images)
    clip = pipe.encode_face_images(out.face_images, "cpu")
    third = pipe("x", id_embeds=out.id_embeds, clip_embeds=clip, shading_image=out.shading_image, **kw)
    torch.testing.assert_close(third.images, out.images)
    pos, neg = pipe.encode_prompt(["x"], None, "cpu")
    fourth = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, reference_image=astronaut, **kw)
    torch.testing.assert_close(fourth.images, out.images)
    fifth = pipe(prompt_embeds=pos, reference_image=astronaut, **kw)  # negative defaults to the empty prompt
    torch.testing.assert_close(fifth.images, out.images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=123), "`prompt` must be a string"),
        (dict(prompt=None), "`prompt` must be a string"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32)), "either `prompt` or `prompt_embeds`"),
        (dict(prompt=None, prompt_embeds=torch.zeros(77, 32)), r"`prompt_embeds` must be a \(B, 77, D\)"),
        (dict(prompt=["a", 5]), "`prompt` must be a string"),
        (dict(negative_prompt=["a", "b"]), "`negative_prompt` has 2 entries"),
        (dict(reference_image=None), "pass `reference_image`"),
        (dict(reference_weights=[1, 2]), "`reference_weights` must be 1"),
        (dict(reference_weights=[-1]), "`reference_weights` must be 1"),
        (dict(height=100), "`height` must be a positive multiple of 8"),
        (dict(num_inference_steps=0), "`num_inference_steps`"),
        (dict(guidance_scale="7"), "`guidance_scale`"),
        (dict(ip_scale=-1), "`ip_scale`"),
        (dict(seed=1, generator=torch.Generator()), "either `generator` or `seed`"),
        (dict(id_embeds=torch.zeros(1, 512)), "either `reference_image` or `id_embeds`"),
        (dict(reference_image=None, id_embeds=torch.zeros(1, 512)), "exactly one of `face_images`"),
        (dict(reference_image=None, id_embeds=torch.zeros(1, 128), clip_embeds=torch.zeros(1, 65, 32)), r"\(N, 512\) tensor"),
    ],
)
def test_check_inputs(pipe, astronaut, kwargs, message):
    args = dict(prompt="a face", reference_image=astronaut, num_inference_steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_reference_without_face_raises(pipe):
    import skimage.data

    with pytest.raises(NoFaceError):
        pipe("a face", reference_image=skimage.data.rocket(), num_inference_steps=1)


def test_missing_backbone_says_what_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR.*--model DIR"):
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", local_files_only=True)
    with pytest.raises(ModelNotFoundError, match="exists but does not hold it"):
        load_pipeline(str(tmp_path), local_files_only=True)


def save_tiny_backbone(folder, seed):
    """Save tiny components as a user's downloads would look: an SD 1.5 folder and a CLIP folder."""
    parts = tiny_components(seed=seed)
    sd = StableDiffusionPipeline(**{k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(folder / "sd15")
    parts["image_encoder"].save_pretrained(folder / "clip")
    parts["feature_extractor"].save_pretrained(folder / "clip")
    return parts


def test_from_backbone_loads_local_folders(tmp_path, astronaut):
    """The real loading path of an SD 1.5 folder + CLIP encoder folder + IP-Adapter checkpoint file."""
    from facemakeup.model.tiny import random_faceid_plusv2_state_dict

    parts = save_tiny_backbone(tmp_path, seed=7)
    ckpt = random_faceid_plusv2_state_dict(parts["unet"], 32)
    torch.save(ckpt, tmp_path / "ip-adapter-faceid-plusv2_sd15.bin")

    pipe = FaceMakeUpPipeline.from_backbone(tmp_path / "sd15", image_encoder=tmp_path / "clip",
                                            adapter=tmp_path / "ip-adapter-faceid-plusv2_sd15.bin", local_files_only=True)
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    index = list(pipe.unet.attn_processors).index(name + ".processor")
    torch.testing.assert_close(pipe.face_adapter.ip_kv[name.replace(".", "__")]["to_k_ip"].weight, ckpt["ip_adapter"][f"{index}.to_k_ip.weight"])
    out = pipe("a face", reference_image=astronaut, num_inference_steps=1, output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    with pytest.raises(ModelNotFoundError, match="missing.bin"):
        pipe.load_face_adapter(tmp_path / "missing.bin")


# ---------------------------------------------------------------------------- ShadingNet
def _perturbed_shadingnet(unet, seed=0):
    from facemakeup.model.shadingnet import shadingnet_from_unet

    net = shadingnet_from_unet(unet, vae_scale_factor=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking ShadingNet: non-zero output convolutions
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def test_shadingnet_at_scale_zero_equals_no_shadingnet(astronaut):
    parts = tiny_components(seed=3)
    plain = FaceMakeUpPipeline(face_adapter=FaceIDAdapter.for_unet(parts["unet"], 32, lora_rank=4), **copy.deepcopy(parts))
    with_net = FaceMakeUpPipeline(face_adapter=copy.deepcopy(plain.face_adapter).__class__.from_config(plain.face_adapter.config),
                                  controlnet=_perturbed_shadingnet(parts["unet"]), **copy.deepcopy(parts))
    with_net.face_adapter.load_state_dict(plain.face_adapter.state_dict())
    kw = dict(reference_image=astronaut, num_inference_steps=2, seed=0, output_type="latent")
    base = plain("a face", **kw).images
    zero = with_net("a face", controlnet_conditioning_scale=0.0, **kw)
    assert zero.shading_image is not None and zero.shading_image.max() > 0
    assert (zero.images - base).abs().max().item() < 1e-4
    one = with_net("a face", controlnet_conditioning_scale=1.0, **kw).images
    assert (one - base).abs().max().item() > 1e-3


def test_shadingnet_reads_the_shading_map_and_only_the_id_tokens(pipe, astronaut):
    seen = []
    handle = pipe.controlnet.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["encoder_hidden_states"], kw["controlnet_cond"])), with_kwargs=True)
    try:
        out = pipe("a face", reference_image=astronaut, num_inference_steps=1, seed=0, output_type="latent")
    finally:
        handle.remove()
    context, cond = seen[0]
    assert context.shape == (2, 4, 32)  # CFG halves x the 4 ID tokens, no text
    torch.testing.assert_close(context[1:], out.id_tokens)
    assert cond.shape == (2, 3, 64, 64) and 0 <= cond.min() and cond.max() <= 1
    np.testing.assert_array_equal(np.round(cond[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), out.shading_image)
    with pytest.raises(ValueError, match=r"`shading_image` must be 3 x 64 x 64"):
        pipe("a face", reference_image=astronaut, num_inference_steps=1, shading_image=np.zeros((32, 32, 3), np.uint8))


def test_face_makeup_v2_checkpoint_loads_adapter_and_shadingnet(tmp_path, astronaut):
    """Face-MakeUpV2's model.bin: one pickle with image_proj, ip_adapter and controlnet."""
    from facemakeup.model.tiny import random_faceid_plusv2_state_dict

    parts = save_tiny_backbone(tmp_path, seed=9)
    ckpt = random_faceid_plusv2_state_dict(parts["unet"], 32)
    net = _perturbed_shadingnet(parts["unet"], seed=4)
    ckpt["controlnet"] = net.state_dict()
    torch.save(ckpt, tmp_path / "model.bin")
    pipe = FaceMakeUpPipeline.from_backbone(tmp_path / "sd15", image_encoder=tmp_path / "clip", adapter=tmp_path / "model.bin",
                                            shadingnet=tmp_path / "model.bin", local_files_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(pipe.controlnet.state_dict()[k], v)
    pipe.save_pretrained(tmp_path / "saved")
    again = FaceMakeUpPipeline.from_pretrained(tmp_path / "saved")
    kw = dict(reference_image=astronaut, num_inference_steps=1, seed=0, output_type="latent", controlnet_conditioning_scale=1.0)
    torch.testing.assert_close(again("a face", **kw).images, pipe("a face", **kw).images, rtol=1e-5, atol=1e-5)
    from facemakeup.model.loaders import controlnet_from_state_dict

    with pytest.raises(ValueError, match="does not fit a ControlNet"):
        controlnet_from_state_dict({"nonsense.weight": torch.zeros(1)}, parts["unet"], 2)


def test_fused_pipeline_saves_a_plain_unet(tmp_path, astronaut):
    pipe = load_pipeline("tiny")
    with torch.no_grad():
        for p in pipe.face_adapter.lora.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = dict(reference_image=astronaut, num_inference_steps=1, seed=0, output_type="latent")
    unfused = pipe("a face", **kw).images
    pipe.face_adapter.fuse_lora()
    fused = pipe("a face", **kw).images
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)
    pipe.save_pretrained(tmp_path)
    assert pipe.face_adapter.lora_fused  # still fused after saving
    again = FaceMakeUpPipeline.from_pretrained(tmp_path)  # reloads unfused, same result
    torch.testing.assert_close(again("a face", **kw).images, unfused, rtol=1e-4, atol=1e-5)


def test_step_callback_sees_every_step_and_can_replace_latents(pipe, astronaut):
    seen = []

    def record(p, i, t, kwargs):
        seen.append((i, int(t), tuple(kwargs["latents"].shape)))
        return {}

    kw = dict(reference_image=astronaut, num_inference_steps=3, seed=1, output_type="np")
    plain = pipe("x", **kw).images
    again = pipe("x", callback_on_step_end=record, **kw).images
    np.testing.assert_array_equal(plain, again)  # a callback that returns nothing changes nothing
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert seen[0][2] == (1, 4, 32, 32)
    zeroed = pipe("x", callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros_like(k["latents"])}, **kw).images
    with torch.no_grad():
        decoded = pipe.vae.decode(torch.zeros(1, 4, 32, 32)).sample  # the last step's latents replaced by zeros
    np.testing.assert_allclose(zeroed[0], pipe.image_processor.postprocess(decoded, output_type="np")[0], atol=1e-5)
    with pytest.raises(ValueError, match="may only name 'latents'"):
        pipe("x", callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"], **kw)
