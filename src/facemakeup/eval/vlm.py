"""VLMScore: a vision-language model's 0-100 realism score (Face-MakeUpV2 used Qwen2-VL-7B).

The model is asked ``QUESTION`` about each image through its own chat template and answers with
greedy decoding; the first integer in its answer is the score. Answers without an integer in
[0, 100] count in ``unparsed_rate`` and are left out of the mean (never read as 0). Any
transformers image-text-to-text model loads (``AutoModelForImageTextToText`` + ``AutoProcessor``,
hub id or folder); the paper's exact question is not public, so scores from other questions differ.

Example:
    >>> scorer = VLMScorer.from_pretrained("Qwen/Qwen2-VL-7B-Instruct")
    >>> metric = VLMScore(scorer)
    >>> metric.update(["gen.png"])
    >>> float(metric.compute())
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..errors import ModelNotFoundError
from ..faces.image import load_image
from .results import PerImageMetric

DEFAULT_VLM = "Qwen/Qwen2-VL-7B-Instruct"
QUESTION = ("How realistic is this image, as a photograph of a real person? Answer with a single integer from 0 "
            "(clearly artificial) to 100 (indistinguishable from a real photo).")


def parse_score(text: str) -> float:
    """The first integer in ``text`` if it lies in [0, 100], else NaN."""
    m = re.search(r"\d+", text)
    if m is None:
        return float("nan")
    v = int(m.group())
    return float(v) if 0 <= v <= 100 else float("nan")


class VLMScorer:
    """An image-text-to-text model and its processor, asked ``QUESTION`` per image.

    Args:
        model: a transformers ``...ForConditionalGeneration`` / ``AutoModelForImageTextToText`` model.
        processor: its processor (with a chat template).
        name: label for provenance.
        max_new_tokens: answer length limit.
    """

    def __init__(self, model, processor, name: str, max_new_tokens: int = 8):
        self.model, self.processor, self.name, self.max_new_tokens = model.eval(), processor, name, max_new_tokens

    @classmethod
    def from_pretrained(cls, source: str, local_files_only: bool | None = None) -> "VLMScorer":
        """Load ``AutoModelForImageTextToText`` and ``AutoProcessor`` from a hub id or folder.

        Raises:
            ModelNotFoundError: not found locally and not downloadable.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local_files_only)
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"could not load the VLM from '{source}' ({type(err).__name__}: {str(err)[:200]}). On a machine with internet "
                f"access run `hf download {DEFAULT_VLM} --local-dir DIR` and pass --vlm DIR"
            ) from err
        return cls(model, processor, str(source))

    @torch.no_grad()
    def answers(self, images: Sequence) -> list[str]:
        """The model's answer to ``QUESTION`` for each image (paths, PIL, uint8 RGB arrays), one call per image."""
        from PIL import Image

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        out = []
        for im in images:
            inputs = self.processor(images=[Image.fromarray(load_image(im))], text=[prompt], return_tensors="pt")
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            out.append(self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
        return out


class VLMScore(PerImageMetric):
    """VLMScore accumulator: per image, ``parse_score`` of the VLM's answer (NaN: unreadable).

    Args:
        scorer: ``VLMScorer``.
    """

    name = "VLMScore"

    def __init__(self, scorer: VLMScorer, **kwargs):
        super().__init__(**kwargs)
        self.scorer = scorer

    def update(self, generated: Sequence) -> None:
        self._append([parse_score(a) for a in self.scorer.answers(list(generated))])

    @property
    def unparsed_rate(self) -> float:
        """Fraction of images whose answer held no integer in [0, 100] (NaN before any update)."""
        v = self.per_image()
        return float(np.mean(~np.isfinite(v))) if len(v) else float("nan")
