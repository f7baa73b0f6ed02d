"""``FaceMakeUpXLPipeline``: Face-MakeUp(V2) on SDXL, the backbone its peers use.

The same face conditioning as ``FaceMakeUpPipeline`` (``face_conditioning.FaceConditioningMixin``:
ID adapter trio, references, ID tokens, the ShadingNet / keypoint ControlNet, the denoising loop)
over SDXL (Podell et al. 2023, arXiv 2307.01952): two text encoders whose penultimate hidden states
are concatenated (768 + 1280 = 2048 wide), the second one's pooled projection, and the
size/crop micro-conditioning ``original_size`` / ``crops_coords_top_left`` / ``target_size``
(``add_time_ids``). This module owns only that text side; what it computes equals diffusers'
``StableDiffusionXLPipeline`` with the same inputs (its defaults: 1024 px, guidance 5.0, zero negative
embeddings for an absent negative prompt when ``force_zeros_for_empty_prompt``, the backbone folder's
scheduler), and with ``load_ip_adapter`` for the ID channel.

Checkpoints: IP-Adapter-FaceID's SDXL files and InstantID's ``ip-adapter.bin`` through
``load_face_adapter`` (``model.loaders``); InstantID's IdentityNet is a ControlNet over the keypoint
map whose context is the ID tokens, which is how this pipeline runs its ControlNet
(``condition="keypoints"``).

Example:
    >>> pipe = FaceMakeUpXLPipeline.from_backbone("stabilityai/stable-diffusion-xl-base-1.0", image_encoder=None,
    ...                                           adapter="ip-adapter-faceid_sdxl.bin")
    >>> out = pipe("a smiling woman with blonde hair", reference_image="me.jpg", seed=42)
    >>> out.images[0].save("out.png")
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

from .face_conditioning import (DEFAULT_IMAGE_ENCODER, DEFAULT_IP_SCALE, FaceConditioningMixin, FaceMakeUpPipelineOutput,
                                face_components, load_component)
from .faces.image import ImageInput
from .lora import FaceLoraLoaderMixin
from .model.id_adapter import FaceIDAdapter
from .pipeline import DEFAULT_XL_BACKBONE, _map_image

logger = logging.getLogger(__name__)

__all__ = ["FaceMakeUpXLPipeline"]


class FaceMakeUpXLPipeline(FaceConditioningMixin, FaceLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin, DiffusionPipeline):
    """Identity-conditioned text-to-image generation with SDXL and the Face-MakeUp ID channel.

    Args:
        vae: ``AutoencoderKL`` of SDXL.
        text_encoder: ``CLIPTextModel`` (CLIP ViT-L/14 text tower), penultimate layer used.
        text_encoder_2: ``CLIPTextModelWithProjection`` (OpenCLIP ViT-bigG/14), penultimate layer
            and pooled projection used.
        tokenizer, tokenizer_2: their ``CLIPTokenizer``s.
        unet: a plain SDXL ``UNet2DConditionModel`` (``addition_embed_type="text_time"``).
        scheduler: any diffusers scheduler (SDXL-base ships Euler).
        face_adapter: ``FaceIDAdapter`` for this UNet, or ``None`` (then ``load_face_adapter``).
        image_encoder: ``CLIPVisionModelWithProjection`` (ViT-H-14), only for adapters that read CLIP.
        feature_extractor: its ``CLIPImageProcessor``.
        controlnet: an SDXL ``ControlNetModel``: the ShadingNet, or InstantID's IdentityNet.
        force_zeros_for_empty_prompt: without a negative prompt, the negative text embeddings are
            zeros (SDXL-base's setting; diffusers' default).
    """

    # enable_model_cpu_offload: the ControlNet, called every step, gets its own hook (as in diffusers' ControlNet
    # pipelines; in the chain the UNet's hook would move it off the GPU at every step); the face adapter stays on
    # the GPU: its ID/LoRA linears are shared into the UNet and move with it, its projection runs outside forward().
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _exclude_from_cpu_offload = ["face_adapter"]
    _optional_components = ["face_adapter", "image_encoder", "feature_extractor", "controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        face_adapter: FaceIDAdapter | None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessorPil | None = None,
        controlnet: ControlNetModel | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            face_adapter=face_adapter,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            controlnet=controlnet,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if face_adapter is not None:
            face_adapter.attach(unet)
            face_adapter.set_ip_scale(DEFAULT_IP_SCALE)
        self.face_analyzer = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike = DEFAULT_XL_BACKBONE,
        image_encoder: str | os.PathLike | None = DEFAULT_IMAGE_ENCODER,
        adapter: str | os.PathLike | None = None,
        shadingnet: str | os.PathLike | None = None,
        lora_rank: int = 128,
        torch_dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
        shortcut: bool | None = None,
        adapter_lora: str | os.PathLike | None = None,
    ) -> "FaceMakeUpXLPipeline":
        """Assemble the pipeline from an SDXL backbone, a CLIP image encoder and ID-adapter weights.

        Args:
            backbone: hub id or local folder in diffusers layout (``vae/``, ``unet/``, ``text_encoder/``,
                ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``); its scheduler is
                used as it is (SDXL-base: Euler), its ``force_zeros_for_empty_prompt`` is kept.
            image_encoder: CLIP vision model (hub id or folder), loaded only for adapters that read CLIP
                features (FaceID-PlusV2, Face-MakeUp, a fresh adapter); ``None`` leaves it out.
            adapter: ID-adapter weights in any SDXL layout of ``model.loaders`` (``ip-adapter-faceid_sdxl.bin``,
                ``ip-adapter-faceid-plusv2_sdxl.bin``, the portrait file, InstantID's ``ip-adapter.bin``,
                our folder), or ``None`` for a fresh, untrained adapter.
            shadingnet: an SDXL ControlNet (our folder's ``shadingnet/``, InstantID's ``ControlNetModel``
                folder, a state dict), ``"init"`` (a fresh ``from_unet`` copy) or ``None``.
            lora_rank: LoRA rank of a fresh adapter. torch_dtype: of every component.
            local_files_only: never touch the network (default: ``HF_HUB_OFFLINE``).
            shortcut: FaceID-Plus v1 checkpoints: ``False``.
            adapter_lora: the adapter's LoRA in a file of its own (h94's ``*_lora.safetensors``).

        Raises:
            ModelNotFoundError: a component is neither on disk nor downloadable (the message says what
                to download and which flag takes it).
            CheckpointError, CheckpointLayoutError: an adapter/ControlNet file cannot be used.
        """
        import diffusers

        kw = {"torch_dtype": torch_dtype, "local_files_only": local_files_only}
        vae = load_component("SDXL backbone (vae)", AutoencoderKL.from_pretrained, backbone, subfolder="vae", **kw)
        unet = load_component("SDXL backbone (unet)", UNet2DConditionModel.from_pretrained, backbone, subfolder="unet", **kw)
        text = {}
        for name, klass in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            text[name] = load_component(f"SDXL backbone ({name})", klass.from_pretrained, backbone, subfolder=name, dtype=torch_dtype,
                                        local_files_only=local_files_only)
        for name in ("tokenizer", "tokenizer_2"):
            text[name] = load_component(f"SDXL backbone ({name})", CLIPTokenizer.from_pretrained, backbone, subfolder=name,
                                        local_files_only=local_files_only)
        config = load_component("SDXL backbone (scheduler)", diffusers.EulerDiscreteScheduler.load_config, backbone, subfolder="scheduler",
                                local_files_only=local_files_only)
        scheduler_class = getattr(diffusers, config.get("_class_name", "EulerDiscreteScheduler"), diffusers.EulerDiscreteScheduler)
        scheduler = scheduler_class.from_config(config)
        index = Path(backbone) / "model_index.json"
        zeros = json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True) if index.is_file() else True
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        face = face_components(unet, scale, image_encoder, adapter, shadingnet, lora_rank, torch_dtype, local_files_only, shortcut,
                               adapter_lora)
        return cls(vae=vae, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=zeros, **text, **face)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], prompt_2: list[str] | None, negative_prompt: list[str] | None,
                      negative_prompt_2: list[str] | None, device, do_cfg: bool = True):
        """SDXL's text conditioning of B prompts.

        Each prompt goes through both tokenizers and text encoders (``prompt_2`` to the second one;
        default: ``prompt``); the encoders' penultimate hidden states are concatenated and the second
        encoder's pooled projection is the pooled embedding. The negative side does the same with the
        negative prompts, except that an absent negative prompt gives zeros when
        ``config.force_zeros_for_empty_prompt`` (SDXL-base).

        Returns:
            ``(prompt_embeds (B, 77, D1 + D2), negative_embeds, pooled (B, P), negative_pooled)``; the
            negatives are ``None`` when ``do_cfg`` is false.
        """

        def embed(first: list[str], second: list[str]):
            states, pooled = [], None
            for texts, tokenizer, encoder in ((first, self.tokenizer, self.text_encoder), (second, self.tokenizer_2, self.text_encoder_2)):
                ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                return_tensors="pt").input_ids
                out = encoder(ids.to(device), output_hidden_states=True)
                if out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                    pooled = out[0]  # (B, P)
                states.append(out.hidden_states[-2])  # (B, 77, Di): the penultimate layer
            return torch.cat(states, dim=-1).to(self.text_encoder_2.dtype), pooled  # (B, 77, D1 + D2)

        prompt_embeds, pooled = embed(prompt, prompt_2 or prompt)
        if not do_cfg:
            return prompt_embeds, None, pooled, None
        if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
            return prompt_embeds, torch.zeros_like(prompt_embeds), pooled, torch.zeros_like(pooled)
        negative_prompt = negative_prompt or [""] * len(prompt)
        negative_embeds, negative_pooled = embed(negative_prompt, negative_prompt_2 or negative_prompt)
        return prompt_embeds, negative_embeds, pooled, negative_pooled

    def _add_time_ids(self, original_size, crops_coords_top_left, target_size, dtype) -> torch.Tensor:
        """``(1, 6)`` SDXL micro-conditioning: original (h, w), crop top-left (y, x), target (h, w) in pixels.

        Raises:
            ValueError: the UNet's added-embedding width does not fit these 6 numbers plus the pooled
                text embedding (a non-SDXL UNet or a text encoder of another width).
        """
        ids = list(original_size) + list(crops_coords_top_left) + list(target_size)
        expected = self.unet.add_embedding.linear_1.in_features
        passed = self.unet.config.addition_time_embed_dim * len(ids) + self.text_encoder_2.config.projection_dim
        if expected != passed:
            raise ValueError(f"the UNet's added time embedding takes {expected} numbers, these inputs give {passed}: "
                             "is the UNet an SDXL UNet and text_encoder_2 its projection encoder?")
        return torch.tensor([ids], dtype=dtype)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                     pooled_prompt_embeds, negative_pooled_prompt_embeds, truncate_prompt) -> int:
        """Validate the text arguments (the face ones: ``check_face_inputs``).

        Returns:
            B, the number of prompts.

        Raises:
            ValueError: naming the argument; ``FaceMakeUpInputError`` for empty or over-long prompts.
        """
        if self.face_adapter is None:
            raise ValueError("no face adapter loaded: call load_face_adapter(...) first")
        if prompt_embeds is not None:
            if prompt is not None or prompt_2 is not None:
                raise ValueError("pass either `prompt` (and `prompt_2`) or `prompt_embeds`, not both")
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise ValueError(f"`prompt_embeds` must be a (B, 77, D) tensor, got {getattr(prompt_embeds, 'shape', type(prompt_embeds))}")
            if pooled_prompt_embeds is None or pooled_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                raise ValueError("with `prompt_embeds`, also pass `pooled_prompt_embeds` (B, P) from the same text encoders")
            if negative_prompt is not None or negative_prompt_2 is not None:
                raise ValueError("with `prompt_embeds`, pass `negative_prompt_embeds` rather than `negative_prompt`")
            if negative_prompt_embeds is not None:
                if negative_prompt_embeds.shape != prompt_embeds.shape:
                    raise ValueError(f"`negative_prompt_embeds` {tuple(negative_prompt_embeds.shape)} must match `prompt_embeds` "
                                     f"{tuple(prompt_embeds.shape)}")
                if negative_pooled_prompt_embeds is None:
                    raise ValueError("with `negative_prompt_embeds`, also pass `negative_pooled_prompt_embeds`")
            return len(prompt_embeds)
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(p, str) for p in texts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        for name, value in (("prompt_2", prompt_2), ("negative_prompt", negative_prompt), ("negative_prompt_2", negative_prompt_2)):
            if value is None:
                continue
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
                raise ValueError(f"`{name}` must be a string or a list of strings, got {value!r}")
            if len(items) != len(texts):
                raise ValueError(f"`{name}` has {len(items)} entries but `prompt` has {len(texts)}")
        self.check_prompts([self.tokenizer, self.tokenizer_2], {"prompt": prompt, "prompt_2": prompt_2, "negative_prompt": negative_prompt,
                                                                "negative_prompt_2": negative_prompt_2}, truncate_prompt)
        return len(texts)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        reference_image: ImageInput | list[ImageInput] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        ip_scale: float | dict | None = None,
        s_scale: float = 1.0,
        reference_weights: list[float] | None = None,
        face_index: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        face_images: list[np.ndarray] | None = None,
        clip_embeds: torch.Tensor | None = None,
        uncond_clip_embeds: torch.Tensor | None = None,
        shading_image: ImageInput | torch.Tensor | None = None,
        controlnet_conditioning_scale: float = 0.5,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        shading_crop_factor: float = 5.0,
        condition: str = "shading",
        reference_people: list[int] | None = None,
        face_masks: torch.Tensor | list | None = None,
        layout_image: ImageInput | None = None,
        layout_assignment: list[int] | None = None,
        layout_mask: str = "box",
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["FaceMakeUpXLPipeline", int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        truncate_prompt: bool = False,
    ) -> FaceMakeUpPipelineOutput | tuple:
        """Generate images of the reference person with SDXL.

        Args:
            prompt, reference_image, negative_prompt, num_images_per_prompt, num_inference_steps, ip_scale,
            s_scale, reference_weights, face_index, generator, seed, id_embeds, face_images, clip_embeds,
            uncond_clip_embeds, shading_image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end,
            shading_crop_factor, condition, reference_people, face_masks, layout_image, layout_assignment, layout_mask
            (several people in one image), output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
            truncate_prompt:
                as ``FaceMakeUpPipeline.__call__``.
            prompt_2, negative_prompt_2 (`str` or `list[str]`, *optional*): for the second text encoder
                (default: ``prompt`` / ``negative_prompt``).
            height, width (`int`, *optional*): output size, multiples of 8 (default: the UNet's
                ``sample_size * vae_scale_factor``, 1024 for SDXL).
            guidance_scale (`float`, defaults to 5.0): classifier-free guidance (SDXL's default; <= 1: none).
            latents (`torch.Tensor`, *optional*): initial noise ``(B*K, 4, height/8, width/8)``.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): ``(B, 77, D1 + D2)``
                precomputed text embeddings; pooled_prompt_embeds, negative_pooled_prompt_embeds:
                ``(B, P)`` their pooled embeddings (needed with them).
            original_size, target_size (`(int, int)`, *optional*): SDXL's micro-conditioning
                ``(height, width)`` in pixels (default: the output size); crops_coords_top_left
                (`(int, int)`, defaults to (0, 0)): the crop's top-left ``(y, x)``.
            negative_original_size, negative_crops_coords_top_left, negative_target_size: the same for
                the unconditional branch (default: as the conditional one).

        Returns:
            ``FaceMakeUpPipelineOutput`` (or ``(images, output)`` if ``return_dict=False``).

        Raises:
            ValueError, FaceMakeUpInputError, ImageReadError, NoFaceError, IndexError, FitError: as
            ``FaceMakeUpPipeline.__call__``.
        """
        # 0. Check inputs
        n_prompts = self.check_inputs(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                                      pooled_prompt_embeds, negative_pooled_prompt_embeds, truncate_prompt)
        people = {"reference_people": reference_people, "face_masks": face_masks, "layout_image": layout_image,
                  "layout_assignment": layout_assignment, "layout_mask": layout_mask}
        self.check_face_inputs(reference_image, id_embeds, face_images, clip_embeds, reference_weights, ip_scale, s_scale,
                               controlnet_conditioning_scale, shading_image, condition, height=height, width=width,
                               control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end, **people)
        self.check_common_inputs(height, width, num_inference_steps, guidance_scale, num_images_per_prompt, generator, seed,
                                 callback_on_step_end_tensor_inputs)
        device = self._execution_device
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        original_size = tuple(original_size or (height, width))
        target_size = tuple(target_size or (height, width))
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        do_cfg = guidance_scale > 1.0

        # 1. Text: both encoders, pooled embedding; one row per image
        if prompt_embeds is None:
            as_list = lambda x: None if x is None else ([x] if isinstance(x, str) else list(x))  # noqa: E731
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
                as_list(prompt), as_list(prompt_2), as_list(negative_prompt), as_list(negative_prompt_2), device, do_cfg)
        elif do_cfg and negative_prompt_embeds is None:
            if self.config.force_zeros_for_empty_prompt:
                negative_prompt_embeds, negative_pooled_prompt_embeds = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled_prompt_embeds)
            else:
                _, negative_prompt_embeds, _, negative_pooled_prompt_embeds = self.encode_prompt(
                    [""] * n_prompts, None, [""] * n_prompts, None, device, True)
        batch = n_prompts * num_images_per_prompt
        k = num_images_per_prompt
        prompt_embeds = prompt_embeds.to(device).repeat_interleave(k, dim=0)  # (B*K, 77, D)
        text_embeds = pooled_prompt_embeds.to(device).repeat_interleave(k, dim=0)  # (B*K, P)
        time_ids = self._add_time_ids(original_size, crops_coords_top_left, target_size, prompt_embeds.dtype)  # (1, 6)
        if do_cfg:
            negative_size = tuple(negative_original_size or original_size), tuple(negative_target_size or target_size)
            negative_time_ids = time_ids if negative_original_size is None and negative_target_size is None else self._add_time_ids(
                negative_size[0], negative_crops_coords_top_left, negative_size[1], prompt_embeds.dtype)
            prompt_embeds = torch.cat([negative_prompt_embeds.to(device).repeat_interleave(k, dim=0), prompt_embeds])  # (2BK, 77, D)
            text_embeds = torch.cat([negative_pooled_prompt_embeds.to(device).repeat_interleave(k, dim=0), text_embeds])  # (2BK, P)
            time_ids = torch.cat([negative_time_ids, time_ids])  # (2, 6)
        rows = len(prompt_embeds)
        time_ids = time_ids.to(device).repeat_interleave(rows // len(time_ids), dim=0)  # (rows, 6)
        added_cond_kwargs = {"text_embeds": text_embeds, "time_ids": time_ids}

        # 2-3. The face conditioning: references -> ID tokens; the ControlNet's map
        cond = self.prepare_face_conditioning(reference_image, face_index, id_embeds, face_images, clip_embeds, uncond_clip_embeds,
                                              reference_weights, s_scale, ip_scale, shading_image, condition, shading_crop_factor,
                                              height, width, device, **people)

        # 4. Timesteps and initial latents
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=prompt_embeds.dtype) * self.scheduler.init_noise_sigma

        # 5. Denoising loop (face_conditioning.FaceConditioningMixin.denoise), with SDXL's added conditions
        latents = self.denoise(latents, cond, prompt_embeds, guidance_scale, controlnet_conditioning_scale, generator,
                               added_cond_kwargs=added_cond_kwargs, callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                               control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end)

        # 6. Decode; SDXL's fp16 VAE overflows, so it decodes in float32 when its config says so (as diffusers)
        if output_type != "latent" and self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        out = cond.output(images, _map_image(cond.shading))
        return out if return_dict else (images, out)
