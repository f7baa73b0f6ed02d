"""Training: losses against their formulas, attention capture, config, and tiny runs on synthetic records
(frozen backbone, bit-identical resume, refusals, non-finite loss, skipped records, loading final/)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from facemakeup.cli import main
from facemakeup.data.dataset import FaceCaptionMaskDataset
from facemakeup.model import FaceIDAdapter
from facemakeup.model.capture import AttentionCapture
from facemakeup.model.tiny import tiny_components, tiny_tokenizer
from facemakeup.pipeline import load_pipeline
from facemakeup.train import ConfigError, NonFiniteLossError, apply_overrides, load_config, preset, save_config, train
from facemakeup.train.losses import diffusion_loss, diffusion_target, id_loss, mask_alignment_loss, predicted_x0

# ---------------------------------------------------------------------------------------------- losses


def map_loss_by_the_formula(layers, masks, tokens, valid):
    """Face-MakeUpV2's loss written out pair by pair (docs/sources.md), independent of the vectorised one."""
    b = masks.shape[0]
    total = 0.0
    for probs in layers:
        heads = probs.shape[0] // b
        side = int(math.isqrt(probs.shape[1]))
        p = probs.view(b, heads, side, side, -1)
        per_pair = []
        for i in range(b):
            for k in range(masks.shape[1]):
                idx = torch.nonzero(tokens[i, k]).flatten().tolist()
                if not valid[i, k] or not idx:
                    continue
                m = F.interpolate(masks[i, k][None, None], size=(side, side), mode="bilinear")[0, 0]
                m = (m > 0.5).float()
                maps = p[i][..., idx]  # (heads, s, s, k)
                maps = torch.cat([maps, maps.mean(-1, keepdim=True)], dim=-1)
                per_pair.append(((maps - m[None, :, :, None]) ** 2).mean())
        total = total + torch.stack(per_pair).mean()
    return total


def test_mask_alignment_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    b, heads, t = 3, 4, 77
    layers = [torch.randn(b * heads, s * s, t, generator=g).softmax(-1) for s in (8, 8, 4)]
    masks = torch.rand(b, 5, 20, 20, generator=g)
    tokens = torch.rand(b, 5, t, generator=g) < 0.05
    tokens[0, 1] = False  # a mask without tokens is skipped
    valid = torch.rand(b, 5, generator=g) < 0.8
    valid[0, 0] = True
    ours = mask_alignment_loss(layers, masks, tokens, valid)
    ref = map_loss_by_the_formula(layers, masks, tokens, valid)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    total, count = mask_alignment_loss(layers, masks, tokens, valid, reduction="sum")
    assert count == (valid & tokens.any(-1)).sum()
    torch.testing.assert_close(total / count, ref, rtol=1e-5, atol=1e-6)
    # gradients reach the attention probabilities
    probe = layers[0].clone().requires_grad_(True)
    mask_alignment_loss([probe], masks, tokens, valid).backward()
    assert probe.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no attention maps"):
        mask_alignment_loss([], masks, tokens, valid)


def test_diffusion_targets_and_predicted_x0():
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(prediction_type=kind)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        expected = noise if kind == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        target = diffusion_target(sched, x0, noise, t)
        torch.testing.assert_close(target, expected)
        noisy = sched.add_noise(x0, noise, t)
        torch.testing.assert_close(predicted_x0(noisy, target, t, sched), x0, rtol=1e-4, atol=1e-4)
        assert diffusion_loss(target, x0, noise, t, sched) == 0
        torch.testing.assert_close(diffusion_loss(target + 0.5, x0, noise, t, sched), torch.tensor(0.25))
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        diffusion_target(DDPMScheduler(prediction_type="sample"), x0, noise, t)


class SmallArcFace(torch.nn.Module):
    """Same contract as faces.arcface_torch: (N, 3, 112, 112) in [-1, 1] -> (N, 512) unit vectors."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.fc = torch.nn.Linear(4 * 14 * 14, 512)

    def forward(self, x):
        return F.normalize(self.fc(self.conv(x).flatten(1)), dim=-1)


def resize_align(images, kps):
    return F.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False)


def test_id_loss_is_one_minus_cosine_and_differentiable():
    arc = SmallArcFace()
    g = torch.Generator().manual_seed(2)
    images = (torch.rand(3, 3, 64, 64, generator=g) * 2 - 1).requires_grad_(True)
    kps = torch.rand(3, 5, 2, generator=g) * 64
    ref = arc(resize_align(torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, kps)).detach()
    loss = id_loss(images, kps, ref, arc, resize_align)
    expected = 1 - F.cosine_similarity(arc(resize_align(images, kps)), ref, dim=-1)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert images.grad.abs().sum() > 0
    same = id_loss(images.detach(), kps, arc(resize_align(images.detach(), kps)), arc, resize_align)
    torch.testing.assert_close(same, torch.zeros(3), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- capture


def test_attention_capture_gives_the_layers_softmax_and_costs_nothing_when_off():
    parts = tiny_components(seed=0)
    unet = parts["unet"]
    adapter = FaceIDAdapter.for_unet(unet, 32, lora_rank=4)
    with torch.no_grad():
        for p in adapter.lora.parameters():
            p.add_(0.1 * torch.randn_like(p))  # LoRA must be inside the captured q/k
    g = torch.Generator().manual_seed(3)
    latents, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    tokens = adapter.project(torch.randn(2, 512, generator=g), torch.randn(2, 65, 32, generator=g))[:, None]

    adapter.attach(unet)
    plain = unet(latents, 10, encoder_hidden_states=(text, [tokens])).sample
    assert not any(m._forward_hooks for m in unet.modules())  # nothing hooked without a capture
    adapter.detach()

    capture = AttentionCapture(16 * 16)
    adapter.attach(unet, capture=capture)
    inputs = {}
    hooks = [unet.get_submodule(n).register_forward_pre_hook(lambda m, a, kw, n=n: inputs.__setitem__(n, a[0] if a else kw["hidden_states"]), with_kwargs=True)
             for n, _, c in adapter.config.attn_layers if c is not None]
    out = unet(latents, 10, encoder_hidden_states=(text, [tokens])).sample
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, plain)  # recording does not change the output
    # the tiny UNet has 3 cross-attention layers at the full latent grid: down_blocks.0 (1) and up_blocks.1 (2)
    assert capture.names == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                             "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    capture.enabled = False  # the manual q/k below go through the hooked layers
    for name, probs in zip(list(capture.names), list(capture.maps)):
        attn = unet.get_submodule(name)
        q = attn.head_to_batch_dim(attn.to_q(inputs[name]))
        k = attn.head_to_batch_dim(attn.to_k(text))
        torch.testing.assert_close(probs, attn.get_attention_scores(q, k), rtol=1e-5, atol=1e-6)  # diffusers' own softmax
        assert probs.shape == (2 * attn.heads, 256, 77)
    assert len(capture.maps) == 3
    adapter.detach()
    assert not capture.installed and not any(m._forward_hooks for m in unet.modules())


# ---------------------------------------------------------------------------------------------- config


def test_config_yaml_round_trip_unknown_keys_and_paper_preset(tmp_path):
    cfg = apply_overrides(preset("tiny"), ["learning_rate=3e-4", "sample_seeds=[1, 2, 3]", "init_adapter=null"])
    assert cfg.learning_rate == 3e-4 and cfg.sample_seeds == [1, 2, 3]
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("learning_rate: 1e-4\nlearnig_rate: 2\nfoo: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config keys \['foo', 'learnig_rate'\]; valid keys: backbone, .*learning_rate"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="lora_rank must be of type int"):
        apply_overrides(cfg, ["lora_rank=abc"])
    with pytest.raises(ConfigError, match="mixed_precision must be"):
        apply_overrides(cfg, ["mixed_precision=fp8"])
    assert apply_overrides(preset("sd15"), ["mixed_precision=no"]).mixed_precision == "no"
    (tmp_path / "mp.yaml").write_text("mixed_precision: no\n")
    with pytest.raises(ConfigError, match="quote it in YAML"):
        load_config(tmp_path / "mp.yaml")
    sd = preset("sd15")
    paper = dict(resolution=512, learning_rate=1e-4, weight_decay=0.01, lora_rank=128, num_tokens=4, text_dropout=0.05,
                 clip_image_dropout=0.5, map_loss_weight=1e-3, map_attention_stride=16, train_batch_size=8)
    assert {k: getattr(sd, k) for k in paper} == paper
    assert (sd.resolution // sd.map_attention_stride) ** 2 == 32 * 32


# ---------------------------------------------------------------------------------------------- tiny runs

CAPTION = "a young woman with blonde hair"


def make_records(root, n=10, seed=0):
    """Synthetic FaceCaptionMask records in build-dataset's layout (random pixels, real structure)."""
    rng = np.random.default_rng(seed)
    from facemakeup.data.record import Record, write_jsonl

    for sub in ("images", "faces", "shading", "id", "parsing", "Mask/Attribute", "Mask/Emotion"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        key = f"k{i:03d}"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"images/{key}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"faces/{key}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"shading/{key}.png")
        e = rng.normal(size=512).astype(np.float32)
        np.save(root / f"id/{key}.npy", e / np.linalg.norm(e))
        hair = np.zeros((40, 48), np.uint8)
        hair[: 10 + i, :] = 255
        face = np.zeros((40, 48), np.uint8)
        face[15:35, 12:36] = 255
        Image.fromarray(hair).save(root / f"Mask/Attribute/{key}_0.png")
        Image.fromarray(face).save(root / f"Mask/Attribute/{key}_1.png")
        Image.fromarray(face).save(root / f"Mask/Emotion/{key}_0.png")
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / f"parsing/{key}.png")
        attr = [{"mask": f"Mask/Attribute/{key}_0.png", "token_indices": [5, 6]}, {"mask": f"Mask/Attribute/{key}_1.png", "token_indices": [2, 3]}]
        emo = [{"mask": f"Mask/Emotion/{key}_0.png", "token_indices": [2]}]
        records.append(Record(
            key=key, image=f"images/{key}.png", face=[f"faces/{key}.png"], shading=f"shading/{key}.png", parsing=f"parsing/{key}.png",
            id_embedding=f"id/{key}.npy", kps=[[18, 15], [30, 15], [24, 22], [19, 28], [29, 28]],
            face_attribute_caption=CAPTION, face_emotion_caption="a woman smiling",
            atrribute_parsing_masks=attr, emotion_parsing_masks=emo,
            phrases={"attribute": [{**attr[0], "phrase": "blonde hair", "region": "hair"}, {**attr[1], "phrase": "young woman", "region": "face"}],
                     "emotion": [{**emo[0], "phrase": "woman smiling", "region": "face"}]},
            bbox=[12.0, 8.0, 36.0, 36.0], pose={"yaw": 0.0, "pitch": 0.0, "roll": 0.0}, sh=[[0.0] * 3] * 9, sh_basis=[],
            attributes={}, gender={}, age=None, emotion={}, width=48, height=40, det_score=0.9, clip_box=[0.0, 0.0, 48.0, 40.0],
            fitter="synthetic", curation={}, source={"input": f"{key}.png"},
        ))
    write_jsonl(root / "records-00000.jsonl", records)
    return root


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_records(tmp_path_factory.mktemp("fcm"))


FAST = ["train_batch_size=2", "holdout=2", "num_train_steps=4", "lr_warmup_steps=1", "sample_every=0", "num_sample_references=1",
        "sample_seeds=[0]", "sample_steps=2", "checkpoint_every=2", "learning_rate=1e-2", "text_dropout=0.3", "clip_image_dropout=0.5"]


def fast_config(*extra):
    return apply_overrides(preset("tiny"), FAST + list(extra))


def test_dataset_kps_follow_the_training_crop(records):
    ds = FaceCaptionMaskDataset(records, resolution=32, mask_resolution=32, tokenizer=tiny_tokenizer())
    item = ds[0]
    # 48x40 photo: centred 40x40 square from x=4, scaled by 32/40
    expected = (torch.tensor([[18, 15], [30, 15], [24, 22], [19, 28], [29, 28]], dtype=torch.float32) - torch.tensor([4.0, 0.0])) * 0.8
    torch.testing.assert_close(item["kps"], expected)
    assert item["kps"].dtype == torch.float32 and item["pixel_values"].shape == (3, 32, 32)


def weights_of(folder):
    return {**{f"a.{k}": v for k, v in load_file(folder / "face_adapter" / "diffusion_pytorch_model.safetensors").items()},
            **{f"s.{k}": v for k, v in load_file(folder / "shadingnet" / "diffusion_pytorch_model.safetensors").items()}}


def test_training_trains_only_the_adapter_and_shadingnet_and_final_loads_in_the_tiny_pipeline(records, tmp_path):
    from facemakeup.train import loop

    seen = {}
    real = loop.load_frozen

    def spy(cfg):
        parts = real(cfg)
        seen.update(parts)
        return parts

    loop.load_frozen = spy
    try:
        summary = train(fast_config(), records, tmp_path / "run", max_steps=2)
    finally:
        loop.load_frozen = real
    fresh = tiny_components()
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        before = fresh[name].state_dict()
        after = {k.replace(".base_layer", ""): v for k, v in seen[name].state_dict().items() if "lora" not in k and ".processor." not in k}
        assert set(after) == set(before), name
        assert all(torch.equal(before[k], after[k]) for k in before), f"{name} changed"
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "loss_mse", "loss_map", "lr", "step_time_s"} <= set(rows[0]) and "loss_id" not in rows[0]
    assert all(math.isfinite(r["loss"]) for r in rows)
    for f in ("config.yaml", "loss.png", "summary.json", "eval.jsonl", "checkpoint-2/optimizer.bin", "samples/step-000002.png"):
        assert (run / f).exists(), f
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml") == fast_config()
    assert summary["records_train"] == 8 and summary["records_holdout"] == 2 and summary["records_skipped"] == 0
    # the trained weights moved, and final/ loads with --model tiny
    trained = weights_of(run / "final")
    pipe = load_pipeline("tiny", adapter=str(run / "final"), shadingnet=str(run / "final"))
    for k, v in pipe.face_adapter.state_dict().items():
        assert torch.equal(v, trained[f"a.{k}"])
    for k, v in pipe.controlnet.state_dict().items():
        assert torch.equal(v, trained[f"s.{k}"])
    fresh_adapter = load_pipeline("tiny").face_adapter.state_dict()
    assert any(not torch.equal(fresh_adapter[k], v) for k, v in pipe.face_adapter.state_dict().items() if "lora" in k and "up" in k)


def test_tiny_pipeline_refuses_weights_of_another_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8,
                                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    FaceIDAdapter.for_unet(other, 32, lora_rank=2).save_pretrained(tmp_path / "a" / "face_adapter")
    with pytest.raises(ValueError, match="trained for another UNet"):
        load_pipeline("tiny", adapter=str(tmp_path / "a"))
    from facemakeup.model.shadingnet import shadingnet_from_unet

    shadingnet_from_unet(other, 2).save_pretrained(tmp_path / "s" / "shadingnet")
    with pytest.raises(ValueError, match="made from another UNet: block_out_channels"):
        load_pipeline("tiny", shadingnet=str(tmp_path / "s"))


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(records, tmp_path):
    cfg = fast_config()
    train(cfg, records, tmp_path / "straight", max_steps=4)
    train(cfg, records, tmp_path / "resumed", max_steps=2)  # a job stopped after its checkpoint
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "checkpoint-4").exists()
    train(cfg, records, tmp_path / "resumed", max_steps=4, resume=True)
    a, b = weights_of(tmp_path / "straight" / "final"), weights_of(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4


def test_refusals_resume_config_and_existing_run(records, tmp_path):
    run = tmp_path / "run"
    train(fast_config(), records, run, max_steps=2)
    with pytest.raises(ConfigError, match=r"config differs in \['learning_rate', 'lora_rank'\].*learning_rate: checkpoint 0.01 vs now 0.5"):
        train(fast_config("learning_rate=0.5", "lora_rank=8"), records, run, max_steps=4, resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoint-2: continue it with resume"):
        train(fast_config(), records, run, max_steps=4)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(records, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"the loss became (nan|inf|-inf) at step (\d+).*Last good checkpoint: .*checkpoint-(\d+)") as err:
        train(fast_config("learning_rate=1e30", "checkpoint_every=1", "max_grad_norm=0"), records, run, max_steps=4)
    import re

    bad, kept = map(int, re.search(r"at step (\d+).*checkpoint-(\d+)", str(err.value)).groups())
    assert kept == bad - 1 and (run / f"checkpoint-{kept}" / "face_adapter").is_dir()
    assert not (run / f"checkpoint-{bad}").exists() and not (run / "final").exists()


def test_missing_files_are_skipped_and_counted_and_id_loss_runs(records, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(records, data)
    (data / "images" / "k003.png").unlink()
    (data / "Mask" / "Emotion" / "k005_0.png").unlink()
    summary = train(fast_config("id_loss_weight=0.1", "id_loss_max_timestep=1000"), data, tmp_path / "run", max_steps=1,
                    arcface=SmallArcFace(), align=resize_align)
    assert summary["records_skipped"] == 2 and sorted(summary["skipped_keys"]) == ["k003", "k005"]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss_id"] > 0
    assert abs(row["loss"] - (row["loss_mse"] + 1e-3 * row["loss_map"] + 0.1 * row["loss_id"])) < 1e-5


def test_cli_train_and_its_errors(records, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", "--preset", "tiny", "--data", str(records), "--out", str(out), "--max-steps", "1",
                               *sum((["--set", s] for s in FAST), []), "--checkpoint-every", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "checkpoint-1").is_dir() and (out / "final" / "face_adapter").is_dir()
    assert load_config(out / "config.yaml").checkpoint_every == 1
    res = runner.invoke(main, ["train", "--preset", "tiny", "--data", str(records), "--out", str(tmp_path / "x"), "--set", "lerning_rate=1"])
    assert res.exit_code == 2 and "unknown config keys ['lerning_rate']" in res.output and "learning_rate" in res.output
