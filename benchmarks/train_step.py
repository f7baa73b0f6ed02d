"""Training-step time and peak memory: plain vs + mask-alignment loss vs + map + ID loss.

    python benchmarks/train_step.py [--sizes tiny sd15] [--steps 3] [--rounds 2]

One optimiser step of ``train.loop.Trainable`` (ID adapter with LoRA + ShadingNet, frozen UNet)
from given noisy latents, text embeddings and CLIP features (the frozen encoders' work is the same
in every variant and left out): forward, losses, backward, AdamW step. Variants:
``plain`` (diffusion loss only; no attention hooks), ``map`` (+ the captured 32x32-grid text
attention and ``mask_alignment_loss``), ``map_id`` (+ x0 decoded by the VAE with gradient, aligned
and embedded by ArcFace, ``id_loss``, applied to every sample). Sizes: ``tiny`` (the --model tiny
backbone at its 64 px, batch 1) and ``sd15`` (SD 1.5's UNet and VAE layouts, random weights, 256 px,
batch 1, 4 phrase masks; map layers = HW (256/16)^2). The ArcFace is ``faces.arcface_torch``'s (the
offline w600k_mbf run in torch).

Each (size, variant) runs in its own process (so the peak RSS is its own); the variants alternate
in ``--rounds`` rounds and the medians are compared, so contention on a shared machine hits them
alike. Writes benchmarks/results/train_step.json with ratios to ``plain``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("plain", "map", "map_id")


def arcface_module(device):
    """The differentiable ArcFace (``faces.arcface_torch``, the offline w600k_mbf) and its alignment."""
    from functools import partial

    from facemakeup.faces.arcface_torch import align_faces, load_arcface_torch

    return load_arcface_torch().to(device), partial(align_faces, fill=-1.0), "facemakeup.faces.arcface_torch (w600k_mbf)"


def worker(size: str, variant: str, steps: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from facemakeup.model.capture import AttentionCapture
    from facemakeup.model.tiny import tiny_components
    from facemakeup.train import apply_overrides, preset
    from facemakeup.train.loop import Trainable, build_trainable, load_frozen
    from facemakeup.train.losses import diffusion_loss, id_loss, mask_alignment_loss, predicted_x0

    torch.manual_seed(0)
    if size == "tiny":
        cfg = apply_overrides(preset("tiny"), ["resolution=64"])
        parts = load_frozen(cfg)
        clip_len = 65
    else:
        cfg = apply_overrides(preset("sd15"), ["backbone=tiny", "resolution=256", "mixed_precision=no"])
        parts = tiny_components()
        parts["unet"] = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=32).requires_grad_(False)  # SD 1.5 layout
        parts["vae"] = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=256).requires_grad_(False)  # SD 1.5 VAE layout
        parts["image_encoder"].config.hidden_size = 1280  # ViT-H-14 width for the adapter's projection
        clip_len = 257
    model: Trainable = build_trainable(cfg, parts)
    unet, vae = parts["unet"], parts["vae"]
    unet_params = sum(p.numel() for p in unet.parameters())
    side = cfg.resolution // cfg.map_attention_stride
    capture = AttentionCapture(side * side) if variant != "plain" else None
    model.adapter.attach(unet, capture=capture)
    arcface = align = None
    arc_name = None
    if variant == "map_id":
        arcface, align, arc_name = arcface_module("cpu")
        arcface.requires_grad_(False)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = cfg.resolution // scale
    d = unet.config.cross_attention_dim
    latents = torch.randn(1, 4, lat, lat, generator=g)
    noise = torch.randn(1, 4, lat, lat, generator=g)
    t = torch.tensor([300])
    noisy = sched.add_noise(latents, noise, t)
    text = torch.randn(1, 77, d, generator=g)
    id_embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    clip = torch.randn(1, clip_len, parts["image_encoder"].config.hidden_size, generator=g)
    shading = torch.rand(1, 3, cfg.resolution, cfg.resolution, generator=g)
    masks = (torch.rand(1, 4, 64, 64, generator=g) > 0.5).float()
    tokens = torch.zeros(1, 4, 77, dtype=torch.bool)
    for k in range(4):
        tokens[0, k, 2 + 3 * k: 4 + 3 * k] = True
    valid = torch.ones(1, 4, dtype=torch.bool)
    kps = torch.tensor([[[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.38, 0.75], [0.62, 0.75]]]) * cfg.resolution
    ref = id_embeds

    def step():
        if capture is not None:
            capture.clear()
        pred = model(noisy, t, text, id_embeds, clip, shading)
        loss = diffusion_loss(pred, latents, noise, t, sched)
        if capture is not None:
            loss = loss + 1e-3 * mask_alignment_loss(capture.maps, masks, tokens, valid)
            capture.clear()
        if arcface is not None:
            x0 = predicted_x0(noisy, pred, t, sched)
            images = vae.decode(x0 / vae.config.scaling_factor).sample
            loss = loss + 0.1 * id_loss(images, kps, ref, arcface, align).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"size": size, "variant": variant, "step_s": statistics.median(times), "times": times, "peak_rss_gib": peak_kib / 2**20,
            "resolution": cfg.resolution, "attention_grid": side, "arcface": arc_name,
            "unet_params": unet_params,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three variants")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps)))
        return
    from common import write_result

    load = os.getloadavg()
    result = {"task": "train_step", "steps": args.steps, "rounds": args.rounds, "load_before": load, "sizes": {}}
    for size in args.sizes:
        runs = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for v in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--worker", size, v, "--steps", str(args.steps)], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{size}/{v} failed:\n{out.stderr[-3000:]}")
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(size, v, f"round {r}", f"{runs[v][-1]['step_s']:.3f} s", f"{runs[v][-1]['peak_rss_gib']:.2f} GiB", flush=True)
        med = {v: statistics.median(x["step_s"] for x in runs[v]) for v in VARIANTS}
        mem = {v: max(x["peak_rss_gib"] for x in runs[v]) for v in VARIANTS}
        result["sizes"][size] = {
            "step_s": med, "peak_rss_gib": mem,
            "time_ratio_to_plain": {v: med[v] / med["plain"] for v in VARIANTS},
            "memory_ratio_to_plain": {v: mem[v] / mem["plain"] for v in VARIANTS},
            "goal_map_le_1.3x": med["map"] / med["plain"] <= 1.3,
            "runs": runs,
        }
    result["load_after"] = os.getloadavg()
    print(json.dumps({s: {k: v for k, v in r.items() if k != "runs"} for s, r in result["sizes"].items()}, indent=2))
    path = write_result("train_step" if set(args.sizes) == {"tiny", "sd15"} else f"train_step_{'_'.join(args.sizes)}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
