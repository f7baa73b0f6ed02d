"""Attribute and emotion captions, their phrases' regions, and the phrases' CLIP token indices.

Face-MakeUpV2 (docs/sources.md, "Text channel") gives each photo two short captions, an attribute
caption and an emotion caption; every phrase of a caption has a target mask and the indices of its
tokens under SD 1.5's CLIP tokenizer, so that the cross-attention of those tokens can be
supervised by the mask. The authors did not publish their captioner; ours writes captions from
the face's predicted attributes with templates, and every phrase carries the name of the face
region it describes (``faces.parsing.REGIONS``). A user can plug in any captioner (e.g. a VLM
through transformers): a callable returning caption strings, whose phrases are then found with
``find_phrases`` from the region vocabulary ``PHRASE_REGIONS``.

Token indices are positions in the 77-long ``input_ids`` (0 is ``<|startoftext|>``), found from
the tokenizer's character offsets.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: Words that name a region (regular expression -> ``REGIONS`` key), used to align free-form
#: captions; the longest match wins where they overlap.
PHRASE_REGIONS = {
    r"(?:\w+ )?(?:eye)?glasses|spectacles|eyeglasses": "eyeglasses",
    r"(?:[\w-]+ ){0,2}hair(?: with bangs)?|bangs": "hair",
    r"(?:a )?bald head": "upper_face",
    r"(?:a |an )?(?:[\w-]+ )?(?:beard|mustache|moustache|goatee|stubble|sideburns)": "lower_face",
    r"(?:\w+ )?lipstick|(?:\w+ )?lips": "lips",
    r"(?:\w+ )?(?:eyebrows|brows)": "brows",
    r"(?:\w+ )?eyes": "eyes",
    r"(?:\w+ )?nose": "nose",
    r"(?:\w+ )?(?:smiles?|grins?|mouth)|smiling(?: \w+ly)?|grinning|laugh(?:s|ing)?": "mouth",
    r"earrings?": "earrings",
    r"(?:a )?necklace": "necklace",
    r"(?:a |an )?(?:\w+ )?(?:hat|cap|beanie)": "hat",
    r"(?:a )?(?:necktie|tie|shirt|jacket|suit)": "cloth",
    r"(?:\w+ )?skin|(?:\w+ )?cheeks|(?:heavy )?makeup": "skin",
    r"(?:young |old |elderly |middle-aged |older )?(?:woman|man|girl|boy|child|person|lady|gentleman)": "face",
}


@dataclass
class Phrase:
    """One phrase of a caption and the face region it describes.

    Attributes:
        text: the phrase as it appears in the caption.
        region: a ``REGIONS`` key, or ``"lower_face"``/``"upper_face"`` (skin below the nose / above the eyes).
        start: character offset of the phrase in the caption.
        token_indices: positions of its tokens in ``input_ids`` (filled by ``token_indices``).
    """

    text: str
    region: str
    start: int
    token_indices: list[int] = field(default_factory=list)


@dataclass
class Caption:
    """A caption and its phrases (``kind`` is ``"attribute"`` or ``"emotion"``)."""

    text: str
    kind: str
    phrases: list[Phrase]


@lru_cache(maxsize=4)
def clip_tokenizer(source: str | None = None) -> CLIPTokenizer:
    """SD 1.5's text tokenizer (CLIP BPE, 49,408 tokens, 77 positions).

    Args:
        source: a diffusers model folder or hub id (its ``tokenizer`` subfolder is used), a tokenizer
            folder, or ``None``: build the same tokenizer from OpenAI's BPE merges file
            ``bpe_simple_vocab_16e6.txt.gz`` (MIT), taken from the ``open-clip-torch`` wheel by
            ``facemakeup.weights.fetch`` (cached). SD 1.5's ``tokenizer/vocab.json`` is exactly this
            vocabulary: byte symbols, byte symbols + ``</w>``, the 48,894 merges, then the two
            special tokens.

    Raises:
        ModelNotFoundError: ``source`` is None and the merges file can neither be found nor downloaded.
        OSError: ``source`` is given but holds no tokenizer.
    """
    if source is not None:
        folder = Path(source)
        if folder.is_dir():
            return CLIPTokenizer.from_pretrained(folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder)
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")  # a diffusers hub id
    from ..weights import fetch

    with gzip.open(fetch("clip_bpe"), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())  # GPT-2/CLIP's byte -> printable character table
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def token_indices(tokenizer: CLIPTokenizer, caption: Caption) -> Caption:
    """Fill every phrase's ``token_indices``: the positions in the padded ``input_ids`` whose
    characters fall inside the phrase. Phrases cut off by the 77-token limit get the tokens that fit.

    Returns:
        ``caption`` itself, phrases updated.
    """
    enc = tokenizer(caption.text, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    for ph in caption.phrases:
        lo, hi = ph.start, ph.start + len(ph.text)
        ph.token_indices = [i for i, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
    return caption


def find_phrases(text: str) -> list[Phrase]:
    """Phrases of a free-form caption that name a face region (``PHRASE_REGIONS``), in order.

    Matching is case-insensitive on word boundaries; where matches overlap, the longest is kept.

    Returns:
        ``Phrase`` list (token indices empty; see ``token_indices``).
    """
    hits = []
    for pattern, region in PHRASE_REGIONS.items():
        for m in re.finditer(rf"\b(?:{pattern})\b", text, flags=re.IGNORECASE):
            article = re.match(r"(?:a|an|the) (?=\w)", m.group(0), flags=re.IGNORECASE)
            start = m.start() + (article.end() if article else 0)
            hits.append((start, m.end(), region))
    phrases = []
    for a, b, region in sorted(hits, key=lambda h: -(h[1] - h[0])):
        if all(b <= p.start or a >= p.start + len(p.text) for p in phrases):
            phrases.append(Phrase(text[a:b], region, a))
    return sorted(phrases, key=lambda p: p.start)


# ----------------------------------------------------------------------------- template captioner

HAIR_COLOURS = {"Blond_Hair": "blonde", "Black_Hair": "black", "Brown_Hair": "brown", "Gray_Hair": "gray"}
FACIAL_HAIR = (("Goatee", "a goatee"), ("Mustache", "a mustache"), ("5_o_Clock_Shadow", "stubble"), ("Sideburns", "sideburns"))
ACCESSORIES = (("Wearing_Hat", "a hat", "hat"), ("Wearing_Earrings", "earrings", "earrings"),
               ("Wearing_Necklace", "a necklace", "necklace"), ("Wearing_Necktie", "a necktie", "cloth"),
               ("Wearing_Lipstick", "lipstick", "lips"))
#: Expected age (years) from which the captions say "elderly".
ELDERLY_AGE = 60
#: Articles stay outside a phrase's tokens: the mask supervises the words that name the thing.
_ARTICLE = re.compile(r"^(?:a|an) ")
#: Emotion label -> the phrase the emotion caption uses.
EMOTION_PHRASES = {
    "happy": "smiling happily", "neutral": "looking calm and neutral", "sadness": "looking sad",
    "surprised": "looking surprised", "anger": "looking angry", "disgust": "looking disgusted", "fear": "looking fearful",
}


def age_word(age: float | None, p_young: float | None = None) -> str:
    """The subject's age word: ``"young"``, ``"middle-aged"`` or ``"elderly"`` (``""`` if nothing is known).

    Args:
        age: expected age in years (the age head's expectation, ``FaceAttributes.age``) or ``None``.
        p_young: CelebA's ``Young`` probability (calibrated: > 0.5 is the decision) or ``None``.

    An expected age of ``ELDERLY_AGE`` (60) or more says "elderly" whatever ``Young`` says (the age
    head is trained on ages, ``Young`` on celebrities' looks; on held-out UTKFace faces of 60 and over
    the head's mean signed error is a few years, see assets/age_head.md). Below that, ``Young`` > 0.5
    says "young" and otherwise "middle-aged"; with no ``Young``, under 35 is "young".
    """
    if age is not None and age >= ELDERLY_AGE:
        return "elderly"
    if p_young is not None:
        return "young" if p_young > 0.5 else "middle-aged"
    if age is None:
        return ""
    return "young" if age < 35 else "middle-aged"


class _Builder:
    def __init__(self, kind: str):
        self.kind, self.text, self.phrases = kind, "", []

    def add(self, s: str, region: str | None = None):
        if region is not None:
            self.phrases.append(Phrase(s, region, len(self.text)))
        self.text += s
        return self

    def caption(self) -> Caption:
        return Caption(self.text, self.kind, self.phrases)


def _join(builder: _Builder, items: list[tuple[str, str]]):
    for i, (s, region) in enumerate(items):
        if i:
            builder.add(" and " if i == len(items) - 1 else ", ")
        article = _ARTICLE.match(s)
        if article:
            builder.add(article.group(0))
        builder.add(s[article.end():] if article else s, region)


def template_captions(attributes: dict[str, float], age: float | None, gender: dict[str, float],
                      emotion: dict[str, float], threshold: float = 0.5, child: float | None = None) -> tuple[Caption, Caption]:
    """Attribute and emotion captions from predicted attributes (the default captioner).

    Args:
        attributes: CelebA attribute name -> probability in [0, 1].
        age: years, or None.
        gender: ``{"female": p, "male": 1 - p}``.
        emotion: label -> probability (labels of ``EMOTION_PHRASES``).
        threshold: an attribute (hair colour and style, bangs, eyeglasses, a beard: ``1 - No_Beard`` above it,
            facial hair, hat, earrings, ...) is mentioned when its probability is above this. The
            shipped heads fold each attribute's calibrated decision threshold into the probability,
            so the default 0.5 is that decision.
        child: probability that the face is a child's (``FaceAttributes.child``); from 0.5 the
            subject is "a child" (no gender word, no age word, no beard or lipstick).

    Returns:
        ``(attribute_caption, emotion_caption)``, e.g. "a young woman with wavy blonde hair and
        eyeglasses" and "a woman smiling happily"; phrases carry regions, token indices empty.
    """
    on = {k for k, p in attributes.items() if p > threshold}
    is_child = child is not None and child >= 0.5
    noun = "child" if is_child else "man" if gender.get("male", 0.0) >= 0.5 else "woman"
    subject = noun if is_child else " ".join(w for w in (age_word(age, attributes.get("Young")), noun) if w)

    a = _Builder("attribute").add("a " if not subject.startswith(("a", "e")) else "an ").add(subject, "face")
    hair_colour = max(((p, HAIR_COLOURS[k]) for k, p in attributes.items() if k in HAIR_COLOURS), default=(0.0, ""))
    items: list[tuple[str, str]] = []
    if "Bald" in on:
        items.append(("a bald head", "upper_face"))
    else:
        style = "wavy" if "Wavy_Hair" in on else "straight" if "Straight_Hair" in on else ""
        colour = hair_colour[1] if hair_colour[0] > threshold else ""
        hair = " ".join(w for w in (style, colour, "hair") if w)
        if "Bangs" in on:
            hair += " with bangs"
        if hair != "hair":  # neither colour nor style above its threshold: nothing worth saying
            items.append((hair, "hair"))
    if "Eyeglasses" in on:
        items.append(("eyeglasses", "eyeglasses"))
    if noun == "man":
        if attributes.get("No_Beard", 1.0) < 1.0 - threshold:
            items.append(("a beard", "lower_face"))
        else:
            items += [(s, "lower_face") for k, s in FACIAL_HAIR if k in on][:1]
    if items:
        a.add(" with ")
        _join(a, items[:3])
    worn = [(s, region) for k, s, region in ACCESSORIES if k in on and not (k == "Wearing_Lipstick" and noun != "woman")][:2]
    if worn:
        a.add(", wearing ")
        _join(a, worn)

    label = max(emotion, key=emotion.get) if emotion else ("happy" if attributes.get("Smiling", 0) > threshold else "neutral")
    e = _Builder("emotion").add("a ").add(noun, "face").add(" ").add(EMOTION_PHRASES.get(label, f"looking {label}"), "face")
    return a.caption(), e.caption()
