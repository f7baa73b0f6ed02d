"""Seconds per image, peak GPU memory and training-step cost on a CUDA GPU: one short prepared run.

    python benchmarks/gpu_speed.py                          # CUDA: SD 1.5 at 512 px and SDXL at 1024 px, fp16, 30 steps
    python benchmarks/gpu_speed.py --device cpu --tiny      # the dry path: tiny models, a few steps, same code

Issue 22, item 5. Nothing is downloaded: every model is built with its real layout and random weights
on the device (SD 1.5: UNet 860M, VAE, CLIP-L text encoder; SDXL: UNet 2.6B, VAE, CLIP-L + bigG;
speed and memory do not depend on the weights), and the ID inputs are precomputed (ArcFace embedding,
CLIP ViT-H features 257 x 1280), as in ``pipeline_speed.py``. Rows per backbone, classifier-free
guidance unless said, median seconds per image over ``--repeats`` after a warm-up:

- ``diffusers``: ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``;
- ``diffusers_ip_adapter``: + ``load_ip_adapter`` of a random IP-Adapter-FaceID-PlusV2 file (h94
  layout; its LoRA ``faceid_0`` fused);
- ``facemakeup``: ``FaceMakeUp(XL)Pipeline(face_adapter=None, ...)`` + ``load_face_adapter`` of that
  file, ``fuse_lora()``; ``facemakeup_shadingnet``: + a ShadingNet (``shadingnet_from_unet``), and
  ``facemakeup_shadingnet_end0.4`` stopped at ``control_guidance_end=0.4``;
- ``facemakeup_shadingnet_lcm_lora``: + a random LCM-LoRA-shaped LoRA (rank 64, LCM-LoRA's targets) fused,
  ``LCMScheduler``, ``--few-steps`` steps, guidance 1;
- peak GPU memory (``torch.cuda.max_memory_allocated``) of ``facemakeup_shadingnet`` without and with
  ``enable_model_cpu_offload()``, and its time with offload;
- training (SD 1.5 layout at ``--train-resolution``, batch 1): one AdamW step of the adapter +
  ShadingNet, plain / + mask-alignment loss / + map + ID loss with the torch ArcFace
  (``train_step.worker``), with peak memory.

A ``--budget-s`` guard (default 420 s) skips what is left once the budget is spent (said in the
results), so the run fits an 8-minute slot. Writes ``benchmarks/results/gpu_speed.json`` (dry path:
``gpu_speed_dry.json``) with the GPU's name, torch/CUDA versions and every row.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def sd15_parts(device, dtype, tiny: bool) -> dict:
    """SD 1.5's layouts, random, built on ``device`` (tiny: ``model.tiny``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facemakeup.model.tiny import tiny_components, tiny_tokenizer

    if tiny:
        parts = tiny_components()
    else:
        torch.manual_seed(0)
        with torch.device(device):
            parts = {
                "unet": UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64),
                "vae": AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512),
                "text_encoder": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                             num_attention_heads=12, projection_dim=768)),
            }
        parts.update(tokenizer=tiny_tokenizer(), scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                                         clip_sample=False, set_alpha_to_one=False, steps_offset=1))
    parts.pop("image_encoder", None), parts.pop("feature_extractor", None)
    return _on(parts, device, dtype)


def sdxl_parts(device, dtype, tiny: bool) -> dict:
    """SDXL-base's layouts, random, built on ``device`` (tiny: ``model.tiny``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from facemakeup.model.tiny import tiny_tokenizer, tiny_xl_components

    if tiny:
        parts = tiny_xl_components()
    else:
        torch.manual_seed(0)
        with torch.device(device):
            parts = {
                "unet": UNet2DConditionModel(
                    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048, addition_embed_type="text_time",
                    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
                "vae": AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
                                     force_upcast=True),
                "text_encoder": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                             num_attention_heads=12, projection_dim=768)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                                             num_attention_heads=20, projection_dim=1280, hidden_act="gelu")),
            }
        parts.update(tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(),
                     scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                                      timestep_spacing="leading"))
    parts.pop("image_encoder", None), parts.pop("feature_extractor", None)
    return _on(parts, device, dtype)


def _on(parts: dict, device, dtype) -> dict:
    for k, v in parts.items():
        if isinstance(v, torch.nn.Module):
            parts[k] = v.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return parts


class Clock:
    """Seconds per call (synchronised on CUDA) and the time budget."""

    def __init__(self, device: str, repeats: int, budget_s: float):
        self.cuda = device.startswith("cuda")
        self.repeats, self.deadline = repeats, time.monotonic() + budget_s
        self.skipped: list[str] = []

    def over(self, what: str) -> bool:
        if time.monotonic() > self.deadline:
            self.skipped.append(what)
            print(f"skipped (time budget): {what}", flush=True)
            return True
        return False

    def per_image(self, call) -> float:
        call()  # warm-up: kernels, allocator
        times = []
        for _ in range(self.repeats):
            self.sync()
            t0 = time.perf_counter()
            call()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def peak_gib(self, call) -> float | None:
        if not self.cuda:
            return None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        call()
        self.sync()
        return torch.cuda.max_memory_allocated() / 2**30


def bench_family(family: str, args, clock: Clock) -> dict:
    """Every inference row of one backbone family."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from facemakeup.model.shadingnet import shadingnet_from_unet
    from facemakeup.model.tiny import random_faceid_plusv2_state_dict, random_lora_state_dict
    from facemakeup.pipeline import FaceMakeUpPipeline
    from facemakeup.pipeline_xl import FaceMakeUpXLPipeline

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    xl = family == "sdxl"
    t0 = time.perf_counter()
    parts = (sdxl_parts if xl else sd15_parts)(args.device, dtype, args.tiny)
    px = 64 if args.tiny else (1024 if xl else 512)
    clip_dim, clip_len = (32, 65) if args.tiny else (1280, 257)
    unet = parts["unet"]
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(0)
    dev = dict(device=args.device, dtype=dtype)
    latents = torch.randn(1, 4, px // scale, px // scale, generator=g).to(**dev)
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1).to(**dev)
    clip = torch.randn(1, clip_len, clip_dim, generator=g).to(**dev)
    uncond = torch.randn(1, clip_len, clip_dim, generator=g).to(**dev)
    shading = torch.rand(1, 3, px, px, generator=g).to(**dev)
    state = random_faceid_plusv2_state_dict(unet, clip_dim, rank=128 if not args.tiny else 4, std=0.02)
    lora = random_lora_state_dict(unet, rank=64 if not args.tiny else 4, std=0.01)
    with torch.device(args.device):
        controlnet = shadingnet_from_unet(unet, scale).to(**dev)  # from the plain UNet
    build_s = time.perf_counter() - t0
    steps, few = args.steps, args.few_steps
    common = dict(height=px, width=px, latents=latents, output_type="pil", num_inference_steps=steps)
    row = {"family": family, "pixels": px, "steps": steps, "few_steps": few, "dtype": args.dtype, "build_s": build_s,
           "unet_parameters_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1)}
    sec, mem = {}, {}

    with torch.no_grad():
        # diffusers: plain, then + IP-Adapter-FaceID-PlusV2 (its LoRA fused)
        sd_cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
        extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
        sd = sd_cls(**parts, image_encoder=None, feature_extractor=None, **extra)
        sd.set_progress_bar_config(disable=True)
        if not clock.over(f"{family}: diffusers"):
            sec["diffusers"] = clock.per_image(lambda: sd("a portrait", **common))
        if not clock.over(f"{family}: diffusers_ip_adapter"):
            sd.load_ip_adapter({k: dict(v) for k, v in state.items()}, subfolder="", weight_name="", image_encoder_folder=None)
            sd.set_ip_adapter_scale(0.6)
            sd.fuse_lora()
            proj = sd.unet.encoder_hid_proj.image_projection_layers[0]
            proj.clip_embeds, proj.shortcut, proj.shortcut_scale = torch.cat([uncond, clip])[:, None], True, 1.0
            embeds = [torch.cat([torch.zeros_like(id_embeds), id_embeds])[:, None]]
            sec["diffusers_ip_adapter"] = clock.per_image(lambda: sd("a portrait", ip_adapter_image_embeds=embeds, **common))
            sd.unfuse_lora()
            sd.unload_lora_weights()
            sd.unload_ip_adapter()
        del sd

        # ours: the same file through load_face_adapter; then the ShadingNet, early stop, a few-step LoRA
        cls = FaceMakeUpXLPipeline if xl else FaceMakeUpPipeline
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ip-adapter-faceid-plusv2.bin"
            torch.save(state, path)
            ours = cls(face_adapter=None, **parts)
            ours.load_face_adapter(path)
        ours.set_progress_bar_config(disable=True)
        ours.fuse_lora()
        kw = dict(id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, ip_scale=0.6, **common)
        if not clock.over(f"{family}: facemakeup"):
            sec["facemakeup"] = clock.per_image(lambda: ours("a portrait", **kw))
        ours.register_modules(controlnet=controlnet)
        with_map = dict(kw, shading_image=shading)
        if not clock.over(f"{family}: facemakeup_shadingnet"):
            sec["facemakeup_shadingnet"] = clock.per_image(lambda: ours("a portrait", **with_map))
            mem["facemakeup_shadingnet"] = clock.peak_gib(lambda: ours("a portrait", **with_map))
        if not clock.over(f"{family}: facemakeup_shadingnet_end0.4"):
            sec["facemakeup_shadingnet_end0.4"] = clock.per_image(lambda: ours("a portrait", control_guidance_end=0.4, **with_map))
        if not clock.over(f"{family}: facemakeup_shadingnet_lcm_lora"):
            scheduler = ours.scheduler
            ours.load_lora_weights(dict(lora), adapter_name="lcm")  # beside the (fused) face LoRA
            ours.fuse_lora()
            ours.scheduler = LCMScheduler.from_config(scheduler.config)
            fast = dict(with_map, num_inference_steps=few, guidance_scale=1.0)
            sec["facemakeup_shadingnet_lcm_lora"] = clock.per_image(lambda: ours("a portrait", **fast))
            ours.unfuse_lora()
            ours.delete_adapters("lcm")
            ours.fuse_lora()
            ours.scheduler = scheduler
        if args.device.startswith("cuda") and not clock.over(f"{family}: cpu offload"):
            ours.enable_model_cpu_offload(device=args.device)
            sec["facemakeup_shadingnet_cpu_offload"] = clock.per_image(lambda: ours("a portrait", **with_map))
            mem["facemakeup_shadingnet_cpu_offload"] = clock.peak_gib(lambda: ours("a portrait", **with_map))
            ours.remove_all_hooks()
        del ours
    base = sec.get("diffusers")
    row.update({f"s_per_image_{k}": v for k, v in sec.items()})
    row.update({f"peak_gib_{k}": v for k, v in mem.items()})
    if base:
        row.update({f"ratio_{k}_vs_diffusers": v / base for k, v in sec.items() if k != "diffusers"})
    if "facemakeup" in sec and "diffusers_ip_adapter" in sec:
        row["ratio_facemakeup_vs_diffusers_ip_adapter"] = sec["facemakeup"] / sec["diffusers_ip_adapter"]
    del parts
    gc.collect()
    if clock.cuda:
        torch.cuda.empty_cache()
    return row


def bench_train(args, clock: Clock) -> dict:
    """Training-step cost, plain / map / map + ID (``train_step.worker``, in this process, on the device)."""
    from train_step import VARIANTS, worker

    size = "tiny" if args.tiny else "sd15"
    out = {}
    for variant in VARIANTS:
        if clock.over(f"train {variant}"):
            continue
        out[variant] = worker(size, variant, args.train_steps, torch.get_num_threads(), device=args.device,
                              resolution=None if args.tiny else args.train_resolution)
        gc.collect()
        if clock.cuda:
            torch.cuda.empty_cache()
    plain = out.get("plain", {}).get("step_s")
    return {"size": size, "resolution": None if args.tiny else args.train_resolution,
            "step_s": {v: r["step_s"] for v, r in out.items()},
            "time_ratio_to_plain": {v: r["step_s"] / plain for v, r in out.items()} if plain else {},
            "peak_gib": {v: r.get("gpu_peak_gib", r["peak_rss_gib"]) for v, r in out.items()},
            "step_peak_gib": {v: r.get("gpu_step_peak_gib", r["step_peak_gib"]) for v, r in out.items()},
            "arcface": out.get("map_id", {}).get("arcface"), "runs": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the CPU dry path)")
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 30 (tiny: 2)")
    parser.add_argument("--few-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--train-resolution", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: pass --device cpu --tiny for the dry path")
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    args.steps = args.steps or (2 if args.tiny else 30)
    if args.tiny:
        args.few_steps = min(args.few_steps, 2)
    clock = Clock(args.device, args.repeats, args.budget_s)
    started = time.monotonic()
    result = {"task": "gpu_speed", "device": args.device, "tiny": args.tiny,
              "gpu": torch.cuda.get_device_name() if cuda else None,
              "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
              "torch_cuda": torch.version.cuda, "families": {}}
    for family in args.families:
        print(f"{family} ...", flush=True)
        result["families"][family] = bench_family(family, args, clock)
        print(result["families"][family], flush=True)
    if not args.no_train:
        result["train_step"] = bench_train(args, clock)
        print({k: v for k, v in result["train_step"].items() if k != "runs"}, flush=True)
    result.update(skipped=clock.skipped, wall_s=time.monotonic() - started)
    print("wrote", write_result("gpu_speed_dry" if args.tiny or not cuda else "gpu_speed", result))


if __name__ == "__main__":
    main()
