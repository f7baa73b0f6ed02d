"""Every checkpoint layout people already have, read once, recognised by its keys and shapes.

Layouts (exact key names and shapes: ``docs/checkpoints.md``):

- ``ip-adapter-faceid``: h94/IP-Adapter-FaceID ``ip-adapter-faceid_sd15.bin``: ``MLPProjModel``
  (ArcFace only) + LoRA and IP k/v on the attention processors.
- ``ip-adapter-faceid-plus``: ``ip-adapter-faceid-plus_sd15.bin`` and ``-plusv2_sd15.bin``:
  ``ProjPlusModel`` (ArcFace + CLIP Perceiver resampler) + LoRA + IP k/v. Plus and PlusV2 have the
  same keys; they differ in the shortcut at inference (PlusV2 and Face-MakeUp: on, the default;
  Plus: pass ``shortcut=False``).
- ``ip-adapter-faceid-portrait``: ``ip-adapter-faceid-portrait_sd15.bin`` / ``-portrait-v11_sd15.bin``:
  ``MLPProjModel`` with 16 tokens per face, IP k/v only (no LoRA); several faces = more tokens.
- ``face-makeup``: Face-MakeUp V1 (``OpenFace-CQUPT/Face-MakeUp_SD1.5`` ``model.bin``) and V2
  (``model.bin``): the FaceID-PlusV2 layout plus ``"controlnet"`` (a ``ControlNetModel.from_unet``
  state dict) in one pickle. V1's ControlNet reads the 5-keypoint map, V2's the shading map; the
  file does not say which (the keys are the same), the caller picks the condition.
- ``ours``: a folder with ``face_adapter/`` (``FaceIDAdapter.save_pretrained``) and optionally
  ``shadingnet/`` (``ControlNetModel.save_pretrained``), or one of those component folders, or a
  saved ``FaceMakeUpPipeline`` (``face_adapter/`` + ``controlnet/``).
- ``controlnet``: a bare ControlNet state dict (``.safetensors``/``.bin``).

Files are ``.safetensors`` (flat keys, ``image_proj.``/``ip_adapter.``/``controlnet.`` prefixes) or
torch pickles, loaded only with ``torch.load(weights_only=True)``: tensors and plain containers,
never code. The IP-Adapter processor numbering is the UNet's ``attn_processors`` order.

Example:
    >>> ckpt = load_checkpoint("ip-adapter-faceid-plusv2_sd15.bin", unet)
    >>> ckpt.layout, ckpt.adapter, ckpt.controlnet
    ('ip-adapter-faceid-plus', FaceIDAdapter(...), None)
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
from .id_adapter import FaceIDAdapter, _key, attention_layers
from .shadingnet import shadingnet_from_unet

logger = logging.getLogger(__name__)

#: Known layouts and where they come from.
LAYOUTS = {
    "ip-adapter-faceid": "h94/IP-Adapter-FaceID ip-adapter-faceid_sd15.bin (ArcFace MLP projection + LoRA)",
    "ip-adapter-faceid-plus": "h94/IP-Adapter-FaceID ip-adapter-faceid-plus(v2)_sd15.bin (ArcFace + CLIP resampler + LoRA)",
    "ip-adapter-faceid-portrait": "h94/IP-Adapter-FaceID ip-adapter-faceid-portrait(-v11)_sd15.bin (ArcFace MLP, 16 tokens/face, no LoRA)",
    "face-makeup": "Face-MakeUp V1/V2 model.bin (FaceID-PlusV2 layout + 'controlnet')",
    "ours": "facemakeup folder (face_adapter/ + shadingnet/)",
    "controlnet": "a ControlNet state dict",
}
#: ``convert`` targets.
TARGETS = ("ours", "face-makeup-v2", "ip-adapter")
#: IP-Adapter's names of the LoRA targets (``LoRAAttnProcessor``): ours -> theirs.
_LORA_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_PLUS_TOP = {"proj.0.": "proj.net.0.proj.", "proj.2.": "proj.net.2.", "norm.": "norm.",
             "perceiver_resampler.proj_in.": "proj_in.", "perceiver_resampler.proj_out.": "proj_out.",
             "perceiver_resampler.norm_out.": "norm_out."}
_PLUS_LAYER = {"0.norm1.": "ln0.", "0.norm2.": "ln1.", "0.to_q.": "attn.to_q.", "0.to_out.": "attn.to_out.0.",
               "1.0.": "ff.0.", "1.1.": "ff.1.net.0.proj.", "1.3.": "ff.1.net.2."}
_MLP = {"proj.0.": "ff.net.0.proj.", "proj.2.": "ff.net.2.", "norm.": "norm."}


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


def _proj_keys(projection: str, depth: int = 4) -> set[str]:
    keys = {f"{m}.{p}" for m in ("proj.0", "proj.2", "norm") for p in ("weight", "bias")}
    if projection == "plus":
        keys |= {f"perceiver_resampler.{m}.{p}" for m in ("proj_in", "proj_out", "norm_out") for p in ("weight", "bias")}
        for i in range(depth):
            r = f"perceiver_resampler.layers.{i}."
            keys |= {r + f"0.{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")}
            keys |= {r + "0.to_q.weight", r + "0.to_kv.weight", r + "0.to_out.weight", r + "1.0.weight", r + "1.0.bias",
                     r + "1.1.weight", r + "1.3.weight"}
    return keys


def _templates(layers: list, depth: int) -> dict[str, set[str]]:
    """Flat ``group.key`` names each adapter layout has for a UNet with ``layers``."""
    def flat(proj, ip):
        return {f"image_proj.{k}" for k in proj} | {f"ip_adapter.{k}" for k in ip}

    plus = flat(_proj_keys("plus", depth), _ip_keys(layers, True))
    return {
        "ip-adapter-faceid": flat(_proj_keys("mlp"), _ip_keys(layers, True)),
        "ip-adapter-faceid-plus": plus,
        "ip-adapter-faceid-portrait": flat(_proj_keys("mlp"), _ip_keys(layers, False)),
        "face-makeup": plus | {"controlnet.*"},
    }


def detect_layout(state: dict, unet) -> str:
    """The layout of a loaded checkpoint, from its keys and shapes (never its file name).

    Args:
        state: the dict ``read_state_dict`` returned.
        unet: the plain ``UNet2DConditionModel`` it is for (gives the processor numbering).

    Returns:
        One of ``"ip-adapter-faceid"``, ``"ip-adapter-faceid-plus"``, ``"ip-adapter-faceid-portrait"``,
        ``"face-makeup"``, ``"controlnet"``.

    Raises:
        CheckpointLayoutError: no layout matches exactly; the message names the nearest layout and
            the missing and unexpected keys.
    """
    state = _nested(state)
    if "image_proj" not in state and "ip_adapter" not in state:
        if any(k.startswith("controlnet_cond_embedding.") for k in state):
            return "controlnet"
    layers = attention_layers(unet)
    proj = state.get("image_proj", {}) if isinstance(state.get("image_proj"), dict) else {}
    depth = len({k.split(".")[2] for k in proj if k.startswith("perceiver_resampler.layers.")}) or 4
    have = {f"{g}.{k}" for g in ("image_proj", "ip_adapter") if isinstance(state.get(g), dict) for k in state[g]}
    have |= {k for k, v in state.items() if not isinstance(v, dict)}
    if isinstance(state.get("controlnet"), dict):
        have.add("controlnet.*")
    templates = _templates(layers, depth)
    for name, keys in templates.items():
        if have == keys:
            _check_shapes(state, name, unet)
            return name
    nearest = min(templates, key=lambda n: (len(templates[n] ^ have), n))
    missing, unexpected = sorted(templates[nearest] - have), sorted(have - templates[nearest])
    raise CheckpointLayoutError(
        f"unknown checkpoint layout for this UNet ({len(layers)} attention layers); nearest known: {nearest} "
        f"({LAYOUTS[nearest]}): missing {len(missing)} keys {missing[:8]}, unexpected {len(unexpected)} keys {unexpected[:8]}. "
        "Is it for another base model (SD 1.5 layouts only) or a different adapter family?"
    )


def _check_shapes(state: dict, layout: str, unet) -> None:
    """The IP k/v and LoRA shapes must fit the UNet's layers (names alone do not show an SDXL file)."""
    cross_dim = unet.config.cross_attention_dim
    bad = []
    ip = state["ip_adapter"]
    for i, (name, hidden, cross) in enumerate(attention_layers(unet)):
        if cross is not None:
            for p in ("to_k_ip", "to_v_ip"):
                shape = tuple(ip[f"{i}.{p}.weight"].shape)
                if shape != (hidden, cross_dim):
                    bad.append(f"ip_adapter.{i}.{p}.weight {shape} (this UNet: {(hidden, cross_dim)})")
        if layout in ("ip-adapter-faceid", "ip-adapter-faceid-plus", "face-makeup"):
            ctx = cross if cross is not None else hidden
            for target, fan_in in (("to_q_lora", hidden), ("to_k_lora", ctx), ("to_v_lora", ctx), ("to_out_lora", hidden)):
                down, up = ip[f"{i}.{target}.down.weight"].shape, ip[f"{i}.{target}.up.weight"].shape
                if down[1] != fan_in or up[0] != hidden or up[1] != down[0]:
                    bad.append(f"ip_adapter.{i}.{target} down {tuple(down)} up {tuple(up)} (this UNet: in {fan_in}, out {hidden})")
    norm = state["image_proj"]["norm.weight"].shape[0]
    if norm != cross_dim:
        bad.append(f"image_proj.norm.weight ({norm},) (this UNet's cross-attention width: {cross_dim})")
    if bad:
        raise CheckpointLayoutError(f"the keys are those of {layout} but {len(bad)} shapes do not fit this UNet: {bad[:5]}")


# ---------------------------------------------------------------------------- theirs -> ours
def _proj_to_ours(proj: dict, projection: str) -> dict:
    """h94 ``image_proj`` names -> ours (diffusers' ``IPAdapterFaceID(Plus)ImageProjection`` names)."""
    out = {}
    for k, v in proj.items():
        if projection == "mlp":
            prefix = next(p for p in _MLP if k.startswith(p))
            out[_MLP[prefix] + k[len(prefix):]] = v
            continue
        m = re.match(r"perceiver_resampler\.layers\.(\d+)\.(.+)$", k)
        if m is None:
            prefix = next(p for p in _PLUS_TOP if k.startswith(p))
            out[_PLUS_TOP[prefix] + k[len(prefix):]] = v
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


def adapter_from_state_dict(state: dict, unet, shortcut: bool | None = None) -> FaceIDAdapter:
    """A ``FaceIDAdapter`` holding exactly the weights of an IP-Adapter-FaceID-family checkpoint.

    Args:
        state: a loaded checkpoint of layout ``ip-adapter-faceid``, ``-plus``, ``-portrait`` or
            ``face-makeup`` (nested or flat-prefixed).
        unet: the plain UNet it belongs to (gives the layer layout; may live on the meta device).
        shortcut: for the Plus projection: ``True`` (PlusV2, Face-MakeUp; default) or ``False``
            (FaceID-Plus v1).

    Returns:
        The adapter, on the UNet's device and dtype (CPU float32 for a meta UNet). Sizes (CLIP
        width, LoRA rank, tokens, heads) come from the file.

    Raises:
        CheckpointLayoutError: see ``detect_layout``; or ``state`` is a bare ControlNet.
    """
    layout = detect_layout(state, unet)
    if layout == "controlnet":
        raise CheckpointLayoutError("this checkpoint is a bare ControlNet: it holds no ID adapter (pass it as the ShadingNet)")
    state = _nested(state)
    proj, ip = state["image_proj"], state["ip_adapter"]
    layers = attention_layers(unet)
    cross_dim = proj["norm.weight"].shape[0]
    plus = "perceiver_resampler.proj_in.weight" in proj
    downs = [k for k in ip if k.endswith("_lora.down.weight")]
    config = dict(
        attn_layers=layers,
        cross_attention_dim=cross_dim,
        id_embed_dim=proj["proj.0.weight"].shape[1],
        num_tokens=proj["proj.2.weight"].shape[0] // cross_dim,
        lora_rank=ip[downs[0]].shape[0] if downs else 0,
        mlp_ratio=proj["proj.0.weight"].shape[0] // proj["proj.0.weight"].shape[1],
        projection="plus" if plus else "mlp",
        shortcut=True if shortcut is None else bool(shortcut),
        multi_face="concat" if layout == "ip-adapter-faceid-portrait" else "mix",
    )
    if plus:
        config.update(
            clip_embed_dim=proj["perceiver_resampler.proj_in.weight"].shape[1],
            resampler_depth=len({k.split(".")[2] for k in proj if k.startswith("perceiver_resampler.layers.")}),
            resampler_heads=proj["perceiver_resampler.layers.0.0.to_q.weight"].shape[0] // 64,
        )
    adapter = FaceIDAdapter(**config)
    weights = {**_proj_to_ours(proj, config["projection"]), **_ip_to_ours(ip, layers, bool(downs))}
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
        raise CheckpointLayoutError(f"the adapter in {where} was trained for another UNet: {len(theirs)} attention layers "
                                    f"[name, width, context] vs this UNet's {len(ours)}; first differences (adapter vs UNet): {diff}")


def _check_same_unet_config(net: ControlNetModel, unet, where: Path) -> None:
    """An "ours" ControlNet was made from this UNet (``from_unet``): the same block layout.

    Raises:
        CheckpointLayoutError: a layout key differs (each differing key is named with both values).
    """
    keys = ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim", "in_channels")

    def as_list(value):
        return list(value) if isinstance(value, (list, tuple)) else [value]

    differ = {k: (net.config[k], unet.config[k]) for k in keys if as_list(net.config[k]) != as_list(unet.config[k])}
    if differ:
        raise CheckpointLayoutError(f"the ShadingNet in {where} was made from another UNet: "
                                    + ", ".join(f"{k} {a} vs the UNet's {b}" for k, (a, b) in differ.items()))


def load_checkpoint(path_or_hub_id: str | os.PathLike, unet, subfolder: str | None = None, weight_name: str | None = None,
                    shortcut: bool | None = None, vae_scale_factor: int = 8, local_files_only: bool | None = None) -> Checkpoint:
    """Read one checkpoint (file or folder, local or hub) once and turn it into our components.

    Args:
        path_or_hub_id, subfolder, weight_name, local_files_only: see ``resolve``.
        unet: the plain UNet the weights belong to.
        shortcut: Plus projection only: ``False`` for FaceID-Plus v1 (default ``True``; an "ours"
            folder keeps its own setting).
        vae_scale_factor: for a ControlNet, image pixels per latent pixel.

    Returns:
        A ``Checkpoint`` with its layout, adapter and/or ControlNet.

    Raises:
        ModelNotFoundError: nothing at the path or hub id.
        CheckpointError: truncated/corrupt file or refused pickle.
        CheckpointLayoutError: unknown layout (the nearest one and the differing keys are named).
    """
    path = resolve(path_or_hub_id, subfolder, weight_name, local_files_only)
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
        layout = detect_layout(state, unet)
    except CheckpointLayoutError as err:
        raise CheckpointLayoutError(f"{path}: {err}") from None
    if layout == "controlnet":
        return Checkpoint(layout, str(path), None, controlnet_from_state_dict(state, unet, vae_scale_factor))
    adapter = adapter_from_state_dict(state, unet, shortcut)
    net = controlnet_from_state_dict(_nested(state)["controlnet"], unet, vae_scale_factor) if layout == "face-makeup" else None
    logger.info("%s: layout %s", path, layout)
    return Checkpoint(layout, str(path), adapter, net)


# ---------------------------------------------------------------------------- ours -> theirs
def _proj_to_theirs(adapter: FaceIDAdapter) -> dict:
    sd = {k[len("image_proj."):]: v for k, v in adapter.state_dict().items() if k.startswith("image_proj.")}
    table = _MLP if adapter.config.projection == "mlp" else _PLUS_TOP
    inverse = {ours: theirs for theirs, ours in table.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.(.+)$", k)
        if m is None:
            prefix = max((p for p in inverse if k.startswith(p)), key=len)
            out[inverse[prefix] + k[len(prefix):]] = v
        elif m.group(2) == "attn.to_k.weight":
            out[f"perceiver_resampler.layers.{m.group(1)}.0.to_kv.weight"] = torch.cat([v, sd[f"layers.{m.group(1)}.attn.to_v.weight"]])
        elif m.group(2) != "attn.to_v.weight":
            layer_inverse = {ours: theirs for theirs, ours in _PLUS_LAYER.items()}
            prefix = next(p for p in layer_inverse if m.group(2).startswith(p))
            out[f"perceiver_resampler.layers.{m.group(1)}.{layer_inverse[prefix]}{m.group(2)[len(prefix):]}"] = v
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

    ``image_proj`` uses ``ProjPlusModel``/``MLPProjModel`` names, ``ip_adapter`` the processor
    numbering (``{i}.to_k_ip.weight``, ``{i}.to_q_lora.down.weight``, ...), ``controlnet`` the
    ``ControlNetModel`` state dict (Face-MakeUpV2's ``model.bin``).
    """
    out = {"image_proj": _proj_to_theirs(adapter), "ip_adapter": _ip_to_theirs(adapter)}
    if controlnet is not None:
        out["controlnet"] = {k: v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()}
    return out


def write_checkpoint(dst: str | os.PathLike, adapter: FaceIDAdapter | None, controlnet: ControlNetModel | None, to: str) -> list[Path]:
    """Write components in one of the ``TARGETS`` layouts.

    Args:
        dst: ``"ours"``: a folder (gets ``face_adapter/`` and ``shadingnet/``); ``"face-makeup-v2"``:
            a ``model.bin`` file (a folder gets ``model.bin`` inside); ``"ip-adapter"``: a ``.bin``
            (torch pickle, nested) or ``.safetensors`` (flat, ``image_proj.``/``ip_adapter.`` prefixes) file.
        adapter, controlnet: the components (``controlnet`` is left out of ``"ip-adapter"``).
        to: the target layout.

    Returns:
        The paths written.

    Raises:
        ValueError: unknown target, or a component the target needs is missing
            (``ip-adapter``/``face-makeup-v2`` need an adapter with the Plus projection, as PlusV2).
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
    if adapter.config.projection != "plus" or adapter.config.multi_face != "mix":
        raise ValueError(f"--to {to} writes the FaceID-PlusV2 layout; this adapter has the {adapter.config.projection} projection "
                         "(use --to ours for FaceID / Portrait adapters)")
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
