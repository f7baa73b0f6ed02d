"""Training on SDXL (``--preset tiny-xl``): SDXL's text conditioning from the pipeline, the mask-alignment
layers (named on the tiny-xl UNet and on SDXL-base's layout built on the meta device), the run's
backbone record and the commands that read it (convert, generate), loss and resume on tiny-xl runs."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_train import FAST, make_records, weights_of

from facemakeup.cli import main
from facemakeup.model import FaceIDAdapter
from facemakeup.model.backbone import SDXL_UNET_CONFIG, layout_unet, read_backbone
from facemakeup.model.capture import AttentionCapture, attention_grids, supervised_layers
from facemakeup.model.id_adapter import attention_layers
from facemakeup.model.tiny import tiny_components, tiny_xl_components
from facemakeup.pipeline import load_pipeline
from facemakeup.pipeline_xl import FaceMakeUpXLPipeline
from facemakeup.train import apply_overrides, preset, train
from facemakeup.train.loop import map_capture

#: The layers the mask-alignment loss supervises on SDXL at 1024 px (train.config's docstring says why):
#: down_blocks.1 (2 attentions x 2 transformer layers) and up_blocks.1 (3 x 2), the 64x64 grid.
SDXL_MAP_LAYERS = [f"down_blocks.1.attentions.{a}.transformer_blocks.{t}.attn2" for a in range(2) for t in range(2)] + \
                  [f"up_blocks.1.attentions.{a}.transformer_blocks.{t}.attn2" for a in range(3) for t in range(2)]
#: The same place in the tiny-xl UNet at 32 px: down_blocks.1 (1 x 1) and up_blocks.1 (2 x 1), the 8x8 grid.
TINY_XL_MAP_LAYERS = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                      "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
#: SD 1.5 at 512 px (docs/sources.md): down_blocks.1 (2) and up_blocks.2 (3), the 32x32 grid.
SD15_MAP_LAYERS = [f"down_blocks.1.attentions.{a}.transformer_blocks.0.attn2" for a in range(2)] + \
                  [f"up_blocks.2.attentions.{a}.transformer_blocks.0.attn2" for a in range(3)]


def hooked_layers(unet) -> list[str]:
    """The attention layers whose to_q and to_k carry forward hooks."""
    return [name for name, m in unet.named_modules() if hasattr(m, "to_q") and m.to_q._forward_hooks and m.to_k._forward_hooks]


# ---------------------------------------------------------------------------------------------- layers


def test_the_capture_hooks_exactly_the_documented_layers_on_sdxl_base_and_sd15_layouts():
    sdxl, scale = layout_unet("sdxl")  # SDXL-base's published UNet config, on the meta device
    assert sdxl.device.type == "meta" and scale == 8
    assert len(attention_layers(sdxl)) == 140 and sum(c is not None for _, _, c in attention_layers(sdxl)) == 70  # SDXL-base's processors
    assert round(sum(p.numel() for p in sdxl.parameters()) / 1e9, 2) == 2.57
    assert supervised_layers(sdxl, 1024, 16, 8) == SDXL_MAP_LAYERS
    capture = map_capture(preset("sdxl"), sdxl, 8)  # what train --preset sdxl installs
    assert capture.query_length == 64 * 64 and capture.layers == SDXL_MAP_LAYERS
    capture.install(sdxl)
    assert capture.hooked == SDXL_MAP_LAYERS and hooked_layers(sdxl) == SDXL_MAP_LAYERS
    capture.remove()
    assert hooked_layers(sdxl) == []
    # SDXL's 32x32 layers are the other choice: down_blocks.2, the mid block and up_blocks.0 (60 layers)
    grids = attention_grids(sdxl, 128)
    assert sorted(set(grids.values())) == [32, 64] and sum(s == 32 for s in grids.values()) == 60
    sd15, _ = layout_unet("sd15")
    capture = map_capture(preset("sd15"), sd15, 8)
    capture.install(sd15)
    assert capture.hooked == SD15_MAP_LAYERS == hooked_layers(sd15)
    with pytest.raises(ValueError, match=r"no cross-attention layer of this UNet runs at 16x16.*grids are \[64, 32\]"):
        supervised_layers(sdxl, 1024, 64, 8)


def test_the_capture_hooks_and_records_exactly_the_documented_layers_on_tiny_xl():
    parts = tiny_xl_components(seed=0)
    unet = parts["unet"]
    capture = map_capture(preset("tiny-xl"), unet, 2)
    assert capture.layers == TINY_XL_MAP_LAYERS and capture.query_length == 8 * 8
    adapter = FaceIDAdapter.for_unet(unet, 32, lora_rank=4)
    adapter.attach(unet, capture=capture)
    assert hooked_layers(unet) == TINY_XL_MAP_LAYERS
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 77, 64, generator=g)
    tokens = adapter.project(torch.randn(2, 512, generator=g), torch.randn(2, 65, 32, generator=g))[:, None]
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    unet(torch.randn(2, 4, 16, 16, generator=g), 10, encoder_hidden_states=(text, [tokens]), added_cond_kwargs=added)
    assert sorted(capture.names) == TINY_XL_MAP_LAYERS  # each recorded once, at 8x8 queries over the 77 text tokens
    assert [tuple(m.shape) for m in capture.maps] == [(2 * unet.get_submodule(n).heads, 64, 77) for n in capture.names]
    adapter.detach()
    assert hooked_layers(unet) == []
    # the grid rule agrees with the query lengths the UNet really runs, on every cross-attention layer
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape[1]  # (B, HW, inner) queries
        return hook

    hooks = [unet.get_submodule(n).to_q.register_forward_hook(record(n)) for n in attention_grids(unet, 16)]
    unet(torch.randn(1, 4, 16, 16, generator=g), 10, encoder_hidden_states=text[:1], added_cond_kwargs={k: v[:1] for k, v in added.items()})
    for h in hooks:
        h.remove()
    assert {n: math.isqrt(q) for n, q in seen.items()} == attention_grids(unet, 16)
    with pytest.raises(ValueError, match="not cross-attention layers of this UNet"):
        AttentionCapture(64, layers=["up_blocks.9.attn2"]).install(unet)


def test_sdxl_presets_follow_the_paper_and_the_issue():
    xl = preset("sdxl")
    paper = dict(learning_rate=1e-4, weight_decay=0.01, lora_rank=128, num_tokens=4, text_dropout=0.05, clip_image_dropout=0.5,
                 map_loss_weight=1e-3)
    assert {k: getattr(xl, k) for k in paper} == paper
    assert (xl.backbone, xl.resolution, xl.mixed_precision, xl.gradient_checkpointing) == (
        "stabilityai/stable-diffusion-xl-base-1.0", 1024, "bf16", True)
    assert xl.train_batch_size * xl.gradient_accumulation_steps == 8  # the paper's 8 per GPU
    tiny = preset("tiny-xl")
    assert tiny.backbone == "tiny-xl" and tiny.mixed_precision == "no" and tiny.resolution == 32


# ---------------------------------------------------------------------------------------------- a tiny-xl run


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_records(tmp_path_factory.mktemp("fcm"))


def xl_config(*extra):
    return apply_overrides(preset("tiny-xl"), FAST + list(extra))


@pytest.fixture(scope="module")
def xl_run(records, tmp_path_factory):
    """One step of ``train --preset tiny-xl`` (checkpoint, samples, final/), with what the step passed to
    the SDXL pipeline's text conditioning and to the mask-alignment loss."""
    from facemakeup.train import loop

    seen = {"prompts": [], "time_ids": [], "captures": [], "map_calls": []}
    mp = pytest.MonkeyPatch()
    real_encode, real_time_ids = FaceMakeUpXLPipeline.encode_prompt, FaceMakeUpXLPipeline._add_time_ids
    real_capture, real_loss = loop.map_capture, loop.mask_alignment_loss

    def encode(self, prompt, *args, **kwargs):
        seen["prompts"].append(list(prompt))
        return real_encode(self, prompt, *args, **kwargs)

    def time_ids(self, *args):
        seen["time_ids"].append(args[:3])
        return real_time_ids(self, *args)

    def capture(*args):
        seen["captures"].append(real_capture(*args))
        return seen["captures"][-1]

    def loss(maps, *args, **kwargs):
        seen["map_calls"].append((list(seen["captures"][0].names), [tuple(m.shape) for m in maps]))
        return real_loss(maps, *args, **kwargs)

    mp.setattr(FaceMakeUpXLPipeline, "encode_prompt", encode)
    mp.setattr(FaceMakeUpXLPipeline, "_add_time_ids", time_ids)
    mp.setattr(loop, "map_capture", capture)
    mp.setattr(loop, "mask_alignment_loss", loss)
    try:
        run = tmp_path_factory.mktemp("xl") / "run"
        train(xl_config("checkpoint_every=1"), records, run, max_steps=1)
    finally:
        mp.undo()
    return run, seen


def test_tiny_xl_step_uses_the_sdxl_pipeline_conditioning_and_the_documented_layers(xl_run):
    run, seen = xl_run
    # training text = the SDXL pipeline's encode_prompt of the captions (dropped ones empty), its _add_time_ids
    # at (resolution, resolution), crop (0, 0)
    batches = [p for p in seen["prompts"] if len(p) == 2]  # the training batch (the held-out ones have 2 too: attention IoU)
    assert batches and all(c in ("a young woman with blonde hair", "a woman smiling", "") for p in batches for c in p)
    assert ((32, 32), (0, 0), (32, 32)) in seen["time_ids"]
    # the map loss read exactly the documented layers' maps: (B*heads, 8*8, 77)
    assert len(seen["map_calls"]) == 1
    names, shapes = seen["map_calls"][0]
    assert sorted(names) == TINY_XL_MAP_LAYERS and all(s[1:] == (64, 77) for s in shapes) and len(shapes) == 3
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["loss_map"]) and row["loss_map"] > 0
    assert abs(row["loss"] - (row["loss_mse"] + 1e-3 * row["loss_map"])) < 1e-5
    assert (run / "samples" / "step-000001.png").is_file()  # through FaceMakeUpXLPipeline


def test_the_run_records_its_backbone_and_final_loads_in_the_tiny_xl_pipeline(xl_run):
    run, _ = xl_run
    for folder in (run / "final", run / "checkpoint-1"):
        record = json.loads((folder / "backbone.json").read_text())
        assert (record["backbone"], record["family"], record["vae_scale_factor"]) == ("tiny-xl", "sdxl", 2)
        assert record["unet"]["addition_embed_type"] == "text_time" and record["unet"]["block_out_channels"] == [32, 32, 64]
    assert read_backbone(run / "final" / "face_adapter")["backbone"] == "tiny-xl"
    unet, scale = layout_unet(run / "final")  # the recorded layout, on the meta device
    assert unet.device.type == "meta" and scale == 2
    assert attention_layers(unet) == attention_layers(tiny_xl_components()["unet"])
    pipe = load_pipeline("tiny-xl", adapter=str(run / "final"), shadingnet=str(run / "final"))
    assert isinstance(pipe, FaceMakeUpXLPipeline)
    trained = weights_of(run / "final")
    assert all(torch.equal(v, trained[f"a.{k}"]) for k, v in pipe.face_adapter.state_dict().items())
    assert all(torch.equal(v, trained[f"s.{k}"]) for k, v in pipe.controlnet.state_dict().items())


def test_convert_and_generate_read_the_run_backbone(xl_run, tmp_path):
    from facemakeup.model.loaders import load_checkpoint

    run, _ = xl_run
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(run / "final"), str(tmp_path / "ip.bin"), "--to", "ip-adapter"])  # no --model
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(tmp_path / "ip.bin", tiny_xl_components()["unet"])
    assert ckpt.layout == "ip-adapter-faceid-plus"
    res = runner.invoke(main, ["convert", str(run / "final"), str(tmp_path / "m.bin"), "--to", "face-makeup-v2"])
    assert res.exit_code == 0 and (tmp_path / "m.bin").is_file(), res.output
    for model, kind in (("tiny", "the tiny SD 1.5 model"), ("sd15", "an SD 1.5 UNet")):
        res = runner.invoke(main, ["convert", str(run / "final"), str(tmp_path / "x.bin"), "--to", "ip-adapter", "--model", model])
        assert res.exit_code == 5, res.output
        assert f"was trained on tiny-xl (SDXL), recorded in {run / 'final' / 'backbone.json'}; --model {model} is {kind}" in res.output
        assert "drop --model to use the run's backbone, or pass --model tiny-xl" in res.output
    res = runner.invoke(main, ["convert", str(run / "final"), str(tmp_path / "y.bin"), "--to", "ip-adapter", "--model", "tiny-xl"])
    assert res.exit_code == 0, res.output
    # generate: a --model of another backbone is refused before any work, naming the run's backbone and the flag
    res = runner.invoke(main, ["generate", "--reference", str(tmp_path / "none.png"), "--prompt", "a face", "--out", str(tmp_path / "g"),
                               "--model", "tiny", "--adapter", str(run / "final")])
    assert res.exit_code == 5 and "--adapter" in res.output and "pass --model tiny-xl" in res.output, res.output
    assert not (tmp_path / "g").exists()


def test_training_on_a_saved_sdxl_backbone_folder(records, tmp_path):
    """The path `train --preset sdxl --set backbone=DIR` takes (FaceMakeUpXLPipeline.from_backbone, both text
    encoders, the folder's Euler scheduler for the samples), on tiny SDXL-shaped weights saved as diffusers saves SDXL."""
    from diffusers import StableDiffusionXLPipeline

    from facemakeup.train import loop

    parts = tiny_xl_components(seed=0)
    StableDiffusionXLPipeline(**{k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}).save_pretrained(
        tmp_path / "sdxl")
    parts["image_encoder"].save_pretrained(tmp_path / "clip")
    parts["feature_extractor"].save_pretrained(tmp_path / "clip")
    cfg = xl_config(f"backbone={tmp_path / 'sdxl'}", f"image_encoder={tmp_path / 'clip'}")
    frozen = loop.load_frozen(cfg)
    assert {"text_encoder_2", "tokenizer_2"} <= set(frozen) and type(frozen["sample_scheduler"]).__name__ == "EulerDiscreteScheduler"
    train(cfg, records, tmp_path / "run", max_steps=1)
    record = read_backbone(tmp_path / "run" / "final")
    assert (record["backbone"], record["family"]) == (str(tmp_path / "sdxl"), "sdxl")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "run" / "final"), str(tmp_path / "ip.safetensors"), "--to", "ip-adapter"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "run" / "final"), str(tmp_path / "x.bin"), "--to", "ip-adapter",
                                    "--model", "sd15"])
    assert res.exit_code == 5 and f"pass --model {tmp_path / 'sdxl'}" in res.output, res.output


def test_convert_reads_a_tiny_run_written_before_backbone_json(records, tmp_path):
    """The issue's report: `convert RUN_DIR/final model.bin --to face-makeup-v2` (the README's command) on a
    --preset tiny run exited 5; a run's final/ without backbone.json still has config.yaml's backbone."""
    from facemakeup.train.config import save_config
    from facemakeup.train.loop import build_trainable, load_frozen, save_weights

    cfg = apply_overrides(preset("tiny"), FAST)
    final = tmp_path / "run" / "final"
    save_weights(build_trainable(cfg, load_frozen(cfg)), final)
    save_config(cfg, final / "config.yaml")
    assert read_backbone(final)["backbone"] == "tiny" and read_backbone(final)["unet"]["cross_attention_dim"] == 32
    (final / "backbone.json").unlink()  # as a run of an earlier facemakeup left it
    assert read_backbone(final) == {"backbone": "tiny", "family": "sd15", "vae_scale_factor": None, "unet": None,
                                    "source": str(final / "config.yaml")}
    res = CliRunner().invoke(main, ["convert", str(final), str(tmp_path / "model.bin"), "--to", "face-makeup-v2"])
    assert res.exit_code == 0, res.output
    assert "layout ours (ID adapter + ControlNet) -> face-makeup-v2" in res.output
    state = torch.load(tmp_path / "model.bin", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter", "controlnet"}


def test_layout_unet_names_and_folders(tmp_path):
    from facemakeup.errors import ModelNotFoundError

    tiny, scale = layout_unet("tiny")
    assert scale == 2 and attention_layers(tiny) == attention_layers(tiny_components()["unet"])
    xl, _ = layout_unet("sdxl")
    assert all((list(xl.config[k]) if isinstance(v, list) else xl.config[k]) == v for k, v in SDXL_UNET_CONFIG.items())
    folder = tmp_path / "backbone"
    tiny_xl_components()["unet"].save_config(folder / "unet")  # a diffusers backbone folder (config only)
    unet, scale = layout_unet(folder)
    assert unet.device.type == "meta" and scale == 8 and attention_layers(unet) == attention_layers(tiny_xl_components()["unet"])
    with pytest.raises(ModelNotFoundError, match="not 'sd15', 'sdxl', 'tiny', 'tiny-xl'"):
        layout_unet(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------- minute-long runs


@pytest.mark.slow
def test_tiny_xl_loss_falls_over_20_steps(records, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--preset", "tiny-xl", "--data", str(records), "--out", str(tmp_path / "run"), "--max-steps", "20",
                               "--checkpoint-every", "20", *sum((["--set", s] for s in FAST + ["num_train_steps=20"]), [])])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    first, last = (sum(r["loss_mse"] for r in rows[i:i + 5]) / 5 for i in (0, 15))
    assert last < 0.8 * first, (first, last)
    assert all(math.isfinite(r["loss_map"]) for r in rows)


@pytest.mark.slow
def test_tiny_xl_resume_is_bit_identical_to_an_uninterrupted_run(records, tmp_path):
    cfg = xl_config()
    train(cfg, records, tmp_path / "straight", max_steps=4)
    train(cfg, records, tmp_path / "resumed", max_steps=2)
    assert (tmp_path / "resumed" / "checkpoint-2" / "backbone.json").is_file()
    train(cfg, records, tmp_path / "resumed", max_steps=4, resume=True)
    a, b = weights_of(tmp_path / "straight" / "final"), weights_of(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4
