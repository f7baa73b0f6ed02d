"""``facemakeup generate``'s speed options end to end with the tiny model: LoRAs, samplers, the
ShadingNet's window, TAESD; and their bad values, refused before the work."""

import hashlib
import json

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from facemakeup.cli import main
from facemakeup.model.tiny import random_lora_state_dict, tiny_components, tiny_xl_components


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    lora = random_lora_state_dict(tiny_components()["unet"], rank=4, std=0.2)  # the --model tiny UNet (seed 0)
    StableDiffusionPipeline.save_lora_weights(folder / "lcm", unet_lora_layers={k.removeprefix("unet."): v for k, v in lora.items()})
    xl = random_lora_state_dict(tiny_xl_components()["unet"], rank=4)
    StableDiffusionPipeline.save_lora_weights(folder / "xl", unet_lora_layers={k.removeprefix("unet."): v for k, v in xl.items()})
    save_file({"weight": torch.zeros(3)}, folder / "not_a_lora.safetensors")
    return folder


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def generate(files, out, *extra):
    res = run("generate", "--reference", files / "astronaut.png", "--prompt", "a smiling woman", "--out", out, "--model", "tiny",
              "--seed", 3, *extra)
    assert res.exit_code == 0, res.output
    return np.asarray(Image.open(out / "image_00.png")), json.loads((out / "provenance.json").read_text())


def test_few_step_lora_with_lcm(files, tmp_path):
    """The acceptance check: generate --lora DIR --scheduler lcm --steps 4 --guidance-scale 1."""
    fast = ("--scheduler", "lcm", "--steps", 4, "--guidance-scale", 1)
    image, rec = generate(files, tmp_path / "lora", "--lora", files / "lcm", *fast)
    weights = files / "lcm" / "pytorch_lora_weights.safetensors"
    lora = rec["parameters"]["loras"]
    assert lora == [{"path": str(files / "lcm"), "weight": 1.0, "name": "lcm", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}]
    assert rec["models"]["loras"] == lora
    p = rec["parameters"]
    assert (p["scheduler"], p["scheduler_name"], p["steps"], p["guidance_scale"]) == ("LCMScheduler", "lcm", 4, 1)
    plain, rec = generate(files, tmp_path / "plain", *fast)
    assert rec["parameters"]["loras"] == [] and np.abs(image.astype(int) - plain).max() > 0  # the LoRA acted
    half, rec = generate(files, tmp_path / "half", "--lora", f"{files / 'lcm'}:0.5", *fast)
    assert rec["parameters"]["loras"][0]["weight"] == 0.5 and not np.array_equal(half, image)


def test_shadingnet_stopped_early(files, tmp_path, monkeypatch):
    """The acceptance check: generate --controlnet-end 0.4 (the tiny ShadingNet is fresh, zero-output:
    its calls are counted)."""
    from diffusers import ControlNetModel

    calls = []
    forward = ControlNetModel.forward
    monkeypatch.setattr(ControlNetModel, "forward", lambda self, *a, **k: (calls.append(1), forward(self, *a, **k))[1])
    _, rec = generate(files, tmp_path / "early", "--controlnet-end", 0.4, "--steps", 5)
    assert rec["parameters"]["controlnet_end"] == 0.4 and rec["parameters"]["controlnet_start"] == 0.0
    assert rec["parameters"]["scheduler"] == "DDIMScheduler" and rec["parameters"]["scheduler_name"] is None  # Face-MakeUp's default
    assert len(calls) == 2  # steps 0 and 1 of 5: (i + 1) / 5 <= 0.4
    calls.clear()
    generate(files, tmp_path / "full", "--steps", 5)
    assert len(calls) == 5


def test_tiny_vae_folder(files, tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(tmp_path / "taesd")
    image, rec = generate(files, tmp_path / "out", "--vae", tmp_path / "taesd", "--steps", 2)
    assert image.shape == (64, 64, 3) and rec["models"]["vae"] == str(tmp_path / "taesd")


@pytest.mark.parametrize("extra, status, message", [
    (("--controlnet-start", 0.5, "--controlnet-end", 0.4), 2, "--controlnet-start 0.5 must be below --controlnet-end 0.4"),
    (("--controlnet-end", 1.5), 2, "--controlnet-end must be a finite number in [0, 1]"),
    (("--lora", "DIR:nan"), 2, "the weight of LoRA DIR must be a finite number"),
    (("--lora", "missing-lora"), 1, "LoRA missing-lora: no such file or folder"),
    (("--lora", "NOTALORA"), 5, "are not LoRA weights"),
    (("--lora", "XL"), 5, "does not fit this FaceMakeUpPipeline"),
    (("--scheduler", "heun"), 2, "'heun' is not one of"),
    (("--vae", "tiny"), 2, "--vae tiny is TAESD"),
])
def test_bad_speed_options_are_named(files, tmp_path, extra, status, message):
    extra = [str(files / "not_a_lora.safetensors") if e == "NOTALORA" else str(files / "xl") if e == "XL" else e for e in extra]
    res = run("generate", "--reference", files / "astronaut.png", "--prompt", "x", "--out", tmp_path / "o", "--model", "tiny",
              "--steps", 1, *extra)
    assert res.exit_code == status, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
