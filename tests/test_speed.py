"""Going fast (``facemakeup.speed`` and the pipelines' ShadingNet window): behaviour, never time."""

import copy

import numpy as np
import pytest
import torch

from facemakeup.errors import CheckpointLayoutError, FaceMakeUpInputError, ModelNotFoundError
from facemakeup.face_conditioning import controlnet_window
from facemakeup.model.id_adapter import FaceIDAdapter
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import tiny_components, tiny_xl_components
from facemakeup.pipeline import FaceMakeUpPipeline
from facemakeup.pipeline_xl import FaceMakeUpXLPipeline
from facemakeup.speed import SCHEDULERS, LoraSpec, compile_denoiser, load_vae, set_scheduler, use_vae


def tiny_pipe(cls=FaceMakeUpPipeline, parts=None):
    parts = copy.deepcopy(parts or tiny_components())
    adapter = FaceIDAdapter.for_unet(parts["unet"], parts["image_encoder"].config.hidden_size, lora_rank=4)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in adapter.lora.parameters():  # a LoRA that acts
            p.normal_(0, 0.05)
    pipe = cls(face_adapter=adapter, controlnet=shadingnet_from_unet(parts["unet"], vae_scale_factor=2), **parts)
    with torch.no_grad():
        for p in pipe.controlnet.parameters():  # zero-initialised outputs would hide the ControlNet's effect
            p.add_(torch.randn_like(p) * 0.02)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


def kwargs(steps=10, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    return dict(id_embeds=torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1),
                clip_embeds=torch.randn(1, 65, 32, generator=g), uncond_clip_embeds=torch.zeros(1, 65, 32),
                shading_image=torch.rand(1, 3, 64, 64, generator=g), latents=torch.randn(1, 4, 32, 32, generator=g),
                num_inference_steps=steps, guidance_scale=1.0, output_type="latent", **extra)


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("start, end, expected", [(0.0, 0.4, 4), (0.0, 1.0, 10), (0.5, 1.0, 5), (0.95, 1.0, 0)])
def test_controlnet_runs_only_inside_its_window(pipe, start, end, expected):
    calls, h1 = count_calls(pipe.controlnet)
    embeds, h2 = count_calls(pipe.controlnet.controlnet_cond_embedding)
    try:
        pipe("a face", control_guidance_start=start, control_guidance_end=end, **kwargs())
    finally:
        h1.remove()
        h2.remove()
    assert len(calls) == expected
    assert len(embeds) == (1 if expected else 0)  # the map's embedding: once, and not at all without a call


def test_window_follows_diffusers_rule_and_changes_only_the_later_steps(pipe):
    assert controlnet_window(10, 0.0, 0.4) == [True] * 4 + [False] * 6
    assert controlnet_window(4, 0.0, 0.4) == [True, False, False, False]
    assert controlnet_window(10, 0.2, 0.5) == [False, False, True, True, True] + [False] * 5
    full = pipe("a face", **kwargs(steps=4)).images
    assert torch.equal(pipe("a face", control_guidance_end=1.0, **kwargs(steps=4)).images, full)
    early = pipe("a face", control_guidance_end=0.5, **kwargs(steps=4)).images
    none = pipe("a face", condition="none", **kwargs(steps=4)).images
    assert (early - full).abs().max() > 1e-4 and (early - none).abs().max() > 1e-4  # between no ShadingNet and all steps
    for start, end in ((0.5, 0.5), (0.6, 0.4), (-0.1, 1.0), (0.0, 1.5), (float("nan"), 1.0)):
        with pytest.raises(FaceMakeUpInputError, match="control_guidance"):
            pipe("a face", control_guidance_start=start, control_guidance_end=end, **kwargs(steps=1))


def test_sdxl_pipeline_has_the_window_too():
    pipe = tiny_pipe(FaceMakeUpXLPipeline, tiny_xl_components())
    calls, handle = count_calls(pipe.controlnet)
    try:
        pipe("a face", control_guidance_end=0.4, **kwargs())
    finally:
        handle.remove()
    assert len(calls) == 4


def test_schedulers_by_name_keep_the_backbone_schedule(pipe):
    betas = pipe.scheduler.betas.clone()
    for name, cls in SCHEDULERS.items():
        assert set_scheduler(pipe, name) == cls and type(pipe.scheduler).__name__ == cls
        assert torch.equal(pipe.scheduler.betas, betas)
    set_scheduler(pipe, "lcm")
    out = pipe("a face", **kwargs(steps=2)).images  # LCM's step takes the generator
    assert torch.isfinite(out).all()
    set_scheduler(pipe, "ddim")
    with pytest.raises(FaceMakeUpInputError, match="ddim, euler, euler-a, dpm\\+\\+, lcm, tcd"):
        set_scheduler(pipe, "heun")


def test_lora_spec_parsing(tmp_path):
    assert LoraSpec.parse("dir/lcm") == LoraSpec("dir/lcm", 1.0)
    assert LoraSpec.parse("dir/lcm:0.7") == LoraSpec("dir/lcm", 0.7)
    assert LoraSpec.parse("C:/x/y.safetensors:-1") == LoraSpec("C:/x/y.safetensors", -1.0)
    assert LoraSpec.parse("a:b") == LoraSpec("a:b", 1.0)  # not a number: part of the path
    for bad in ("x:nan", "x:20", ":0.5"):
        with pytest.raises(FaceMakeUpInputError):
            LoraSpec.parse(bad)
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        LoraSpec.parse(str(tmp_path / "missing")).weights_file()


def tiny_taesd(folder, levels=2):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8,) * levels, decoder_block_out_channels=(8,) * levels,
                          num_encoder_blocks=(1,) * levels, num_decoder_blocks=(1,) * levels, latent_channels=4)
    vae.save_pretrained(folder)
    return vae


def test_taesd_loads_from_a_saved_folder_and_decodes(pipe, tmp_path):
    from diffusers import AutoencoderTiny

    saved = tiny_taesd(tmp_path / "taesd")
    vae = load_vae(str(tmp_path / "taesd"))
    assert type(vae) is AutoencoderTiny and all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), saved.state_dict().values()))
    other = tiny_pipe()
    use_vae(other, vae)
    assert other.vae is vae
    images = other("a face", **{**kwargs(steps=2), "output_type": "np"}).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    latents = other("a face", **kwargs(steps=2)).images
    with torch.no_grad():
        expected = vae.decode(latents).sample  # TAESD reads the UNet's latents as they are (scaling factor 1)
    assert np.abs(other.image_processor.postprocess(expected, output_type="np") - images).max() < 1e-5

    with pytest.raises(CheckpointLayoutError, match="downsamples by 8"):
        use_vae(other, tiny_taesd(tmp_path / "taesd8", levels=4))  # TAESD's shape: 8x, not the tiny model's 2x


def test_taesd_from_the_hub_says_what_to_download():
    with pytest.raises(ModelNotFoundError, match="hf download madebyollin/taesdxl"):
        load_vae("tiny", family="sdxl", local_files_only=True)


def test_cpu_offload_hooks_leave_the_controlnet_and_face_adapter_in_place(pipe):
    expected = pipe("a face", **kwargs(steps=3)).images
    other = tiny_pipe()
    other.enable_model_cpu_offload(device="cpu")  # accelerate's hooks, on the CPU: the sequence is what is checked
    hooked = {type(h.model).__name__: h for h in other._all_hooks}
    assert "FaceIDAdapter" not in hooked and hooked["ControlNetModel"].hook.prev_module_hook is None
    offloads = []
    for hook in other._all_hooks:
        hook.offload = (lambda h: lambda: (offloads.append(type(h.model).__name__), type(h).offload(h))[1])(hook)
    out = other("a face", **kwargs(steps=3)).images
    assert "ControlNetModel" not in offloads and "FaceIDAdapter" not in offloads  # not moved off at every step
    assert torch.allclose(out, expected, atol=1e-5)


def test_bfloat16_end_to_end(pipe):
    expected = pipe("a face", **kwargs(steps=2)).images
    half = tiny_pipe().to(torch.bfloat16)
    out = half("a face", **kwargs(steps=2)).images
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.corrcoef(torch.stack([out.float().flatten(), expected.flatten()]))[0, 1] > 0.99


@pytest.mark.slow
def test_compiled_unet_and_controlnet_match_eager_without_recompiling():
    pipe = tiny_pipe()
    eager = [pipe("a face", **kwargs(steps=2, seed=s)).images for s in (1, 2)]
    assert compile_denoiser(pipe) == ["unet", "controlnet"]
    first = pipe("a face", **kwargs(steps=2, seed=1)).images
    with torch._dynamo.config.patch(error_on_recompile=True):  # another map and noise: the same graphs
        second = pipe("a face", **kwargs(steps=2, seed=2)).images
    assert (first - eager[0]).abs().max() < 1e-4 and (second - eager[1]).abs().max() < 1e-4
