"""Every checkpoint layout people already have, read once, recognised by its keys and shapes.

Layouts (exact key names, shapes and sources: ``docs/checkpoints.md``). The same layout serves SD 1.5
and SDXL UNets: the processor numbering and every width come from the UNet the file is read against,
and a file made for the other backbone family is refused with the family it is for.

- ``ip-adapter-faceid``: h94/IP-Adapter-FaceID ``ip-adapter-faceid_sd15.bin`` / ``_sdxl.bin``:
  ``MLPProjModel`` (ArcFace only) + LoRA and IP k/v on the attention processors. The LoRA may instead
  come from the separate ``*_lora.safetensors`` (``lora=``) for a file that holds IP k/v only.
- ``ip-adapter-faceid-plus``: ``ip-adapter-faceid-plus_sd15.bin``, ``-plusv2_sd15.bin``,
  ``-plusv2_sdxl.bin``: ``ProjPlusModel`` (ArcFace + CLIP Perceiver resampler) + LoRA + IP k/v. Plus
  and PlusV2 have the same keys; they differ in the shortcut at inference (PlusV2 and Face-MakeUp: on,
  the default; Plus: pass ``shortcut=False``).
- ``ip-adapter-faceid-portrait``: ``ip-adapter-faceid-portrait_sd15.bin`` / ``-portrait-v11_sd15.bin``
  / ``-portrait_sdxl.bin``: ``MLPProjModel`` with 16 tokens per face, IP k/v only (no LoRA); several
  faces = more tokens.
- ``ip-adapter-faceid-portrait-unnorm``: ``ip-adapter-faceid-portrait_sdxl_unnorm.bin``: IP-Adapter's
  ``Resampler`` (16 queries) over the unnormalised ArcFace embedding, IP k/v only. Same keys as
  ``instantid``; told apart by shape: its resampler works at the cross-attention width (2048), InstantID's
  at its own (1280).
- ``instantid``: InstantX/InstantID ``ip-adapter.bin``: ``Resampler`` (16 queries, width 1280, 20 heads)
  over the 512-D antelopev2 embedding, IP k/v only. Its IdentityNet (``ControlNetModel/`` folder) loads
  as a ControlNet folder (layout ``ours``, ShadingNet slot).
- ``face-makeup``: Face-MakeUp V1 (``OpenFace-CQUPT/Face-MakeUp_SD1.5`` ``model.bin``) and V2
  (``model.bin``): the FaceID-PlusV2 layout plus ``"controlnet"`` (a ``ControlNetModel.from_unet``
  state dict) in one pickle. V1's ControlNet reads the 5-keypoint map, V2's the shading map; the
  file does not say which (the keys are the same), the caller picks the condition.
- ``ours``: a folder with ``face_adapter/`` (``FaceIDAdapter.save_pretrained``) and optionally
  ``shadingnet/`` (``ControlNetModel.save_pretrained``), or one of those component folders (e.g.
  InstantID's ``ControlNetModel/``), or a saved ``FaceMakeUpPipeline`` (``face_adapter/`` + ``controlnet/``).
- ``controlnet``: a bare ControlNet state dict (``.safetensors``/``.bin``).

Files are ``.safetensors`` (flat keys, ``image_proj.``/``ip_adapter.``/``controlnet.`` prefixes) or
torch pickles, loaded only with ``torch.load(weights_only=True)``: tensors and plain containers,
never code. The IP-Adapter processor numbering is the UNet's ``attn_processors`` order.

Example:
    >>> ckpt = load_checkpoint("ip-adapter-faceid-plusv2_sdxl.bin", sdxl_unet)
    >>> ckpt.layout, ckpt.adapter, ckpt.controlnet
    ('ip-adapter-faceid-plus', FaceIDAdapter(...), None)
    >>> load_checkpoint("ip-adapter-faceid_sdxl.bin", sdxl_unet).layout  # the LoRA is in the .bin
    'ip-adapter-faceid'
    >>> load_checkpoint("faceid_ipkv_only.bin", sdxl_unet, lora="ip-adapter-faceid_sdxl_lora.safetensors").layout
    'ip-adapter-faceid'
    >>> write_checkpoint("out/", ckpt.adapter, ckpt.controlnet, to="ours")
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel

from ..errors import CheckpointError, CheckpointLayoutError, ModelNotFoundError
from .id_adapter import LORA_TARGETS, FaceIDAdapter, _key, attention_layers
from .shadingnet import shadingnet_from_unet
from .tiny import TINY_CROSS_DIM, TINY_XL_TEXT_DIMS

logger = logging.getLogger(__name__)

#: Known layouts and where they come from.
LAYOUTS = {
    "ip-adapter-faceid": "h94/IP-Adapter-FaceID ip-adapter-faceid_sd15.bin / _sdxl.bin (ArcFace MLP projection + LoRA)",
    "ip-adapter-faceid-plus": "h94/IP-Adapter-FaceID ip-adapter-faceid-plus(v2)_sd15.bin / -plusv2_sdxl.bin "
                              "(ArcFace + CLIP resampler + LoRA)",
    "ip-adapter-faceid-portrait": "h94/IP-Adapter-FaceID ip-adapter-faceid-portrait(-v11)_sd15.bin / -portrait_sdxl.bin "
                                  "(ArcFace MLP, 16 tokens/face, no LoRA)",
    "ip-adapter-faceid-portrait-unnorm": "h94/IP-Adapter-FaceID ip-adapter-faceid-portrait_sdxl_unnorm.bin "
                                         "(Resampler over the unnormalised ArcFace embedding, 16 tokens, no LoRA)",
    "instantid": "InstantX/InstantID ip-adapter.bin (Resampler over the antelopev2 ArcFace embedding, 16 tokens, no LoRA)",
    "face-makeup": "Face-MakeUp V1/V2 model.bin (FaceID-PlusV2 layout + 'controlnet')",
    "ours": "facemakeup folder (face_adapter/ + shadingnet/), or a ControlNet folder such as InstantID's ControlNetModel/",
    "controlnet": "a ControlNet state dict",
}
#: ``convert`` targets.
TARGETS = ("ours", "face-makeup-v2", "ip-adapter")
#: IP-Adapter's names of the LoRA targets (``LoRAAttnProcessor``): ours -> theirs.
_LORA_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_PLUS_TOP = {"proj.0.": "proj.net.0.proj.", "proj.2.": "proj.net.2.", "norm.": "norm.",
             "perceiver_resampler.proj_in.": "proj_in.", "perceiver_resampler.proj_out.": "proj_out.",
             "perceiver_resampler.norm_out.": "norm_out."}
#: IP-Adapter's ``Resampler`` (InstantID) top-level names are diffusers' ``IPAdapterPlusImageProjection`` ones.
_RESAMPLER_TOP = {"latents": "latents", "proj_in.": "proj_in.", "proj_out.": "proj_out.", "norm_out.": "norm_out."}
#: One ``PerceiverAttention`` + ``FeedForward`` block (FaceID-Plus's and the ``Resampler``'s alike): theirs -> diffusers'.
_PLUS_LAYER = {"0.norm1.": "ln0.", "0.norm2.": "ln1.", "0.to_q.": "attn.to_q.", "0.to_out.": "attn.to_out.0.",
               "1.0.": "ff.0.", "1.1.": "ff.1.net.0.proj.", "1.3.": "ff.1.net.2."}
_MLP = {"proj.0.": "ff.net.0.proj.", "proj.2.": "ff.net.2.", "norm.": "norm."}
#: Backbone families by cross-attention width (the text context and ID-token width).
_FAMILIES = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL", TINY_CROSS_DIM: "tiny SD 1.5", sum(TINY_XL_TEXT_DIMS): "tiny SDXL"}
#: Layouts whose ``ip_adapter`` holds LoRA weights (in the file, or given separately).
_LORA_LAYOUTS = ("ip-adapter-faceid", "ip-adapter-faceid-plus", "face-makeup")
@dataclass
class Checkpoint:
    """What one checkpoint holds, turned into our components.

    Attributes:
        layout: one of ``LAYOUTS``.
        source: the file or folder read.
        adapter: the ``FaceIDAdapter`` (``None`` for a bare ControlNet).
        controlnet: the ``ControlNetModel`` (ShadingNet / V1 keypoint ControlNet) or ``None``.
    """

    layout: str
    source: str
    adapter: FaceIDAdapter | None
    controlnet: ControlNetModel | None


# ---------------------------------------------------------------------------- reading files
def read_state_dict(path: str | os.PathLike) -> dict:
    """A checkpoint file's tensors, read once.

    Args:
        path: ``.safetensors`` (flat dict of tensors) or a torch pickle (``.bin``/``.pt``/``.pth``,
            zip or legacy format), loaded with ``weights_only=True``.

    Returns:
        The (possibly nested) dict of CPU tensors.

    Raises:
        ModelNotFoundError: no file at ``path``.
        CheckpointError: the file cannot be read (permission denied), is empty, is not a checkpoint,
            is truncated or corrupt, holds something other than a dict, or is a pickle that holds more
            than tensors and plain containers (it is never unpickled: that would run code from the
            file; the message names what it asked for and never suggests turning off ``weights_only``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no checkpoint file at {path}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied; check the file's permissions (e.g. chmod a+r)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} (0 bytes) is empty: download it again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except SafetensorError as err:
            raise CheckpointError(f"{path} ({size} bytes) is not a complete .safetensors file, truncated or corrupt ({err}): "
                                  "download it again") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on the pickle protocol
                state = torch.load(path, map_location="cpu", weights_only=True)
        except PermissionError:
            raise CheckpointError(f"{path}: permission denied; check the file's permissions (e.g. chmod a+r)") from None
        except pickle.UnpicklingError as err:
            text = str(err)
            if not _looks_like_torch(path):
                raise CheckpointError(f"{path}: not a torch checkpoint or .safetensors file; pass the checkpoint file itself") from None
            if "Weights only load failed" in text:
                wanted = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.findall(r"(?:global|GLOBAL) ([\w.]+)", text)
                raise CheckpointError(
                    f"{path}: the pickle holds Python objects besides tensors (it asks for "
                    f"{', '.join(sorted(set(wanted))) or 'code objects'}); facemakeup loads checkpoints as tensors only, "
                    "since unpickling objects can run code from the file. Ask its publisher for a .safetensors file or a "
                    "pickle of plain tensors"
                ) from None
            raise CheckpointError(f"{path} ({size} bytes) is truncated or corrupt ({text}): download it again") from None
        except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, IndexError, AttributeError) as err:
            if not _looks_like_torch(path):
                raise CheckpointError(f"{path}: not a torch checkpoint or .safetensors file; pass the checkpoint file itself") from None
            raise CheckpointError(f"{path} ({size} bytes) is truncated or corrupt ({type(err).__name__}: {err}): "
                                  "download it again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors; pass the checkpoint file itself")
    return state


def _looks_like_torch(path: Path) -> bool:
    """Whether a file starts like a torch checkpoint: a zip archive (``PK``) or a pickle (PROTO opcode)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return magic[:2] == b"PK" or magic[:1] == b"\x80"


def _nested(state: dict) -> dict:
    """``{"image_proj": {...}, "ip_adapter": {...}, ["controlnet": {...}]}`` from the nested pickle
    layout or a flat safetensors dict with those prefixes; other dicts come back unchanged."""
    if any(isinstance(v, dict) for v in state.values()):
        return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}
    groups = {"image_proj": {}, "ip_adapter": {}, "controlnet": {}}
    other = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        (groups[head] if head in groups and rest else other)[rest if head in groups else k] = v
    if not groups["image_proj"] and not groups["ip_adapter"]:
        return state
    out = {k: v for k, v in groups.items() if v}
    out.update(other)
    return out




# ---------------------------------------------------------------------------- layout templates
def _ip_keys(layers: list, lora: bool) -> set[str]:
    keys = set()
    for i, (_, _, cross) in enumerate(layers):
        if cross is not None:
            keys |= {f"{i}.to_k_ip.weight", f"{i}.to_v_ip.weight"}
        if lora:
            keys |= {f"{i}.{theirs}.{part}.weight" for theirs in _LORA_NAMES.values() for part in ("down", "up")}
    return keys


def _perceiver_keys(prefix: str, depth: int) -> set[str]:
    """``PerceiverAttention`` + ``FeedForward`` keys of ``depth`` blocks under ``prefix`` (IP-Adapter's resampler.py)."""
    keys = set()
    for i in range(depth):
        r = f"{prefix}{i}."
        keys |= {r + f"0.{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")}
        keys |= {r + "0.to_q.weight", r + "0.to_kv.weight", r + "0.to_out.weight", r + "1.0.weight", r + "1.0.bias",
                 r + "1.1.weight", r + "1.3.weight"}
    return keys


def _proj_keys(projection: str, depth: int = 4) -> set[str]:
    if projection == "resampler":  # IP-Adapter's Resampler (InstantID)
        keys = {"latents"} | {f"{m}.{p}" for m in ("proj_in", "proj_out", "norm_out") for p in ("weight", "bias")}
        return keys | _perceiver_keys("layers.", depth)
    keys = {f"{m}.{p}" for m in ("proj.0", "proj.2", "norm") for p in ("weight", "bias")}
    if projection == "plus":
        keys |= {f"perceiver_resampler.{m}.{p}" for m in ("proj_in", "proj_out", "norm_out") for p in ("weight", "bias")}
        keys |= _perceiver_keys("perceiver_resampler.layers.", depth)
    return keys


def _templates(layers: list, depth: int, separate_lora: bool = False) -> dict[str, set[str]]:
    """Flat ``group.key`` names each adapter layout has for a UNet with ``layers``.

    With ``separate_lora`` the LoRA comes from another file, so the adapter file holds IP k/v only.
    ``"resampler"`` stands for ``instantid`` and ``ip-adapter-faceid-portrait-unnorm`` (same keys).
    """
    def flat(proj, ip):
        return {f"image_proj.{k}" for k in proj} | {f"ip_adapter.{k}" for k in ip}

    if separate_lora:
        plus = flat(_proj_keys("plus", depth), _ip_keys(layers, False))
        return {"ip-adapter-faceid": flat(_proj_keys("mlp"), _ip_keys(layers, False)), "ip-adapter-faceid-plus": plus,
                "face-makeup": plus | {"controlnet.*"}}
    plus = flat(_proj_keys("plus", depth), _ip_keys(layers, True))
    return {
        "ip-adapter-faceid": flat(_proj_keys("mlp"), _ip_keys(layers, True)),
        "ip-adapter-faceid-plus": plus,
        "ip-adapter-faceid-portrait": flat(_proj_keys("mlp"), _ip_keys(layers, False)),
        "resampler": flat(_proj_keys("resampler", depth), _ip_keys(layers, False)),
        "face-makeup": plus | {"controlnet.*"},
    }


def _projection_kind(proj: dict) -> str | None:
    """``"plus"``, ``"resampler"`` or ``"mlp"`` from an ``image_proj`` dict's keys, ``None`` if none fits."""
    if "perceiver_resampler.proj_in.weight" in proj:
        return "plus"
    if "latents" in proj and "proj_in.weight" in proj:
        return "resampler"
    if "norm.weight" in proj and "proj.2.weight" in proj:
        return "mlp"
    return None


def _depth(proj: dict) -> int:
    layer_ids = {m.group(1) for k in proj for m in [re.match(r"(?:perceiver_resampler\.)?layers\.(\d+)\.", k)] if m}
    return len(layer_ids) or 4


def _proj_width(proj: dict, kind: str) -> int:
    """Cross-attention width the projection writes its ID tokens at."""
    return proj["proj_out.weight"].shape[0] if kind == "resampler" else proj["norm.weight"].shape[0]


def _family(width: int) -> str:
    """``"an SDXL checkpoint"``-style words for a cross-attention width."""
    name = _FAMILIES.get(width)
    if name is None:
        return f"a checkpoint for a UNet of cross-attention width {width}"
    return f"{'an' if name[0] in 'AEIOSU' else 'a'} {name}"


def _backbone(width: int) -> str:
    name = _FAMILIES.get(width)
    return f"{'an' if name and name[0] in 'AEIOSU' else 'a'} {name} backbone" if name else f"a backbone of cross-attention width {width}"


def _check_family(state: dict, unet, layers: list) -> None:
    """Refuse a well-formed adapter file made for another backbone (family) with what it is for.

    The file is self-consistent when its ``ip_adapter`` keys are IP-Adapter's template for its own
    processor count (``to_k_ip``/``to_v_ip`` on the odd, cross-attention ones; LoRA on all or none) and
    its ``image_proj`` keys one projection's; then its width (``norm``/``proj_out`` rows) and processor
    count are compared with the UNet's.

    Raises:
        CheckpointLayoutError: "this is an SDXL checkpoint (cross-attention width 2048, ...); load it
            with an SDXL backbone", naming the layout and the first differing shapes.
    """
    proj, ip = state.get("image_proj"), state.get("ip_adapter")
    if not isinstance(proj, dict) or not isinstance(ip, dict) or not ip:
        return
    kind = _projection_kind(proj)
    ids = [int(k.split(".")[0]) for k in ip if k.split(".")[0].isdigit()]
    if kind is None or len(ids) != len(ip) or proj.keys() != _proj_keys(kind, _depth(proj)):
        return
    count = max(ids) + 1
    lora = any("_lora." in k for k in ip)
    own = _ip_keys([[str(i), 0, 0 if i % 2 else None] for i in range(count)], lora)
    if set(ip) != own:
        return
    width, unet_width = _proj_width(proj, kind), unet.config.cross_attention_dim
    if width == unet_width and count == len(layers):
        return
    if kind == "plus":
        layout = "ip-adapter-faceid-plus"
    elif kind == "resampler":
        layout = _resampler_name(proj)
    else:
        layout = "ip-adapter-faceid" if lora else "ip-adapter-faceid-portrait"
    key = "proj_out.weight" if kind == "resampler" else "norm.weight"
    differ = [f"image_proj.{key} {tuple(proj[key].shape)[:1]} vs ({unet_width},) here"] if width != unet_width else []
    first_cross = next((i for i, (_, _, c) in enumerate(layers) if c is not None), None)
    if first_cross is not None and f"{first_cross}.to_k_ip.weight" in ip:
        theirs, ours = tuple(ip[f"{first_cross}.to_k_ip.weight"].shape), (layers[first_cross][1], unet_width)
        if theirs != ours:
            differ.append(f"ip_adapter.{first_cross}.to_k_ip.weight {theirs} vs {ours} here")
    if count != len(layers):
        differ.append(f"{count} attention processors vs {len(layers)} here")
    if width == unet_width:
        raise CheckpointLayoutError(
            f"this {layout} checkpoint ({LAYOUTS[layout]}) was made for another {_FAMILIES.get(width, 'UNet')} UNet layout: "
            f"{count} attention processors, this UNet has {len(layers)}; differing: {differ[:4]}"
        )
    raise CheckpointLayoutError(
        f"this is {_family(width)} checkpoint (layout {layout}: cross-attention width {width}, {count} attention processors); "
        f"this UNet is {_FAMILIES.get(unet_width, 'another backbone')} (cross-attention width {unet_width}, {len(layers)} "
        f"attention processors): load it with {_backbone(width)}. "
        f"Differing shapes: {differ[:4]}"
    )


def _resampler_name(proj: dict) -> str:
    """``instantid`` or ``ip-adapter-faceid-portrait-unnorm``: the same keys, told apart by the resampler's
    width. InstantID's resampler is 1280 wide for SDXL's 2048-wide tokens; Portrait-unnorm's works at the
    token width itself (2048: ComfyUI_IPAdapter_plus builds it with ``dim = cross_attention_dim``)."""
    return "ip-adapter-faceid-portrait-unnorm" if proj["latents"].shape[-1] == proj["proj_out.weight"].shape[0] else "instantid"


def detect_layout(state: dict, unet, *, separate_lora: bool = False) -> str:
    """The layout of a loaded checkpoint, from its keys and shapes (never its file name).

    Args:
        state: the dict ``read_state_dict`` returned.
        unet: the plain ``UNet2DConditionModel`` it is for (gives the processor numbering and widths;
            SD 1.5 and SDXL alike).
        separate_lora: the LoRA comes from a separate file (h94's ``*_lora.safetensors``), so the
            adapter file must hold IP k/v only.

    Returns:
        One of ``"ip-adapter-faceid"``, ``"ip-adapter-faceid-plus"``, ``"ip-adapter-faceid-portrait"``,
        ``"ip-adapter-faceid-portrait-unnorm"``, ``"instantid"``, ``"face-makeup"``, ``"controlnet"``.

    Raises:
        CheckpointLayoutError: a file for another backbone family ("this is an SDXL checkpoint (cross-attention
            width 2048 ...); load it with an SDXL backbone", with the differing shapes); a file that already
            holds a LoRA while ``separate_lora``; or no layout matches exactly: the message names the nearest
            layout and the missing and unexpected keys.
    """
    state = _nested(state)
    if "image_proj" not in state and "ip_adapter" not in state:
        if any(k.startswith("controlnet_cond_embedding.") for k in state):
            return "controlnet"
    layers = attention_layers(unet)
    _check_family(state, unet, layers)
    proj = state.get("image_proj", {}) if isinstance(state.get("image_proj"), dict) else {}
    ip = state.get("ip_adapter", {}) if isinstance(state.get("ip_adapter"), dict) else {}
    if separate_lora and any("_lora." in k for k in ip):
        raise CheckpointLayoutError("this adapter file already holds its LoRA (ip_adapter.*_lora.*): the separate LoRA file "
                                    "carries the same weights for other tools; leave it out")
    depth = _depth(proj)
    have = {f"{g}.{k}" for g in ("image_proj", "ip_adapter") if isinstance(state.get(g), dict) for k in state[g]}
    have |= {k for k, v in state.items() if not isinstance(v, dict)}
    if isinstance(state.get("controlnet"), dict):
        have.add("controlnet.*")
    templates = _templates(layers, depth, separate_lora)
    for name, keys in templates.items():
        if have == keys:
            if name == "resampler":
                name = _resampler_name(proj)
            _check_shapes(state, name, unet, lora_in_file=not separate_lora)
            return name
    def proj_part(keys):
        return {k for k in keys if k.startswith("image_proj.")}

    # nearest: the same projection first (its keys tell the family apart), then the fewest differing keys
    nearest = min(templates, key=lambda n: (len(proj_part(templates[n]) ^ proj_part(have)), len(templates[n] ^ have), n))
    missing, unexpected = sorted(templates[nearest] - have), sorted(have - templates[nearest])
    hint = ""
    if not separate_lora and missing and all("_lora." in k for k in missing):
        hint = (" Its LoRA may ship as a separate file (h94's *_lora.safetensors): pass that file as the LoRA "
                "(load_checkpoint(..., lora=FILE)).")
    nearest_name = "instantid" if nearest == "resampler" else nearest
    raise CheckpointLayoutError(
        f"unknown checkpoint layout for this UNet ({len(layers)} attention layers); nearest known: {nearest_name} "
        f"({LAYOUTS[nearest_name]}): missing {len(missing)} keys {missing[:8]}, unexpected {len(unexpected)} keys {unexpected[:8]}."
        + (hint or " Is it for another base model or a different adapter family?")
    )


def _check_shapes(state: dict, layout: str, unet, lora_in_file: bool = True) -> None:
    """The IP k/v, LoRA and projection shapes must fit the UNet's layers (names alone do not show the width)."""
    cross_dim = unet.config.cross_attention_dim
    bad = []
    ip = state["ip_adapter"]
    for i, (name, hidden, cross) in enumerate(attention_layers(unet)):
        if cross is not None:
            for p in ("to_k_ip", "to_v_ip"):
                shape = tuple(ip[f"{i}.{p}.weight"].shape)
                if shape != (hidden, cross_dim):
                    bad.append(f"ip_adapter.{i}.{p}.weight {shape} (this UNet: {(hidden, cross_dim)})")
        if layout in _LORA_LAYOUTS and lora_in_file:
            ctx = cross if cross is not None else hidden
            for target, fan_in in (("to_q_lora", hidden), ("to_k_lora", ctx), ("to_v_lora", ctx), ("to_out_lora", hidden)):
                down, up = ip[f"{i}.{target}.down.weight"].shape, ip[f"{i}.{target}.up.weight"].shape
                if down[1] != fan_in or up[0] != hidden or up[1] != down[0]:
                    bad.append(f"ip_adapter.{i}.{target} down {tuple(down)} up {tuple(up)} (this UNet: in {fan_in}, out {hidden})")
    proj = state["image_proj"]
    kind = _projection_kind(proj)
    key = "proj_out.weight" if kind == "resampler" else "norm.weight"
    width = proj[key].shape[0]
    if width != cross_dim:
        bad.append(f"image_proj.{key} rows {width} (this UNet's cross-attention width: {cross_dim})")
    if bad:
        raise CheckpointLayoutError(f"the keys are those of {layout} but {len(bad)} shapes do not fit this UNet: {bad[:5]}")


# ---------------------------------------------------------------------------- theirs -> ours
def _proj_to_ours(proj: dict, projection: str) -> dict:
    """h94 / InstantID ``image_proj`` names -> ours (diffusers' ``IPAdapterFaceID(Plus)ImageProjection`` /
    ``IPAdapterPlusImageProjection`` names)."""
    out = {}
    layers_prefix = "layers." if projection == "resampler" else "perceiver_resampler.layers."
    top = _RESAMPLER_TOP if projection == "resampler" else _PLUS_TOP
    for k, v in proj.items():
        if projection == "mlp":
            prefix = next(p for p in _MLP if k.startswith(p))
            out[_MLP[prefix] + k[len(prefix):]] = v
            continue
        m = re.match(re.escape(layers_prefix) + r"(\d+)\.(.+)$", k)
        if m is None:
            prefix = next(p for p in top if k.startswith(p))
            out[top[prefix] + k[len(prefix):]] = v
        elif m.group(2) == "0.to_kv.weight":
            k_w, v_w = v.chunk(2, dim=0)  # IP-Adapter's to_kv stacks key and value rows
            out[f"layers.{m.group(1)}.attn.to_k.weight"], out[f"layers.{m.group(1)}.attn.to_v.weight"] = k_w, v_w
        else:
            prefix = next(p for p in _PLUS_LAYER if m.group(2).startswith(p))
            out[f"layers.{m.group(1)}.{_PLUS_LAYER[prefix]}{m.group(2)[len(prefix):]}"] = v
    return {f"image_proj.{k}": v for k, v in out.items()}


def _ip_to_ours(ip: dict, layers: list, lora: bool) -> dict:
    out = {}
    for i, (name, _, cross) in enumerate(layers):
        if cross is not None:
            for p in ("to_k_ip", "to_v_ip"):
                out[f"ip_kv.{_key(name)}.{p}.weight"] = ip[f"{i}.{p}.weight"]
        if lora:
            for target, theirs in _LORA_NAMES.items():
                for part in ("down", "up"):
                    out[f"lora.{_key(name + '.' + target)}.{part}.weight"] = ip[f"{i}.{theirs}.{part}.weight"]
    return out


#: h94's SDXL LoRA file names the four attention projections like CLIP's (``k_proj``) where kohya writes
#: the UNet's own names (``to_k``); "lora key not loaded ..._attn1_k_proj.alpha" in cubiq/ComfyUI_IPAdapter_plus#210.
_H94_PROJ = {"_q_proj": "_to_q", "_k_proj": "_to_k", "_v_proj": "_to_v", "_out_proj": "_to_out_0"}
_UNET_BLOCKS = ("down_blocks_", "mid_block_", "up_blocks_")


def _kohya_names(state: dict) -> dict:
    """h94's separate-LoRA spellings -> kohya's: ``[lora_unet_]<module>_{q,k,v,out}_proj`` -> ``lora_unet_<module>_to_{q,k,v,out_0}``.

    Keys already in kohya's or diffusers' spelling pass unchanged.
    """
    out = {}
    for k, v in state.items():
        module, dot, rest = k.partition(".")
        if module.startswith(_UNET_BLOCKS):
            module = "lora_unet_" + module
        if module.startswith("lora_unet_") and "_attn" in module:
            for theirs, ours in _H94_PROJ.items():
                if module.endswith(theirs):
                    module = module[: -len(theirs)] + ours
                    break
        out[module + dot + rest] = v
    return out


def lora_state_to_ours(state: dict, layers: list, source: str = "the LoRA") -> tuple[dict, int]:
    """A separate UNet LoRA file (h94's ``ip-adapter-faceid*_lora.safetensors``, kohya or diffusers keys) as our LoRA weights.

    The file is read by diffusers' own LoRA conversion (``StableDiffusionLoraLoaderMixin.lora_state_dict``,
    kohya -> diffusers, with its alphas; then ``diffusers.utils.convert_unet_state_dict_to_peft``); only
    h94's SDXL spelling of the four projections (``k_proj`` for ``to_k``, with or without ``lora_unet_``)
    is renamed first (``_kohya_names``). A kohya ``alpha`` other than the rank is folded into ``up``
    (``up * alpha / rank``): our LoRA scale is 1, as IP-Adapter's ``LoRAAttnProcessor``.

    Args:
        state: the LoRA file's flat dict of tensors (``read_state_dict``).
        layers: ``attention_layers(unet)`` of the UNet (or the adapter's ``attn_layers``).
        source: the file's name, for messages.

    Returns:
        ``({"lora.<layer>__<target>.down.weight": (r, in), ".up.weight": (out, r)}, r)`` for every attention
        layer and ``to_q``/``to_k``/``to_v``/``to_out.0``, float as stored.

    Raises:
        CheckpointLayoutError: text-encoder LoRA keys, modules other than those four of the UNet's attention
            layers, missing modules, ranks that differ, or shapes that do not fit (each named).
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft

    text = sorted(k for k in state if k.startswith(("lora_te", "text_encoder")))
    if text:
        raise CheckpointLayoutError(f"{source} holds text-encoder LoRA keys ({text[:3]}); an ID-adapter LoRA is for the UNet only")
    converted, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(_kohya_names(state))
    unet_sd = {k[len("unet."):] if k.startswith("unet.") else k: v for k, v in converted.items()}
    peft = convert_unet_state_dict_to_peft(unet_sd)
    alpha_of = {}
    for k, a in (alphas or {}).items():  # "unet.<module>.processor.to_k_lora.down.weight.alpha"
        name = convert_unet_state_dict_to_peft({k[len("unet."):-len(".alpha")] if k.startswith("unet.") else k[:-len(".alpha")]: 0})
        alpha_of[next(iter(name)).rsplit(".lora_A", 1)[0]] = float(a)
    expected = {f"{name}.{t}": (hidden if t in ("to_q", "to_out.0") or cross is None else cross, hidden)
                for name, hidden, cross in layers for t in LORA_TARGETS}
    found = {}
    for k, v in peft.items():
        m = re.match(r"(.+)\.lora_([AB])\.weight$", k)
        if m is None:
            raise CheckpointLayoutError(f"{source}: unexpected key {k!r} (not a LoRA down/up weight of the UNet)")
        found.setdefault(m.group(1), {})[m.group(2)] = v
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointLayoutError(f"{source} does not fit this UNet's attention layers: missing {len(missing)} modules "
                                    f"{missing[:4]}, unexpected {len(unexpected)} modules {unexpected[:4]}")
    ranks = {pair["A"].shape[0] for pair in found.values() if "A" in pair}
    if len(ranks) != 1 or any(set(pair) != {"A", "B"} for pair in found.values()):
        raise CheckpointLayoutError(f"{source}: every module needs one down and one up weight of one rank; ranks found {sorted(ranks)}")
    rank = ranks.pop()
    out, bad = {}, []
    for module, (fan_in, fan_out) in expected.items():
        down, up = found[module]["A"], found[module]["B"]
        if tuple(down.shape) != (rank, fan_in) or tuple(up.shape) != (fan_out, rank):
            bad.append(f"{module} down {tuple(down.shape)} up {tuple(up.shape)} (this UNet: in {fan_in}, out {fan_out})")
            continue
        alpha = alpha_of.get(module)
        if alpha is not None and alpha != rank:
            up = up * (alpha / rank)  # kohya's scale alpha / r, folded in: ours is 1
        out[f"lora.{_key(module)}.down.weight"], out[f"lora.{_key(module)}.up.weight"] = down, up
    if bad:
        raise CheckpointLayoutError(f"{source}: {len(bad)} LoRA shapes do not fit this UNet: {bad[:4]}")
    return out, rank


def adapter_from_state_dict(state: dict, unet, shortcut: bool | None = None, lora: dict | None = None,
                            lora_source: str = "the LoRA file") -> FaceIDAdapter:
    """A ``FaceIDAdapter`` holding exactly the weights of an IP-Adapter-FaceID-family or InstantID checkpoint.

    Args:
        state: a loaded checkpoint of layout ``ip-adapter-faceid``, ``-plus``, ``-portrait``,
            ``-portrait-unnorm``, ``instantid`` or ``face-makeup`` (nested or flat-prefixed), for an SD 1.5
            or SDXL UNet.
        unet: the plain UNet it belongs to (gives the layer layout; may live on the meta device).
        shortcut: for the Plus projection: ``True`` (PlusV2, Face-MakeUp; default) or ``False``
            (FaceID-Plus v1).
        lora: the LoRA as a separate file's flat state dict (h94's ``ip-adapter-faceid*_lora.safetensors``,
            see ``lora_state_to_ours``), for an adapter file that holds IP k/v only; ``None``: the LoRA,
            if any, is in ``state``.
        lora_source: the LoRA file's name, for messages.

    Returns:
        The adapter, on the UNet's device and dtype (CPU float32 for a meta UNet). Sizes (CLIP width,
        LoRA rank, tokens, heads, resampler width) come from the file(s).

    Raises:
        CheckpointLayoutError: see ``detect_layout`` and ``lora_state_to_ours``; or ``state`` is a bare ControlNet.
    """
    layout = detect_layout(state, unet, separate_lora=lora is not None)
    if layout == "controlnet":
        raise CheckpointLayoutError("this checkpoint is a bare ControlNet: it holds no ID adapter (pass it as the ShadingNet)")
    state = _nested(state)
    proj, ip = state["image_proj"], state["ip_adapter"]
    layers = attention_layers(unet)
    kind = _projection_kind(proj)
    lora_weights, lora_rank = lora_state_to_ours(lora, layers, lora_source) if lora is not None else ({}, 0)
    downs = [k for k in ip if k.endswith("_lora.down.weight")]
    if downs:
        lora_rank = ip[downs[0]].shape[0]
    config = dict(attn_layers=layers, cross_attention_dim=_proj_width(proj, kind), lora_rank=lora_rank, projection=kind,
                  multi_face="concat" if layout in ("ip-adapter-faceid-portrait", "ip-adapter-faceid-portrait-unnorm") else "mix",
                  id_embedding="raw" if layout in ("instantid", "ip-adapter-faceid-portrait-unnorm") else "normed")
    if kind == "resampler":
        config.update(
            id_embed_dim=proj["proj_in.weight"].shape[1],
            num_tokens=proj["latents"].shape[1],
            resampler_dim=proj["latents"].shape[2],
            resampler_depth=_depth(proj),
            resampler_heads=proj["layers.0.0.to_q.weight"].shape[0] // 64,
        )
    else:
        cross_dim = config["cross_attention_dim"]
        config.update(
            id_embed_dim=proj["proj.0.weight"].shape[1],
            num_tokens=proj["proj.2.weight"].shape[0] // cross_dim,
            mlp_ratio=proj["proj.0.weight"].shape[0] // proj["proj.0.weight"].shape[1],
            shortcut=True if shortcut is None else bool(shortcut),
        )
    if kind == "plus":
        config.update(
            clip_embed_dim=proj["perceiver_resampler.proj_in.weight"].shape[1],
            resampler_depth=_depth(proj),
            resampler_heads=proj["perceiver_resampler.layers.0.0.to_q.weight"].shape[0] // 64,
        )
    adapter = FaceIDAdapter(**config)
    weights = {**_proj_to_ours(proj, kind), **_ip_to_ours(ip, layers, bool(downs)), **lora_weights}
    expected = adapter.state_dict()
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointLayoutError(f"{layout} checkpoint with shapes this adapter cannot take: {wrong[:5]}")
    adapter.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=True)
    if unet.device.type != "meta":
        adapter = adapter.to(unet.device) if adapter.dtype == unet.dtype else adapter.to(unet.device, unet.dtype)
    return adapter


def controlnet_from_state_dict(state: dict, unet, vae_scale_factor: int = 8) -> ControlNetModel:
    """A ControlNet (ShadingNet or V1's keypoint ControlNet) from its state dict.

    Args:
        state: ``ControlNetModel`` state dict (Face-MakeUp's ``"controlnet"`` entry).
        unet: the UNet it was copied from (its config gives the layout; weights are not read, so it
            may carry adapters or live on the meta device).
        vae_scale_factor: image pixels per latent pixel (conditioning encoder depth).

    Raises:
        CheckpointLayoutError: missing or unexpected keys, or shapes that differ (listed).
    """
    meta = unet.device.type == "meta"
    with _empty_weights() if meta else nullcontext():
        net = shadingnet_from_unet(unet, vae_scale_factor, load_weights=False)
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointLayoutError(
            f"the ControlNet does not fit a ControlNet of this UNet: missing {len(missing)} keys {missing[:5]}, "
            f"unexpected {len(unexpected)} keys {unexpected[:5]}, {len(wrong)} shapes differ {wrong[:5]}"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=meta)
    return net


def _empty_weights():
    from accelerate import init_empty_weights

    return init_empty_weights()


# ---------------------------------------------------------------------------- sources
def resolve(path_or_hub_id: str | os.PathLike, subfolder: str | None = None, weight_name: str | None = None,
            local_files_only: bool | None = None) -> Path:
    """The local file or folder behind a path or a Hugging Face hub id.

    Args:
        path_or_hub_id: a file, a folder, or a hub repo id (``"h94/IP-Adapter-FaceID"``).
        subfolder: folder inside it. weight_name: file inside that (needed for hub files).
        local_files_only: never download (default: ``HF_HUB_OFFLINE``).

    Raises:
        ModelNotFoundError: nothing there and nothing downloadable; the message says what to download.
    """
    local = Path(path_or_hub_id)
    for part in (subfolder, weight_name):
        if part:
            local = local / part
    if local.exists():
        return local
    repo = str(path_or_hub_id)
    if Path(repo).exists() or repo.count("/") != 1:
        raise ModelNotFoundError(f"no checkpoint at {local}")
    import huggingface_hub

    try:
        if weight_name:
            return Path(huggingface_hub.hf_hub_download(repo, weight_name, subfolder=subfolder or None, local_files_only=bool(local_files_only) or None))
        patterns = [f"{subfolder}/*"] if subfolder else ["face_adapter/*", "shadingnet/*", "controlnet/*", "config.json",
                                                         "diffusion_pytorch_model.safetensors"]  # our layout, never a whole repo
        root = huggingface_hub.snapshot_download(repo, allow_patterns=patterns, local_files_only=bool(local_files_only) or None)
        return Path(root) / (subfolder or "")
    except Exception as err:  # offline, unknown repo or file: all mean "download it yourself"
        what = f"{repo} {'/'.join(p for p in (subfolder, weight_name) if p)}".strip()
        raise ModelNotFoundError(
            f"'{what}' is not on disk and could not be downloaded ({type(err).__name__}). On a machine with internet access run "
            f"`hf download {repo}{' ' + '/'.join(p for p in (subfolder, weight_name) if p) if weight_name else ''} --local-dir DIR` "
            "and pass the local path"
        ) from err


def _folder_parts(folder: Path) -> tuple[Path | None, Path | None]:
    """``(adapter folder, controlnet folder)`` of an "ours" folder, a component folder or a saved pipeline."""
    def class_name(d: Path) -> str | None:
        cfg = d / "config.json"
        return json.loads(cfg.read_text()).get("_class_name") if cfg.is_file() else None

    if class_name(folder) == "FaceIDAdapter":
        return folder, None
    if class_name(folder) == "ControlNetModel":
        return None, folder
    adapter = folder / "face_adapter" if class_name(folder / "face_adapter") == "FaceIDAdapter" else None
    net = next((folder / n for n in ("shadingnet", "controlnet") if class_name(folder / n) == "ControlNetModel"), None)
    return adapter, net


def _check_same_unet_layers(adapter: FaceIDAdapter, unet, where: Path) -> None:
    """An "ours" adapter was saved for this UNet: the same attention layers (name, width, context width).

    Raises:
        CheckpointLayoutError: the layers differ (the first differences are named).
    """
    ours = [list(layer) for layer in attention_layers(unet)]
    theirs = [list(layer) for layer in adapter.config.attn_layers]
    if ours != theirs:
        diff = [f"{a} vs {b}" for a, b in zip(theirs, ours) if a != b][:3]
        width, unet_width = adapter.config.cross_attention_dim, unet.config.cross_attention_dim
        family = (f" (this is {_family(width)} adapter, cross-attention width {width}; the UNet's is {unet_width}: "
                  f"load it with {_backbone(width)})") if width != unet_width else ""
        raise CheckpointLayoutError(f"the adapter in {where} was trained for another UNet{family}: {len(theirs)} attention layers "
                                    f"[name, width, context] vs this UNet's {len(ours)}; first differences (adapter vs UNet): {diff}")


def _check_same_unet_config(net: ControlNetModel, unet, where: Path) -> None:
    """An "ours" ControlNet was made from this UNet (``from_unet``): the same block layout.

    Raises:
        CheckpointLayoutError: a layout key differs (each differing key is named with both values).
    """
    keys = ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim", "in_channels",
            "transformer_layers_per_block")
    blocks = len(unet.config.block_out_channels)

    def as_list(value):
        return list(value) if isinstance(value, (list, tuple)) else [value] * (blocks if isinstance(value, int) else 1)

    differ = {k: (net.config[k], unet.config[k]) for k in keys if as_list(net.config[k]) != as_list(unet.config[k])}
    if differ:
        width = net.config["cross_attention_dim"]
        family = (f" (this is {_family(width)} ControlNet: load it with {_backbone(width)})"
                  if width != unet.config.cross_attention_dim else "")
        raise CheckpointLayoutError(f"the ShadingNet in {where} was made from another UNet{family}: "
                                    + ", ".join(f"{k} {a} vs the UNet's {b}" for k, (a, b) in differ.items()))


def load_checkpoint(path_or_hub_id: str | os.PathLike, unet, subfolder: str | None = None, weight_name: str | None = None,
                    shortcut: bool | None = None, vae_scale_factor: int = 8, local_files_only: bool | None = None,
                    lora: str | os.PathLike | None = None) -> Checkpoint:
    """Read one checkpoint (file or folder, local or hub) once and turn it into our components.

    Args:
        path_or_hub_id, subfolder, weight_name, local_files_only: see ``resolve``.
        unet: the plain UNet the weights belong to.
        shortcut: Plus projection only: ``False`` for FaceID-Plus v1 (default ``True``; an "ours"
            folder keeps its own setting).
        vae_scale_factor: for a ControlNet, image pixels per latent pixel.
        lora: a separate LoRA file for an IP-Adapter-FaceID(-Plus) file that holds IP k/v only (h94's
            ``ip-adapter-faceid_sdxl_lora.safetensors``, kohya or diffusers keys; ``lora_state_to_ours``).
            h94's ``.bin`` files already hold their LoRA: pass the ``.bin`` alone.

    Returns:
        A ``Checkpoint`` with its layout, adapter and/or ControlNet.

    Raises:
        ModelNotFoundError: nothing at the path or hub id.
        CheckpointError: truncated/corrupt file or refused pickle.
        CheckpointLayoutError: unknown layout (the nearest one and the differing keys are named), a
            file for another backbone family (the family is named), or a ``lora`` with a folder or with an
            adapter file that already holds its LoRA.
    """
    path = resolve(path_or_hub_id, subfolder, weight_name, local_files_only)
    lora_path = resolve(lora, local_files_only=local_files_only) if lora is not None else None
    if lora_path is not None and (path.is_dir() or lora_path.is_dir()):
        raise CheckpointLayoutError(f"a separate LoRA file goes with an IP-Adapter file, not a folder ({path if path.is_dir() else lora_path}): "
                                    "pass the adapter .bin/.safetensors and the LoRA .safetensors")
    if path.is_dir():
        adapter_dir, net_dir = _folder_parts(path)
        if adapter_dir is None and net_dir is None:
            files = sorted(p.name for p in path.iterdir())[:10]
            raise CheckpointLayoutError(
                f"{path} is a folder without face_adapter/ or shadingnet/ (facemakeup's layout; holds {files}): "
                "pass the checkpoint file itself (weight_name) or a folder written by `facemakeup convert --to ours`"
            )
        adapter = FaceIDAdapter.from_pretrained(adapter_dir) if adapter_dir else None
        if adapter is not None:
            _check_same_unet_layers(adapter, unet, adapter_dir)
            if shortcut is not None:
                adapter.register_to_config(shortcut=bool(shortcut))
        net = ControlNetModel.from_pretrained(net_dir) if net_dir else None
        if net is not None:
            _check_same_unet_config(net, unet, net_dir)
        return Checkpoint("ours", str(path), adapter, net)
    state = read_state_dict(path)
    try:
        layout = detect_layout(state, unet, separate_lora=lora_path is not None)
    except CheckpointLayoutError as err:
        raise CheckpointLayoutError(f"{path}: {err}") from None
    if layout == "controlnet":
        if lora_path is not None:
            raise CheckpointLayoutError(f"{path} is a bare ControlNet: a separate LoRA file goes with an IP-Adapter file")
        return Checkpoint(layout, str(path), None, controlnet_from_state_dict(state, unet, vae_scale_factor))
    lora_state = read_state_dict(lora_path) if lora_path is not None else None
    try:
        adapter = adapter_from_state_dict(state, unet, shortcut, lora=lora_state, lora_source=str(lora_path))
    except CheckpointLayoutError as err:
        raise CheckpointLayoutError(f"{path}: {err}") from None
    net = controlnet_from_state_dict(_nested(state)["controlnet"], unet, vae_scale_factor) if layout == "face-makeup" else None
    logger.info("%s: layout %s", path, layout)
    return Checkpoint(layout, str(path), adapter, net)



# ---------------------------------------------------------------------------- ours -> theirs
def _proj_to_theirs(adapter: FaceIDAdapter) -> dict:
    projection = adapter.config.projection
    sd = {k[len("image_proj."):]: v for k, v in adapter.state_dict().items() if k.startswith("image_proj.")}
    table = {"mlp": _MLP, "plus": _PLUS_TOP, "resampler": _RESAMPLER_TOP}[projection]
    layers_prefix = "layers." if projection == "resampler" else "perceiver_resampler.layers."
    inverse = {ours: theirs for theirs, ours in table.items()}
    layer_inverse = {ours: theirs for theirs, ours in _PLUS_LAYER.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.(.+)$", k) if projection != "mlp" else None
        if m is None:
            prefix = max((p for p in inverse if k.startswith(p)), key=len)
            out[inverse[prefix] + k[len(prefix):]] = v
        elif m.group(2) == "attn.to_k.weight":  # IP-Adapter stacks key and value rows in to_kv
            out[f"{layers_prefix}{m.group(1)}.0.to_kv.weight"] = torch.cat([v, sd[f"layers.{m.group(1)}.attn.to_v.weight"]])
        elif m.group(2) != "attn.to_v.weight":
            prefix = next(p for p in layer_inverse if m.group(2).startswith(p))
            out[f"{layers_prefix}{m.group(1)}.{layer_inverse[prefix]}{m.group(2)[len(prefix):]}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _ip_to_theirs(adapter: FaceIDAdapter) -> dict:
    sd = adapter.state_dict()
    out = {}
    for i, (name, _, cross) in enumerate(adapter.config.attn_layers):
        if cross is not None:
            for p in ("to_k_ip", "to_v_ip"):
                out[f"{i}.{p}.weight"] = sd[f"ip_kv.{_key(name)}.{p}.weight"]
        if adapter.config.lora_rank > 0:
            for target, theirs in _LORA_NAMES.items():
                for part in ("down", "up"):
                    out[f"{i}.{theirs}.{part}.weight"] = sd[f"lora.{_key(name + '.' + target)}.{part}.weight"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def export_state_dict(adapter: FaceIDAdapter, controlnet: ControlNetModel | None = None) -> dict:
    """Our components in IP-Adapter's nested layout: ``{"image_proj", "ip_adapter"[, "controlnet"]}``.

    ``image_proj`` uses ``MLPProjModel`` (FaceID, Portrait), ``ProjPlusModel`` (FaceID-Plus/PlusV2) or
    ``Resampler`` (InstantID, Portrait-unnorm) names, ``ip_adapter`` the processor numbering
    (``{i}.to_k_ip.weight``, ``{i}.to_q_lora.down.weight``, ...), ``controlnet`` the ``ControlNetModel``
    state dict (Face-MakeUpV2's ``model.bin``). The same for SD 1.5 and SDXL adapters: the file has
    the adapter's widths and processor count.

    Returns:
        Nested dict of contiguous CPU tensors in the adapter's dtype (h94's files are float16,
        InstantID's float32: cast before saving to match one bit for bit).
    """
    out = {"image_proj": _proj_to_theirs(adapter), "ip_adapter": _ip_to_theirs(adapter)}
    if controlnet is not None:
        out["controlnet"] = {k: v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()}
    return out


def export_lora_state_dict(adapter: FaceIDAdapter) -> dict:
    """The adapter's LoRA alone, in kohya's UNet keys, as h94's separate ``*_lora.safetensors`` carry it.

    Keys ``lora_unet_<layer with _>_<to_q|to_k|to_v|to_out_0>.lora_down.weight`` (rank, in),
    ``.lora_up.weight`` (out, rank) and ``.alpha`` (a float32 scalar = rank: LoRA scale 1). diffusers'
    ``load_lora_weights`` and ComfyUI's LoRA loader read these names (h94's SD 1.5 files use them; its
    SDXL files spell the projections ``q_proj``..., which ``lora_state_to_ours`` also reads).

    Raises:
        ValueError: the adapter has no LoRA (``lora_rank == 0``: Portrait, InstantID).
    """
    rank = adapter.config.lora_rank
    if rank == 0:
        raise ValueError(f"this adapter ({adapter.config.projection} projection) has no LoRA to export")
    sd = adapter.state_dict()
    out = {}
    for name, _, _ in adapter.config.attn_layers:
        for target in LORA_TARGETS:
            module = "lora_unet_" + f"{name}.{target}".replace(".", "_")
            pair = f"lora.{_key(name + '.' + target)}"
            out[f"{module}.lora_down.weight"] = sd[f"{pair}.down.weight"].detach().cpu().contiguous()
            out[f"{module}.lora_up.weight"] = sd[f"{pair}.up.weight"].detach().cpu().contiguous()
            out[f"{module}.alpha"] = torch.tensor(float(rank))
    return out


def write_checkpoint(dst: str | os.PathLike, adapter: FaceIDAdapter | None, controlnet: ControlNetModel | None, to: str) -> list[Path]:
    """Write components in one of the ``TARGETS`` layouts.

    Args:
        dst: ``"ours"``: a folder (gets ``face_adapter/`` and ``shadingnet/``); ``"face-makeup-v2"``:
            a ``model.bin`` file (a folder gets ``model.bin`` inside); ``"ip-adapter"``: a ``.bin``
            (torch pickle, nested) or ``.safetensors`` (flat, ``image_proj.``/``ip_adapter.`` prefixes) file
            in the IP-Adapter layout of the adapter's family: FaceID (MLP + LoRA), FaceID-Plus(V2), Portrait
            (MLP, no LoRA), InstantID / Portrait-unnorm (Resampler), for SD 1.5 or SDXL as the adapter is.
        adapter, controlnet: the components (``controlnet`` is left out of ``"ip-adapter"``: InstantID's
            IdentityNet is its own ``ControlNetModel/`` folder, written by ``"ours"`` as ``shadingnet/``).
        to: the target layout.

    Returns:
        The paths written.

    Raises:
        ValueError: unknown target, or a component the target needs is missing
            (``face-makeup-v2`` needs an adapter with the Plus projection, as FaceID-PlusV2).
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target layout {to!r}; choose one of {TARGETS}")
    dst = Path(dst)
    if to == "ours":
        if adapter is None and controlnet is None:
            raise ValueError("nothing to write: no adapter and no ControlNet")
        written = []
        if adapter is not None:
            adapter.save_pretrained(dst / "face_adapter")
            written.append(dst / "face_adapter")
        if controlnet is not None:
            controlnet.save_pretrained(dst / "shadingnet")
            written.append(dst / "shadingnet")
        return written
    if adapter is None:
        raise ValueError(f"--to {to} needs an ID adapter; the source holds only a ControlNet")
    if to == "face-makeup-v2" and (adapter.config.projection != "plus" or adapter.config.multi_face != "mix"):
        raise ValueError(f"--to {to} writes the FaceID-PlusV2 layout Face-MakeUp reads; this adapter has the "
                         f"{adapter.config.projection} projection (use --to ip-adapter or --to ours)")
    state = export_state_dict(adapter, controlnet if to == "face-makeup-v2" else None)
    if to == "face-makeup-v2":
        dst = dst / "model.bin" if dst.is_dir() or not dst.suffix else dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{g}.{k}": v for g, part in state.items() for k, v in part.items()}, dst)
    else:
        torch.save(state, dst)
    return [dst]


def write_lora_file(dst: str | os.PathLike, adapter: FaceIDAdapter) -> Path:
    """Write the adapter's LoRA alone as a ``.safetensors`` file (``export_lora_state_dict``'s kohya keys).

    Raises:
        ValueError: ``dst`` does not end in ``.safetensors``, or the adapter has no LoRA.
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"a LoRA file is written as .safetensors, got {dst.name!r}")
    state = export_lora_state_dict(adapter)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, dst)
    return dst


def reads_clip_features(path: str | os.PathLike | None) -> bool:
    """Whether the adapter checkpoint at ``path`` reads CLIP image features (a Plus projection: FaceID-Plus,
    -PlusV2, Face-MakeUp V1/V2, or an "ours" folder with ``projection="plus"``), decided from its keys or
    config without reading its tensors (a zip pickle is memory-mapped, a safetensors header read).

    ``None`` (a fresh adapter, Plus-shaped) and files that cannot be peeked at (a legacy pickle) count as
    reading CLIP; the full read in ``load_checkpoint`` still decides the layout.
    """
    if path is None:
        return True
    path = Path(path)
    try:
        if path.is_dir():
            adapter_dir, _ = _folder_parts(path)
            if adapter_dir is None:
                return False
            return json.loads((adapter_dir / "config.json").read_text()).get("projection", "plus") == "plus"
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                return any("perceiver_resampler." in k for k in f.keys())
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable here: load_checkpoint reports it properly
        return True
    proj = state.get("image_proj", state) if isinstance(state, dict) else {}
    return any("perceiver_resampler." in k for k in (proj if isinstance(proj, dict) else {}))
