"""FaceCaptionMask: curation filters, captions with phrase masks and token indices, the builder, the Dataset.

See ``record`` for the record (the only reader and writer of records), ``build`` for the sharded
builder and the output layout, ``captions`` for the captioner and the tokenizer, ``curation`` for
the FaceCaptionHQ filters, ``dataset`` for what training reads.
"""

from .build import BuildConfig, build, list_sources
from .captions import clip_tokenizer, find_phrases, template_captions, token_indices
from .curation import CurationConfig
from .dataset import FaceCaptionMaskDataset
from .record import SCHEMA_VERSION, Record, read_records

__all__ = [
    "SCHEMA_VERSION", "BuildConfig", "CurationConfig", "FaceCaptionMaskDataset", "Record", "build", "clip_tokenizer",
    "find_phrases", "list_sources", "read_records", "template_captions", "token_indices",
]
