"""CLIP-I, CLIP-T and DINO: image-image and image-text similarity in a pretrained embedding space.

Recipes (docs/sources.md, the usual public ones):
- CLIP-I: cosine of CLIP ViT-B/16 image embeddings of the generated image and the reference.
- CLIP-T: 100 x cosine of the generated image's and the prompt's CLIP embeddings (as torchmetrics'
  ``CLIPScore`` without its clamp at 0).
- DINO: cosine of DINO ViT-S/16 CLS features, ``last_hidden_state[:, 0]`` (not the pooler, which
  DINO never trained).

Models load through transformers from a hub id or a local folder (``CLIPModel`` + its processor
and tokenizer; ``AutoModel`` for DINO: ``ViTModel`` or ``Dinov2Model``) with the image processor
saved beside them, so preprocessing is the checkpoint's own.

Example:
    >>> clip = CLIPEncoder.from_pretrained("openai/clip-vit-base-patch16")
    >>> metric = CLIPTextScore(clip)
    >>> metric.update(["gen.png"], ["a person wearing a white shirt"])
    >>> float(metric.compute())
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from ..errors import ModelNotFoundError
from ..faces.image import load_image
from .results import PerImageMetric

#: The recipe's models.
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
DEFAULT_DINO = "facebook/dino-vits16"


def _load(what: str, source: str, flag: str, default: str, fn, local_files_only):
    try:
        return fn(source, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"could not load the {what} from '{source}' ({type(err).__name__}: {str(err)[:200]}). On a machine with internet "
            f"access run `hf download {default} --local-dir DIR` and pass {flag} DIR"
        ) from err


def _pil(images: Sequence) -> list:
    from PIL import Image

    return [Image.fromarray(load_image(im)) for im in images]


class CLIPEncoder:
    """A CLIP model with its image processor and tokenizer; unit-norm projected embeddings.

    Args:
        model: ``transformers.CLIPModel`` (eval mode is set).
        image_processor: its image processor (resize, crop, normalise).
        tokenizer: its tokenizer.
        name: label for provenance (hub id or folder).
    """

    def __init__(self, model, image_processor, tokenizer, name: str):
        self.model, self.image_processor, self.tokenizer, self.name = model.eval(), image_processor, tokenizer, name

    @classmethod
    def from_pretrained(cls, source: str, local_files_only: bool | None = None) -> "CLIPEncoder":
        """Load ``CLIPModel``, ``AutoImageProcessor`` and ``AutoTokenizer`` from a hub id or folder.

        Raises:
            ModelNotFoundError: not found locally and not downloadable (the message says what to do).
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model = _load("CLIP model", source, "--clip", DEFAULT_CLIP, CLIPModel.from_pretrained, local_files_only)
        proc = _load("CLIP image processor", source, "--clip", DEFAULT_CLIP, AutoImageProcessor.from_pretrained, local_files_only)
        tok = _load("CLIP tokenizer", source, "--clip", DEFAULT_CLIP, AutoTokenizer.from_pretrained, local_files_only)
        return cls(model, proc, tok, str(source))

    @torch.no_grad()
    def embed_images(self, images: Sequence, batch_size: int = 16) -> torch.Tensor:
        """Images (paths, PIL, uint8 RGB arrays) -> ``(N, D)`` float32 unit-norm image embeddings."""
        out = []
        for i in range(0, len(images), batch_size):
            pixels = self.image_processor(images=_pil(images[i:i + batch_size]), return_tensors="pt").pixel_values
            out.append(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)).pooler_output.float())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> ``(N, D)`` float32 unit-norm text embeddings (truncated to the model's 77 tokens)."""
        out = []
        max_len = self.model.config.text_config.max_position_embeddings
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            out.append(self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output.float())
        return F.normalize(torch.cat(out), dim=-1)


class DINOEncoder:
    """A DINO ViT (``ViTModel`` / ``Dinov2Model``) and its image processor; unit-norm CLS features.

    Args:
        model: a transformers vision model whose ``last_hidden_state[:, 0]`` is the CLS token.
        image_processor: its image processor.
        name: label for provenance.
    """

    def __init__(self, model, image_processor, name: str):
        self.model, self.image_processor, self.name = model.eval(), image_processor, name

    @classmethod
    def from_pretrained(cls, source: str, local_files_only: bool | None = None) -> "DINOEncoder":
        """Load ``AutoModel`` and ``AutoImageProcessor`` from a hub id or folder (a pooler, if the class
        has one, is unused).

        Raises:
            ModelNotFoundError: not found locally and not downloadable.
        """
        from transformers import AutoImageProcessor, AutoModel

        model = _load("DINO model", source, "--dino", DEFAULT_DINO, AutoModel.from_pretrained, local_files_only)
        proc = _load("DINO image processor", source, "--dino", DEFAULT_DINO, AutoImageProcessor.from_pretrained, local_files_only)
        return cls(model, proc, str(source))

    @torch.no_grad()
    def embed_images(self, images: Sequence, batch_size: int = 16) -> torch.Tensor:
        """Images -> ``(N, D)`` float32 unit-norm CLS features (``last_hidden_state[:, 0]``)."""
        out = []
        for i in range(0, len(images), batch_size):
            pixels = self.image_processor(images=_pil(images[i:i + batch_size]), return_tensors="pt").pixel_values
            out.append(self.model(pixel_values=pixels.to(self.model.dtype)).last_hidden_state[:, 0].float())
        return F.normalize(torch.cat(out), dim=-1)


def _embeddings(encoder, items) -> torch.Tensor:
    """A ``(N, D)`` tensor of embeddings is passed through (normalised); images are embedded."""
    if isinstance(items, torch.Tensor):
        return F.normalize(items.float(), dim=-1)
    return encoder.embed_images(list(items))


class _ImageSimilarity(PerImageMetric):
    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def update(self, generated, references) -> None:
        """Equal-length images (paths, PIL, uint8 RGB arrays) or precomputed ``(N, D)`` embeddings."""
        g, r = _embeddings(self.encoder, generated), _embeddings(self.encoder, references)
        if g.shape != r.shape:
            raise ValueError(f"{len(g)} generated vs {len(r)} reference embeddings (or different widths): {tuple(g.shape)} vs {tuple(r.shape)}")
        self._append((g * r).sum(-1).numpy())


class CLIPImageSimilarity(_ImageSimilarity):
    """CLIP-I accumulator: per pair, the cosine of CLIP image embeddings, in [-1, 1].

    Args:
        encoder: ``CLIPEncoder`` (CLIP ViT-B/16 for the paper's numbers).
    """

    name = "CLIP-I"


class DINOSimilarity(_ImageSimilarity):
    """DINO accumulator: per pair, the cosine of DINO CLS features, in [-1, 1].

    Args:
        encoder: ``DINOEncoder`` (DINO ViT-S/16 for the paper's numbers).
    """

    name = "DINO"


class CLIPTextScore(PerImageMetric):
    """CLIP-T accumulator: per image, ``100 * cos(image embedding, prompt embedding)``, in [-100, 100].

    Args:
        encoder: ``CLIPEncoder``.

    ``update(generated, prompts)``: images (or precomputed ``(N, D)`` image embeddings) and one
    prompt per image.
    """

    name = "CLIP-T"

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def update(self, generated, prompts: Sequence[str]) -> None:
        g = _embeddings(self.encoder, generated)
        if len(prompts) != len(g):
            raise ValueError(f"{len(g)} images but {len(prompts)} prompts")
        t = self.encoder.embed_texts(list(prompts))
        self._append(100.0 * (g * t).sum(-1).numpy())
