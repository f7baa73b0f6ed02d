"""Per-step time of FaceMakeUpPipeline and FaceMakeUpXLPipeline against diffusers' own paths, side by side on one UNet.

    python benchmarks/pipeline_speed.py [--sizes tiny sd15 tiny-xl sdxl] [--steps 3]
    python benchmarks/pipeline_speed.py --sizes sdxl --steps 2 --sd15-repeats 2 --sdxl-pixels 512   # the SDXL rows

Rows, all with CFG (batch 2 through the UNet), the same latents and the same random weights:

- ``stable_diffusion``: diffusers' ``StableDiffusionPipeline``, no adapter;
- ``diffusers_ip_adapter``: the same + ``load_ip_adapter`` of a random IP-Adapter-FaceID-PlusV2
  state dict (h94 layout; diffusers 0.42 loads its projection, IP k/v and its LoRA, as the peft adapter
  ``faceid_0``, unfused; ``unload_ip_adapter`` leaves that adapter in place, so the script removes it
  with ``unload_lora_weights`` before our rows run on the same UNet);
- ``facemakeup``: ``FaceMakeUpPipeline.load_face_adapter`` of that very file (IP k/v + LoRA
  rank 128, unfused), ``facemakeup_lora_fused``: LoRA fused as ``facemakeup generate`` does;
- ``diffusers_controlnet_ip_adapter``: ``StableDiffusionControlNetPipeline`` with a ControlNet made
  by ``ControlNetModel.from_unet`` + the same ``load_ip_adapter``;
- ``facemakeup_lora_fused_controlnet``: ours with that ControlNet as ShadingNet.

Per-step time is (T(1 + steps) - T(1)) / steps, which removes the one-off work (text encoding, ID
tokens, VAE decode).

Two more groups of rows (``--rows``), seconds per image (the whole call at a given step count, CFG
unless said), each beside diffusers' equivalent:

- ``early_stop`` (``bench_early_stop``, ``--window-steps`` steps): ``stable_diffusion``; ours, LoRA
  fused, with the ShadingNet over all steps and with ``control_guidance_end`` 0.4 (the ShadingNet is
  not called in the last 60% of the steps; goal <= 1.15x plain SD at 256 px); diffusers'
  ``StableDiffusionControlNetPipeline`` + ``load_ip_adapter`` with ``control_guidance_end`` 0.4 (it
  calls its ControlNet with scale 0 there, so it saves nothing);
- ``few_step`` (``bench_few_step``): ours with a random LCM-LoRA-shaped LoRA (rank 64, LCM-LoRA's
  targets) fused beside the face LoRA, ``LCMScheduler``, ``--few-steps`` steps, guidance 1 (no CFG),
  against ours with DDIM at ``--full-steps`` steps and CFG; the same for diffusers
  (``load_ip_adapter`` + ``load_lora_weights`` + ``set_adapters(["faceid_0", "lcm"])`` + ``fuse_lora``). "sd15" is the SD 1.5 UNet layout (860M parameters) at 256x256 px with CLIP
ViT-H-sized features (257 x 1280); "tiny" the test model at 64x64 px. SD 1.5 does not install offline;
speed does not depend on the weights. Writes benchmarks/results/pipeline_speed.json with the CPU
count and load.

SDXL rows ("sdxl": SDXL-base's UNet layout, ``model.backbone.SDXL_UNET_CONFIG``, 2.6 B random parameters,
at ``--sdxl-pixels`` (512) so that it fits these machines; "tiny-xl" the tiny SDXL-shaped test model at
64 px), the same rows with diffusers' SDXL classes: ``stable_diffusion`` = ``StableDiffusionXLPipeline``,
``diffusers_ip_adapter`` = it + ``load_ip_adapter``, ``diffusers_controlnet_ip_adapter`` =
``StableDiffusionXLControlNetPipeline`` + ``load_ip_adapter``, against ``FaceMakeUpXLPipeline``. The SDXL
UNet and its ControlNet take 15 GB in float32, so "sdxl" runs in ``--sdxl-dtype`` (bfloat16: both
sides in the same dtype, CPU bf16 kernels); pass ``float32`` on a machine with ~20 GB free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, StableDiffusionControlNetPipeline, StableDiffusionPipeline, StableDiffusionXLControlNetPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common import write_result
from facemakeup.model.backbone import SDXL_UNET_CONFIG
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, tiny_components, tiny_xl_components
from facemakeup.pipeline import FaceMakeUpPipeline
from facemakeup.pipeline_xl import FaceMakeUpXLPipeline


def sd15_components() -> dict:
    """SD 1.5's UNet layout (random), with a small VAE of the same 8x downsampling and a 1-layer
    768-wide text encoder (neither is inside the per-step time)."""
    parts = tiny_components()
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64).eval()  # SD 1.5 config
    parts["vae"] = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=4,
    ).eval()
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=12, bos_token_id=512, eos_token_id=513, pad_token_id=513)).eval()
    return parts


def sdxl_components(dtype: torch.dtype) -> dict:
    """SDXL-base's UNet layout (random, in ``dtype``), with a small VAE of the same 8x downsampling and
    1-layer text encoders of SDXL's widths (768 and 1280, pooled projection 1280: the UNet's 2048-wide
    context and 2816-wide added embedding); neither is inside the per-step time."""
    parts = tiny_xl_components()
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype).eval()
    parts["vae"] = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=4,
    ).to(dtype).eval()
    for name, klass, width in (("text_encoder", CLIPTextModel, 768), ("text_encoder_2", CLIPTextModelWithProjection, 1280)):
        config = CLIPTextConfig(vocab_size=514, hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=8,
                                bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=1280)
        parts[name] = klass(config).to(dtype).eval()
    return parts


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_step(make, steps: int, repeats: int) -> float:
    """(T(1 + steps) - T(1)) / steps for ``make(n)`` = a call running n denoising steps, after one untimed
    1-step call: the first call after weights change (a new pipeline, a load, a fuse) pays one-off costs
    (page faults of fresh tensors, oneDNN's first bf16/AMX kernels) that read as seconds per step otherwise."""
    make(1)()
    return (timed(make(1 + steps), repeats) - timed(make(1), repeats)) / steps


def bench(size: str, steps: int, repeats: int) -> dict:
    parts = tiny_components() if size == "tiny" else sd15_components()
    px = 64 if size == "tiny" else 256
    clip_dim, clip_len = (32, 65) if size == "tiny" else (1280, 257)
    unet = parts["unet"]
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    controlnet = shadingnet_from_unet(unet, scale)
    sd_parts = {k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, px // scale, px // scale, generator=g)
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    clip = torch.randn(1, clip_len, clip_dim, generator=g)
    uncond_clip = torch.randn(1, clip_len, clip_dim, generator=g)
    shading = torch.rand(1, 3, px, px, generator=g)
    state = random_faceid_plusv2_state_dict(unet, clip_dim, rank=128, std=0.02)  # h94's layout, random values
    common = dict(height=px, width=px, latents=latents, output_type="latent")
    t = {}
    with torch.no_grad():
        # diffusers: plain, + load_ip_adapter, ControlNet pipeline + load_ip_adapter (one UNet, adapters unloaded in between)
        sd = StableDiffusionPipeline(**sd_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        sd.set_progress_bar_config(disable=True)
        t["stable_diffusion"] = per_step(lambda n: lambda: sd("a portrait", num_inference_steps=n, **common), steps, repeats)
        cn = StableDiffusionControlNetPipeline(**sd_parts, controlnet=controlnet, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
        cn.set_progress_bar_config(disable=True)
        embeds = [torch.cat([torch.zeros_like(id_embeds), id_embeds])[:, None]]  # (2, 1, 512): CFG halves
        for name, pipe, extra in (("diffusers_ip_adapter", sd, {}), ("diffusers_controlnet_ip_adapter", cn, {"image": shading})):
            pipe.load_ip_adapter({k: dict(v) for k, v in state.items()}, subfolder="", weight_name="", image_encoder_folder=None)
            pipe.set_ip_adapter_scale(0.6)
            proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
            proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([uncond_clip, clip])[:, None], True, 1.0
            t[name] = per_step(lambda n: lambda: pipe("a portrait", ip_adapter_image_embeds=embeds, num_inference_steps=n, **extra, **common),
                               steps, repeats)
            pipe.unload_ip_adapter()
            pipe.unload_lora_weights()  # its FaceID LoRA (peft adapter faceid_0) outlives unload_ip_adapter: ours gets the plain UNet
        del sd, cn

        # ours: the very same file through load_face_adapter
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ip-adapter-faceid-plusv2_sd15.bin"
            torch.save(state, path)
            ours = FaceMakeUpPipeline(face_adapter=None, **parts)
            ours.load_face_adapter(path)
        ours.set_progress_bar_config(disable=True)
        kw = dict(id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond_clip, ip_scale=0.6, **common)
        t["facemakeup"] = per_step(lambda n: lambda: ours("a portrait", num_inference_steps=n, **kw), steps, repeats)
        ours.face_adapter.fuse_lora()  # what `facemakeup generate` does
        t["facemakeup_lora_fused"] = per_step(lambda n: lambda: ours("a portrait", num_inference_steps=n, **kw), steps, repeats)
        ours.register_modules(controlnet=controlnet)
        t["facemakeup_lora_fused_controlnet"] = per_step(
            lambda n: lambda: ours("a portrait", num_inference_steps=n, shading_image=shading, **kw), steps, repeats)
        adapter_params = sum(p.numel() for p in ours.face_adapter.parameters())
        ours.unload_face_adapter()
    base = t["stable_diffusion"]
    return {
        "unet": size,
        "unet_parameters_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "adapter_parameters_M": round(adapter_params / 1e6, 1),
        "pixels": px, "cfg": True, "lora_rank": 128, "steps_timed": steps, "repeats": repeats,
        **{f"s_per_step_{k}": v for k, v in t.items()},
        **{f"ratio_{k}_vs_stable_diffusion": v / base for k, v in t.items() if k != "stable_diffusion"},
        "ratio_facemakeup_lora_fused_vs_diffusers_ip_adapter": t["facemakeup_lora_fused"] / t["diffusers_ip_adapter"],
        "ratio_facemakeup_lora_fused_controlnet_vs_diffusers_controlnet_ip_adapter":
            t["facemakeup_lora_fused_controlnet"] / t["diffusers_controlnet_ip_adapter"],
    }


def bench_xl(size: str, steps: int, repeats: int, pixels: int, dtype: torch.dtype) -> dict:
    """The rows of ``bench`` with diffusers' SDXL classes and ``FaceMakeUpXLPipeline`` (module docstring)."""
    parts = tiny_xl_components() if size == "tiny-xl" else sdxl_components(dtype)
    dtype = torch.float32 if size == "tiny-xl" else dtype
    px = 64 if size == "tiny-xl" else pixels
    clip_dim, clip_len = (32, 65) if size == "tiny-xl" else (1280, 257)
    unet = parts["unet"]
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    controlnet = shadingnet_from_unet(unet, scale)
    sd_parts = {k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, px // scale, px // scale, generator=g).to(dtype)
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1).to(dtype)
    clip = torch.randn(1, clip_len, clip_dim, generator=g).to(dtype)
    uncond_clip = torch.randn(1, clip_len, clip_dim, generator=g).to(dtype)
    shading = torch.rand(1, 3, px, px, generator=g).to(dtype)
    state = random_faceid_plusv2_state_dict(unet, clip_dim, rank=128, std=0.02)  # h94's layout, random values
    state = {group: {k: v.to(dtype) for k, v in part.items()} for group, part in state.items()}
    common = dict(height=px, width=px, latents=latents, output_type="latent")
    t = {}
    with torch.no_grad():
        sd = StableDiffusionXLPipeline(**sd_parts, image_encoder=None, feature_extractor=None)
        sd.set_progress_bar_config(disable=True)
        t["stable_diffusion"] = per_step(lambda n: lambda: sd("a portrait", num_inference_steps=n, **common), steps, repeats)
        cn = StableDiffusionXLControlNetPipeline(**sd_parts, controlnet=controlnet, image_encoder=None, feature_extractor=None)
        cn.set_progress_bar_config(disable=True)
        embeds = [torch.cat([torch.zeros_like(id_embeds), id_embeds])[:, None]]  # (2, 1, 512): CFG halves
        for name, pipe, extra in (("diffusers_ip_adapter", sd, {}), ("diffusers_controlnet_ip_adapter", cn, {"image": shading})):
            pipe.load_ip_adapter({k: dict(v) for k, v in state.items()}, subfolder="", weight_name="", image_encoder_folder=None)
            pipe.set_ip_adapter_scale(0.6)
            proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
            proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([uncond_clip, clip])[:, None], True, 1.0
            t[name] = per_step(lambda n: lambda: pipe("a portrait", ip_adapter_image_embeds=embeds, num_inference_steps=n, **extra, **common),
                               steps, repeats)
            pipe.unload_ip_adapter()
            pipe.unload_lora_weights()  # its FaceID LoRA (peft adapter faceid_0) outlives unload_ip_adapter: ours gets the plain UNet
        del sd, cn

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ip-adapter-faceid-plusv2_sdxl.bin"
            torch.save(state, path)
            del state
            ours = FaceMakeUpXLPipeline(face_adapter=None, **parts)
            ours.load_face_adapter(path)
        ours.set_progress_bar_config(disable=True)
        kw = dict(id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond_clip, ip_scale=0.6, **common)
        t["facemakeup"] = per_step(lambda n: lambda: ours("a portrait", num_inference_steps=n, **kw), steps, repeats)
        ours.face_adapter.fuse_lora()  # what `facemakeup generate` does
        t["facemakeup_lora_fused"] = per_step(lambda n: lambda: ours("a portrait", num_inference_steps=n, **kw), steps, repeats)
        ours.register_modules(controlnet=controlnet)
        t["facemakeup_lora_fused_controlnet"] = per_step(
            lambda n: lambda: ours("a portrait", num_inference_steps=n, shading_image=shading, **kw), steps, repeats)
        adapter_params = sum(p.numel() for p in ours.face_adapter.parameters())
        ours.unload_face_adapter()
    base = t["stable_diffusion"]
    return {
        "unet": size, "dtype": str(dtype).replace("torch.", ""),
        "unet_parameters_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "controlnet_parameters_M": round(sum(p.numel() for p in controlnet.parameters()) / 1e6, 1),
        "adapter_parameters_M": round(adapter_params / 1e6, 1),
        "pixels": px, "cfg": True, "guidance_scale": 5.0, "lora_rank": 128, "steps_timed": steps, "repeats": repeats,
        **{f"s_per_step_{k}": v for k, v in t.items()},
        **{f"ratio_{k}_vs_stable_diffusion_xl": v / base for k, v in t.items() if k != "stable_diffusion"},
        "ratio_facemakeup_lora_fused_vs_diffusers_ip_adapter": t["facemakeup_lora_fused"] / t["diffusers_ip_adapter"],
        "ratio_facemakeup_lora_fused_controlnet_vs_diffusers_controlnet_ip_adapter":
            t["facemakeup_lora_fused_controlnet"] / t["diffusers_controlnet_ip_adapter"],
    }


def _fixtures(size: str) -> dict:
    """What every row of ``bench_early_stop`` / ``bench_few_step`` shares: the components, the inputs,
    the h94-layout FaceID-PlusV2 state dict and a ShadingNet, all seeded."""
    parts = tiny_components() if size == "tiny" else sd15_components()
    px = 64 if size == "tiny" else 256
    clip_dim, clip_len = (32, 65) if size == "tiny" else (1280, 257)
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(0)
    return {
        "parts": parts, "px": px, "scale": scale,
        "controlnet": shadingnet_from_unet(parts["unet"], scale),
        "latents": torch.randn(1, 4, px // scale, px // scale, generator=g),
        "id_embeds": torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1),
        "clip": torch.randn(1, clip_len, clip_dim, generator=g), "uncond_clip": torch.randn(1, clip_len, clip_dim, generator=g),
        "shading": torch.rand(1, 3, px, px, generator=g),
        "state": random_faceid_plusv2_state_dict(parts["unet"], clip_dim, rank=128, std=0.02),
    }


def _ours(fx: dict, controlnet: bool) -> FaceMakeUpPipeline:
    """``FaceMakeUpPipeline(face_adapter=None, **components)`` + ``load_face_adapter`` of the h94 file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ip-adapter-faceid-plusv2_sd15.bin"
        torch.save(fx["state"], path)
        pipe = FaceMakeUpPipeline(face_adapter=None, **{**fx["parts"], "controlnet": fx["controlnet"] if controlnet else None})
        pipe.load_face_adapter(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(fx: dict, controlnet: bool):
    """diffusers' SD (or SD ControlNet) pipeline + ``load_ip_adapter`` of the same file, its projection
    given the CLIP features as the FaceID-PlusV2 recipe does; returns (pipe, ``ip_adapter_image_embeds``)."""
    sd_parts = {k: v for k, v in fx["parts"].items() if k not in ("image_encoder", "feature_extractor")}
    extra = {"controlnet": fx["controlnet"]} if controlnet else {}
    cls = StableDiffusionControlNetPipeline if controlnet else StableDiffusionPipeline
    pipe = cls(**sd_parts, **extra, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter({k: dict(v) for k, v in fx["state"].items()}, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.6)
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([fx["uncond_clip"], fx["clip"]])[:, None], True, 1.0
    return pipe, [torch.cat([torch.zeros_like(fx["id_embeds"]), fx["id_embeds"]])[:, None]]  # (2, 1, 512): CFG halves


def _once(call, warm=None) -> float:
    """Seconds of one ``call()``, after an untimed ``warm()`` (a 1-step call of the same pipeline: see ``per_step``)."""
    if warm is not None:
        warm()
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _rounds(groups: list, repeats: int) -> dict:
    """Median seconds per row over ``repeats`` rounds; each round runs every group once, each group
    sets its pipeline up, times each of its rows once and tears it down (one UNet is shared, so
    adapters cannot all sit in it at once). Interleaved like this, a load change on a shared machine
    hits every row of a round alike."""
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for group in groups:
            for name, seconds in group().items():
                times.setdefault(name, []).append(seconds)
    out = {name: statistics.median(v) for name, v in times.items()}
    out.update({f"min_{name}": min(v) for name, v in times.items()})  # the least-contended round
    return out


def bench_early_stop(size: str, steps: int, repeats: int, end: float = 0.4) -> dict:
    """Seconds per image at ``steps`` steps: plain SD; ours + ShadingNet over all steps and stopped at
    ``end``; diffusers' ControlNet + IP-Adapter pipeline with the same ``control_guidance_end``."""
    fx = _fixtures(size)
    common = dict(height=fx["px"], width=fx["px"], latents=fx["latents"], output_type="latent", num_inference_steps=steps)
    sd_parts = {k: v for k, v in fx["parts"].items() if k not in ("image_encoder", "feature_extractor")}
    sd = StableDiffusionPipeline(**sd_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)

    def plain():
        return {"stable_diffusion": _once(lambda: sd("a portrait", **common), lambda: sd("a portrait", **{**common, "num_inference_steps": 1}))}

    def theirs():
        cn, embeds = _diffusers(fx, controlnet=True)
        out = {f"diffusers_controlnet_ip_adapter_end{e:g}": _once(
            lambda: cn("a portrait", image=fx["shading"], ip_adapter_image_embeds=embeds, control_guidance_end=e, **common),
            lambda: cn("a portrait", image=fx["shading"], ip_adapter_image_embeds=embeds, **{**common, "num_inference_steps": 1})) for e in (1.0, end)}
        cn.unload_ip_adapter()
        return out

    def ours():
        pipe = _ours(fx, controlnet=True)
        pipe.fuse_lora()  # what `facemakeup generate` does
        kw = dict(id_embeds=fx["id_embeds"], clip_embeds=fx["clip"], uncond_clip_embeds=fx["uncond_clip"], ip_scale=0.6,
                  shading_image=fx["shading"], **common)
        out = {f"facemakeup_lora_fused_controlnet_end{e:g}": _once(lambda: pipe("a portrait", control_guidance_end=e, **kw),
                                                                       lambda: pipe("a portrait", **{**kw, "num_inference_steps": 1})) for e in (1.0, end)}
        pipe.unload_face_adapter()
        return out

    with torch.no_grad():
        plain()  # warm-up
        t = _rounds([plain, ours, theirs], repeats)
    base, fastest = t["stable_diffusion"], t["min_stable_diffusion"]
    key = f"facemakeup_lora_fused_controlnet_end{end:g}"
    rows = [k for k in t if not k.startswith("min_")]
    return {"rows": "early_stop", "unet": size, "pixels": fx["px"], "steps": steps, "repeats": repeats, "control_guidance_end": end,
            **{f"s_per_image_{k}": v for k, v in t.items()},
            **{f"ratio_{k}_vs_stable_diffusion": t[k] / base for k in rows if k != "stable_diffusion"},
            **{f"ratio_min_{k}_vs_stable_diffusion": t[f"min_{k}"] / fastest for k in rows if k != "stable_diffusion"},
            f"goal_{key}_le_1.15x_stable_diffusion": t[key] / base <= 1.15}


def bench_few_step(size: str, few_steps: int, full_steps: int, repeats: int) -> dict:
    """Seconds per image: ours + a fused few-step LoRA (LCM, ``few_steps``, guidance 1) vs ours (DDIM,
    ``full_steps``, CFG 7.5); the same for diffusers' IP-Adapter-FaceID-PlusV2 + LoRA."""
    from diffusers import LCMScheduler

    from facemakeup.model.tiny import random_lora_state_dict

    fx = _fixtures(size)
    rank = 64 if size != "tiny" else 4
    lora = random_lora_state_dict(fx["parts"]["unet"], rank=rank, std=0.01)  # LCM-LoRA's shape
    common = dict(height=fx["px"], width=fx["px"], latents=fx["latents"], output_type="latent")
    fast = dict(num_inference_steps=few_steps, guidance_scale=1.0)
    slow = dict(num_inference_steps=full_steps, guidance_scale=7.5)
    ddim = fx["parts"]["scheduler"]
    lcm = LCMScheduler.from_config(ddim.config)

    def theirs():
        ref, embeds = _diffusers(fx, controlnet=False)
        ref.fuse_lora()  # its FaceID LoRA ('faceid_0') merged, as ours
        out = {f"diffusers_ip_adapter_{full_steps}_steps": _once(lambda: ref("a portrait", ip_adapter_image_embeds=embeds, **slow, **common),
                                                             lambda: ref("a portrait", ip_adapter_image_embeds=embeds, **{**slow, "num_inference_steps": 1}, **common))}
        ref.unfuse_lora()
        ref.load_lora_weights(dict(lora), adapter_name="lcm")
        ref.set_adapters(["faceid_0", "lcm"], [1.0, 1.0])
        ref.fuse_lora()
        ref.scheduler = lcm
        ref.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = fx["clip"][:, None]  # no CFG: the conditional row only
        out[f"diffusers_ip_adapter_lcm_lora_{few_steps}_steps"] = _once(
            lambda: ref("a portrait", ip_adapter_image_embeds=[embeds[0][1:]], **fast, **common),
            lambda: ref("a portrait", ip_adapter_image_embeds=[embeds[0][1:]], **{**fast, "num_inference_steps": 1}, **common))
        ref.unfuse_lora()  # the UNet is shared with ours: back to plain (up to rounding; speed does not depend on it)
        ref.unload_lora_weights()
        ref.unload_ip_adapter()
        return out

    def ours():
        pipe = _ours(fx, controlnet=False)
        kw = dict(id_embeds=fx["id_embeds"], clip_embeds=fx["clip"], uncond_clip_embeds=fx["uncond_clip"], ip_scale=0.6, **common)
        pipe.fuse_lora()
        pipe.scheduler = ddim
        out = {f"facemakeup_{full_steps}_steps": _once(lambda: pipe("a portrait", **slow, **kw), lambda: pipe("a portrait", **{**slow, "num_inference_steps": 1}, **kw))}
        pipe.load_lora_weights(dict(lora), adapter_name="lcm")  # the acceptance check's call, beside the (fused) face LoRA
        pipe.fuse_lora()
        pipe.scheduler = lcm
        out[f"facemakeup_lcm_lora_{few_steps}_steps"] = _once(lambda: pipe("a portrait", **fast, **kw), lambda: pipe("a portrait", **{**fast, "num_inference_steps": 1}, **kw))
        pipe.unload_face_adapter()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        return out

    with torch.no_grad():
        t = _rounds([ours, theirs], repeats)
    return {"rows": "few_step", "unet": size, "pixels": fx["px"], "few_steps": few_steps, "full_steps": full_steps, "repeats": repeats,
            "lora_rank": rank, **{f"s_per_image_{k}": v for k, v in t.items()},
            "speedup_facemakeup_lcm_lora": t[f"facemakeup_{full_steps}_steps"] / t[f"facemakeup_lcm_lora_{few_steps}_steps"],
            "speedup_diffusers_lcm_lora": t[f"diffusers_ip_adapter_{full_steps}_steps"] / t[f"diffusers_ip_adapter_lcm_lora_{few_steps}_steps"],
            "ratio_facemakeup_lcm_lora_vs_diffusers": t[f"facemakeup_lcm_lora_{few_steps}_steps"] / t[f"diffusers_ip_adapter_lcm_lora_{few_steps}_steps"],
            "ratio_facemakeup_vs_diffusers_full": t[f"facemakeup_{full_steps}_steps"] / t[f"diffusers_ip_adapter_{full_steps}_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15", "tiny-xl", "sdxl"], choices=["tiny", "sd15", "tiny-xl", "sdxl"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for the tiny models")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timing repeats (median) for the SD 1.5- and SDXL-sized UNets")
    parser.add_argument("--sdxl-pixels", type=int, default=512, help="image side of the SDXL rows (SDXL's own is 1024)")
    parser.add_argument("--sdxl-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="dtype of the SDXL rows (float32 needs ~20 GB of free memory)")
    parser.add_argument("--rows", nargs="+", default=["per_step", "early_stop", "few_step"], choices=["per_step", "early_stop", "few_step"],
                        help="SD 1.5 row groups (the SDXL sizes have per_step rows only)")
    parser.add_argument("--window-steps", type=int, default=10, help="steps of the early_stop rows (0.4 of 10: the ShadingNet runs 4)")
    parser.add_argument("--few-steps", type=int, default=4, help="steps with the few-step LoRA")
    parser.add_argument("--full-steps", type=int, default=30, help="steps without it")
    parser.add_argument("--result", "--out", dest="result", default="pipeline_speed", help="results name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        repeats = args.repeats if size in ("tiny", "tiny-xl") else args.sd15_repeats
        if size in ("tiny-xl", "sdxl"):
            benches = {"per_step": lambda: bench_xl(size, args.steps, repeats, args.sdxl_pixels, getattr(torch, args.sdxl_dtype))}
        else:
            benches = {"per_step": lambda: bench(size, args.steps, repeats),
                       "early_stop": lambda: bench_early_stop(size, args.window_steps, repeats),
                       "few_step": lambda: bench_few_step(size, args.few_steps, args.full_steps, repeats)}
        for name in [r for r in args.rows if r in benches]:
            load_before = os.getloadavg()
            row = benches[name]()
            row["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
            print(row, flush=True)
            rows.append(row)
    print("wrote", write_result(args.result, {"runs": rows, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
