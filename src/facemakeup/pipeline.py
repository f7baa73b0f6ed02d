"""``FaceMakeUpPipeline``: a reference face and a prompt -> images of that person (Face-MakeUp V1/V2).

SD 1.5 with the Face-MakeUp ID channel (``facemakeup.model.FaceIDAdapter``): the reference's
ArcFace embedding and the CLIP ViT-H-14 features of its face crop become 4 ID tokens, read by every
cross-attention layer beside the text (decoupled cross-attention, scale ``ip_scale``), with LoRA on
all attention layers. Sampling is classifier-free guidance over (text, ID) pairs; the unconditional
branch uses the negative prompt, a zero ID embedding and the CLIP features of a zero image
(IP-Adapter-FaceID-PlusV2, Face-MakeUp V1 ``generate``). Defaults follow Face-MakeUp V1's inference
(REFERENCE.md): DDIM, 50 steps, CFG 7.5, ``ip_scale`` 0.6, ``s_scale`` 1.0, 512x512.

With a ShadingNet (``controlnet``, Face-MakeUpV2), the reference's (or a target's) 3D face rendered
under its SH lighting (``faces.render.shading_map``, crop factor 5) steers pose and lighting; the
ShadingNet attends to the ID tokens only. Face-MakeUp V1's ControlNet reads the 5 keypoints drawn as
InstantID's ``draw_kps`` instead (``condition="keypoints"``, ``faces.conditions``).

Weights of every published layout (IP-Adapter-FaceID, -Plus, -PlusV2, -Portrait, Face-MakeUp V1/V2,
ours) load with ``load_face_adapter`` / ``set_face_adapter_scale`` / ``unload_face_adapter``, the
trio of diffusers' ``load_ip_adapter`` API (``model.loaders`` reads them).

Example:
    >>> pipe = FaceMakeUpPipeline.from_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                                         adapter="ip-adapter-faceid-plusv2_sd15.bin")
    >>> out = pipe("a smiling woman with blonde hair", reference_image="me.jpg", seed=42)
    >>> out.images[0].save("out.png")
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .errors import FaceMakeUpInputError, FitError, ModelNotFoundError
from .faces.image import ImageInput
from .model.id_adapter import FaceIDAdapter, _like
from .model.loaders import load_checkpoint
from .model.shadingnet import shadingnet_from_unet

logger = logging.getLogger(__name__)

#: SD 1.5 backbone (the paper's demo uses Realistic_Vision_V4.0_noVAE + sd-vae-ft-mse, same layout).
DEFAULT_BACKBONE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: CLIP ViT-H-14 laion2B-s32B-b79K, the image encoder of IP-Adapter-FaceID-PlusV2 and Face-MakeUp.
DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: Weight of the ID attention until ``set_face_adapter_scale`` says otherwise (Face-MakeUp V1 demo).
DEFAULT_IP_SCALE = 0.6


@dataclass
class FaceMakeUpPipelineOutput(BaseOutput):
    """What ``FaceMakeUpPipeline.__call__`` returns.

    Attributes:
        images: ``len(prompt) * num_images_per_prompt`` images: PIL images, or a ``(B, H, W, 3)``
            float array in [0, 1] (``output_type="np"``), or latents (``"latent"``).
        faces: the reference ``Face`` records used (``None`` when ``id_embeds`` were passed).
        id_embeds: ``(N, 512)`` float32 ArcFace embeddings of the N references.
        face_images: the N CLIP face crops, ``(S, S, 3)`` uint8 RGB (``None`` if ``clip_embeds`` were passed).
        reference_weights: the N mixing weights, normalised to sum to 1.
        id_tokens: ``(1, num_tokens, D)`` the ID tokens (of the mixed references) the UNet attended to.
        shading_image: ``(H, W, 3)`` uint8 map the ControlNet saw (shading or keypoint map), or ``None``.
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]
    faces: list | None
    id_embeds: torch.Tensor
    face_images: list[np.ndarray] | None
    reference_weights: list[float]
    id_tokens: torch.Tensor
    shading_image: np.ndarray | None = None


class FaceMakeUpPipeline(DiffusionPipeline):
    """Identity-conditioned text-to-image generation with SD 1.5 and the Face-MakeUp ID channel.

    Args:
        vae: ``AutoencoderKL`` of SD 1.5.
        text_encoder: ``CLIPTextModel`` (CLIP ViT-L/14 text tower for SD 1.5).
        tokenizer: ``CLIPTokenizer``.
        unet: a plain ``UNet2DConditionModel``; the pipeline attaches ``face_adapter`` to it.
        scheduler: any diffusers scheduler (Face-MakeUp uses DDIM).
        face_adapter: ``FaceIDAdapter`` (ID projection, decoupled cross-attention, LoRA), or ``None``
            (then ``load_face_adapter`` before generating).
        image_encoder: ``CLIPVisionModelWithProjection`` for the face crop (ViT-H-14). Optional if
            ``clip_embeds`` are always passed.
        feature_extractor: ``CLIPImageProcessor`` of the image encoder.
        controlnet: ``ControlNetModel``, the ShadingNet (optional; Face-MakeUpV2) or V1's keypoint ControlNet.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->face_adapter->controlnet->unet->vae"
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

    # ------------------------------------------------------------------ loading and saving
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
    ) -> "FaceMakeUpPipeline":
        """Assemble the pipeline from an SD 1.5 backbone, a CLIP image encoder and ID-adapter weights.

        Args:
            backbone: hub id or local folder in diffusers layout (``vae/``, ``unet/``,
                ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
            image_encoder: hub id or local folder of a transformers CLIP model (full CLIP or vision
                tower; its ``CLIPImageProcessor`` is loaded from the same place); ``None`` leaves it out.
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

        Raises:
            ModelNotFoundError: a component is neither on disk nor downloadable; the message says
                what to download and how to point to it.
            CheckpointError, CheckpointLayoutError: an adapter/ControlNet file cannot be used.
        """
        kw = {"torch_dtype": torch_dtype, "local_files_only": local_files_only}

        def load(what: str, fn, *args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (OSError, ValueError, ConnectionError) as err:
                raise ModelNotFoundError(_missing_message(what, args[0], err)) from err

        vae = load("SD 1.5 backbone (vae)", AutoencoderKL.from_pretrained, backbone, subfolder="vae", **kw)
        unet = load("SD 1.5 backbone (unet)", UNet2DConditionModel.from_pretrained, backbone, subfolder="unet", **kw)
        text_encoder = load("SD 1.5 backbone (text_encoder)", CLIPTextModel.from_pretrained, backbone, subfolder="text_encoder", dtype=torch_dtype, local_files_only=local_files_only)
        tokenizer = load("SD 1.5 backbone (tokenizer)", CLIPTokenizer.from_pretrained, backbone, subfolder="tokenizer", local_files_only=local_files_only)
        scheduler = load("SD 1.5 backbone (scheduler)", DDIMScheduler.from_pretrained, backbone, subfolder="scheduler", local_files_only=local_files_only)
        encoder = processor = None
        if image_encoder is not None:
            encoder = load("CLIP image encoder", CLIPVisionModelWithProjection.from_pretrained, image_encoder, dtype=torch_dtype, local_files_only=local_files_only)
            processor = load("CLIP image processor", CLIPImageProcessorPil.from_pretrained, image_encoder, local_files_only=local_files_only)
        clip_dim = encoder.config.hidden_size if encoder is not None else 1280
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        face_adapter, controlnet = _load_weights(unet, adapter, shadingnet, scale, local_files_only, shortcut)
        if face_adapter is None:
            face_adapter = FaceIDAdapter.for_unet(unet, clip_dim, lora_rank)
            logger.warning("no ID-adapter weights given: the ID channel is freshly initialised and untrained")
        return cls(vae, text_encoder, tokenizer, unet, scheduler, face_adapter, encoder, processor, controlnet)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``DiffusionPipeline.save_pretrained`` with the UNet saved plain (the ID channel is saved
        once, in ``face_adapter/``), so every component reloads with its own class."""
        adapter = self.face_adapter
        if adapter is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        fused = adapter.lora_fused
        adapter.detach()
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            adapter.attach(self.unet)
            if fused:
                adapter.fuse_lora()

    # ------------------------------------------------------------------ load / set scale / unload
    def load_face_adapter(self, path_or_hub_id: str | os.PathLike, subfolder: str | None = None, weight_name: str | None = None,
                          *, shortcut: bool | None = None, load_controlnet: bool = False,
                          local_files_only: bool | None = None) -> str:
        """Load ID-adapter weights of any known layout, replacing the current adapter (diffusers'
        ``load_ip_adapter``).

        Args:
            path_or_hub_id: a checkpoint file or folder, or a hub repo id.
            subfolder (`str`, *optional*): folder inside it. weight_name (`str`, *optional*): file
                inside that (e.g. ``"ip-adapter-faceid-plusv2_sd15.bin"``).
            shortcut (`bool`, *optional*): FaceID-Plus v1: ``False``; default ``True`` (PlusV2, Face-MakeUp).
            load_controlnet (`bool`, defaults to False): also make the file's ControlNet (Face-MakeUp
                ``model.bin``, our folder's ``shadingnet/``) the pipeline's ``controlnet``; the file is read once.
            local_files_only (`bool`, *optional*): never download (default: ``HF_HUB_OFFLINE``).

        Returns:
            The layout that was read (``model.loaders.LAYOUTS``).

        Raises:
            ModelNotFoundError, CheckpointError, CheckpointLayoutError: see ``model.loaders.load_checkpoint``;
            CheckpointLayoutError also when the checkpoint holds no ID adapter.
        """
        self.unload_face_adapter()  # the plain UNet: checkpoints are read against it
        ckpt = load_checkpoint(path_or_hub_id, self.unet, subfolder, weight_name, shortcut=shortcut,
                               vae_scale_factor=self.vae_scale_factor, local_files_only=local_files_only)
        if ckpt.adapter is None:
            from .errors import CheckpointLayoutError

            raise CheckpointLayoutError(f"{ckpt.source} ({ckpt.layout}) holds no ID adapter")
        adapter = _like(ckpt.adapter, self.unet)
        adapter.attach(self.unet)
        adapter.set_ip_scale(DEFAULT_IP_SCALE)
        self.register_modules(face_adapter=adapter)
        if load_controlnet and ckpt.controlnet is not None:
            self.register_modules(controlnet=_like(ckpt.controlnet, self.unet))
        return ckpt.layout

    def set_face_adapter_scale(self, scale: float | dict) -> None:
        """Weight of the ID attention, for all cross-attention layers or per block (diffusers'
        ``set_ip_adapter_scale``, InstantStyle-style).

        Args:
            scale: a float ``>= 0``, or a dict like ``{"down": {"block_2": [0.0, 1.0]}, "mid": 1.0,
                "up": {"block_0": [0.0, 1.0, 0.0]}}``: ``"down"``/``"up"`` take a float for all their
                blocks or ``{"block_i": float or one float per attention of that block}``; ``"mid"`` a
                float. Layers not named get 0 (no ID attention), as in diffusers.

        Raises:
            ValueError: no adapter loaded, or a block/key/length that the UNet does not have (the
                valid ones are listed).
        """
        if self.face_adapter is None:
            raise ValueError("no face adapter loaded: call load_face_adapter first")
        self.face_adapter.set_ip_scale(block_scales(self.unet, scale) if isinstance(scale, dict) else _nonneg(scale))

    def unload_face_adapter(self) -> None:
        """Remove the ID adapter: the UNet is the plain backbone again, bit for bit (processors,
        no LoRA layers, original weights also after ``fuse_lora``). The ControlNet stays."""
        if self.face_adapter is not None:
            self.face_adapter.detach()
            self.register_modules(face_adapter=None)

    # ------------------------------------------------------------------ conditions
    def _analyzer(self):
        if self.face_analyzer is None:
            from .faces import FaceAnalyzer

            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.face_analyzer = FaceAnalyzer(clip_size=size, fitter="mediapipe" if self.controlnet is not None else None)
        return self.face_analyzer

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

    @torch.no_grad()
    def encode_face_images(self, face_images: list[np.ndarray], device) -> torch.Tensor:
        """CLIP ``hidden_states[-2]`` of face crops (IP-Adapter-FaceID-Plus's image features).

        Args:
            face_images: N crops, ``(S, S, 3)`` uint8 RGB.

        Returns:
            ``(N, L, C)`` float; L = 257, C = 1280 for ViT-H-14.

        Raises:
            ValueError: the pipeline has no image encoder.
        """
        self._require_image_encoder()
        pixels = self.feature_extractor(images=list(face_images), return_tensors="pt").pixel_values
        pixels = pixels.to(device=device, dtype=self.image_encoder.dtype)  # (N, 3, S, S) CLIP-normalised
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]  # (N, L, C)

    @torch.no_grad()
    def uncond_clip_embeds(self, device) -> torch.Tensor:
        """CLIP ``hidden_states[-2]`` of the zero image, ``(1, L, C)``: the unconditional branch's
        image features. The image is zero *after* CLIP normalisation, as in IP-Adapter-FaceID-Plus."""
        self._require_image_encoder()
        size = self.image_encoder.config.image_size
        zeros = torch.zeros(1, 3, size, size, device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(zeros, output_hidden_states=True).hidden_states[-2]

    def _require_image_encoder(self):
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("this pipeline has no image_encoder/feature_extractor: load one (--image-encoder) to use face images")

    @torch.no_grad()
    def prepare_references(self, reference_image, face_index: int = 0) -> list:
        """Analyse the reference photo(s): one ``Face`` each (the largest, or ``face_index``-th).

        Raises:
            ImageReadError, NoFaceError, IndexError: from ``FaceAnalyzer.get_face``.
        """
        images = reference_image if isinstance(reference_image, (list, tuple)) else [reference_image]
        analyzer = self._analyzer()
        return [analyzer.get_face(img, face_index) for img in images]

    # ------------------------------------------------------------------ checks
    def check_inputs(self, prompt, negative_prompt, reference_image, id_embeds, face_images, clip_embeds, reference_weights,
                     height, width, num_inference_steps, guidance_scale, ip_scale, num_images_per_prompt, generator, seed,
                     prompt_embeds=None, negative_prompt_embeds=None, shading_image=None, condition="shading",
                     callback_on_step_end_tensor_inputs=("latents",),
                     s_scale=1.0, controlnet_conditioning_scale=0.5, truncate_prompt=False):
        """Validate user input up front; every error names the argument and what was received.

        Raises:
            ValueError: (``FaceMakeUpInputError`` for values: non-finite or out-of-range numbers, see
                ``facemakeup.validation``; empty, non-UTF-8 or over-long prompts; 0-pixel face images).
        """
        if self.face_adapter is None:
            raise ValueError("no face adapter loaded: call load_face_adapter(...) first")
        if condition not in ("shading", "keypoints", "none"):
            raise ValueError(f"`condition` must be 'shading', 'keypoints' or 'none', got {condition!r}")
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise ValueError(f"`prompt_embeds` must be a (B, 77, D) tensor, got {getattr(prompt_embeds, 'shape', type(prompt_embeds))}")
            if negative_prompt is not None:
                raise ValueError("with `prompt_embeds`, pass `negative_prompt_embeds` rather than `negative_prompt`")
            if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
                raise ValueError(f"`negative_prompt_embeds` {tuple(negative_prompt_embeds.shape)} must match `prompt_embeds` {tuple(prompt_embeds.shape)}")
            prompt = [""] * len(prompt_embeds)
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None:
            neg = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(neg, (list, tuple)) or not all(isinstance(p, str) for p in neg):
                raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {negative_prompt!r}")
            if len(neg) != len(prompt):
                raise ValueError(f"`negative_prompt` has {len(neg)} entries but `prompt` has {len(prompt)}")
        if reference_image is None and id_embeds is None:
            raise ValueError("pass `reference_image` (photo(s) of the person) or precomputed `id_embeds`")
        if reference_image is not None and id_embeds is not None:
            raise ValueError("pass either `reference_image` or `id_embeds`, not both")
        if id_embeds is not None:
            if not isinstance(id_embeds, torch.Tensor) or id_embeds.ndim != 2 or id_embeds.shape[1] != self.face_adapter.config.id_embed_dim:
                raise ValueError(f"`id_embeds` must be a (N, {self.face_adapter.config.id_embed_dim}) tensor, got {getattr(id_embeds, 'shape', type(id_embeds))}")
            if self.face_adapter.config.projection == "plus":
                if (face_images is None) == (clip_embeds is None):
                    raise ValueError("with `id_embeds`, pass exactly one of `face_images` (CLIP crops) or `clip_embeds`")
                n_clip = len(face_images) if face_images is not None else len(clip_embeds)
                if n_clip != len(id_embeds):
                    raise ValueError(f"{len(id_embeds)} `id_embeds` but {n_clip} face images / clip embeds")
        n_refs = len(id_embeds) if id_embeds is not None else (len(reference_image) if isinstance(reference_image, (list, tuple)) else 1)
        if n_refs == 0:
            raise ValueError("`reference_image` is an empty list")
        if reference_weights is not None and self.face_adapter.config.multi_face == "concat":
            raise ValueError("`reference_weights` do not apply to this adapter: it gives every reference its own ID tokens "
                             "(IP-Adapter-FaceID-Portrait), nothing is mixed")
        if reference_weights is not None:
            w = list(reference_weights)
            if len(w) != n_refs or any((not isinstance(x, (int, float))) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"`reference_weights` must be {n_refs} non-negative numbers with a positive sum, got {reference_weights!r}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 8):
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {value!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0, got {guidance_scale!r}")
        if ip_scale is not None and not isinstance(ip_scale, dict) and (not isinstance(ip_scale, (int, float)) or ip_scale < 0):
            raise ValueError(f"`ip_scale` must be a number >= 0 or a per-block dict, got {ip_scale!r}")
        if generator is not None and seed is not None:
            raise ValueError("pass either `generator` or `seed`, not both")
        if self.controlnet is not None and condition != "none" and id_embeds is not None and shading_image is None:
            raise ValueError("this pipeline has a ShadingNet: with `id_embeds`, also pass `shading_image` (or condition='none')")
        if self.controlnet is None and condition != "shading" and condition != "none":
            raise ValueError(f"`condition={condition!r}` needs a ControlNet: load one (controlnet / --shadingnet)")
        if any(k != "latents" for k in callback_on_step_end_tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name 'latents', got {list(callback_on_step_end_tensor_inputs)}")
        self._check_values(prompt if prompt_embeds is None else None, negative_prompt, id_embeds, face_images, reference_weights, n_refs, height, width,
                           guidance_scale, ip_scale, s_scale, controlnet_conditioning_scale, seed, truncate_prompt)

    def _check_values(self, prompt, negative_prompt, id_embeds, face_images, reference_weights, n_refs, height, width,
                      guidance_scale, ip_scale, s_scale, controlnet_conditioning_scale, seed, truncate_prompt):
        """The value checks of ``check_inputs`` (``facemakeup.validation``: finite, in range, prompts that fit)."""
        from . import validation as v

        scales = [("guidance_scale", guidance_scale, v.MAX_GUIDANCE_SCALE), ("s_scale", s_scale, v.MAX_ID_SCALE),
                  ("controlnet_conditioning_scale", controlnet_conditioning_scale, v.MAX_ID_SCALE)]
        if ip_scale is not None and not isinstance(ip_scale, dict):  # a per-block dict is checked by set_face_adapter_scale
            scales.append(("ip_scale", ip_scale, v.MAX_ID_SCALE))
        for name, value, top in scales:
            v.check_number(value, f"`{name}`", low=0, high=top)
        if reference_weights is not None:
            v.check_weights(reference_weights, n_refs, "`reference_weights`")
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                v.check_side(value, f"`{name}`", multiple=8)
        if seed is not None:
            v.check_seed(seed, "`seed`")
        if id_embeds is not None and not torch.isfinite(id_embeds).all():
            raise FaceMakeUpInputError("`id_embeds` holds NaN or infinite values; pass finite ArcFace embeddings")
        for i, crop in enumerate(face_images or []):
            if not isinstance(crop, np.ndarray) or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape or crop.dtype != np.uint8:
                raise FaceMakeUpInputError(f"`face_images[{i}]` must be a non-empty (S, S, 3) uint8 RGB crop, got "
                                           f"{getattr(crop, 'shape', type(crop).__name__)} {getattr(crop, 'dtype', '')}")
        fix = "pass truncate_prompt=True to cut it (a warning says how many tokens are dropped)"
        for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if texts is None:
                continue
            for text in [texts] if isinstance(texts, str) else texts:
                v.check_text(text, f"`{name}`", allow_empty=name == "negative_prompt")
                v.check_prompt_length(self.tokenizer, text, f"`{name}`", truncate=truncate_prompt, fix=fix)

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
        shading_crop_factor: float = 5.0,
        condition: str = "shading",
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
            face_index (`int`, defaults to 0): which face of each reference photo (0 = largest).
            generator (`torch.Generator`, *optional*) / seed (`int`, *optional*): randomness.
            latents (`torch.Tensor`, *optional*): initial noise ``(B*K, 4, height/8, width/8)``.
            prompt_embeds (`torch.Tensor`, *optional*): precomputed ``(B, 77, D)`` text embeddings
                instead of ``prompt`` (pass ``prompt=None``).
            negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed ``(B, 77, D)`` negative
                embeddings (default: those of the empty prompt).
            id_embeds (`torch.Tensor`, *optional*): precomputed ``(N, 512)`` ArcFace embeddings
                instead of ``reference_image``; needs ``face_images`` or ``clip_embeds``.
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
            shading_crop_factor (`float`, defaults to 5.0): crop of the default shading / keypoint map.
            condition (`str`, defaults to "shading"): what the ControlNet reads: ``"shading"``
                (Face-MakeUpV2's ShadingNet), ``"keypoints"`` (Face-MakeUp V1: InstantID-style
                ``draw_kps``) or ``"none"`` (the ControlNet is not run).
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
        # 0. Check inputs; encode the prompts
        self.check_inputs(prompt, negative_prompt, reference_image, id_embeds, face_images, clip_embeds, reference_weights,
                          height, width, num_inference_steps, guidance_scale, ip_scale, num_images_per_prompt, generator, seed,
                          prompt_embeds, negative_prompt_embeds, shading_image, condition, callback_on_step_end_tensor_inputs,
                          s_scale, controlnet_conditioning_scale, truncate_prompt)
        device = self._execution_device
        negatives = None if negative_prompt is None else ([negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt))
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negatives, device)  # (B, 77, D) each
        elif negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_prompt([""], None, device)[0].expand_as(prompt_embeds)
        prompt_embeds = prompt_embeds.to(device)
        negative_prompt_embeds = negative_prompt_embeds.to(device)
        batch = len(prompt_embeds) * num_images_per_prompt
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        do_cfg = guidance_scale > 1.0

        # 1. References -> ArcFace embeddings and CLIP face crops
        faces = None
        if reference_image is not None:
            faces = self.prepare_references(reference_image, face_index)
            id_embeds = torch.from_numpy(np.stack([f.embedding for f in faces]))
            face_images = [f.clip_image for f in faces]
        id_embeds = id_embeds.to(device=device, dtype=self.face_adapter.dtype)  # (N, 512)

        # 2. CLIP features of the crops (and of the zero image for the unconditional branch);
        #    the "mlp" projection (IP-Adapter-FaceID, -Portrait) reads ArcFace only
        plus = self.face_adapter.config.projection == "plus"
        if plus:
            if clip_embeds is None:
                clip_embeds = self.encode_face_images(face_images, device)  # (N, L, C)
            clip_embeds = clip_embeds.to(device=device, dtype=self.face_adapter.dtype)
            if uncond_clip_embeds is None:
                uncond_clip_embeds = self.uncond_clip_embeds(device)  # (1, L, C)
            uncond_clip_embeds = uncond_clip_embeds.to(device=device, dtype=self.face_adapter.dtype)

        # 3. ID tokens, once for all steps. Several references are mixed before the projection, as
        #    Face-MakeUp's `mix` (CLIP features) and IP-Adapter-FaceID's averaging (ID embeddings)
        #    do; a "concat" adapter (Portrait) gives each its own tokens instead.
        n_refs = len(id_embeds)
        weights = torch.tensor(reference_weights if reference_weights is not None else [1.0] * n_refs, dtype=torch.float64)
        weights = (weights / weights.sum()).to(device=device, dtype=self.face_adapter.dtype)  # (N,)
        if self.face_adapter.config.multi_face == "concat":
            tokens = self.face_adapter.project(id_embeds, None, s_scale)  # (N, T, D)
            id_tokens = tokens.reshape(1, -1, tokens.shape[-1])  # (1, N*T, D)
            uncond_tokens = self.face_adapter.project(torch.zeros_like(id_embeds), None, s_scale).reshape(1, -1, tokens.shape[-1])
        else:
            mixed_id = (weights[:, None] * id_embeds).sum(0, keepdim=True)  # (1, 512)
            mixed_clip = (weights[:, None, None] * clip_embeds).sum(0, keepdim=True) if plus else None  # (1, L, C)
            id_tokens = self.face_adapter.project(mixed_id, mixed_clip, s_scale)  # (1, T, D)
            uncond_tokens = self.face_adapter.project(torch.zeros_like(mixed_id), uncond_clip_embeds, s_scale)  # (1, T, D)
        if ip_scale is not None:
            self.set_face_adapter_scale(ip_scale)

        # 3b. The ControlNet's map: Face-MakeUpV2's shading map or V1's keypoint map, given or made
        #     from the first reference
        shading = None
        if self.controlnet is not None and condition != "none":
            if shading_image is None:
                from .faces.conditions import condition_map

                shading_image = condition_map(faces[0], condition, shading_crop_factor, height, width)
            shading = self._shading_tensor(shading_image, height, width, device)  # (1, 3, H, W) in [0, 1]

        # 4. Text embeddings, one row per image
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)  # (B*K, 77, D)
        negative_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        cond_tokens = id_tokens.expand(batch, -1, -1)[:, None]  # (B*K, 1, T, D): one ID "image" each
        if do_cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])  # (2*B*K, 77, D)
            cond_tokens = torch.cat([uncond_tokens.expand(batch, -1, -1)[:, None], cond_tokens])  # (2*B*K, 1, T, D)

        # 5. Timesteps and initial latents
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        extra = {"generator": generator} if "generator" in self.scheduler.step.__code__.co_varnames else {}

        # 6. Denoising loop. The ControlNet's map does not change over the steps: its conditioning
        #    embedding is computed once here, not once per step (a step-independent input)
        cond_embedding = None
        if shading is not None:
            rows = 2 * batch if do_cfg else batch
            controlnet_cond = shading.expand(rows, -1, -1, -1)  # (rows, 3, H, W)
            cond_embedding = _Fixed(self.controlnet.controlnet_cond_embedding(controlnet_cond))  # (rows, C, h, w)
            own_embedding, self.controlnet.controlnet_cond_embedding = self.controlnet.controlnet_cond_embedding, cond_embedding
        try:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                residuals = {}
                if shading is not None:  # the ControlNet: reads its map, attends to the ID tokens only
                    down, mid = self.controlnet(
                        model_in, t, encoder_hidden_states=cond_tokens[:, 0], controlnet_cond=controlnet_cond,
                        conditioning_scale=controlnet_conditioning_scale, return_dict=False,
                    )
                    residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                noise = self.unet(model_in, t, encoder_hidden_states=(prompt_embeds, [cond_tokens]), **residuals).sample  # epsilon
                if do_cfg:
                    noise_uncond, noise_text = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                latents = self.scheduler.step(noise, t, latents, **extra).prev_sample
                if callback_on_step_end is not None:  # diffusers' step callback; a returned "latents" replaces them
                    outputs = callback_on_step_end(self, i, t, {k: latents for k in callback_on_step_end_tensor_inputs})
                    latents = (outputs or {}).get("latents", latents)
        finally:
            if cond_embedding is not None:
                self.controlnet.controlnet_cond_embedding = own_embedding

        # 7. Decode
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # (B*K, 3, H, W) in [-1, 1]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()

        out = FaceMakeUpPipelineOutput(
            images=images,
            faces=faces,
            id_embeds=id_embeds.float().cpu(),
            face_images=face_images,
            reference_weights=weights.float().cpu().tolist(),  # equal for a "concat" adapter
            id_tokens=id_tokens.float().cpu(),
            shading_image=None if shading is None else np.round(shading[0].permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8),
        )
        return out if return_dict else (images, out)

    def _shading_tensor(self, image, height: int, width: int, device) -> torch.Tensor:
        """``(1, 3, H, W)`` float in [0, 1] from a shading map given as image or tensor."""
        if isinstance(image, torch.Tensor):
            t = image if image.ndim == 4 else image[None]
        else:
            from .faces.image import load_image

            t = torch.from_numpy(load_image(image)).permute(2, 0, 1)[None].float() / 255.0
        if tuple(t.shape[1:]) != (3, height, width):
            raise ValueError(f"`shading_image` must be 3 x {height} x {width} (the output size), got {tuple(t.shape[1:])}")
        return t.to(device=device, dtype=self.controlnet.dtype)


class _Fixed(torch.nn.Module):
    """Stands in for a ControlNet's ``controlnet_cond_embedding`` during one generation: returns the
    embedding computed once from the (step-independent) map."""

    def __init__(self, embedding: torch.Tensor):
        super().__init__()
        self.embedding = embedding

    def forward(self, _cond: torch.Tensor) -> torch.Tensor:
        return self.embedding


def _load_weights(unet, adapter, shadingnet, vae_scale_factor: int, local_files_only, shortcut):
    """``(FaceIDAdapter or None, ControlNetModel or None)`` from the ``adapter``/``shadingnet``
    arguments of ``from_backbone``; a path given for both is read once."""
    face_adapter = controlnet = None
    ckpt = None
    if adapter is not None:
        ckpt = load_checkpoint(adapter, unet, shortcut=shortcut, vae_scale_factor=vae_scale_factor, local_files_only=local_files_only)
        if ckpt.adapter is None:
            from .errors import CheckpointLayoutError

            raise CheckpointLayoutError(f"{adapter} ({ckpt.layout}) holds no ID adapter: pass it as the ShadingNet")
        face_adapter = ckpt.adapter
    if shadingnet == "init":
        controlnet = shadingnet_from_unet(unet, vae_scale_factor)
    elif shadingnet is not None:
        if ckpt is None or str(shadingnet) != str(adapter):
            ckpt = load_checkpoint(shadingnet, unet, vae_scale_factor=vae_scale_factor, local_files_only=local_files_only)
        if ckpt.controlnet is None:
            from .errors import CheckpointLayoutError

            raise CheckpointLayoutError(f"{shadingnet} ({ckpt.layout}) holds no ControlNet")
        controlnet = _like(ckpt.controlnet, unet)
    elif ckpt is not None and ckpt.controlnet is not None:
        logger.warning("%s also holds a ControlNet (%s); pass it as the ShadingNet too to use it", adapter, ckpt.layout)
    return face_adapter, controlnet


def _nonneg(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"an ID-adapter scale must be a number >= 0, got {value!r}")
    return float(value)


def block_scales(unet, scale: dict) -> dict[str, float]:
    """Expand an InstantStyle-style per-block scale dict into one scale per cross-attention layer.

    The dict follows diffusers' ``set_ip_adapter_scale``: keys ``"down"``, ``"mid"``, ``"up"``;
    ``"down"``/``"up"`` map to a float (all their blocks) or ``{"block_i": float | [float per
    attention of block i]}``; ``"mid"`` to a float. Layers not named get 0.

    Args:
        unet: the ``UNet2DConditionModel``.
        scale: the dict.

    Returns:
        ``{attention layer name (without .processor): float}`` for every cross-attention layer.

    Raises:
        ValueError: unknown part or block, wrong list length or negative value; the message lists
            the valid blocks with their attention counts.
    """
    layers = {}  # name -> (part, block index, attention index)
    for name, _, cross in _cross_layers(unet):
        parts = name.split(".")
        if parts[0] == "mid_block":
            layers[name] = ("mid", None, None)
        else:
            layers[name] = (parts[0].split("_")[0], int(parts[1]), int(parts[3]))
    counts = {}
    for part, block, attn in layers.values():
        if block is not None:
            counts[(part, block)] = max(counts.get((part, block), 0), attn + 1)
    valid = ", ".join(f"{p}.block_{b} ({n})" for (p, b), n in sorted(counts.items())) + ", mid"
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"ID-adapter scale keys must be 'down', 'mid', 'up'; got {unknown}. Blocks (attentions): {valid}")
    per_block = {}
    for part in ("down", "up"):
        value = scale.get(part, 0.0)
        blocks = value if isinstance(value, dict) else {f"block_{b}": value for (p, b) in counts if p == part}
        for key, val in blocks.items():
            m = re.fullmatch(r"block_(\d+)", key)
            if m is None or (part, int(m.group(1))) not in counts:
                raise ValueError(f"the UNet has no {part}.{key} with attention layers; blocks (attentions): {valid}")
            n = counts[(part, int(m.group(1)))]
            vals = list(val) if isinstance(val, (list, tuple)) else [val] * n
            if len(vals) == 1:
                vals = vals * n
            if len(vals) != n:
                raise ValueError(f"{part}.{key} has {n} attention layers, got {len(vals)} scales")
            per_block[(part, int(m.group(1)))] = [_nonneg(v) for v in vals]
    mid = scale.get("mid", 0.0)
    mid = _nonneg(mid[0] if isinstance(mid, (list, tuple)) and len(mid) == 1 else mid)
    return {name: mid if part == "mid" else per_block.get((part, block), [0.0] * (attn + 1))[attn]
            for name, (part, block, attn) in layers.items()}


def _cross_layers(unet):
    from .model.id_adapter import attention_layers

    return [layer for layer in attention_layers(unet) if layer[2] is not None]


def load_pipeline(model: str, image_encoder: str | None = DEFAULT_IMAGE_ENCODER, adapter: str | None = None,
                  shadingnet: str | None = None, local_files_only: bool | None = None, shortcut: bool | None = None) -> FaceMakeUpPipeline:
    """The pipeline behind ``--model``: ``"tiny"`` (random, tiny, with a ShadingNet: noise images; ``adapter`` and
    ``shadingnet`` load weights trained on that backbone, e.g. a tiny training run's ``final/``), a folder saved by
    ``FaceMakeUpPipeline.save_pretrained``, or an SD 1.5 backbone (hub id or diffusers folder).

    Raises:
        ModelNotFoundError: with what to download and how to point to it.
    """
    if model == "tiny":
        from .model.tiny import tiny_components

        parts = tiny_components()
        unet, scale = parts["unet"], 2 ** (len(parts["vae"].config.block_out_channels) - 1)
        # a tiny-backbone adapter/ShadingNet (e.g. `facemakeup train --preset tiny`'s final/) loads; others are refused
        face_adapter, controlnet = _load_weights(unet, adapter, shadingnet, scale, local_files_only, shortcut)
        if face_adapter is None:
            face_adapter = FaceIDAdapter.for_unet(unet, parts["image_encoder"].config.hidden_size, lora_rank=4)
        if controlnet is None:
            controlnet = shadingnet_from_unet(unet, vae_scale_factor=scale)
        return FaceMakeUpPipeline(face_adapter=face_adapter, controlnet=controlnet, **parts)
    index = Path(model) / "model_index.json"
    if index.is_file() and "FaceMakeUpPipeline" in index.read_text():
        return FaceMakeUpPipeline.from_pretrained(model)
    return FaceMakeUpPipeline.from_backbone(model, image_encoder=image_encoder, adapter=adapter, shadingnet=shadingnet,
                                            local_files_only=local_files_only, shortcut=shortcut)


def _missing_message(what: str, where: Any, err: Exception) -> str:
    """What to tell a user whose ``what`` could not be loaded from ``where``."""
    where = str(where)
    is_backbone = "backbone" in what
    if Path(where).exists():
        problem = f"the folder {where} exists but does not hold it in diffusers/transformers layout"
        repo = DEFAULT_BACKBONE if is_backbone else DEFAULT_IMAGE_ENCODER
    else:
        problem = f"'{where}' is not a local folder and could not be downloaded ({type(err).__name__})"
        repo = where
    flag = "--model DIR" if is_backbone else "--image-encoder DIR"
    return (
        f"could not load the {what}: {problem}. On a machine with internet access run "
        f"`hf download {repo} --local-dir DIR`, copy DIR here and pass it with {flag}. "
        "Use `--model tiny` to run the whole path with a tiny random model (noise images)."
    )
