"""``FaceMakeUpPipeline``: a reference face and a prompt -> images of that person (Face-MakeUp V1/V2).

SD 1.5 with the Face-MakeUp ID channel (``facemakeup.model.FaceIDAdapter``): the reference's
ArcFace embedding and the CLIP ViT-H-14 features of its face crop become 4 ID tokens, read by every
cross-attention layer beside the text (decoupled cross-attention, scale ``ip_scale``), with LoRA on
all attention layers. Sampling is classifier-free guidance over (text, ID) pairs; the unconditional
branch uses the negative prompt, a zero ID embedding and the CLIP features of a zero image
(IP-Adapter-FaceID-PlusV2, Face-MakeUp V1 ``generate``). Defaults follow Face-MakeUp V1's inference
(docs/sources.md): DDIM, 50 steps, CFG 7.5, ``ip_scale`` 0.6, ``s_scale`` 1.0, 512x512.

With a ShadingNet (``controlnet``, Face-MakeUpV2), the reference's (or a target's) 3D face rendered
under its SH lighting (``faces.render.shading_map``, crop factor 5) steers pose and lighting; the
ShadingNet attends to the ID tokens only. Face-MakeUp V1's ControlNet reads the 5 keypoints drawn as
InstantID's ``draw_kps`` instead (``condition="keypoints"``, ``faces.conditions``).

Weights of every published layout (IP-Adapter-FaceID, -Plus, -PlusV2, -Portrait, Face-MakeUp V1/V2,
ours) load with ``load_face_adapter`` / ``set_face_adapter_scale`` / ``unload_face_adapter``, the
trio of diffusers' ``load_ip_adapter`` API (``model.loaders`` reads them). Users' LoRAs (LCM-LoRA, styles)
load beside the face adapter's LoRA with diffusers' ``load_lora_weights`` / ``set_adapters`` / ``fuse_lora``
(``facemakeup.lora``), and the ShadingNet can stop early (``control_guidance_end``). All of the face
conditioning (references, ID tokens, the ControlNet's map, the denoising loop) is
``face_conditioning.FaceConditioningMixin``, shared with the SDXL pipeline (``pipeline_xl``); this
module owns SD 1.5's text encoding and ``load_pipeline``, which tells SD 1.5 from SDXL.

Example:
    >>> pipe = FaceMakeUpPipeline.from_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                                         adapter="ip-adapter-faceid-plusv2_sd15.bin")
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
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .face_conditioning import (DEFAULT_IMAGE_ENCODER, DEFAULT_IP_SCALE, FaceConditioningMixin, FaceMakeUpPipelineOutput,
                                face_components, load_component, load_face_weights)
from .faces.image import ImageInput
from .lora import FaceLoraLoaderMixin
from .model.id_adapter import FaceIDAdapter

logger = logging.getLogger(__name__)

#: SD 1.5 backbone (the paper's demo uses Realistic_Vision_V4.0_noVAE + sd-vae-ft-mse, same layout).
DEFAULT_BACKBONE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The SDXL backbone of ``--model`` when an SDXL adapter is named without one.
DEFAULT_XL_BACKBONE = "stabilityai/stable-diffusion-xl-base-1.0"

__all__ = ["FaceMakeUpPipeline", "FaceMakeUpPipelineOutput", "load_pipeline", "backbone_family", "DEFAULT_BACKBONE",
           "DEFAULT_IMAGE_ENCODER", "DEFAULT_IP_SCALE"]


class FaceMakeUpPipeline(FaceConditioningMixin, FaceLoraLoaderMixin, StableDiffusionLoraLoaderMixin, DiffusionPipeline):
    """Identity-conditioned text-to-image generation with SD 1.5 and the Face-MakeUp ID channel.

    Args:
        vae: ``AutoencoderKL`` of SD 1.5.
        text_encoder: ``CLIPTextModel`` (CLIP ViT-L/14 text tower for SD 1.5).
        tokenizer: ``CLIPTokenizer``.
        unet: a plain ``UNet2DConditionModel``; the pipeline attaches ``face_adapter`` to it.
        scheduler: any diffusers scheduler (Face-MakeUp uses DDIM).
        face_adapter: ``FaceIDAdapter`` (ID projection, decoupled cross-attention, LoRA), or ``None``
            (then ``load_face_adapter`` before generating).
        image_encoder: ``CLIPVisionModelWithProjection`` for the face crop (ViT-H-14). Needed only by
            adapters that read CLIP features, and then only if ``clip_embeds`` are not passed.
        feature_extractor: ``CLIPImageProcessor`` of the image encoder.
        controlnet: ``ControlNetModel``, the ShadingNet (optional; Face-MakeUpV2) or V1's keypoint ControlNet.
    """

    # enable_model_cpu_offload: the ControlNet, called every step, gets its own hook (as in diffusers' ControlNet
    # pipelines; in the chain the UNet's hook would move it off the GPU at every step); the face adapter stays on
    # the GPU: its ID/LoRA linears are shared into the UNet and move with it, its projection runs outside forward().
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _exclude_from_cpu_offload = ["face_adapter"]
    _optional_components = ["face_adapter", "image_encoder", "feature_extractor", "controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        face_adapter: FaceIDAdapter | None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessorPil | None = None,
        controlnet: ControlNetModel | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            face_adapter=face_adapter,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            controlnet=controlnet,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if face_adapter is not None:
            face_adapter.attach(unet)
            face_adapter.set_ip_scale(DEFAULT_IP_SCALE)
        self.face_analyzer = None  # a faces.FaceAnalyzer, made on first use (ONNX, CPU: not a torch module)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike = DEFAULT_BACKBONE,
        image_encoder: str | os.PathLike | None = DEFAULT_IMAGE_ENCODER,
        adapter: str | os.PathLike | None = None,
        shadingnet: str | os.PathLike | None = None,
        lora_rank: int = 128,
        torch_dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
        shortcut: bool | None = None,
        adapter_lora: str | os.PathLike | None = None,
    ) -> "FaceMakeUpPipeline":
        """Assemble the pipeline from an SD 1.5 backbone, a CLIP image encoder and ID-adapter weights.

        Args:
            backbone: hub id or local folder in diffusers layout (``vae/``, ``unet/``,
                ``text_encoder/``, ``tokenizer/``, ``scheduler/``); its scheduler becomes DDIM, as in Face-MakeUp.
            image_encoder: hub id or local folder of a transformers CLIP model (full CLIP or vision
                tower; its ``CLIPImageProcessor`` is loaded from the same place); ``None`` leaves it out.
                Loaded only when the adapter reads CLIP features (Plus, PlusV2, Face-MakeUp, a fresh adapter).
            adapter: ID-adapter weights in any layout of ``model.loaders`` (IP-Adapter-FaceID /
                -Plus / -PlusV2 / -Portrait file, Face-MakeUp V1/V2 ``model.bin``, our folder with
                ``face_adapter/``), as a path; ``None`` makes a fresh, untrained adapter (identity is
                then not transferred: train it or load weights).
            shadingnet: ControlNet weights (our folder with ``shadingnet/``, a ControlNet folder or
                state dict, or Face-MakeUp's ``model.bin``, which holds both: pass it as ``adapter``
                too and it is read once), ``"init"`` for a fresh copy of the UNet (no effect until
                trained), or ``None`` for none.
            lora_rank: LoRA rank of a fresh adapter.
            torch_dtype: dtype of all components (float32 on CPU).
            local_files_only: never touch the network (default: ``HF_HUB_OFFLINE``).
            shortcut: FaceID-Plus v1 checkpoints: ``False`` (see ``model.loaders``).
            adapter_lora: the adapter's LoRA in a file of its own (h94's ``*_lora.safetensors``), for an
                adapter file holding the IP k/v alone.

        Raises:
            ModelNotFoundError: a component is neither on disk nor downloadable; the message says
                what to download and how to point to it.
            CheckpointError, CheckpointLayoutError: an adapter/ControlNet file cannot be used.
        """
        kw = {"torch_dtype": torch_dtype, "local_files_only": local_files_only}
        vae = load_component("SD 1.5 backbone (vae)", AutoencoderKL.from_pretrained, backbone, subfolder="vae", **kw)
        unet = load_component("SD 1.5 backbone (unet)", UNet2DConditionModel.from_pretrained, backbone, subfolder="unet", **kw)
        text_encoder = load_component("SD 1.5 backbone (text_encoder)", CLIPTextModel.from_pretrained, backbone, subfolder="text_encoder",
                                      dtype=torch_dtype, local_files_only=local_files_only)
        tokenizer = load_component("SD 1.5 backbone (tokenizer)", CLIPTokenizer.from_pretrained, backbone, subfolder="tokenizer",
                                   local_files_only=local_files_only)
        scheduler = load_component("SD 1.5 backbone (scheduler)", DDIMScheduler.from_pretrained, backbone, subfolder="scheduler",
                                   local_files_only=local_files_only)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        face = face_components(unet, scale, image_encoder, adapter, shadingnet, lora_rank, torch_dtype, local_files_only, shortcut,
                               adapter_lora)
        return cls(vae, text_encoder, tokenizer, unet, scheduler, **face)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], negative_prompt: list[str] | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP text embeddings of the prompts and negative prompts.

        Args:
            prompt: B prompts. negative_prompt: B negative prompts or ``None`` (empty strings).

        Returns:
            ``(prompt_embeds, negative_embeds)``, each ``(B, 77, D)`` float (last hidden state, as SD 1.5).
        """

        def embed(texts):
            ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
            return self.text_encoder(ids.to(device))[0]  # (B, 77, D)

        negative_prompt = negative_prompt if negative_prompt is not None else [""] * len(prompt)
        return embed(prompt), embed(negative_prompt)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, prompt, negative_prompt, reference_image, id_embeds, face_images, clip_embeds, reference_weights,
                     height, width, num_inference_steps, guidance_scale, ip_scale, num_images_per_prompt, generator, seed,
                     prompt_embeds=None, negative_prompt_embeds=None, shading_image=None, condition="shading",
                     callback_on_step_end_tensor_inputs=("latents",),
                     s_scale=1.0, controlnet_conditioning_scale=0.5, truncate_prompt=False, people=None, control_guidance_start=0.0,
                     control_guidance_end=1.0):
        """Validate user input up front; every error names the argument and what was received.

        Raises:
            ValueError: (``FaceMakeUpInputError`` for values: non-finite or out-of-range numbers, see
                ``facemakeup.validation``; empty, non-UTF-8 or over-long prompts; 0-pixel face images).
        """
        if self.face_adapter is None:
            raise ValueError("no face adapter loaded: call load_face_adapter(...) first")
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise ValueError(f"`prompt_embeds` must be a (B, 77, D) tensor, got {getattr(prompt_embeds, 'shape', type(prompt_embeds))}")
            if negative_prompt is not None:
                raise ValueError("with `prompt_embeds`, pass `negative_prompt_embeds` rather than `negative_prompt`")
            if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
                raise ValueError(f"`negative_prompt_embeds` {tuple(negative_prompt_embeds.shape)} must match `prompt_embeds` {tuple(prompt_embeds.shape)}")
            texts = [""] * len(prompt_embeds)
        else:
            texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(p, str) for p in texts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None:
            neg = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(neg, (list, tuple)) or not all(isinstance(p, str) for p in neg):
                raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {negative_prompt!r}")
            if len(neg) != len(texts):
                raise ValueError(f"`negative_prompt` has {len(neg)} entries but `prompt` has {len(texts)}")
        self.check_face_inputs(reference_image, id_embeds, face_images, clip_embeds, reference_weights, ip_scale, s_scale,
                               controlnet_conditioning_scale, shading_image, condition, height=height, width=width,
                               control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end, **(people or {}))
        self.check_common_inputs(height, width, num_inference_steps, guidance_scale, num_images_per_prompt, generator, seed,
                                 callback_on_step_end_tensor_inputs)
        self.check_prompts([self.tokenizer], {"prompt": prompt if prompt_embeds is None else None, "negative_prompt": negative_prompt},
                           truncate_prompt)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        reference_image: ImageInput | list[ImageInput] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        ip_scale: float | dict | None = None,
        s_scale: float = 1.0,
        reference_weights: list[float] | None = None,
        face_index: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["FaceMakeUpPipeline", int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        truncate_prompt: bool = False,
    ) -> FaceMakeUpPipelineOutput | tuple:
        """Generate images of the reference person.

        Args:
            prompt (`str` or `list[str]`): B text prompts (or ``None`` with ``prompt_embeds``).
            reference_image (path, PIL, ``(H, W, 3)`` uint8 array, or a list of them): photo(s) of
                the person; several are mixed by ``reference_weights``.
            negative_prompt (`str` or `list[str]`, *optional*): B negative prompts (default empty).
            num_images_per_prompt (`int`, defaults to 1): K images per prompt.
            height, width (`int`, *optional*): output size in pixels, multiples of 8 (default: the
                UNet's ``sample_size * vae_scale_factor``, 512 for SD 1.5).
            num_inference_steps (`int`, defaults to 50): denoising steps.
            guidance_scale (`float`, defaults to 7.5): classifier-free guidance weight (<= 1: none).
            ip_scale (`float` or `dict`, *optional*): weight of the ID attention (0 = text only), or a
                per-block dict (see ``set_face_adapter_scale``); ``None`` keeps the current scale
                (``set_face_adapter_scale``; 0.6 after loading, Face-MakeUp's default).
            s_scale (`float`, defaults to 1.0): weight of the Perceiver output in the ID tokens.
            reference_weights (`list[float]`, *optional*): one weight >= 0 per reference (default
                equal). The references' ArcFace embeddings and CLIP features are averaged with these
                weights (normalised to sum 1) before the projection, as Face-MakeUp's ``mix``. An
                adapter with ``multi_face="concat"`` (Portrait) instead gives each reference its own
                tokens (no weights).
            face_index (`int`, defaults to 0): which face of each reference photo (0 = the main face).
            generator (`torch.Generator`, *optional*) / seed (`int`, *optional*): randomness.
            latents (`torch.Tensor`, *optional*): initial noise ``(B*K, 4, height/8, width/8)``.
            prompt_embeds (`torch.Tensor`, *optional*): precomputed ``(B, 77, D)`` text embeddings
                instead of ``prompt`` (pass ``prompt=None``).
            negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed ``(B, 77, D)`` negative
                embeddings (default: those of the empty prompt).
            id_embeds (`torch.Tensor`, *optional*): precomputed ``(N, 512)`` ArcFace embeddings
                instead of ``reference_image``; adapters that read CLIP also need ``face_images`` or ``clip_embeds``.
            face_images (`list[np.ndarray]`, *optional*): N precomputed CLIP crops (uint8 RGB).
            clip_embeds (`torch.Tensor`, *optional*): precomputed ``(N, L, C)`` CLIP hidden states.
            uncond_clip_embeds (`torch.Tensor`, *optional*): precomputed ``(1, L, C)`` features of the
                unconditional branch (default: those of the zero image, see ``uncond_clip_embeds()``).
            shading_image (image or `torch.Tensor`, *optional*): the ControlNet's input map of
                ``height`` x ``width`` (PIL, path, ``(H, W, 3)`` uint8, or ``(1, 3, H, W)`` float
                in [0, 1]): a shading map, or a keypoint map for ``condition="keypoints"``. Default,
                when the pipeline has a ControlNet: made from the first reference
                (``faces.conditions.condition_map``).
            controlnet_conditioning_scale (`float`, defaults to 0.5): weight of the ShadingNet's
                residuals (V2 web demo 0.5; 0 = no effect).
            control_guidance_start (`float`, defaults to 0.0), control_guidance_end (`float`, defaults to 1.0):
                the fractions of the steps between which the ControlNet runs (diffusers' names and
                rule, ``face_conditioning.controlnet_window``); outside them it is not called, so
                ``control_guidance_end=0.4`` saves 60% of its cost (the early steps set pose and light).
            shading_crop_factor (`float`, defaults to 5.0): crop of the default shading / keypoint map.
            condition (`str`, defaults to "shading"): what the ControlNet reads: ``"shading"``
                (Face-MakeUpV2's ShadingNet), ``"keypoints"`` (Face-MakeUp V1: InstantID-style
                ``draw_kps``) or ``"none"`` (the ControlNet is not run).
            reference_people (`list[int]`, *optional*): the person (0 .. P-1) each reference shows, for
                several people in one image; a person's references mix by ``reference_weights`` (normalised
                per person). Default: with ``face_masks`` or ``layout_image`` each reference is its own
                person, else all references are one person (no masks). P > 1 without masks or layout puts
                the people side by side in P equal columns (``faces.layout.side_by_side``).
            face_masks (`torch.Tensor` or `list[PIL.Image.Image]`, *optional*): ``(P, H, W)`` float in [0, 1]
                (or P PIL masks, 255 = inside), the output's aspect ratio: person p's ID tokens act only
                inside mask p, with diffusers' masked IP-Adapter semantics (``IPAdapterMaskProcessor``
                resizes to the output and binarises at 0.5; bicubic down-sampling per attention
                resolution). The default map then draws each person's first reference in its mask's box.
            layout_image (image, *optional*): a photo with one face per person: its faces, left to right,
                give the people's places (masks: each face box grown to the head, or its parsed head
                region, ``layout_mask``) and the map with every face (``faces.layout.layout_from_photo``);
                the photo is fitted inside the output, nothing cut.
            layout_assignment (`list[int]`, *optional*): per person the layout face it takes, counted left to
                right from 0 (default: person p takes the p-th face; then P must equal the faces found).
            layout_mask (`str`, defaults to "box"): ``"box"`` (face box grown to the head) or ``"parsing"``
                (the face parser's head region: face, hair, ears, hat).
            output_type (`str`, defaults to "pil"): "pil", "np", "pt" or "latent".
            return_dict (`bool`, defaults to True): return a ``FaceMakeUpPipelineOutput``, else a tuple.
            callback_on_step_end (`Callable`, *optional*): called after each denoising step as
                ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` (diffusers' step
                callback); ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``; a returned ``"latents"`` replaces the latents.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to ``["latents"]``): tensors
                passed to the callback; only ``"latents"`` is available.
            truncate_prompt (`bool`, defaults to False): cut prompts over the text encoder's 75 tokens,
                with a logged warning of how many tokens were dropped, instead of raising.

        Returns:
            ``FaceMakeUpPipelineOutput`` (or ``(images, output)`` if ``return_dict=False``).

        Raises:
            ValueError: invalid arguments (named in the message; ``FaceMakeUpInputError`` for values:
                NaN/inf or out-of-range numbers, empty or over-long prompts, see ``facemakeup.validation``).
            ImageReadError, NoFaceError, IndexError: a reference photo cannot be used.
            FitError: a shading map is needed but the reference's 3D fit failed.
        """
        # 0. Check inputs
        people = {"reference_people": reference_people, "face_masks": face_masks, "layout_image": layout_image,
                  "layout_assignment": layout_assignment, "layout_mask": layout_mask}
        self.check_inputs(prompt, negative_prompt, reference_image, id_embeds, face_images, clip_embeds, reference_weights,
                          height, width, num_inference_steps, guidance_scale, ip_scale, num_images_per_prompt, generator, seed,
                          prompt_embeds, negative_prompt_embeds, shading_image, condition, callback_on_step_end_tensor_inputs,
                          s_scale, controlnet_conditioning_scale, truncate_prompt, people, control_guidance_start, control_guidance_end)
        device = self._execution_device
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        do_cfg = guidance_scale > 1.0

        # 1. Text embeddings, one row per image
        negatives = None if negative_prompt is None else ([negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt))
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negatives, device)  # (B, 77, D) each
        elif negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_prompt([""], None, device)[0].expand_as(prompt_embeds)
        batch = len(prompt_embeds) * num_images_per_prompt
        prompt_embeds = prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, dim=0)  # (B*K, 77, D)
        if do_cfg:
            negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, dim=0)
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])  # (2*B*K, 77, D)

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

        # 5. Denoising loop (face_conditioning.FaceConditioningMixin.denoise)
        latents = self.denoise(latents, cond, prompt_embeds, guidance_scale, controlnet_conditioning_scale, generator,
                               callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                               control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end)

        # 6. Decode
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        out = cond.output(images, _map_image(cond.shading))
        return out if return_dict else (images, out)


def _map_image(shading: torch.Tensor | None) -> np.ndarray | None:
    """``(H, W, 3)`` uint8 of a ``(1, 3, H, W)`` map in [0, 1] (what the ControlNet saw)."""
    return None if shading is None else np.round(shading[0].permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8)


# ---------------------------------------------------------------------------- --model
def backbone_family(model: str | os.PathLike) -> str:
    """``"sd15"`` or ``"sdxl"``: which pipeline a ``--model`` value needs.

    ``"tiny"``/``"tiny-xl"`` name themselves; a folder saved by ``save_pretrained`` says it in its
    ``model_index.json`` (``FaceMakeUpPipeline`` / ``FaceMakeUpXLPipeline``); a diffusers backbone folder
    is SDXL when its ``model_index.json`` names ``StableDiffusionXLPipeline`` or a ``text_encoder_2``, or
    its UNet config has SDXL's ``text_time`` micro-conditioning. A hub id is read from the hub's
    ``model_index.json`` (cached, or downloaded unless offline); one that cannot be read is taken
    as SD 1.5 (its loading then says what to download).

    Args:
        model: ``"tiny"``, ``"tiny-xl"``, a folder, or a hub id.
    """
    model = str(model)
    if model in ("tiny", "tiny-xl"):
        return "sdxl" if model == "tiny-xl" else "sd15"
    folder = Path(model)
    index = folder / "model_index.json"
    unet_config = folder / "unet" / "config.json"
    if not folder.is_dir():
        try:
            import huggingface_hub

            index = Path(huggingface_hub.hf_hub_download(model, "model_index.json"))
        except Exception:  # offline, unknown repo: the loader will say what to download
            return "sd15"
    if index.is_file():
        info = json.loads(index.read_text())
        if info.get("_class_name") in ("FaceMakeUpXLPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline") \
                or "text_encoder_2" in info:
            return "sdxl"
        if info.get("_class_name") in ("FaceMakeUpPipeline", "StableDiffusionPipeline"):
            return "sd15"
    if unet_config.is_file() and json.loads(unet_config.read_text()).get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15"


def load_pipeline(model: str, image_encoder: str | None = DEFAULT_IMAGE_ENCODER, adapter: str | None = None,
                  shadingnet: str | None = None, local_files_only: bool | None = None, shortcut: bool | None = None,
                  adapter_lora: str | None = None):
    """The pipeline behind ``--model``: ``FaceMakeUpPipeline`` for SD 1.5, ``FaceMakeUpXLPipeline`` for SDXL
    (``backbone_family`` tells which).

    ``model`` is ``"tiny"`` / ``"tiny-xl"`` (random, tiny, with a ShadingNet: noise images; ``adapter`` and
    ``shadingnet`` load weights trained on that backbone, e.g. a tiny training run's ``final/``), a folder
    saved by ``save_pretrained``, or a backbone (hub id or diffusers folder). ``adapter_lora``: the adapter's
    LoRA in a separate file (``FaceMakeUpPipeline.from_backbone``).

    Raises:
        ModelNotFoundError: with what to download and how to point to it.
        CheckpointError, CheckpointLayoutError: an adapter/ControlNet file cannot be used.
    """
    family = backbone_family(model)
    if family == "sdxl":
        from .pipeline_xl import FaceMakeUpXLPipeline as cls
    else:
        cls = FaceMakeUpPipeline
    if model in ("tiny", "tiny-xl"):
        from .model.shadingnet import shadingnet_from_unet
        from .model.tiny import tiny_components, tiny_xl_components

        parts = tiny_xl_components() if model == "tiny-xl" else tiny_components()
        unet, scale = parts["unet"], 2 ** (len(parts["vae"].config.block_out_channels) - 1)
        # a tiny-backbone adapter/ShadingNet (e.g. `facemakeup train --preset tiny`'s final/) loads; others are refused
        face_adapter, controlnet = load_face_weights(unet, adapter, shadingnet, scale, local_files_only, shortcut, adapter_lora)
        if face_adapter is None:
            face_adapter = FaceIDAdapter.for_unet(unet, parts["image_encoder"].config.hidden_size, lora_rank=4)
        if controlnet is None:
            controlnet = shadingnet_from_unet(unet, vae_scale_factor=scale)
        if face_adapter.config.projection != "plus":  # an ArcFace-only adapter: no image encoder
            parts.update(image_encoder=None, feature_extractor=None)
        return cls(face_adapter=face_adapter, controlnet=controlnet, **parts)
    index = Path(model) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == cls.__name__:
        return cls.from_pretrained(model)
    return cls.from_backbone(model, image_encoder=image_encoder, adapter=adapter, shadingnet=shadingnet,
                             local_files_only=local_files_only, shortcut=shortcut, adapter_lora=adapter_lora)
