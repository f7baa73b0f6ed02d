"""Face-MakeUpV2's training objective: diffusion loss, mask-alignment loss, ID loss.

- ``diffusion_loss``: MSE to the scheduler's target (epsilon or v; Ho et al. 2020, Salimans & Ho 2022).
- ``mask_alignment_loss``: V2's supervision of caption-token cross-attention by semantic masks,
  exactly as docs/sources.md ("V2 differences") and Face-MakeUpV2's ``train/loss.py`` state it.
- ``id_loss``: the paper's ID-consistency term that no public code has: x0 predicted from the
  UNet output, decoded by the frozen VAE *with* gradient, face aligned by its 5 keypoints and
  compared with the reference through a differentiable ArcFace (``1 - cos``), as PuLID's ID loss.

Total (``train.loop``): ``mse + map_loss_weight * map + id_loss_weight * id``.

Example:
    >>> mse = diffusion_loss(pred, latents, noise, timesteps, scheduler)
    >>> total = mse + 1e-3 * mask_alignment_loss(capture.maps, masks, token_indices, mask_valid)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict, for ``scheduler.config.prediction_type``.

    Args:
        scheduler: a diffusers noise scheduler (DDPM for training).
        latents: ``(B, 4, h, w)`` clean latents x0 (VAE latents times ``scaling_factor``).
        noise: ``(B, 4, h, w)`` the Gaussian noise added.
        timesteps: ``(B,)`` int64 timesteps.

    Returns:
        ``(B, 4, h, w)``: ``noise`` for ``"epsilon"``, ``sqrt(a) noise - sqrt(1-a) x0`` for ``"v_prediction"``.

    Raises:
        ValueError: another prediction type (``"sample"`` is not what SD 1.5 checkpoints predict).
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported: use 'epsilon' or 'v_prediction'")


def diffusion_loss(model_pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler) -> torch.Tensor:
    """Mean squared error between the UNet output and ``diffusion_target`` (in float32).

    Args:
        model_pred: ``(B, 4, h, w)`` UNet output. latents, noise, timesteps: as ``diffusion_target``.

    Returns:
        Scalar: mean over batch, channels and pixels.
    """
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


def predicted_x0(noisy_latents: torch.Tensor, model_pred: torch.Tensor, timesteps: torch.Tensor, scheduler) -> torch.Tensor:
    """x0 implied by the UNet output at ``timesteps`` (differentiable).

    Args:
        noisy_latents: ``(B, 4, h, w)`` x_t. model_pred: ``(B, 4, h, w)`` UNet output.
        timesteps: ``(B,)`` int64. scheduler: gives ``alphas_cumprod`` and ``prediction_type``.

    Returns:
        ``(B, 4, h, w)``: ``(x_t - sqrt(1-a) eps) / sqrt(a)`` (epsilon) or ``sqrt(a) x_t - sqrt(1-a) v`` (v).
    """
    a = scheduler.alphas_cumprod.to(device=noisy_latents.device, dtype=torch.float32)[timesteps].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x_t, pred = noisy_latents.float(), model_pred.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * pred
    raise ValueError(f"prediction_type {kind!r} is not supported: use 'epsilon' or 'v_prediction'")


def mask_alignment_loss(attention_maps: list[torch.Tensor], masks: torch.Tensor, token_indices: torch.Tensor,
                        mask_valid: torch.Tensor, reduction: str = "mean"):
    """Face-MakeUpV2's mask-alignment (map) loss, summed over layers.

    For every layer's text cross-attention probabilities ``P`` (B*heads, HW, T), viewed as
    (B, heads, H, W, T) with H = W = sqrt(HW), and every valid (mask, tokens) pair of sample b:
    the mask is resized bilinearly to H x W and binarised at 0.5 (``M``); the k token maps
    ``P[b, :, :, :, tokens]`` are stacked with their mean (k + 1 maps); the pair's loss is the mean
    over heads, H, W and the k + 1 maps of ``(map - M)^2`` (M broadcast over heads). A layer's loss
    is the mean over all valid pairs of the batch; the total is the sum over layers. Pairs without
    tokens are skipped, as in Face-MakeUpV2's ``train/loss.py``. The weight (1e-3 in the paper) is
    applied by the caller.

    Args:
        attention_maps: per layer, ``(B*heads, HW, T)`` float softmax probabilities, row ``b*heads + h``
            (``model.capture.AttentionCapture.maps``).
        masks: ``(B, M, h, w)`` float in [0, 1], any h, w (the dataset's mask resolution).
        token_indices: ``(B, M, T)`` bool, which text positions each mask supervises.
        mask_valid: ``(B, M)`` bool, which of the M slots hold a mask.
        reduction: ``"mean"`` (the loss) or ``"sum"``: returns ``(sum over layers and pairs, number
            of valid pairs)`` so that data-parallel workers can divide by the global pair count.

    Returns:
        Scalar float32 tensor (0 with a graph when no pair is valid), or ``(sum, count)``.

    Raises:
        ValueError: no maps, or shapes that do not agree (named in the message).
    """
    if not attention_maps:
        raise ValueError("no attention maps were recorded: is the AttentionCapture installed with the right query_length?")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    b, m_slots, t = token_indices.shape
    if masks.shape[:2] != (b, m_slots) or mask_valid.shape != (b, m_slots):
        raise ValueError(f"masks {tuple(masks.shape)}, token_indices {tuple(token_indices.shape)} and mask_valid "
                         f"{tuple(mask_valid.shape)} must agree on (B, M)")
    sel = token_indices.float()  # (B, M, T)
    k = sel.sum(-1)  # (B, M) tokens per mask
    valid = (mask_valid & (k > 0)).float()  # (B, M)
    count = valid.sum()
    total = attention_maps[0].new_zeros((), dtype=torch.float32)
    for probs in attention_maps:
        if probs.shape[0] % b or probs.shape[-1] != t:
            raise ValueError(f"attention maps {tuple(probs.shape)} do not fit a batch of {b} with {t} text tokens")
        heads, hw = probs.shape[0] // b, probs.shape[1]
        side = int(round(hw ** 0.5))
        p = probs.float().view(b, heads, hw, t)  # (B, heads, HW, T)
        target = F.interpolate(masks.float(), size=(side, side), mode="bilinear", align_corners=False)
        target = (target > 0.5).float().view(b, m_slots, hw)  # (B, M, HW) binary
        # per-token terms, expanded: mean_{h,x} (p_t - m)^2 = mean(p_t^2) - 2 mean(p_t m) + mean(m^2)
        p2 = p.square().mean(dim=(1, 2))  # (B, T)
        pm = torch.einsum("bxt,bmx->bmt", p.mean(1), target) / hw  # (B, M, T)
        m2 = target.square().mean(-1, keepdim=True)  # (B, M, 1)
        token_err = ((p2[:, None, :] - 2 * pm + m2) * sel).sum(-1)  # (B, M): sum over the k tokens
        # the mean token map
        mean_map = torch.einsum("bhxt,bmt->bhxm", p, sel) / k.clamp(min=1)[:, None, None, :]  # (B, heads, HW, M)
        mean_err = (mean_map - target.transpose(1, 2)[:, None]).square().mean(dim=(1, 2))  # (B, M)
        pair = (token_err + mean_err) / (k + 1)  # (B, M): mean over the k + 1 maps
        total = total + (pair * valid).sum()
    if reduction == "sum":
        return total, count
    return total / count.clamp(min=1)


def id_loss(images: torch.Tensor, kps: torch.Tensor, reference_embeds: torch.Tensor, arcface: torch.nn.Module,
            align: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``1 - cos`` between ArcFace embeddings of generated faces and their references (per sample).

    Args:
        images: ``(N, 3, H, W)`` float RGB in [-1, 1], e.g. the VAE decoding of the predicted x0,
            with gradient.
        kps: ``(N, 5, 2)`` float keypoints (x, y) in pixels of ``images`` (eyes, nose, mouth corners,
            insightface order).
        reference_embeds: ``(N, 512)`` L2-normalised reference embeddings (no gradient needed).
        arcface: maps ``(N, 3, 112, 112)`` RGB in [-1, 1] to ``(N, 512)`` L2-normalised embeddings
            (``faces.arcface_torch.load_arcface_torch``; any module of that contract).
        align: ``align(images, kps) -> (N, 3, 112, 112)``, differentiable similarity-transform
            alignment to ArcFace's template (``faces.arcface_torch.align_faces``).

    Returns:
        ``(N,)`` float32 in [0, 2].
    """
    if images.shape[0] != kps.shape[0] or images.shape[0] != reference_embeds.shape[0]:
        raise ValueError(f"images {tuple(images.shape)}, kps {tuple(kps.shape)} and reference_embeds "
                         f"{tuple(reference_embeds.shape)} must have the same batch size")
    faces = align(images, kps)  # (N, 3, 112, 112)
    emb = arcface(faces).float()  # (N, 512), unit norm
    return 1.0 - (emb * reference_embeds.float()).sum(-1)
