"""Users' LoRAs beside the face adapter's LoRA (``facemakeup.lora``), against diffusers' own stacking."""

import copy
import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from facemakeup.model.id_adapter import LORA_ADAPTER_NAME
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, random_lora_state_dict, tiny_components, tiny_xl_components
from facemakeup.pipeline import FaceMakeUpPipeline
from facemakeup.pipeline_xl import FaceMakeUpXLPipeline


@pytest.fixture(scope="module")
def parts():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def files(parts, tmp_path_factory):
    """A FaceID-PlusV2 file (h94's layout) and two LoRA folders in diffusers' format (LCM-LoRA's targets)."""
    folder = tmp_path_factory.mktemp("weights")
    ckpt = random_faceid_plusv2_state_dict(parts["unet"], parts["image_encoder"].config.hidden_size)
    torch.save(ckpt, folder / "ip-adapter-faceid-plusv2_sd15.bin")
    for name, seed in (("lcm", 1), ("style", 2)):
        lora = random_lora_state_dict(parts["unet"], rank=4, seed=seed, std=0.1)
        StableDiffusionPipeline.save_lora_weights(folder / name, unet_lora_layers={k.removeprefix("unet."): v for k, v in lora.items()})
    return {"adapter": folder / "ip-adapter-faceid-plusv2_sd15.bin", "checkpoint": ckpt, "lcm": folder / "lcm", "style": folder / "style"}


def ours_with_lora(parts, files, lora=True):
    """The acceptance check's construction: ``FaceMakeUpPipeline(face_adapter=None, **components)``,
    ``load_face_adapter(FILE)``, ``load_lora_weights(DIR, adapter_name="lcm")``."""
    pipe = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_face_adapter(files["adapter"])
    if lora:
        pipe.load_lora_weights(files["lcm"], adapter_name="lcm")
    return pipe


def diffusers_with_lora(parts, files):
    """diffusers' StableDiffusionPipeline + load_ip_adapter (its LoRA is 'faceid_0') + load_lora_weights + set_adapters."""
    theirs = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ref = StableDiffusionPipeline(**theirs, safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(copy.deepcopy(files["checkpoint"]), subfolder="", weight_name="", image_encoder_folder=None)
    ref.load_lora_weights(files["lcm"], adapter_name="lcm")
    ref.set_adapters(["faceid_0", "lcm"], [1, 1])
    return ref


@pytest.fixture(scope="module")
def inputs(parts):
    pipe = FaceMakeUpPipeline(face_adapter=None, **parts)
    torch.manual_seed(1)
    face = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    return {"id_embeds": torch.nn.functional.normalize(torch.randn(1, 512), dim=-1), "face": face,
            "clip": pipe.encode_face_images([face], "cpu"), "uncond": pipe.uncond_clip_embeds("cpu"), "latents": torch.randn(1, 4, 32, 32),
            "text": torch.randn(1, 77, 32)}


def run_ours(pipe, x):
    return pipe("a face", id_embeds=x["id_embeds"], face_images=[x["face"]], ip_scale=0.6, num_inference_steps=2, guidance_scale=7.5,
                output_type="latent", latents=x["latents"]).images


def run_theirs(ref, x):
    ref.set_ip_adapter_scale(0.6)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([x["uncond"], x["clip"]])[:, None], True, 1.0
    embeds = torch.cat([torch.zeros_like(x["id_embeds"]), x["id_embeds"]])[:, None]  # (2, 1, 512): CFG halves
    return ref("a face", ip_adapter_image_embeds=[embeds], num_inference_steps=2, guidance_scale=7.5, output_type="latent",
               latents=x["latents"]).images


def noise_ours(pipe, x):
    """One UNet call of ours with the ID tokens (cheaper than the pipeline; the LoRAs act inside it)."""
    tokens = pipe.face_adapter.project(x["id_embeds"], x["clip"])  # (1, 4, 32)
    return pipe.unet(x["latents"], 500, encoder_hidden_states=(x["text"], [tokens[:, None]])).sample


def noise_theirs(ref, x, scale=0.6):
    ref.set_ip_adapter_scale(scale)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = x["clip"][:, None], True, 1.0
    return ref.unet(x["latents"], 500, encoder_hidden_states=x["text"], added_cond_kwargs={"image_embeds": [x["id_embeds"][:, None]]}).sample


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def test_lora_stacking_matches_diffusers_unfused_and_fused(parts, files, inputs):
    """The acceptance check: two DDIM steps with CFG, ours vs diffusers' FaceID-PlusV2 + LoRA, max abs diff < 1e-4."""
    ours, ref = ours_with_lora(parts, files), diffusers_with_lora(parts, files)
    assert ours.get_active_adapters() == ["lcm", LORA_ADAPTER_NAME]  # no set_adapters needed: the face LoRA stays on
    assert ours.get_list_adapters() == {"unet": [LORA_ADAPTER_NAME, "lcm"]}
    mine = run_ours(ours, inputs)
    assert max_diff(mine, run_theirs(ref, inputs)) < 1e-4
    ours.face_adapter.set_ip_scale(0.6)
    assert max_diff(noise_ours(ours, inputs), noise_ours(ours_with_lora(parts, files, lora=False), inputs)) > 1e-2  # the LoRA acts

    ours.fuse_lora()
    ref.fuse_lora()
    assert ours.fused_loras == {"lcm", LORA_ADAPTER_NAME}
    layer = ours.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.merged_adapters == ["lcm"] and LORA_ADAPTER_NAME not in layer.lora_A  # ours merged by us, not by peft
    fused = run_ours(ours, inputs)
    assert max_diff(fused, run_theirs(ref, inputs)) < 1e-4 and max_diff(fused, mine) < 1e-4  # nothing applied twice

    ours.unfuse_lora()
    assert not ours.face_adapter.lora_fused and ours.fused_loras == set()
    assert ours.get_active_adapters() == ["lcm", LORA_ADAPTER_NAME]


def test_set_adapters_keeps_the_face_lora_unless_named(parts, files, inputs):
    ours, ref = ours_with_lora(parts, files), diffusers_with_lora(parts, files)
    ours.face_adapter.set_ip_scale(0.6)
    ours.set_adapters(["lcm"], [0.5])  # leaves the face LoRA out: it stays, at 1.0
    ref.set_adapters(["faceid_0", "lcm"], [1.0, 0.5])
    assert set(ours.get_active_adapters()) == {"lcm", LORA_ADAPTER_NAME}
    assert max_diff(noise_ours(ours, inputs), noise_theirs(ref, inputs)) < 1e-4

    ours.set_adapters(["lcm", LORA_ADAPTER_NAME], [0.5, 0.3])  # named: its weight is set like any other's
    ref.set_adapters(["faceid_0", "lcm"], [0.3, 0.5])
    assert max_diff(noise_ours(ours, inputs), noise_theirs(ref, inputs)) < 1e-4
    ours.set_adapters("lcm")  # its weight stays 0.3 ...
    ref.set_adapters(["faceid_0", "lcm"], [0.3, 1.0])
    expected = noise_theirs(ref, inputs)
    assert max_diff(noise_ours(ours, inputs), expected) < 1e-4
    ours.fuse_lora()  # ... also when fused (weight x up @ down)
    assert max_diff(noise_ours(ours, inputs), expected) < 1e-4
    with pytest.raises(ValueError, match="fused"):
        ours.set_adapters([LORA_ADAPTER_NAME], [1.0])
    with pytest.raises(ValueError, match="face adapter's LoRA"):
        ours.load_lora_weights(files["style"], adapter_name=LORA_ADAPTER_NAME)
    with pytest.raises(ValueError, match="unload_face_adapter"):
        ours.delete_adapters(LORA_ADAPTER_NAME)


def test_fusing_in_any_order_applies_each_lora_once(parts, files, inputs):
    ours = ours_with_lora(parts, files)
    ref = noise_ours(ours, inputs)
    ours.face_adapter.fuse_lora()  # what `generate` did before: ours first ...
    assert max_diff(noise_ours(ours, inputs), ref) < 1e-4
    ours.fuse_lora()  # ... then the user's: ours is taken out and merged again on top
    assert max_diff(noise_ours(ours, inputs), ref) < 1e-4
    # a third LoRA while both are fused: as in diffusers, loading activates it alone (and peft unmerges
    # 'lcm' to add it); the face LoRA stays on top and active
    ours.load_lora_weights(files["style"], adapter_name="style")
    assert ours.get_active_adapters() == ["style"] and ours.face_adapter.lora_fused
    ours.fuse_lora(adapter_names=["style"])
    with_style = noise_ours(ours, inputs)
    ours.unfuse_lora()
    assert ours.get_active_adapters() == ["style", LORA_ADAPTER_NAME]
    assert max_diff(noise_ours(ours, inputs), with_style) < 1e-4  # all unmerged, nothing of 'lcm' left behind
    ours.set_adapters(["lcm"])
    assert max_diff(noise_ours(ours, inputs), ref) < 1e-4


def test_unload_face_adapter_restores_the_unet_bit_exactly_beside_a_user_lora(parts, files):
    for fuse in ("none", "ours", "both"):
        pipe = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
        pipe.load_lora_weights(files["lcm"], adapter_name="lcm")  # the user's LoRA first, then the face adapter
        if fuse == "both":
            pipe.fuse_lora()
        before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "Unmerging the model first": the user's fused LoRA stays fused
            pipe.load_face_adapter(files["adapter"])
        assert pipe.get_active_adapters() == ["lcm", LORA_ADAPTER_NAME]
        assert pipe.unet.get_submodule("mid_block.attentions.0.proj_in").merged == (fuse == "both")
        if fuse == "ours":
            pipe.face_adapter.fuse_lora()
        elif fuse == "both":
            pipe.fuse_lora()
        pipe.unload_face_adapter()
        after = pipe.unet.state_dict()
        assert list(after) == list(before), fuse  # no layer of ours left, the user's still wrapped
        assert all(torch.equal(after[k], v) for k, v in before.items()), fuse
        assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
        assert pipe.get_active_adapters() == ["lcm"] and pipe.get_list_adapters() == {"unet": ["lcm"]}


def test_unload_lora_weights_keeps_the_face_lora(parts, files, inputs):
    plain = noise_ours(ours_with_lora(parts, files, lora=False), inputs)
    ours = ours_with_lora(parts, files)
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {"unet": [LORA_ADAPTER_NAME]} and ours.face_adapter.lora_in_peft
    assert max_diff(noise_ours(ours, inputs), plain) < 1e-5
    ours.load_lora_weights(files["lcm"], adapter_name="lcm")
    ours.delete_adapters("lcm")
    assert ours.get_active_adapters() == [LORA_ADAPTER_NAME] and max_diff(noise_ours(ours, inputs), plain) < 1e-5


def test_sdxl_pipeline_stacks_loras_too():
    parts = tiny_xl_components()
    pipe = FaceMakeUpXLPipeline(face_adapter=None, **copy.deepcopy(parts))
    pipe.set_progress_bar_config(disable=True)
    from facemakeup.model.id_adapter import FaceIDAdapter

    pipe.register_modules(face_adapter=None)
    adapter = FaceIDAdapter.for_unet(pipe.unet, parts["image_encoder"].config.hidden_size, lora_rank=4)
    adapter.attach(pipe.unet)
    pipe.register_modules(face_adapter=adapter)
    lora = random_lora_state_dict(parts["unet"], rank=4, seed=3, std=0.1)
    pipe.load_lora_weights(lora, adapter_name="lcm")
    assert pipe.get_active_adapters() == ["lcm", LORA_ADAPTER_NAME]
    kw = dict(id_embeds=torch.nn.functional.normalize(torch.randn(1, 512), dim=-1), clip_embeds=torch.randn(1, 65, 32),
              num_inference_steps=2, output_type="latent", latents=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)))
    unfused = pipe("a face", **kw).images
    pipe.fuse_lora()
    assert (pipe("a face", **kw).images - unfused).abs().max() < 1e-4
