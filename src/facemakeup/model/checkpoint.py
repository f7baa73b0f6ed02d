"""Reading checkpoint files as others publish them (IP-Adapter / Face-MakeUp pickles, safetensors)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelNotFoundError


def read_checkpoint(path: str | os.PathLike, missing: str) -> dict:
    """A checkpoint file's tensors: ``.safetensors`` (flat dict) or a torch pickle (``.bin``/``.pt``,
    loaded with ``weights_only=True``: tensors and plain containers only, no code).

    Args:
        path: the file.
        missing: what to tell the user when the file is not there (what to download, which flag).

    Raises:
        ModelNotFoundError: ``path`` is not a file; the message is ``missing``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no file at {path}: {missing}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
