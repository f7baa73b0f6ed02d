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

Each (size, variant) runs in its own process, with the same ``--threads``; the variants alternate
in ``--rounds`` rounds. Reported per variant: the median wall time of a step, the ratio to ``plain``
taken *within each round* (the variants of a round ran back to back, so a load change between rounds
does not enter a ratio) and its median over rounds, the ratio of the fastest steps (least contention),
the process CPU time of a step, and memory: the process's peak RSS and the *step's own* peak (the
high-water mark of RSS over the timed steps, reset after the warm-up through ``/proc/self/clear_refs``,
minus the RSS before them: activations, gradients; the models and AdamW state are already there),
with major page faults during the steps (non-zero: memory pressure, the times are not trustworthy).
The load average is recorded around every process.

Why the earlier train_step_sd15.json read "map" as 0.47x "plain": one round of one step each at load
6-15 on 2 cores, where a 2x swing between two processes is contention, not work (the ArcFace row of
that file also predates the torch ArcFace). More work cannot be faster: read ratios from several
rounds on an idle machine (``--rounds 5``), and check ``majflt`` is 0.

Writes benchmarks/results/train_step.json (or train_step_SIZE.json) with ratios to ``plain``.
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


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (Linux), 0 elsewhere."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (``VmHWM``; Linux >= 4.0); ``False`` where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(size: str, variant: str, steps: int, threads: int, device: str = "cpu", resolution: int | None = None) -> dict:
    """One (size, variant): build, one warm-up step, ``steps`` timed steps; returns times and memory.

    Args:
        size: ``"tiny"`` or ``"sd15"``. variant: one of ``VARIANTS``. threads: torch CPU threads.
        device: ``"cpu"`` (memory: RSS) or ``"cuda"`` (memory: ``torch.cuda`` allocator peaks; times
            synchronised). resolution: pixels (default 64 tiny, 256 sd15; the GPU script uses 512).
    """
    import torch

    torch.set_num_threads(threads)
    cuda = str(device).startswith("cuda")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from facemakeup.model.capture import AttentionCapture
    from facemakeup.model.tiny import tiny_components
    from facemakeup.train import apply_overrides, preset
    from facemakeup.train.loop import Trainable, build_trainable, load_frozen
    from facemakeup.train.losses import diffusion_loss, id_loss, mask_alignment_loss, predicted_x0

    torch.manual_seed(0)
    if size == "tiny":
        cfg = apply_overrides(preset("tiny"), [f"resolution={resolution or 64}"])
        parts = load_frozen(cfg)
        clip_len = 65
    else:
        cfg = apply_overrides(preset("sd15"), ["backbone=tiny", f"resolution={resolution or 256}", "mixed_precision=no"])
        parts = tiny_components()
        parts["unet"] = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=32).requires_grad_(False)  # SD 1.5 layout
        parts["vae"] = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=256).requires_grad_(False)  # SD 1.5 VAE layout
        parts["image_encoder"].config.hidden_size = 1280  # ViT-H-14 width for the adapter's projection
        clip_len = 257
    model: Trainable = build_trainable(cfg, parts)
    unet, vae = parts["unet"].to(device), parts["vae"].to(device)
    model.to(device)
    unet_params = sum(p.numel() for p in unet.parameters())
    side = cfg.resolution // cfg.map_attention_stride
    capture = AttentionCapture(side * side) if variant != "plain" else None
    model.adapter.attach(unet, capture=capture)
    arcface = align = None
    arc_name = None
    if variant == "map_id":
        arcface, align, arc_name = arcface_module(device)
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
    noisy, latents, noise, t, text, id_embeds, clip, shading, masks, tokens, valid, kps, ref = (
        x.to(device) for x in (noisy, latents, noise, t, text, id_embeds, clip, shading, masks, tokens, valid, kps, ref))

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

    step()  # warm-up: AdamW's state, allocator pools
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    rss_before = _status_kib("VmRSS")
    reset = _reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step_peak = (_status_kib("VmHWM") - rss_before) / 2**20 if reset else None
    gpu = {"gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "gpu_step_peak_gib": (torch.cuda.max_memory_allocated() - allocated_before) / 2**30} if cuda else {}
    return {**gpu, "device": str(device),"size": size, "variant": variant, "step_s": statistics.median(times), "times": times, "cpu_s": statistics.median(cpu),
            "peak_rss_gib": peak_kib / 2**20, "step_peak_gib": step_peak,
            "majflt_during_steps": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults, "threads": torch.get_num_threads(),
            "resolution": cfg.resolution, "attention_grid": side, "arcface": arc_name,
            "unet_params": unet_params,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three variants")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every process")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads)))
        return
    from common import write_result

    result = {"task": "train_step", "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "load_before": os.getloadavg(),
              "sizes": {}}
    for size in args.sizes:
        runs = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for v in VARIANTS:
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--worker", size, v, "--steps", str(args.steps), "--threads", str(args.threads)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{size}/{v} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(round=r, load_before_after=[round(load, 2), round(os.getloadavg()[0], 2)])
                runs[v].append(row)
                print(size, v, f"round {r}", f"{row['step_s']:.3f} s (cpu {row['cpu_s']:.3f} s)", f"step peak {row['step_peak_gib']} GiB",
                      f"load {row['load_before_after']}", flush=True)
        med = {v: statistics.median(x["step_s"] for x in runs[v]) for v in VARIANTS}
        per_round = {v: statistics.median(runs[v][r]["step_s"] / runs["plain"][r]["step_s"] for r in range(args.rounds)) for v in VARIANTS}
        fastest = {v: min(t for x in runs[v] for t in x["times"]) for v in VARIANTS}
        cpu = {v: statistics.median(x["cpu_s"] for x in runs[v]) for v in VARIANTS}
        step_mem = {v: max((x["step_peak_gib"] or 0.0) for x in runs[v]) for v in VARIANTS}
        mem = {v: max(x["peak_rss_gib"] for x in runs[v]) for v in VARIANTS}
        result["sizes"][size] = {
            "step_s": med, "cpu_s": cpu, "peak_rss_gib": mem, "step_peak_gib": step_mem,
            "time_ratio_to_plain": per_round,
            "time_ratio_to_plain_fastest": {v: fastest[v] / fastest["plain"] for v in VARIANTS},
            "cpu_ratio_to_plain": {v: cpu[v] / cpu["plain"] for v in VARIANTS},
            "step_memory_ratio_to_plain": {v: step_mem[v] / step_mem["plain"] if step_mem["plain"] else None for v in VARIANTS},
            "goal_map_le_1.3x": per_round["map"] <= 1.3,
            "goal_map_id_le_2x": per_round["map_id"] <= 2.0,
            "majflt_during_steps": sum(x["majflt_during_steps"] for v in VARIANTS for x in runs[v]),
            "runs": runs,
        }
    result["load_after"] = os.getloadavg()
    print(json.dumps({s: {k: v for k, v in r.items() if k != "runs"} for s, r in result["sizes"].items()}, indent=2))
    path = write_result("train_step" if set(args.sizes) == {"tiny", "sd15"} else f"train_step_{'_'.join(args.sizes)}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
