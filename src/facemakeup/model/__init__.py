"""What plugs into diffusers: the ID adapter (projection, decoupled cross-attention, LoRA) and tiny test models."""

from .id_adapter import FaceIDAdapter

__all__ = ["FaceIDAdapter"]
