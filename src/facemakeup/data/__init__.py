"""FaceCaptionMask: curation filters, captions with phrase masks and token indices, the builder, the Dataset.

See ``record`` for the record (the only reader and writer of records), ``build`` for the sharded
builder, ``formats`` for the three layouts it writes (records, WebDataset shards, Face-MakeUpV2's),
``download`` for photo URLs -> tar shards (img2dataset), ``captions`` for the captioner and the
tokenizer, ``curation`` for the FaceCaptionHQ filters, ``dataset`` for what training reads.
"""

from .build import BuildConfig, build, list_sources
from .captions import clip_tokenizer, find_phrases, template_captions, token_indices
from .curation import CurationConfig
from .dataset import FaceCaptionMaskDataset, FaceCaptionMaskShards, is_shards
from .formats import FORMATS, export_records
from .record import SCHEMA_VERSION, Record, read_records

__all__ = [
    "FORMATS", "SCHEMA_VERSION", "BuildConfig", "CurationConfig", "FaceCaptionMaskDataset", "FaceCaptionMaskShards", "Record", "build",
    "clip_tokenizer", "export_records", "find_phrases", "is_shards", "list_sources", "read_records", "template_captions",
    "token_indices",
]
