"""Per-step time of FaceMakeUpPipeline (with and without ShadingNet) vs StableDiffusionPipeline on the same UNet.

    python benchmarks/pipeline_speed.py [--sizes tiny sd15] [--steps 3]

Both pipelines run CFG (batch 2 through the UNet) from the same latents (SD 1.5 layout at 256x256
px; the tiny test model at its native 64x64 px, as its VAE downsamples only 2x), random
weights (SD 1.5 does not install offline; speed does not depend on the weights). Per-step time is
(T(1 + steps) - T(1)) / steps, which removes the one-off work (text encoding, ID projection, VAE
decode). "sd15" is the SD 1.5 UNet layout (860M parameters); "tiny" is the test model.
Writes benchmarks/results/pipeline_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from common import write_result
from facemakeup.model import FaceIDAdapter
from facemakeup.model.shadingnet import shadingnet_from_unet
from facemakeup.model.tiny import tiny_components
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


def bench(size: str, steps: int, repeats: int) -> dict:
    parts = tiny_components() if size == "tiny" else sd15_components()
    px = 64 if size == "tiny" else 256
    unet_params = sum(p.numel() for p in parts["unet"].parameters())
    sd = StableDiffusionPipeline(**{k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    shadingnet = shadingnet_from_unet(parts["unet"], scale)
    adapter = FaceIDAdapter.for_unet(parts["unet"], parts["image_encoder"].config.hidden_size, lora_rank=128)
    clip_len = (parts["image_encoder"].config.image_size // parts["image_encoder"].config.patch_size) ** 2 + 1
    ours = FaceMakeUpPipeline(face_adapter=adapter, **parts)
    ours.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, px // scale, px // scale, generator=torch.Generator().manual_seed(0))
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    clip = torch.randn(1, clip_len, parts["image_encoder"].config.hidden_size)

    def run_ours(n):
        return lambda: ours("a portrait", id_embeds=id_embeds, clip_embeds=clip, height=px, width=px, num_inference_steps=n,
                            latents=latents, output_type="latent")

    shading = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(1))

    def run_v2(n):
        return lambda: ours("a portrait", id_embeds=id_embeds, clip_embeds=clip, height=px, width=px, num_inference_steps=n,
                            latents=latents, output_type="latent", shading_image=shading)

    def run_sd(n):
        # SD's own unet call, with ours detached, so both run the very same UNet weights
        return lambda: sd("a portrait", height=px, width=px, num_inference_steps=n, latents=latents, output_type="latent")

    with torch.no_grad():
        t_ours = (timed(run_ours(1 + steps), repeats) - timed(run_ours(1), repeats)) / steps
        adapter.fuse_lora()  # what `facemakeup generate` does: LoRA merged into the UNet
        t_fused = (timed(run_ours(1 + steps), repeats) - timed(run_ours(1), repeats)) / steps
        ours.register_modules(controlnet=shadingnet)  # the same pipeline with a ShadingNet (Face-MakeUpV2)
        t_v2 = (timed(run_v2(1 + steps), repeats) - timed(run_v2(1), repeats)) / steps
        ours.register_modules(controlnet=None)
        adapter.unfuse_lora()
        adapter.detach()
        t_sd = (timed(run_sd(1 + steps), repeats) - timed(run_sd(1), repeats)) / steps
        adapter.attach(parts["unet"])
    return {
        "unet": size,
        "unet_parameters_M": round(unet_params / 1e6, 1),
        "adapter_parameters_M": round(sum(p.numel() for p in adapter.parameters()) / 1e6, 1),
        "pixels": px,
        "cfg": True,
        "lora_rank": 128,
        "steps_timed": steps,
        "repeats": repeats,
        "s_per_step_facemakeup": t_ours,
        "s_per_step_facemakeup_lora_fused": t_fused,
        "s_per_step_facemakeup_lora_fused_with_shadingnet": t_v2,
        "s_per_step_stable_diffusion": t_sd,
        "ratio": t_ours / t_sd,
        "ratio_lora_fused": t_fused / t_sd,
        "ratio_lora_fused_with_shadingnet": t_v2 / t_sd,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for the tiny model")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timing repeats (median) for the SD 1.5-sized UNet")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for size in args.sizes:
        row = bench(size, args.steps, args.repeats if size == "tiny" else args.sd15_repeats)
        print(row)
        rows.append(row)
    print("wrote", write_result("pipeline_speed", {"runs": rows, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
