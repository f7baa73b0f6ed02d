"""Per-step time of FaceMakeUpPipeline against diffusers' own paths, side by side on one UNet.

    python benchmarks/pipeline_speed.py [--sizes tiny sd15] [--steps 3]

Rows, all with CFG (batch 2 through the UNet), the same latents and the same random weights:

- ``stable_diffusion``: diffusers' ``StableDiffusionPipeline``, no adapter;
- ``diffusers_ip_adapter``: the same + ``load_ip_adapter`` of a random IP-Adapter-FaceID-PlusV2
  state dict (h94 layout; diffusers loads its projection and IP k/v, not its LoRA);
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
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionControlNetPipeline, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from common import write_result
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, tiny_components
from facemakeup.pipeline import FaceMakeUpPipeline


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for the tiny model")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timing repeats (median) for the SD 1.5-sized UNet")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        load_before = os.getloadavg()
        row = bench(size, args.steps, args.repeats if size == "tiny" else args.sd15_repeats)
        row["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        print(row)
        rows.append(row)
    print("wrote", write_result("pipeline_speed", {"runs": rows, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
