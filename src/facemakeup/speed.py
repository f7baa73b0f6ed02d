"""Going fast: samplers by name, few-step LoRAs, TAESD decoding and ``torch.compile``, for both pipelines.

What the peers' users do to go fast (issue 22; docs/sources.md, "Speed anchors"): stack a few-step LoRA
(LCM-LoRA, TCD, Hyper-SD) on the identity adapter with its sampler (``lcm``, ``tcd``) at 4-8 steps
and guidance 1; stop the ShadingNet early (the pipelines' ``control_guidance_end``); decode with
TAESD (``madebyollin/taesd``, ``madebyollin/taesdxl``: ``AutoencoderTiny``, a few MB, for previews);
compile the UNet and ControlNet. Each piece is a small function here, used by ``generation``
(``facemakeup generate``) and the demo:

* ``SCHEDULERS`` / ``set_scheduler(pipe, name)``: ``ddim`` (Face-MakeUp's), ``euler``, ``euler-a``,
  ``dpm++`` (DPM-Solver++ 2M), ``lcm``, ``tcd``, each ``from_config`` of the pipeline's scheduler
  (same betas and spacing, diffusers' recipe);
* ``LoraSpec`` / ``load_loras(pipe, specs)``: diffusers-format LoRAs beside the face adapter's LoRA
  (``facemakeup.lora``), weights set, checked to fit (every LoRA layer of the file lands in the model);
* ``load_vae(spec, family)`` / ``use_vae(pipe, vae)``: ``"tiny"`` (TAESD of the family), or a
  folder holding an ``AutoencoderTiny`` or ``AutoencoderKL``; checked against the pipeline's latents;
* ``compile_denoiser(pipe)``: ``torch.compile`` of the UNet and ControlNet in place.

Example:
    >>> pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", adapter="ip-adapter-faceid-plusv2_sd15.bin")
    >>> load_loras(pipe, [LoraSpec.parse("lcm-lora-sdv1-5/")])
    >>> set_scheduler(pipe, "lcm")
    >>> pipe.fuse_lora()
    >>> out = pipe("a smiling woman", reference_image="me.jpg", num_inference_steps=4, guidance_scale=1.0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import CheckpointError, CheckpointLayoutError, FaceMakeUpInputError, ModelNotFoundError

logger = logging.getLogger(__name__)

#: ``--scheduler`` names -> diffusers scheduler classes (made ``from_config`` of the pipeline's own).
SCHEDULERS = {
    "ddim": "DDIMScheduler",  # Face-MakeUp's sampler (the SD 1.5 default here)
    "euler": "EulerDiscreteScheduler",  # SDXL-base's
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",  # DPM-Solver++ 2M
    "lcm": "LCMScheduler",  # with an LCM-LoRA, 2-8 steps, guidance 1-2
    "tcd": "TCDScheduler",  # with a TCD-LoRA, 2-8 steps
}
#: TAESD, the tiny VAE of each backbone family (``--vae tiny``).
TINY_VAES = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def set_scheduler(pipe, name: str | None) -> str:
    """Give ``pipe`` the sampler ``name`` (``SCHEDULERS``), made from its scheduler's config; ``None``
    keeps the current one.

    Returns:
        The scheduler's class name.

    Raises:
        FaceMakeUpInputError: an unknown name (the known ones are listed).
    """
    if name is None:
        return type(pipe.scheduler).__name__
    if name not in SCHEDULERS:
        raise FaceMakeUpInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return cls.__name__


# ---------------------------------------------------------------------------- LoRAs
@dataclass(frozen=True)
class LoraSpec:
    """One user LoRA: where it is and how strongly it acts.

    Attributes:
        path: a diffusers-format LoRA: a ``.safetensors``/``.bin`` file or a folder holding
            ``pytorch_lora_weights.safetensors`` (what ``save_lora_weights`` writes; LCM-LoRA's,
            TCD's and Hyper-SD's hub folders).
        weight: its weight (``set_adapters``; 1.0 = as trained; negative values subtract it).
        name: the adapter name (default: made from the file or folder name).
        sha256: of the weights file, filled by ``load_loras`` (provenance).
    """

    path: str
    weight: float = 1.0
    name: str | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``FILE_OR_DIR[:WEIGHT]`` -> a spec (``--lora``): the part after the last ``:`` is the weight
        when it reads as a number, else part of the path.

        Raises:
            FaceMakeUpInputError: an empty path, or a weight that is not finite or beyond [-10, 10].
        """
        from . import validation as v

        path, weight = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep:
            try:
                weight, path = float(tail), head
            except ValueError:
                pass
        if not path:
            raise FaceMakeUpInputError(f"LoRA {text!r}: no file or folder before the weight; write FILE_OR_DIR[:WEIGHT]")
        v.check_number(weight, f"the weight of LoRA {path}", low=-10, high=10, fix="write FILE_OR_DIR:WEIGHT with e.g. 0.8")
        return cls(path=path, weight=weight)

    def weights_file(self) -> Path:
        """The file holding the weights (the folder's ``pytorch_lora_weights.safetensors`` or its only
        ``.safetensors``).

        Raises:
            ModelNotFoundError: no such file or folder, or a folder without LoRA weights.
        """
        path = Path(self.path).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            named = path / "pytorch_lora_weights.safetensors"
            found = [named] if named.is_file() else sorted(path.glob("*.safetensors"))
            if len(found) == 1:
                return found[0]
            raise ModelNotFoundError(f"LoRA folder {path} holds {len(found)} .safetensors files and no pytorch_lora_weights.safetensors; "
                                     "pass the LoRA file itself")
        raise ModelNotFoundError(f"LoRA {path}: no such file or folder; download it (e.g. `hf download latent-consistency/lcm-lora-sdv1-5 "
                                 "--local-dir DIR`) and pass DIR")


def check_lora_file(spec: LoraSpec) -> Path:
    """Cheap checks before any model loads: the weights file exists and is a readable LoRA (a
    safetensors header whose tensor names say ``lora``; ``.bin`` files are read by diffusers, tensors only).

    Returns:
        The weights file.

    Raises:
        ModelNotFoundError: missing. CheckpointError: not readable or not a LoRA.
    """
    file = spec.weights_file()
    if file.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                keys = list(f.keys())
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for the user
            raise CheckpointError(f"LoRA {file}: not a readable safetensors file ({type(err).__name__}: {err}); download it again") from None
        if not keys or not any("lora" in k for k in keys):
            raise CheckpointError(f"LoRA {file}: its {len(keys)} tensors are not LoRA weights (no name says 'lora'); pass a "
                                  "diffusers- or kohya-format LoRA")
    return file


def load_loras(pipe, specs: list[LoraSpec]) -> list[LoraSpec]:
    """Load user LoRAs into ``pipe`` beside the face adapter's LoRA and set their weights (the face
    LoRA stays at its weight, 1.0). Fuse afterwards (``pipe.fuse_lora()``) for plain per-step cost.

    Args:
        pipe: a ``FaceMakeUpPipeline`` or ``FaceMakeUpXLPipeline``. specs: the LoRAs, in order.

    Returns:
        The specs with their adapter names and SHA-256 filled in.

    Raises:
        ModelNotFoundError: a file or folder is missing.
        CheckpointError: a file is unreadable or not a LoRA; ``CheckpointLayoutError``: it does not fit
            the pipeline (a LoRA for another backbone: shapes differ, or some of its layers match
            nothing); the pipeline is left without it.
        FaceMakeUpInputError: two LoRAs with one name.
    """
    loaded = []
    names = set(getattr(pipe.unet, "peft_config", {}) or {})
    for spec in specs:
        file = check_lora_file(spec)
        name = spec.name or _adapter_name(file if Path(spec.path).is_file() else Path(spec.path), names)
        if name in names:
            raise FaceMakeUpInputError(f"two LoRAs are named {name!r}; give them different names")
        expected = _lora_layers_in(pipe, file)
        try:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointLayoutError(f"LoRA {file} does not fit this {type(pipe).__name__} ({first[:300]}); use a LoRA made for "
                                        f"its backbone ({_family(pipe)})") from err
        got = _layers_with(pipe, name)
        if got < expected:
            pipe.delete_adapters(name)
            raise CheckpointLayoutError(f"LoRA {file} does not fit this {type(pipe).__name__}: {expected - got} of its {expected} "
                                        f"layers match no layer of it (made for another backbone? this one is {_family(pipe)})")
        names.add(name)
        loaded.append(replace(spec, name=name, sha256=_sha256(file)))
    if loaded:
        pipe.set_adapters([s.name for s in loaded], [s.weight for s in loaded])
    return loaded


def _adapter_name(path: Path, taken: set[str]) -> str:
    """A peft adapter name from a file or folder name: letters, digits, ``_`` (peft keys may not hold dots)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", path.stem if path.suffix else path.name).strip("_") or "lora"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _lora_layers_in(pipe, file: Path) -> int:
    """How many layers the LoRA file puts LoRA on (its down/A matrices, in diffusers' reading)."""
    state = pipe.lora_state_dict(str(file.parent), weight_name=file.name)
    state = state[0] if isinstance(state, tuple) else state
    return sum(1 for k in state if re.search(r"(lora_A|lora\.down|lora_down|lora_linear_layer\.down)\.weight$", k))


def _layers_with(pipe, name: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for component in getattr(pipe, "_lora_loadable_modules", ["unet"]):
        model = getattr(pipe, component, None)
        if isinstance(model, torch.nn.Module):
            count += sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {}))
    return count


def _family(pipe) -> str:
    return "SDXL" if type(pipe).__name__ == "FaceMakeUpXLPipeline" else "SD 1.5"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- VAEs
def load_vae(spec: str, family: str = "sd15", torch_dtype: torch.dtype = torch.float32, local_files_only: bool | None = None):
    """A VAE for decoding: ``"tiny"`` (TAESD of the backbone family, ``TINY_VAES``: an ``AutoencoderTiny``,
    ~2.4M parameters, slightly softer images, for previews and speed), or a hub id / folder holding an
    ``AutoencoderTiny`` or ``AutoencoderKL`` (its ``config.json`` names the class; a backbone folder's
    ``vae/`` too), e.g. ``stabilityai/sd-vae-ft-mse``, which Face-MakeUp's demo uses.

    Args:
        spec: ``"tiny"``, a folder, or a hub id. family: ``"sd15"`` or ``"sdxl"`` (for ``"tiny"``).
        torch_dtype: dtype of the weights. local_files_only: never download (default: ``HF_HUB_OFFLINE``).

    Returns:
        ``AutoencoderTiny`` or ``AutoencoderKL``, in eval mode.

    Raises:
        ModelNotFoundError: neither on disk nor downloadable (the message says what to download).
    """
    from diffusers import AutoencoderKL, AutoencoderTiny

    repo = TINY_VAES[family] if spec == "tiny" else str(spec)
    folder = Path(repo).expanduser()
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() and not (folder / "config.json").is_file() else None
    cls = AutoencoderTiny if spec == "tiny" else None
    config = folder / (subfolder or "") / "config.json"
    if cls is None and config.is_file():
        try:
            cls = AutoencoderKL if json.loads(config.read_text()).get("_class_name") == "AutoencoderKL" else AutoencoderTiny
        except (OSError, ValueError):
            cls = None
    if cls is None:
        cls = AutoencoderTiny if "tae" in repo.lower() else AutoencoderKL
    try:
        return cls.from_pretrained(repo, subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=local_files_only).eval()
    except (OSError, ValueError, ConnectionError) as err:
        where = f"the folder {repo} exists but holds no {cls.__name__} in diffusers layout" if folder.exists() else (
            f"'{repo}' is not a local folder and could not be downloaded ({type(err).__name__})")
        raise ModelNotFoundError(f"could not load the VAE: {where}. On a machine with internet access run `hf download "
                                 f"{repo if not folder.exists() else TINY_VAES[family]} --local-dir DIR`, copy DIR here and pass it "
                                 "as the VAE folder") from err


def use_vae(pipe, vae) -> None:
    """Make ``vae`` the pipeline's decoder (on the pipeline's device and dtype).

    Raises:
        CheckpointLayoutError: its latents do not fit the pipeline's (``check_vae_fits``).
    """
    from .model.id_adapter import _like

    check_vae_fits(pipe, vae)
    pipe.register_modules(vae=_like(vae, pipe.unet))


def check_vae_fits(pipe, vae) -> None:
    """Whether ``vae`` decodes ``pipe``'s latents: the same downsampling factor and latent channels.

    Raises:
        CheckpointLayoutError: another downsampling factor or number of latent channels than the
            pipeline's UNet and ShadingNet were made for.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    channels = vae.config.latent_channels
    if factor != pipe.vae_scale_factor or channels != pipe.unet.config.in_channels:
        raise CheckpointLayoutError(f"the VAE ({type(vae).__name__}) downsamples by {factor} into {channels} latent channels; this "
                                    f"pipeline's UNet needs {pipe.vae_scale_factor} and {pipe.unet.config.in_channels} (TAESD fits "
                                    "real SD 1.5 / SDXL backbones, not the tiny test models)")


# ---------------------------------------------------------------------------- compile
def compile_denoiser(pipe, mode: str | None = None, fullgraph: bool = False, dynamic: bool | None = None) -> list[str]:
    """``torch.compile`` the UNet and the ControlNet in place (``nn.Module.compile``: the modules stay
    the pipeline's, offload hooks and ``fuse_lora`` still see them). Fuse LoRAs before: changing
    the module tree afterwards recompiles. The first call of each shape compiles (minutes on CPU).

    Args:
        mode, fullgraph, dynamic: ``torch.compile``'s options (e.g. ``mode="max-autotune"`` on CUDA).

    Returns:
        The names of the compiled components.
    """
    done = []
    for name in ("unet", "controlnet"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile(mode=mode, fullgraph=fullgraph, dynamic=dynamic)
            done.append(name)
    return done
