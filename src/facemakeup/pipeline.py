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
ShadingNet attends to the ID tokens only.

Example:
    >>> pipe = FaceMakeUpPipeline.from_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                                         adapter="ip-adapter-faceid-plusv2_sd15.bin")
    >>> out = pipe("a smiling woman with blonde hair", reference_image="me.jpg", seed=42)
    >>> out.images[0].save("out.png")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .errors import FitError, ModelNotFoundError
from .faces.image import ImageInput
from .model.checkpoint import read_checkpoint
from .model.id_adapter import FaceIDAdapter
from .model.id_adapter import _attention_layers as unet_attention_layers
from .model.shadingnet import load_shadingnet, shadingnet_from_unet

logger = logging.getLogger(__name__)

#: SD 1.5 backbone (the paper's demo uses Realistic_Vision_V4.0_noVAE + sd-vae-ft-mse, same layout).
DEFAULT_BACKBONE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: CLIP ViT-H-14 laion2B-s32B-b79K, the image encoder of IP-Adapter-FaceID-PlusV2 and Face-MakeUp.
DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


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
        shading_image: ``(H, W, 3)`` uint8 shading map the ShadingNet saw, or ``None``.
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
        face_adapter: ``FaceIDAdapter`` (ID projection, decoupled cross-attention, LoRA).
        image_encoder: ``CLIPVisionModelWithProjection`` for the face crop (ViT-H-14). Optional if
            ``clip_embeds`` are always passed.
        feature_extractor: ``CLIPImageProcessor`` of the image encoder.
        controlnet: ``ControlNetModel``, the ShadingNet (optional; Face-MakeUpV2).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->face_adapter->controlnet->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor", "controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        face_adapter: FaceIDAdapter,
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
        face_adapter.attach(unet)
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
    ) -> "FaceMakeUpPipeline":
        """Assemble the pipeline from an SD 1.5 backbone, a CLIP image encoder and ID-adapter weights.

        Args:
            backbone: hub id or local folder in diffusers layout (``vae/``, ``unet/``,
                ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
            image_encoder: hub id or local folder of a transformers CLIP model (full CLIP or vision
                tower; its ``CLIPImageProcessor`` is loaded from the same place); ``None`` leaves it out.
            adapter: IP-Adapter-FaceID-PlusV2 / Face-MakeUp V1 checkpoint (``.bin``/``.pt``/
                ``.safetensors``) or a folder saved by ``FaceIDAdapter.save_pretrained``; ``None``
                makes a fresh, untrained adapter (identity is then not transferred: train it or load weights).
            shadingnet: ShadingNet weights (see ``model.shadingnet.load_shadingnet``; Face-MakeUpV2's
                ``model.bin`` holds both the adapter and the ShadingNet), ``"init"`` for a fresh copy
                of the UNet (no effect until trained), or ``None`` for none.
            lora_rank: LoRA rank of a fresh adapter.
            torch_dtype: dtype of all components (float32 on CPU).
            local_files_only: never touch the network (default: ``HF_HUB_OFFLINE``).

        Raises:
            ModelNotFoundError: a component is neither on disk nor downloadable; the message says
                what to download and how to point to it.
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
        face_adapter = load_face_adapter(adapter, unet) if adapter is not None else FaceIDAdapter.for_unet(unet, clip_dim, lora_rank)
        if adapter is None:
            logger.warning("no ID-adapter weights given: the ID channel is freshly initialised and untrained")
        controlnet = None
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if shadingnet == "init":
            controlnet = shadingnet_from_unet(unet, scale)
        elif shadingnet is not None:
            controlnet = load_shadingnet(shadingnet, unet, scale)
        return cls(vae, text_encoder, tokenizer, unet, scheduler, face_adapter, encoder, processor, controlnet)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``DiffusionPipeline.save_pretrained`` with the UNet saved plain (the ID channel is saved
        once, in ``face_adapter/``), so every component reloads with its own class."""
        fused = self.face_adapter.lora_fused
        self.face_adapter.detach()
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.face_adapter.attach(self.unet)
            if fused:
                self.face_adapter.fuse_lora()

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
                     prompt_embeds=None, negative_prompt_embeds=None, shading_image=None):
        """Validate user input up front; every error names the argument and what was received."""
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
            if (face_images is None) == (clip_embeds is None):
                raise ValueError("with `id_embeds`, pass exactly one of `face_images` (CLIP crops) or `clip_embeds`")
            n_clip = len(face_images) if face_images is not None else len(clip_embeds)
            if n_clip != len(id_embeds):
                raise ValueError(f"{len(id_embeds)} `id_embeds` but {n_clip} face images / clip embeds")
        n_refs = len(id_embeds) if id_embeds is not None else (len(reference_image) if isinstance(reference_image, (list, tuple)) else 1)
        if n_refs == 0:
            raise ValueError("`reference_image` is an empty list")
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
        if not isinstance(ip_scale, (int, float)) or ip_scale < 0:
            raise ValueError(f"`ip_scale` must be a number >= 0, got {ip_scale!r}")
        if generator is not None and seed is not None:
            raise ValueError("pass either `generator` or `seed`, not both")
        if self.controlnet is not None and id_embeds is not None and shading_image is None:
            raise ValueError("this pipeline has a ShadingNet: with `id_embeds`, also pass `shading_image`")

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
        ip_scale: float = 0.6,
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
        output_type: str = "pil",
        return_dict: bool = True,
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
            ip_scale (`float`, defaults to 0.6): weight of the ID attention (0 = text only).
            s_scale (`float`, defaults to 1.0): weight of the Perceiver output in the ID tokens.
            reference_weights (`list[float]`, *optional*): one weight >= 0 per reference (default
                equal). The references' ArcFace embeddings and CLIP features are averaged with these
                weights (normalised to sum 1) before the projection, as Face-MakeUp's ``mix``.
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
            shading_image (image or `torch.Tensor`, *optional*): the ShadingNet's input, a shading map
                of ``height`` x ``width`` (PIL, path, ``(H, W, 3)`` uint8, or ``(1, 3, H, W)`` float
                in [0, 1]). Default, when the pipeline has a ShadingNet: the first reference's face
                rendered under its own lighting (``faces.render.shading_map``).
            controlnet_conditioning_scale (`float`, defaults to 0.5): weight of the ShadingNet's
                residuals (V2 web demo 0.5; 0 = no effect).
            shading_crop_factor (`float`, defaults to 5.0): crop of the default shading map.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt" or "latent".
            return_dict (`bool`, defaults to True): return a ``FaceMakeUpPipelineOutput``, else a tuple.

        Returns:
            ``FaceMakeUpPipelineOutput`` (or ``(images, output)`` if ``return_dict=False``).

        Raises:
            ValueError: invalid arguments (named in the message).
            ImageReadError, NoFaceError, IndexError: a reference photo cannot be used.
            FitError: a shading map is needed but the reference's 3D fit failed.
        """
        # 0. Check inputs; encode the prompts
        self.check_inputs(prompt, negative_prompt, reference_image, id_embeds, face_images, clip_embeds, reference_weights,
                          height, width, num_inference_steps, guidance_scale, ip_scale, num_images_per_prompt, generator, seed,
                          prompt_embeds, negative_prompt_embeds, shading_image)
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

        # 2. CLIP features of the crops (and of the zero image for the unconditional branch)
        if clip_embeds is None:
            clip_embeds = self.encode_face_images(face_images, device)  # (N, L, C)
        clip_embeds = clip_embeds.to(device=device, dtype=self.face_adapter.dtype)
        if uncond_clip_embeds is None:
            uncond_clip_embeds = self.uncond_clip_embeds(device)  # (1, L, C)
        uncond_clip_embeds = uncond_clip_embeds.to(device=device, dtype=self.face_adapter.dtype)

        # 3. ID tokens. Several references are mixed before the projection, as Face-MakeUp's `mix`
        #    (CLIP features) and IP-Adapter-FaceID's averaging (ID embeddings) do.
        weights = torch.tensor(reference_weights if reference_weights is not None else [1.0] * len(id_embeds), dtype=torch.float64)
        weights = (weights / weights.sum()).to(device=device, dtype=self.face_adapter.dtype)  # (N,)
        mixed_id = (weights[:, None] * id_embeds).sum(0, keepdim=True)  # (1, 512)
        mixed_clip = (weights[:, None, None] * clip_embeds).sum(0, keepdim=True)  # (1, L, C)
        id_tokens = self.face_adapter.project(mixed_id, mixed_clip, s_scale)  # (1, T, D)
        uncond_tokens = self.face_adapter.project(torch.zeros_like(mixed_id), uncond_clip_embeds, s_scale)  # (1, T, D)
        self.face_adapter.set_ip_scale(ip_scale)

        # 3b. The ShadingNet's shading map (Face-MakeUpV2): given, or the first reference's own
        shading = None
        if self.controlnet is not None:
            if shading_image is None:
                if faces[0].fit is None:
                    raise FitError(f"no shading map: the reference's 3D fit failed ({faces[0].fit_error})")
                from .faces.render import shading_map

                shading_image = shading_map(faces[0].fit, faces[0].kps, crop_factor=shading_crop_factor, height=height, width=width)
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

        # 6. Denoising loop
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            residuals = {}
            if shading is not None:  # ShadingNet: reads the shading map, attends to the ID tokens only
                down, mid = self.controlnet(
                    model_in, t, encoder_hidden_states=cond_tokens[:, 0], controlnet_cond=shading.expand(len(model_in), -1, -1, -1),
                    conditioning_scale=controlnet_conditioning_scale, return_dict=False,
                )
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            noise = self.unet(model_in, t, encoder_hidden_states=(prompt_embeds, [cond_tokens]), **residuals).sample  # epsilon
            if do_cfg:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, t, latents, **extra).prev_sample

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
            reference_weights=weights.float().cpu().tolist(),
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


def load_face_adapter(adapter: str | os.PathLike, unet) -> FaceIDAdapter:
    """Load ID-adapter weights: our ``save_pretrained`` folder (or a training run's folder holding it
    as ``face_adapter/``), or an IP-Adapter-FaceID-PlusV2 / Face-MakeUp V1/V2 checkpoint file
    (``.bin``/``.pt`` pickle with ``image_proj``/``ip_adapter``, or ``.safetensors`` with those
    prefixes). Sizes (CLIP width, LoRA rank, tokens) come from the file.

    Raises:
        ModelNotFoundError: nothing at ``adapter``.
        ValueError: the weights do not fit the UNet (keys or attention layers listed).
    """
    path = Path(adapter)
    if (path / "face_adapter").is_dir():
        path = path / "face_adapter"
    if path.is_dir():
        loaded = FaceIDAdapter.from_pretrained(path)
        ours = [list(layer) for layer in unet_attention_layers(unet)]
        theirs = [list(layer) for layer in loaded.config.attn_layers]
        if ours != theirs:
            diff = [f"{a} vs {b}" for a, b in zip(theirs, ours) if a != b][:3]
            raise ValueError(f"the adapter in {path} was trained for another UNet: {len(theirs)} attention layers "
                             f"[name, width, context] vs this UNet's {len(ours)}; first differences (adapter vs UNet): {diff}")
        return loaded
    state = read_checkpoint(path, "download ip-adapter-faceid-plusv2_sd15.bin (h94/IP-Adapter-FaceID) or the Face-MakeUp "
                                  "checkpoint (OpenFace-CQUPT/Face-MakeUp_SD1.5) and pass its path with --adapter")
    return FaceIDAdapter.from_ip_adapter_state_dict(state, unet)


def load_pipeline(model: str, image_encoder: str | None = DEFAULT_IMAGE_ENCODER, adapter: str | None = None,
                  shadingnet: str | None = None, local_files_only: bool | None = None) -> FaceMakeUpPipeline:
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
        face_adapter = (load_face_adapter(adapter, unet) if adapter is not None
                        else FaceIDAdapter.for_unet(unet, parts["image_encoder"].config.hidden_size, lora_rank=4))
        controlnet = (load_shadingnet(shadingnet, unet, scale) if shadingnet not in (None, "init")
                      else shadingnet_from_unet(unet, vae_scale_factor=scale))
        return FaceMakeUpPipeline(face_adapter=face_adapter, controlnet=controlnet, **parts)
    index = Path(model) / "model_index.json"
    if index.is_file() and "FaceMakeUpPipeline" in index.read_text():
        return FaceMakeUpPipeline.from_pretrained(model)
    return FaceMakeUpPipeline.from_backbone(model, image_encoder=image_encoder, adapter=adapter, shadingnet=shadingnet,
                                            local_files_only=local_files_only)


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
