"""Reading checkpoint files as others publish them (IP-Adapter / Face-MakeUp pickles, safetensors)."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, ModelNotFoundError


def read_checkpoint(path: str | os.PathLike, missing: str) -> dict:
    """A checkpoint file's tensors: ``.safetensors`` (flat dict) or a torch pickle (``.bin``/``.pt``,
    loaded with ``weights_only=True``: tensors and plain containers only, no code).

    Args:
        path: the file.
        missing: what to tell the user when the file is not there (what to download, which flag).

    Returns:
        The file's dict (of tensors, or of dicts of tensors).

    Raises:
        ModelNotFoundError: ``path`` is not a file; the message is ``missing``.
        CheckpointError: the file cannot be read (permission denied), is not a checkpoint, is
            truncated, holds Python objects besides tensors (a pickle that would run code: it is
            never unpickled), or holds something other than a dict. The message names the file and
            what to do; it never suggests turning off ``weights_only``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no file at {path}: {missing}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied; check the file's permissions (e.g. chmod a+r)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); download it again: {missing}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(path)
            except SafetensorError as err:
                raise CheckpointError(f"{path}: not a readable .safetensors file, truncated or corrupt ({err}); download it again") from None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on the pickle protocol
                state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied; check the file's permissions (e.g. chmod a+r)") from None
    except pickle.UnpicklingError as err:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic[:2] != b"PK" and magic[:1] != b"\x80":  # neither torch's zip nor a pickle (PROTO opcode)
            raise CheckpointError(f"{path}: not a torch checkpoint or .safetensors file; pass the checkpoint file itself") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it needs {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: the pickle holds Python objects besides tensors{what}; facemakeup reads only tensors, since "
            "unpickling objects can run code from the file. Ask its publisher for a .safetensors file or a "
            "pickle of plain tensors"
        ) from None
    except RuntimeError as err:
        if "zip archive" in str(err) or "central directory" in str(err):
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (its zip archive is incomplete); download it again") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0][:200]})") from None
    except (KeyError, EOFError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a torch checkpoint or .safetensors file; "
                              "pass the checkpoint file itself") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors; pass the checkpoint file itself")
    return state
