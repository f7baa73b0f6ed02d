"""Tiny, randomly initialised components with SD 1.5's classes, for tests and ``--model tiny``.

Nothing here is trained: a pipeline built from these makes noise, not faces. Its use is to run the
whole code path (loading, saving, the ID channel, the CLI) on any machine in seconds, as diffusers'
``get_dummy_components`` do in its tests (STYLE.md 13).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: Cross-attention width of the tiny UNet (SD 1.5: 768).
TINY_CROSS_DIM = 32
#: Input side of the tiny CLIP image encoder (CLIP ViT-H-14: 224).
TINY_CLIP_SIZE = 32


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary (514 tokens) and no merges.

    Same class, special tokens and padding as SD 1.5's tokenizer; words are split into characters.
    """
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_components(seed: int = 0, sample_size: int = 32) -> dict:
    """Build a tiny SD 1.5-shaped set of components.

    Args:
        seed: torch seed for the random weights.
        sample_size: latent side of the UNet; images are ``2 * sample_size`` pixels (the tiny VAE
            downsamples by 2).

    Returns:
        dict with ``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``,
        ``image_encoder``, ``feature_extractor`` (all float32, CPU).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=TINY_CROSS_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=TINY_CLIP_SIZE,
            patch_size=4,
        )
    )
    feature_extractor = CLIPImageProcessorPil(size={"shortest_edge": TINY_CLIP_SIZE}, crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE})
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_tokenizer(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        "image_encoder": image_encoder.eval(),
        "feature_extractor": feature_extractor,
    }
