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
tokens, VAE decode). "sd15" is the SD 1.5 UNet layout (860M parameters) at 256x256 px with CLIP
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
    """(T(1 + steps) - T(1)) / steps for ``make(n)`` = a call running n denoising steps."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15", "tiny-xl", "sdxl"], choices=["tiny", "sd15", "tiny-xl", "sdxl"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for the tiny models")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timing repeats (median) for the SD 1.5- and SDXL-sized UNets")
    parser.add_argument("--sdxl-pixels", type=int, default=512, help="image side of the SDXL rows (SDXL's own is 1024)")
    parser.add_argument("--sdxl-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="dtype of the SDXL rows (float32 needs ~20 GB of free memory)")
    parser.add_argument("--result", default="pipeline_speed", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        load_before = os.getloadavg()
        repeats = args.repeats if size in ("tiny", "tiny-xl") else args.sd15_repeats
        if size in ("tiny-xl", "sdxl"):
            row = bench_xl(size, args.steps, repeats, args.sdxl_pixels, getattr(torch, args.sdxl_dtype))
        else:
            row = bench(size, args.steps, repeats)
        row["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        print(row)
        rows.append(row)
    print("wrote", write_result(args.result, {"runs": rows, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
