"""The face conditioning of Face-MakeUp, shared by the SD 1.5 and SDXL pipelines (one implementation).

``FaceConditioningMixin`` is to our pipelines what diffusers' ``IPAdapterMixin`` is to theirs
(STYLE.md 19): ``FaceMakeUpPipeline`` (SD 1.5) and ``FaceMakeUpXLPipeline`` (SDXL) are thin
diffusers pipelines that own their text encoding and micro-conditioning; everything about the face
lives here, once:

* the adapter trio ``load_face_adapter`` / ``set_face_adapter_scale`` / ``unload_face_adapter``
  (diffusers' ``load_ip_adapter`` API; ``model.loaders`` reads every layout) and a
  ``save_pretrained`` that saves the UNet plain;
* references -> ``Face`` records (``faces.FaceAnalyzer``), ArcFace embeddings and CLIP
  ``hidden_states[-2]`` of the face crops (IP-Adapter-FaceID-Plus), only for adapters that read CLIP;
* the ID tokens: several references of one person mixed by ``reference_weights`` before the
  projection (Face-MakeUp's ``mix``), or each its own tokens (Portrait's ``concat``); the
  unconditional tokens of classifier-free guidance (zero ID embedding, CLIP features of the zero
  image);
* the ControlNet's map (Face-MakeUpV2's shading map or V1's / InstantID's keypoint map) and the
  ControlNet call, whose cross-attention context is the ID tokens only (Face-MakeUp V1/V2, InstantID's
  IdentityNet), its conditioning embedding computed once per generation;
* the denoising loop both pipelines run (``denoise``): ControlNet residuals, the UNet with the ID
  tokens as diffusers' ``encoder_hidden_states=(text, [ip_tokens])``, classifier-free guidance,
  the scheduler step, diffusers' step callback;
* several people in one image (``face_masks``, ``layout_image``, ``reference_people``): P people are
  the P "images" of the one IP-Adapter, tokens ``(rows, P, T, D)``, and person p's tokens act only
  inside mask p through diffusers' masked IP-Adapter path (``IPAdapterAttnProcessor2_0`` with
  ``cross_attention_kwargs={"ip_adapter_masks": [mask (1, P, H, W)]}``, masks binarised by
  ``IPAdapterMaskProcessor``), so the result is diffusers' for the same weights, embeddings and masks.
  Each person's photos mix by ``reference_weights`` as one person's do. The places come from
  ``faces.layout`` (a layout photo's faces left to right, or P columns side by side, or the masks
  given), and so does the ControlNet's map with every face in it. The ControlNet has no masked
  attention: its context is all people's tokens concatenated, ``(rows, P*T, D)``, one softmax over
  them (as Portrait-style ``concat`` adapters feed several faces' tokens); where each face is comes
  from its map, which already places every face, so its residuals stay local to the faces it draws.

A pipeline using the mixin registers ``unet``, ``face_adapter``, ``image_encoder``,
``feature_extractor`` and ``controlnet`` and sets ``vae_scale_factor``.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from .errors import CheckpointLayoutError, FaceMakeUpInputError, ModelNotFoundError, NoFaceError
from .model.id_adapter import FaceIDAdapter, _like, attention_layers
from .model.loaders import load_checkpoint
from .model.shadingnet import shadingnet_from_unet

logger = logging.getLogger(__name__)

#: CLIP ViT-H-14 laion2B-s32B-b79K, the image encoder of IP-Adapter-FaceID-PlusV2 and Face-MakeUp.
DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: Weight of the ID attention until ``set_face_adapter_scale`` says otherwise (Face-MakeUp V1 demo).
DEFAULT_IP_SCALE = 0.6
#: What a ControlNet can read: V2's shading map, V1's / InstantID's keypoint map, or nothing.
CONDITIONS = ("shading", "keypoints", "none")


@dataclass
class FaceMakeUpPipelineOutput(BaseOutput):
    """What ``FaceMakeUpPipeline.__call__`` and ``FaceMakeUpXLPipeline.__call__`` return.

    Attributes:
        images: ``len(prompt) * num_images_per_prompt`` images: PIL images, or a ``(B, H, W, 3)``
            float array in [0, 1] (``output_type="np"``), or latents (``"latent"``).
        faces: the reference ``Face`` records used (``None`` when ``id_embeds`` were passed).
        id_embeds: ``(N, 512)`` float32 ArcFace embeddings of the N references.
        face_images: the N CLIP face crops, ``(S, S, 3)`` uint8 RGB (``None`` if ``clip_embeds`` were passed).
        reference_weights: the N mixing weights, normalised to sum to 1.
        id_tokens: ``(P, num_tokens, D)`` the ID tokens (of each person's mixed references) the UNet
            attended to; P = 1 for one person.
        shading_image: ``(H, W, 3)`` uint8 map the ControlNet saw (shading or keypoint map), or ``None``.
        reference_people: the person (0 .. P-1) of each reference.
        face_masks: ``(P, H, W)`` float32 in {0, 1}, where each person's ID tokens acted (binarised by
            ``IPAdapterMaskProcessor``), or ``None`` (one person, everywhere).
        layout: the ``faces.layout.Layout`` the masks and the default map came from (boxes, faces), or ``None``.
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]
    faces: list | None
    id_embeds: torch.Tensor
    face_images: list[np.ndarray] | None
    reference_weights: list[float]
    id_tokens: torch.Tensor
    shading_image: np.ndarray | None = None
    reference_people: list[int] | None = None
    face_masks: torch.Tensor | None = None
    layout: Any = None


@dataclass
class FaceConditioning:
    """One generation's face conditioning, made once by ``prepare_face_conditioning``.

    Attributes:
        faces: the reference ``Face`` records, or ``None`` (precomputed embeddings).
        id_embeds: ``(N, 512)`` ArcFace embeddings of the N references, on the device.
        face_images: the N CLIP crops ``(S, S, 3)`` uint8, or ``None``.
        weights: ``(N,)`` mixing weights, summing to 1 over each person's references.
        id_tokens: ``(P, T, D)`` ID tokens of the conditional branch, one row per person (T = num_tokens,
            or n x num_tokens for a ``concat`` adapter given n references per person).
        uncond_tokens: ``(P, T, D)`` ID tokens of the unconditional branch.
        shading: ``(1, 3, H, W)`` float map in [0, 1] for the ControlNet, or ``None`` (no ControlNet
            call: no ControlNet, or ``condition="none"``).
        people: ``(N,)`` the person of each reference.
        masks: ``(1, P, H, W)`` float {0, 1} IP-Adapter masks (diffusers' ``ip_adapter_masks`` entry),
            or ``None``: one person, no mask (the plain IP-Adapter path).
        layout: the ``faces.layout.Layout`` of the people, or ``None``.
    """

    faces: list | None
    id_embeds: torch.Tensor
    face_images: list[np.ndarray] | None
    weights: torch.Tensor
    id_tokens: torch.Tensor
    uncond_tokens: torch.Tensor
    shading: torch.Tensor | None
    people: list[int] | None = None
    masks: torch.Tensor | None = None
    layout: Any = None

    def tokens(self, batch: int, do_cfg: bool) -> torch.Tensor:
        """The ID tokens as the UNet's IP-Adapter processors read them: ``(rows, P, T, D)``, one ID
        "image" per person; rows = ``2 * batch`` with classifier-free guidance (unconditional first)."""
        cond = self.id_tokens[None].expand(batch, -1, -1, -1)  # (B, P, T, D)
        if not do_cfg:
            return cond
        return torch.cat([self.uncond_tokens[None].expand(batch, -1, -1, -1), cond])  # (2B, P, T, D)

    @property
    def cross_attention_kwargs(self) -> dict | None:
        """The UNet's ``cross_attention_kwargs``: diffusers' ``{"ip_adapter_masks": [(1, P, H, W)]}`` with
        masks (one entry: one IP-Adapter), else ``None``."""
        return None if self.masks is None else {"ip_adapter_masks": [self.masks]}

    def output(self, images, shading_image: np.ndarray | None) -> FaceMakeUpPipelineOutput:
        """The pipeline output for ``images`` made with this conditioning."""
        return FaceMakeUpPipelineOutput(
            images=images,
            faces=self.faces,
            id_embeds=self.id_embeds.float().cpu(),
            face_images=self.face_images,
            reference_weights=self.weights.float().cpu().tolist(),  # equal for a "concat" adapter
            id_tokens=self.id_tokens.float().cpu(),
            shading_image=shading_image,
            reference_people=list(self.people) if self.people is not None else [0] * len(self.id_embeds),
            face_masks=None if self.masks is None else self.masks[0].float().cpu(),
            layout=self.layout,
        )


class FaceConditioningMixin:
    """Face conditioning for a diffusers pipeline: ID adapter I/O, references, ID tokens, ControlNet map,
    and the denoising loop with them (module docstring)."""

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, *args, **kwargs):
        """``DiffusionPipeline.save_pretrained`` with the UNet saved plain (the ID channel is saved
        once, in ``face_adapter/``), so every component reloads with its own class."""
        adapter = self.face_adapter
        if adapter is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        fused, scale = adapter.lora_fused, adapter.fused_lora_scale
        adapter.detach()
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            adapter.attach(self.unet)
            if fused:
                adapter.fuse_lora(lora_scale=scale)

    # ------------------------------------------------------------------ load / set scale / unload
    def load_face_adapter(self, path_or_hub_id: str | os.PathLike, subfolder: str | None = None, weight_name: str | None = None,
                          *, shortcut: bool | None = None, load_controlnet: bool = False,
                          local_files_only: bool | None = None, lora: str | os.PathLike | None = None) -> str:
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
            lora (path, *optional*): the adapter's LoRA in a file of its own, for an adapter file that holds
                the IP k/v alone (h94's ``ip-adapter-faceid_sdxl_lora.safetensors`` and the like;
                ``model.loaders.load_checkpoint``).

        Returns:
            The layout that was read (``model.loaders.LAYOUTS``).

        Raises:
            ModelNotFoundError, CheckpointError, CheckpointLayoutError: see ``model.loaders.load_checkpoint``;
            CheckpointLayoutError also when the checkpoint holds no ID adapter.
        """
        self.unload_face_adapter()  # the plain UNet: checkpoints are read against it
        ckpt = load_checkpoint(path_or_hub_id, self.unet, subfolder, weight_name, shortcut=shortcut,
                               vae_scale_factor=self.vae_scale_factor, local_files_only=local_files_only, lora=lora)
        if ckpt.adapter is None:
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

    @property
    def reads_clip(self) -> bool:
        """Whether the loaded adapter reads CLIP image features (IP-Adapter-FaceID-Plus/PlusV2,
        Face-MakeUp V1/V2); the others read the ArcFace embedding only."""
        return self.face_adapter is not None and self.face_adapter.config.projection == "plus"

    def face_id_embeds(self, faces: list) -> torch.Tensor:
        """``(N, 512)`` float32: the ArcFace vector of each ``Face`` that the loaded adapter reads: the
        unit-norm ``normed_embedding`` (IP-Adapter-FaceID, Face-MakeUp), or the raw ``embedding``
        (``embedding * embedding_norm``) for ``id_embedding="raw"`` adapters (InstantID's pipeline feeds
        insightface's ``face_info["embedding"]``)."""
        embeds = np.stack([f.embedding for f in faces])  # (N, 512), unit norm
        if self.face_adapter is not None and getattr(self.face_adapter.config, "id_embedding", "normed") == "raw":
            embeds = embeds * np.array([[f.embedding_norm] for f in faces], np.float32)
        return torch.from_numpy(np.ascontiguousarray(embeds, np.float32))

    # ------------------------------------------------------------------ references and image features
    def _analyzer(self):
        if getattr(self, "face_analyzer", None) is None:
            from .faces import FaceAnalyzer

            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.face_analyzer = FaceAnalyzer(clip_size=size, fitter="mediapipe" if self.controlnet is not None else None)
        return self.face_analyzer

    @torch.no_grad()
    def prepare_references(self, reference_image, face_index: int = 0) -> list:
        """Analyse the reference photo(s): one ``Face`` each (the main face, or the ``face_index``-th).

        Raises:
            ImageReadError, NoFaceError, IndexError: from ``FaceAnalyzer.get_face``.
        """
        images = reference_image if isinstance(reference_image, (list, tuple)) else [reference_image]
        analyzer = self._analyzer()
        return [analyzer.get_face(img, face_index) for img in images]

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
            raise ValueError("this pipeline has no image_encoder/feature_extractor: this adapter reads CLIP features of the face "
                             "crop; load a CLIP image encoder (--image-encoder) or pass `clip_embeds`")

    # ------------------------------------------------------------------ checks
    def check_face_inputs(self, reference_image, id_embeds, face_images, clip_embeds, reference_weights, ip_scale, s_scale,
                          controlnet_conditioning_scale, shading_image, condition, *, reference_people=None, face_masks=None,
                          layout_image=None, layout_assignment=None, layout_mask="box", height=None, width=None,
                          control_guidance_start=0.0, control_guidance_end=1.0) -> int:
        """Validate the face arguments of ``__call__`` up front (STYLE.md 3); every error names the
        argument and what was received. The people arguments: ``check_people_inputs``.

        Returns:
            N, the number of references.

        Raises:
            ValueError: a missing, contradictory or malformed argument; ``FaceMakeUpInputError`` for
                values (NaN/inf or out-of-range numbers, ``facemakeup.validation``; 0-pixel face images).
        """
        from . import validation as v

        if self.face_adapter is None:
            raise ValueError("no face adapter loaded: call load_face_adapter(...) first")
        if condition not in CONDITIONS:
            raise ValueError(f"`condition` must be one of {', '.join(map(repr, CONDITIONS))}, got {condition!r}")
        if reference_image is None and id_embeds is None:
            raise ValueError("pass `reference_image` (photo(s) of the person) or precomputed `id_embeds`")
        if reference_image is not None and id_embeds is not None:
            raise ValueError("pass either `reference_image` or `id_embeds`, not both")
        dim = self.face_adapter.config.id_embed_dim
        if id_embeds is not None:
            if not isinstance(id_embeds, torch.Tensor) or id_embeds.ndim != 2 or id_embeds.shape[1] != dim:
                raise ValueError(f"`id_embeds` must be a (N, {dim}) tensor, got {getattr(id_embeds, 'shape', type(id_embeds))}")
            if self.reads_clip:
                if (face_images is None) == (clip_embeds is None):
                    raise ValueError("with `id_embeds`, pass exactly one of `face_images` (CLIP crops) or `clip_embeds`")
                n_clip = len(face_images) if face_images is not None else len(clip_embeds)
                if n_clip != len(id_embeds):
                    raise ValueError(f"{len(id_embeds)} `id_embeds` but {n_clip} face images / clip embeds")
            if not torch.isfinite(id_embeds).all():
                raise FaceMakeUpInputError("`id_embeds` holds NaN or infinite values; pass finite ArcFace embeddings")
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
            v.check_weights(reference_weights, n_refs, "`reference_weights`")
        if ip_scale is not None and not isinstance(ip_scale, dict):
            if not isinstance(ip_scale, (int, float)) or ip_scale < 0:
                raise ValueError(f"`ip_scale` must be a number >= 0 or a per-block dict, got {ip_scale!r}")
            v.check_number(ip_scale, "`ip_scale`", low=0, high=v.MAX_ID_SCALE)  # a per-block dict is checked by set_face_adapter_scale
        v.check_number(s_scale, "`s_scale`", low=0, high=v.MAX_ID_SCALE)
        v.check_number(controlnet_conditioning_scale, "`controlnet_conditioning_scale`", low=0, high=v.MAX_ID_SCALE)
        check_guidance_window(control_guidance_start, control_guidance_end)
        if self.controlnet is not None and condition != "none" and id_embeds is not None and shading_image is None and layout_image is None:
            raise ValueError("this pipeline has a ShadingNet: with `id_embeds`, also pass `shading_image` (or condition='none')")
        if self.controlnet is None and condition not in ("shading", "none"):
            raise ValueError(f"`condition={condition!r}` needs a ControlNet: load one (controlnet / --shadingnet)")
        for i, crop in enumerate(face_images or []):
            if not isinstance(crop, np.ndarray) or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape or crop.dtype != np.uint8:
                raise FaceMakeUpInputError(f"`face_images[{i}]` must be a non-empty (S, S, 3) uint8 RGB crop, got "
                                           f"{getattr(crop, 'shape', type(crop).__name__)} {getattr(crop, 'dtype', '')}")
        self.check_people_inputs(n_refs, reference_people, face_masks, layout_image, layout_assignment, layout_mask, reference_weights,
                                 height, width)
        return n_refs

    def check_people_inputs(self, n_refs: int, reference_people, face_masks, layout_image, layout_assignment, layout_mask,
                            reference_weights, height, width) -> int:
        """Validate the people arguments of ``__call__`` (several people in one image).

        Args:
            n_refs: N, the number of references. height, width: the output size (``None``: the model's).
            the others: as ``__call__``.

        Returns:
            P, the number of people.

        Raises:
            ValueError: a malformed or contradictory argument (named, with what was received);
                ``FaceMakeUpInputError`` for mask values (NaN, outside [0, 1], empty after binarisation).
        """
        from .faces.layout import MASK_KINDS

        if face_masks is not None and layout_image is not None:
            raise ValueError("pass either `face_masks` or `layout_image` (whose faces give the masks), not both")
        if layout_assignment is not None and layout_image is None:
            raise ValueError("`layout_assignment` picks faces of `layout_image`: pass a layout image too")
        if layout_mask not in MASK_KINDS:
            raise ValueError(f"`layout_mask` must be one of {', '.join(map(repr, MASK_KINDS))}, got {layout_mask!r}")
        people = reference_people
        if people is not None:
            people = list(people)
            if len(people) != n_refs or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in people):
                raise ValueError(f"`reference_people` must give a person number >= 0 for each of the {n_refs} references, got {reference_people!r}")
            missing = sorted(set(range(max(people) + 1)) - set(people))
            if missing:
                raise ValueError(f"`reference_people` {people} leaves person(s) {missing} without a reference: number people 0, 1, ... P-1")
        n_people = max(people) + 1 if people is not None else None
        if face_masks is not None:
            side = self.unet.config.sample_size * self.vae_scale_factor
            height, width = (v if isinstance(v, int) and v > 0 else side for v in (height or side, width or side))  # bad sizes: check_common_inputs
            masks = self.prepare_face_masks(face_masks, height, width)  # (P, 1, H, W), checks the values
            if n_people is None and len(masks) != n_refs:
                raise ValueError(f"{len(masks)} `face_masks` for {n_refs} references: give one reference per mask, or say which person "
                                 "each reference shows with `reference_people`")
            if n_people is not None and len(masks) != n_people:
                raise ValueError(f"{len(masks)} `face_masks` for {n_people} person(s) in `reference_people`: give one mask per person")
            n_people = len(masks)
        if layout_assignment is not None:
            count = n_people or n_refs
            if not isinstance(layout_assignment, (list, tuple)) or len(layout_assignment) != count:
                raise ValueError(f"`layout_assignment` must give a layout face (0 = leftmost) for each of the {count} people, "
                                 f"got {layout_assignment!r}")
        n_people = n_people or (n_refs if layout_image is not None else 1)
        if reference_weights is not None and n_people > 1:
            w = np.asarray(list(reference_weights), dtype=np.float64)
            owner = np.asarray(people if people is not None else range(n_refs))
            for p in range(n_people):
                if w[owner == p].sum() <= 0:
                    raise ValueError(f"`reference_weights` of person {p} sum to 0: give each person a positive weight")
        if self.face_adapter.config.multi_face == "concat" and n_people > 1 and people is not None:
            counts = {people.count(p) for p in range(n_people)}
            if len(counts) > 1:
                raise ValueError("this adapter gives every reference its own ID tokens (IP-Adapter-FaceID-Portrait): with several "
                                 "people, give each person the same number of references")
        return n_people

    def prepare_face_masks(self, face_masks, height: int, width: int) -> torch.Tensor:
        """Masks as diffusers' IP-Adapter reads them: ``IPAdapterMaskProcessor.preprocess`` (grey, resized to
        the output size, binarised at 0.5).

        Args:
            face_masks: ``(P, H, W)`` float tensor in [0, 1], or a list of P PIL images (any mode; converted
                to grey, 255 = inside). Any size with the output's aspect ratio (within 1%).
            height, width: the output size in pixels.

        Returns:
            ``(P, 1, height, width)`` float32 in {0, 1}.

        Raises:
            ValueError: not a (P, H, W) tensor or list of PIL images, or another aspect ratio.
            FaceMakeUpInputError: NaN or values outside [0, 1]; a mask empty after binarisation.
        """
        from diffusers.image_processor import IPAdapterMaskProcessor

        if isinstance(face_masks, torch.Tensor):
            if face_masks.ndim != 3 or 0 in face_masks.shape or not face_masks.is_floating_point():
                raise ValueError(f"`face_masks` must be a (P, H, W) float tensor in [0, 1], got {face_masks.dtype} {tuple(face_masks.shape)}")
            if not torch.isfinite(face_masks).all() or face_masks.min() < 0 or face_masks.max() > 1:
                raise FaceMakeUpInputError("`face_masks` must hold finite values in [0, 1] (1 = the person's region)")
            sizes = [tuple(face_masks.shape[1:])]
            given = face_masks.detach().float().cpu()
        elif isinstance(face_masks, (list, tuple)) and face_masks and all(isinstance(m, PIL.Image.Image) for m in face_masks):
            sizes = [(m.height, m.width) for m in face_masks]
            given = list(face_masks)
        else:
            raise ValueError(f"`face_masks` must be a (P, H, W) tensor or a list of PIL images, got {type(face_masks).__name__}")
        for h, w in sizes:
            if abs(w / h - width / height) > 0.01 * width / height:
                raise ValueError(f"`face_masks` of {w}x{h} do not have the output's aspect ratio ({width}x{height}): make them at the output size")
        masks = IPAdapterMaskProcessor().preprocess(given, height=height, width=width)  # (P, 1, H, W) in {0, 1}
        for p, m in enumerate(masks):
            if not (m > 0).any():
                raise FaceMakeUpInputError(f"`face_masks[{p}]` is empty (no value >= 0.5): every person needs a region")
        return masks.float()

    def check_common_inputs(self, height, width, num_inference_steps, guidance_scale, num_images_per_prompt, generator, seed,
                            callback_on_step_end_tensor_inputs) -> None:
        """The checks of the arguments every pipeline shares (sizes, steps, guidance, randomness, callback).

        Raises:
            ValueError: naming the argument; ``FaceMakeUpInputError`` for out-of-range values.
        """
        from . import validation as v

        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 8):
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {value!r}")
            if value is not None:
                v.check_side(value, f"`{name}`", multiple=8)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0, got {guidance_scale!r}")
        v.check_number(guidance_scale, "`guidance_scale`", low=0, high=v.MAX_GUIDANCE_SCALE)
        if generator is not None and seed is not None:
            raise ValueError("pass either `generator` or `seed`, not both")
        if seed is not None:
            v.check_seed(seed, "`seed`")
        if any(k != "latents" for k in callback_on_step_end_tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name 'latents', got {list(callback_on_step_end_tensor_inputs)}")

    def check_prompts(self, tokenizers: list, prompts: dict, truncate_prompt: bool) -> None:
        """Each prompt is text that fits every tokenizer's 75 tokens (``facemakeup.validation``).

        Args:
            tokenizers: the pipeline's CLIP tokenizers. prompts: ``{argument name: str, list of str or None}``
                (negative prompts may be empty).

        Raises:
            FaceMakeUpInputError: empty, non-UTF-8 or over-long text (unless ``truncate_prompt``).
        """
        from . import validation as v

        fix = "pass truncate_prompt=True to cut it (a warning says how many tokens are dropped)"
        for name, texts in prompts.items():
            if texts is None:
                continue
            for text in [texts] if isinstance(texts, str) else texts:
                v.check_text(text, f"`{name}`", allow_empty=name.startswith("negative"))
                for tokenizer in tokenizers:
                    v.check_prompt_length(tokenizer, text, f"`{name}`", truncate=truncate_prompt, fix=fix)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def prepare_face_conditioning(self, reference_image, face_index: int, id_embeds, face_images, clip_embeds, uncond_clip_embeds,
                                  reference_weights, s_scale: float, ip_scale, shading_image, condition: str,
                                  shading_crop_factor: float, height: int, width: int, device, *, reference_people=None,
                                  face_masks=None, layout_image=None, layout_assignment=None,
                                  layout_mask: str = "box") -> FaceConditioning:
        """Steps 1-3 of both pipelines: references -> ID tokens (one row per person), the people's masks,
        and the ControlNet's map.

        Args:
            as ``__call__`` (already checked by ``check_face_inputs``); ``height``/``width`` the output size.

        Returns:
            The ``FaceConditioning`` of this generation.

        Raises:
            ImageReadError, NoFaceError, IndexError: a reference (or the layout) photo cannot be used.
            FaceMakeUpInputError: the layout's faces do not match the people (``faces.layout``).
            FitError: a shading map is needed but a face's 3D fit failed.
        """
        # 1. References -> ArcFace embeddings and CLIP face crops
        faces = None
        if reference_image is not None:
            faces = self.prepare_references(reference_image, face_index)
            id_embeds = self.face_id_embeds(faces)
            face_images = [f.clip_image for f in faces]
        adapter = self.face_adapter
        id_embeds = id_embeds.to(device=device, dtype=adapter.dtype)  # (N, 512)

        # 2. CLIP features of the crops (and of the zero image for the unconditional branch), only for
        #    adapters that read them; IP-Adapter-FaceID, -Portrait and InstantID read ArcFace only
        if self.reads_clip:
            if clip_embeds is None:
                clip_embeds = self.encode_face_images(face_images, device)  # (N, L, C)
            clip_embeds = clip_embeds.to(device=device, dtype=adapter.dtype)
            if uncond_clip_embeds is None:
                uncond_clip_embeds = self.uncond_clip_embeds(device)  # (1, L, C)
            uncond_clip_embeds = uncond_clip_embeds.to(device=device, dtype=adapter.dtype)

        # 3. ID tokens, once for all steps, one row per person. A person's references are mixed before
        #    the projection, as Face-MakeUp's `mix` (CLIP features) and IP-Adapter-FaceID's averaging (ID
        #    embeddings) do; a "concat" adapter (Portrait) gives each its own tokens instead.
        n_refs = len(id_embeds)
        people = list(reference_people) if reference_people is not None else (
            list(range(n_refs)) if face_masks is not None or layout_image is not None else [0] * n_refs)
        n_people = max(people) + 1
        owner = torch.tensor(people)
        picks = [owner == p for p in range(n_people)]  # (N,) bool per person
        weights = torch.tensor(reference_weights if reference_weights is not None else [1.0] * n_refs, dtype=torch.float64)
        weights = weights / torch.stack([weights[sel].sum() for sel in picks])[owner]  # (N,) summing to 1 per person
        weights = weights.to(device=device, dtype=adapter.dtype)
        if adapter.config.multi_face == "concat":
            tokens = adapter.project(id_embeds, None, s_scale)  # (N, T, D)
            blank = adapter.project(torch.zeros_like(id_embeds), None, s_scale)  # (N, T, D)
            id_tokens = torch.stack([tokens[sel].reshape(-1, tokens.shape[-1]) for sel in picks])  # (P, n*T, D)
            uncond_tokens = torch.stack([blank[sel].reshape(-1, tokens.shape[-1]) for sel in picks])  # (P, n*T, D)
        else:
            mixed_id = torch.cat([(weights[sel, None] * id_embeds[sel]).sum(0, keepdim=True) for sel in picks])  # (P, 512)
            mixed_clip = torch.cat([(weights[sel, None, None] * clip_embeds[sel]).sum(0, keepdim=True)
                                    for sel in picks]) if self.reads_clip else None  # (P, L, C)
            id_tokens = adapter.project(mixed_id, mixed_clip, s_scale)  # (P, T, D)
            uncond_tokens = adapter.project(torch.zeros_like(mixed_id[:1]), uncond_clip_embeds, s_scale)  # (1, T, D)
            uncond_tokens = uncond_tokens.expand(n_people, -1, -1)  # (P, T, D): the same blank person everywhere
        if ip_scale is not None:
            self.set_face_adapter_scale(ip_scale)

        # 3a. People: each person's place (faces.layout): the masks given, a layout photo's faces, or
        #     P columns side by side. One person without masks or layout: no mask at all (as before).
        layout = masks = None
        if face_masks is not None or layout_image is not None or n_people > 1:
            from .faces import layout as places

            first_faces = None if faces is None else [faces[people.index(p)] for p in range(n_people)]  # each person's first photo
            if face_masks is not None:
                given = self.prepare_face_masks(face_masks, height, width)  # (P, 1, H, W) in {0, 1}
                layout = places.layout_from_masks(given[:, 0].numpy(), first_faces, shading_crop_factor)
            elif layout_image is not None:
                found = self._analyzer().get(layout_image)
                if not found:
                    raise NoFaceError("`layout_image`: no face found; use a photo with one clearly visible face per person")
                layout = places.layout_from_photo(found, n_people, height, width, layout_assignment, layout_mask)
            else:
                layout = places.side_by_side(n_people, height, width, first_faces, shading_crop_factor)
            masks = torch.from_numpy(layout.masks)[None].to(device)  # (1, P, H, W): diffusers' ip_adapter_masks entry

        # 3b. The ControlNet's map: Face-MakeUpV2's shading map or V1's keypoint map, given or made
        #     from the first reference
        shading = None
        if self.controlnet is not None and condition != "none":
            if shading_image is None and layout is not None:  # every person's face in its place
                shading_image = layout.condition_map(condition)
            elif shading_image is None:
                from .faces.conditions import condition_map

                shading_image = condition_map(faces[0], condition, shading_crop_factor, height, width)
            shading = self._shading_tensor(shading_image, height, width, device)  # (1, 3, H, W) in [0, 1]
        return FaceConditioning(faces, id_embeds, face_images, weights, id_tokens, uncond_tokens, shading, people, masks, layout)

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

    # ------------------------------------------------------------------ denoising
    def denoise(self, latents: torch.Tensor, cond: FaceConditioning, prompt_embeds: torch.Tensor, guidance_scale: float,
                controlnet_conditioning_scale: float, generator=None, added_cond_kwargs: dict | None = None,
                callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs=("latents",),
                control_guidance_start: float = 0.0, control_guidance_end: float = 1.0) -> torch.Tensor:
        """The denoising loop over ``self.scheduler.timesteps`` (already set), shared by both pipelines.

        Per step: the ControlNet (when ``cond.shading`` is set, and only at the steps inside
        ``control_guidance_start``..``control_guidance_end``) reads its map and attends to the ID tokens
        only (Face-MakeUp V1/V2, InstantID's IdentityNet; with P people all of theirs, concatenated);
        the UNet reads the text and, through its IP-Adapter processors, the ID tokens
        (``encoder_hidden_states=(text, [tokens])``, diffusers' explicit form, STYLE.md 7), each person's
        inside its mask (``cross_attention_kwargs={"ip_adapter_masks": [...]}``); classifier-free guidance;
        the scheduler step; diffusers' step callback.

        Args:
            latents: ``(B, C, h, w)`` initial latents, already scaled by ``init_noise_sigma``.
            cond: the face conditioning. prompt_embeds: ``(rows, L, D)`` text embeddings, rows = 2B
                with guidance (negative first), else B.
            guidance_scale: classifier-free guidance weight (guidance when > 1).
            controlnet_conditioning_scale: weight of the ControlNet's residuals.
            generator: passed to schedulers whose ``step`` takes one.
            added_cond_kwargs: SDXL's ``{"text_embeds": (rows, P), "time_ids": (rows, 6)}``, or ``None`` (SD 1.5).
            callback_on_step_end, callback_on_step_end_tensor_inputs: diffusers' step callback; a
                returned ``"latents"`` replaces the latents.
            control_guidance_start, control_guidance_end: the ControlNet's window, fractions of the steps
                (diffusers' names and rule, ``controlnet_window``); outside it the ControlNet is not
                called at all (diffusers calls it with scale 0), so stopping at 0.4 saves 60% of its cost.

        Returns:
            ``(B, C, h, w)`` the final latents.
        """
        do_cfg = guidance_scale > 1.0
        batch = len(latents)
        tokens = cond.tokens(batch, do_cfg)  # (rows, P, T, D)
        step_kwargs = {"generator": generator} if "generator" in self.scheduler.step.__code__.co_varnames else {}
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        window = controlnet_window(len(self.scheduler.timesteps), control_guidance_start, control_guidance_end)
        with self._fixed_condition(cond if any(window) else None, len(tokens)) as controlnet_cond:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                residuals = {}
                if controlnet_cond is not None and window[i]:  # the ControlNet: reads its map, attends to the ID tokens only
                    down, mid = self.controlnet(  # context (rows, P*T, D): every person's tokens
                        model_in, t, encoder_hidden_states=tokens.flatten(1, 2), controlnet_cond=controlnet_cond,
                        conditioning_scale=controlnet_conditioning_scale, added_cond_kwargs=added_cond_kwargs, return_dict=False,
                    )
                    residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                noise = self.unet(model_in, t, encoder_hidden_states=(prompt_embeds, [tokens]), added_cond_kwargs=added_cond_kwargs,
                                  cross_attention_kwargs=cond.cross_attention_kwargs,  # people: each person's mask
                                  **residuals).sample  # epsilon (or v: the scheduler's prediction_type)
                if do_cfg:
                    noise_uncond, noise_text = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:  # diffusers' step callback; a returned "latents" replaces them
                    outputs = callback_on_step_end(self, i, t, {k: latents for k in callback_on_step_end_tensor_inputs})
                    latents = (outputs or {}).get("latents", latents)
        return latents

    @contextmanager
    def _fixed_condition(self, cond: FaceConditioning, rows: int):
        """While denoising: the ControlNet's map expanded to the batch, ``(rows, 3, H, W)`` (or ``None``),
        with its conditioning embedding computed once here instead of once per step (the map does not
        change over the steps); the ControlNet's own embedding is put back afterwards."""
        if cond is None or cond.shading is None:
            yield None
            return
        controlnet_cond = cond.shading.expand(rows, -1, -1, -1)  # (rows, 3, H, W)
        own = self.controlnet.controlnet_cond_embedding
        fixed = getattr(self, "_fixed_embedding", None)
        if fixed is None:  # one stand-in per pipeline: a compiled ControlNet sees the same module every time
            fixed = self._fixed_embedding = _Fixed()
        own.to(controlnet_cond.device)  # with enable_model_cpu_offload the ControlNet is still on the CPU until its first call
        fixed.embedding = own(controlnet_cond)  # (rows, C, h, w)
        self.controlnet.controlnet_cond_embedding = fixed
        try:
            yield controlnet_cond
        finally:
            self.controlnet.controlnet_cond_embedding = own
            fixed.embedding = None

    def decode_latents(self, latents: torch.Tensor, output_type: str):
        """Latents -> images (``output_type`` "pil", "np", "pt"; "latent" returns them as they are).

        Args:
            latents: ``(B, C, h, w)``; divided by the VAE's ``scaling_factor`` (and shifted by its
                ``latents_mean``/``latents_std`` when the config has them, as SDXL-family VAEs may).
        """
        if output_type == "latent":
            return latents
        vae = self.vae
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            latents = latents * torch.tensor(std).view(shape).to(latents) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(latents)
        else:
            latents = latents / vae.config.scaling_factor
        decoded = vae.decode(latents.to(vae.dtype)).sample  # (B, 3, H, W) in [-1, 1]
        return self.image_processor.postprocess(decoded, output_type=output_type)


class _Fixed(torch.nn.Module):
    """Stands in for a ControlNet's ``controlnet_cond_embedding`` during one generation: returns the
    embedding computed once from the (step-independent) map, held as a (non-persistent) buffer so that
    a compiled ControlNet reads it as an input and does not recompile for a new map."""

    def __init__(self):
        super().__init__()
        self.register_buffer("embedding", None, persistent=False)

    def forward(self, _cond: torch.Tensor) -> torch.Tensor:
        return self.embedding


# ---------------------------------------------------------------------------- the ControlNet's window
def check_guidance_window(start, end) -> None:
    """``control_guidance_start`` / ``control_guidance_end``: numbers with ``0 <= start < end <= 1``.

    Raises:
        FaceMakeUpInputError: naming the value and the fix.
    """
    for name, value in (("control_guidance_start", start), ("control_guidance_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise FaceMakeUpInputError(f"`{name}` must be a fraction of the steps in [0, 1], got {value!r}")
    if start >= end:
        raise FaceMakeUpInputError(f"`control_guidance_start` ({start}) must be below `control_guidance_end` ({end}): the "
                                   "ControlNet runs from start to end, as fractions of the steps (e.g. 0 and 0.4)")


def controlnet_window(steps: int, start: float = 0.0, end: float = 1.0) -> list[bool]:
    """Whether the ControlNet runs at each of ``steps`` denoising steps: step ``i`` is inside the
    window unless ``i / steps < start`` or ``(i + 1) / steps > end`` (diffusers' ControlNet pipelines'
    ``controlnet_keep``, the same float arithmetic, so the same steps). ``end=0.4`` over 10 steps:
    steps 0-3; ``start=0.5``: steps 5-9.

    Args:
        steps: number of timesteps (``len(scheduler.timesteps)``). start, end: fractions in [0, 1].

    Returns:
        ``steps`` booleans.
    """
    return [not (i / steps < start or (i + 1) / steps > end) for i in range(steps)]


# ---------------------------------------------------------------------------- loading helpers
def load_component(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a ``from_pretrained``; a model that is neither on disk nor downloadable
    becomes a ``ModelNotFoundError`` saying what to download and which flag takes it.

    Args:
        what: the component's name for the message; contains "backbone" for backbone parts.
    """
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, ConnectionError) as err:
        raise ModelNotFoundError(missing_message(what, args[0], err)) from err


def load_image_encoder(image_encoder, torch_dtype, local_files_only):
    """``(CLIPVisionModelWithProjection, CLIPImageProcessor)`` from a hub id or folder (full CLIP or vision
    tower; the processor from the same place), or ``(None, None)`` for ``None``.

    Raises:
        ModelNotFoundError: as ``load_component``.
    """
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    if image_encoder is None:
        return None, None
    encoder = load_component("CLIP image encoder", CLIPVisionModelWithProjection.from_pretrained, image_encoder, dtype=torch_dtype,
                             local_files_only=local_files_only)
    processor = load_component("CLIP image processor", CLIPImageProcessorPil.from_pretrained, image_encoder, local_files_only=local_files_only)
    return encoder, processor


def face_components(unet, vae_scale_factor: int, image_encoder, adapter, shadingnet, lora_rank: int, torch_dtype,
                    local_files_only, shortcut, adapter_lora=None) -> dict:
    """The face parts of ``from_backbone``: ``face_adapter``, ``controlnet``, ``image_encoder``,
    ``feature_extractor``.

    The adapter is read first; a CLIP image encoder is loaded only when it reads CLIP features
    (Plus, PlusV2, Face-MakeUp V1/V2, or a fresh adapter, which is Plus-shaped): an IP-Adapter-FaceID,
    Portrait or InstantID file never needs one, so nothing is downloaded for it.

    Args:
        unet: the plain backbone UNet. vae_scale_factor: image pixels per latent pixel.
        image_encoder: hub id or folder of a CLIP vision model, or ``None``.
        adapter, shadingnet, lora_rank, shortcut, adapter_lora: as ``from_backbone``.

    Raises:
        ModelNotFoundError, CheckpointError, CheckpointLayoutError.
    """
    face_adapter, controlnet = load_face_weights(unet, adapter, shadingnet, vae_scale_factor, local_files_only, shortcut, adapter_lora)
    reads_clip = face_adapter is None or face_adapter.config.projection == "plus"
    if not reads_clip and image_encoder is not None:
        logger.info("the adapter reads ArcFace embeddings only: no CLIP image encoder is loaded")
    encoder, processor = load_image_encoder(image_encoder if reads_clip else None, torch_dtype, local_files_only)
    if face_adapter is None:
        clip_dim = encoder.config.hidden_size if encoder is not None else 1280
        face_adapter = FaceIDAdapter.for_unet(unet, clip_dim, lora_rank)
        logger.warning("no ID-adapter weights given: the ID channel is freshly initialised and untrained")
    return {"face_adapter": face_adapter, "controlnet": controlnet, "image_encoder": encoder, "feature_extractor": processor}


def load_face_weights(unet, adapter, shadingnet, vae_scale_factor: int, local_files_only=None, shortcut=None, adapter_lora=None):
    """``(FaceIDAdapter or None, ControlNetModel or None)`` from the ``adapter``/``shadingnet``
    arguments of ``from_backbone``; a path given for both is read once.

    Args:
        unet: the plain UNet the weights are for. vae_scale_factor: image pixels per latent pixel.
        adapter: a checkpoint path (any ``model.loaders`` layout) or ``None``.
        shadingnet: a checkpoint path, ``"init"`` (a fresh ``from_unet`` copy) or ``None``.
        local_files_only, shortcut: as ``model.loaders.load_checkpoint``; adapter_lora: its ``lora``
            (the adapter's LoRA in a separate file).

    Raises:
        ModelNotFoundError, CheckpointError, CheckpointLayoutError (also: the file holds no adapter /
        no ControlNet where one is asked for).
    """
    face_adapter = controlnet = None
    ckpt = None
    if adapter is not None:
        ckpt = load_checkpoint(adapter, unet, shortcut=shortcut, vae_scale_factor=vae_scale_factor, local_files_only=local_files_only,
                               lora=adapter_lora)
        if ckpt.adapter is None:
            raise CheckpointLayoutError(f"{adapter} ({ckpt.layout}) holds no ID adapter: pass it as the ShadingNet")
        face_adapter = ckpt.adapter
    if shadingnet == "init":
        controlnet = shadingnet_from_unet(unet, vae_scale_factor)
    elif shadingnet is not None:
        if ckpt is None or str(shadingnet) != str(adapter):
            ckpt = load_checkpoint(shadingnet, unet, vae_scale_factor=vae_scale_factor, local_files_only=local_files_only)
        if ckpt.controlnet is None:
            raise CheckpointLayoutError(f"{shadingnet} ({ckpt.layout}) holds no ControlNet")
        controlnet = _like(ckpt.controlnet, unet)
    elif ckpt is not None and ckpt.controlnet is not None:
        logger.warning("%s also holds a ControlNet (%s); pass it as the ShadingNet too to use it", adapter, ckpt.layout)
    return face_adapter, controlnet


def missing_message(what: str, where: Any, err: Exception) -> str:
    """What to tell a user whose ``what`` could not be loaded from ``where``."""
    from .pipeline import DEFAULT_BACKBONE

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
        "Use `--model tiny` (or `tiny-xl`) to run the whole path with a tiny random model (noise images)."
    )


# ---------------------------------------------------------------------------- ID-adapter scales
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
        unet: the ``UNet2DConditionModel`` (SD 1.5 or SDXL).
        scale: the dict.

    Returns:
        ``{attention layer name (without .processor): float}`` for every cross-attention layer.

    Raises:
        ValueError: unknown part or block, wrong list length or negative value; the message lists
            the valid blocks with their attention counts.
    """
    layers = {}  # name -> (part, block index, attention index)
    for name, _, cross in attention_layers(unet):
        if cross is None:
            continue
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
