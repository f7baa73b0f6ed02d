"""Evaluation: each metric on inputs with a known answer, each model-backed path on a tiny random
model saved and loaded back, the pairs/report plumbing and the CLI."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from facemakeup.eval.attributes import attribute_count
from facemakeup.eval.benchmark import Pair, load_prompts, pairs_from_csv, pairs_from_folders
from facemakeup.eval.identity import FaceSimilarity, face_similarity
from facemakeup.eval.image_quality import (
    AlexNetFeatures, FrechetDistance, InceptionV3FID, LPIPSAlex, frechet_distance, images_to_tensor,
)
from facemakeup.eval.physical import LightRMSE, PoseRMSE
from facemakeup.eval.results import PAPER_METRICS, bootstrap_ci, root_mean_square, summarize
from facemakeup.eval.vlm import parse_score
from facemakeup.faces import Face


def make_face(embedding=None, pose=None, sh=None):
    fit = None if pose is None else SimpleNamespace(pose=pose, sh=np.asarray(sh, float))
    emb = np.zeros(512, np.float32) if embedding is None else np.asarray(embedding, np.float32)
    return Face(bbox=np.zeros(4), kps=np.zeros((5, 2)), det_score=1.0, embedding=emb, aligned=None, clip_image=None,
                clip_box=None, fit=fit)


# ---------------------------------------------------------------------------- statistics
def test_bootstrap_and_summarize():
    assert bootstrap_ci(np.full(10, 3.0)) == [3.0, 3.0]
    assert bootstrap_ci([1.0]) is None
    rng = np.random.default_rng(0)
    x = rng.normal(5, 1, 400)
    lo, hi = bootstrap_ci(x)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # normal-theory width
    r = summarize([1.0, np.nan, 3.0], model="m")
    assert r.status == "computed" and r.value == 2.0 and r.n == 2
    empty = summarize([np.nan], empty_reason="no face")
    assert empty.status == "not computed" and empty.value is None and empty.reason == "no face"
    assert root_mean_square(np.array([3.0, 4.0])) == pytest.approx(np.sqrt(12.5))


# ---------------------------------------------------------------------------- identity, physical, attributes
def test_face_similarity_known_values():
    e = np.eye(512)
    assert face_similarity(e[0], e[0] * 3) == pytest.approx(1.0)
    assert face_similarity(e[0], e[1]) == 0.0
    assert face_similarity(e[0] + e[1], e[0]) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError, match="zero norm"):
        face_similarity(np.zeros(512), e[0])
    metric = FaceSimilarity(analyzer=None)
    ref = make_face(e[0])
    metric.update([make_face(e[0]), make_face(e[0] + e[1]), None, make_face(-e[0])], [ref] * 4)
    np.testing.assert_allclose(metric.per_image()[[0, 1, 3]], [1, 1 / np.sqrt(2), -1], atol=1e-6)
    assert np.isnan(metric.per_image()[2]) and metric.no_face_rate == 0.25
    assert float(metric.compute()) == pytest.approx((1 + 1 / np.sqrt(2) - 1) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="references"):
        metric.update([ref], [ref, ref])


def test_pose_and_light_rmse_accumulate_as_pooled_rmse():
    z = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}
    ref = make_face(pose=z, sh=np.zeros((9, 3)))
    gens = [make_face(pose={**z, "yaw": 0.3}, sh=np.full((9, 3), 0.2)), make_face(pose=z, sh=np.zeros((9, 3))),
            make_face(), None]  # third: no fit, fourth: no face
    pose, light = PoseRMSE(analyzer=None), LightRMSE(analyzer=None)
    pose.update(gens, [ref] * 4)
    light.update(gens, [ref] * 4)
    # all angles of the 2 scored pairs: (0.3, 0, 0, 0, 0, 0) -> sqrt(0.09 / 6)
    assert float(pose.compute()) == pytest.approx(np.sqrt(0.09 / 6))
    assert float(light.compute()) == pytest.approx(np.sqrt(0.04 / 2))
    assert np.isnan(pose.per_image()[2:]).all()


def test_attribute_count_threshold():
    assert attribute_count([0.9, 0.85, 0.86, 0.1]) == 2  # strictly above 0.85
    assert attribute_count({"Smiling": 0.99, "Male": 0.2}) == 1


def test_vlm_score_parsing():
    assert parse_score(" 87") == 87.0 and parse_score("Score: 100/100") == 100.0
    assert np.isnan(parse_score("very realistic")) and np.isnan(parse_score("250"))


# ---------------------------------------------------------------------------- Frechet distances
def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    for n, m, d in [(40, 30, 8), (12, 20, 32)]:  # more and fewer samples than dimensions
        a, b = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.5 + 0.3
        sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * np.real(linalg.sqrtm(sa @ sb)))
        assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    a = rng.normal(size=(50, 6))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)


class _MeanColour(torch.nn.Module):
    num_features = 3

    def forward(self, x):
        return x.mean((2, 3))


def test_frechet_distance_accumulator_on_torchmetrics():
    rng = np.random.default_rng(1)
    real = torch.from_numpy(rng.uniform(size=(6, 3, 8, 8))).float()
    fake = torch.from_numpy(rng.uniform(size=(5, 3, 8, 8)) * 0.5).float()
    fd = FrechetDistance(_MeanColour())
    fd.update(real[:3], real=True)
    fd.update(real[3:], real=True)
    fd.update(fake, real=False)
    r = fd.result(model="mean colour")
    expected = frechet_distance(real.double().mean((2, 3)).numpy(), fake.double().mean((2, 3)).numpy())
    assert r.status == "computed" and r.value == pytest.approx(expected, rel=1e-4) and r.n == 5
    assert r.ci95[0] <= r.ci95[1]
    assert r.ci95[0] < r.value < r.ci95[1]  # bias-corrected: the interval brackets the estimate
    small = FrechetDistance(_MeanColour())
    small.update(real[:1], real=True)
    small.update(fake, real=False)
    assert small.result(model="x").status == "not computed"


def test_inception_loads_pytorch_fid_layout(tmp_path):
    torch.manual_seed(0)
    net = InceptionV3FID().eval()
    state = {**net.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(state, tmp_path / "pt_inception.pth")
    loaded = InceptionV3FID.from_file(tmp_path / "pt_inception.pth")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        f = loaded(x)
        assert f.shape == (1, 2048) and torch.allclose(f, net(x))
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # InceptionV3 without fc/aux (23.8M - 2.05M)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="missing keys"):
        InceptionV3FID.from_file(tmp_path / "bad.pth")


def test_lpips_formula_and_loading(tmp_path):
    torch.manual_seed(0)
    torch.save(AlexNetFeatures().state_dict(), tmp_path / "alexnet.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPSAlex.CHANNELS)}
    torch.save(lins, tmp_path / "alex_lin.pth")
    net = LPIPSAlex.from_files(tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth")
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(a, a), torch.zeros(2))
        # the LPIPS formula written out: scale to [-1, 1], shift/scale, unit-normalise channels, weigh, average, sum
        shift, scale = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        fa, fb = net.net((2 * a - 1 - shift) / scale), net.net((2 * b - 1 - shift) / scale)
        expected = 0
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            expected = expected + ((x - y) ** 2 * lins[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
        assert torch.allclose(net(a, b), expected, rtol=1e-5)
    with pytest.raises(RuntimeError, match="not a AlexNet"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
        LPIPSAlex.from_files(tmp_path / "bad.pth", tmp_path / "alex_lin.pth")


def test_images_to_tensor(astronaut):
    x = images_to_tensor([astronaut, astronaut[:100]], size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


# ---------------------------------------------------------------------------- CLIP, DINO on tiny saved models
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from facemakeup.model.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                      vocab_size=len(tok), max_position_embeddings=77, bos_token_id=len(tok) - 2,
                                      eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(cfg).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_clip_scores_on_a_tiny_saved_clip(tiny_clip_dir, astronaut):
    from facemakeup.eval.clip_dino import CLIPEncoder, CLIPImageSimilarity, CLIPTextScore

    enc = CLIPEncoder.from_pretrained(str(tiny_clip_dir), local_files_only=True)
    other = np.ascontiguousarray(astronaut[::-1])
    emb = enc.embed_images([astronaut, other])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    clip_i = CLIPImageSimilarity(enc)
    clip_i.update([astronaut, astronaut], [astronaut, other])
    v = clip_i.per_image()
    assert v[0] == pytest.approx(1.0, abs=1e-5) and v[1] < 1 - 1e-4
    # CLIP-T = 100 * cosine of the model's own projected embeddings
    clip_t = CLIPTextScore(enc)
    clip_t.update([astronaut], ["a woman in a space suit"])
    model = enc.model
    pixels = enc.image_processor(images=[astronaut], return_tensors="pt").pixel_values
    ids = enc.tokenizer(["a woman in a space suit"], return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=pixels)
    expected = 100 * torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert clip_t.per_image()[0] == pytest.approx(expected, abs=1e-3)


def test_dino_on_a_tiny_saved_vit(tmp_path, astronaut):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    from facemakeup.eval.clip_dino import DINOEncoder, DINOSimilarity

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                               patch_size=8), add_pooling_layer=False)
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    enc = DINOEncoder.from_pretrained(str(tmp_path), local_files_only=True)
    metric = DINOSimilarity(enc)
    metric.update([astronaut, astronaut], [astronaut, np.ascontiguousarray(astronaut[:, ::-1])])
    assert metric.per_image()[0] == pytest.approx(1.0, abs=1e-5) and metric.per_image()[1] < 1 - 1e-4
    pixels = enc.image_processor(images=[astronaut], return_tensors="pt").pixel_values
    with torch.no_grad():
        cls = model.eval()(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(enc.embed_images([astronaut])[0], torch.nn.functional.normalize(cls, dim=-1)[0], atol=1e-5)


def test_missing_model_is_a_named_error(tmp_path):
    from facemakeup.errors import ModelNotFoundError
    from facemakeup.eval.clip_dino import CLIPEncoder

    with pytest.raises(ModelNotFoundError, match="--clip"):
        CLIPEncoder.from_pretrained(str(tmp_path / "nowhere"), local_files_only=True)


# ---------------------------------------------------------------------------- pairs, prompts
def test_shipped_prompts():
    prompts = load_prompts()
    assert len(prompts) == 20 and len(set(prompts)) == 20 and "a person wearing a white shirt" in prompts


def test_pairs_from_csv_and_folders(tmp_path, astronaut):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    (tmp_path / "gen" / "ann").mkdir(parents=True)
    (tmp_path / "refs").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "refs" / "ann.jpg")
    info = PngInfo()
    info.add_text("facemakeup", json.dumps({"prompt": "best quality, a person", "model": "tiny"}))
    Image.fromarray(astronaut[:64, :64]).save(tmp_path / "gen" / "ann" / "p00_s42.png", pnginfo=info)
    pairs = pairs_from_folders(tmp_path / "gen", tmp_path / "refs")
    assert pairs == [Pair(tmp_path / "gen" / "ann" / "p00_s42.png", tmp_path / "refs" / "ann.jpg", "best quality, a person", "ann")]
    (tmp_path / "gen" / "bob").mkdir()
    Image.fromarray(astronaut[:64, :64]).save(tmp_path / "gen" / "bob" / "x.png")
    with pytest.raises(FileNotFoundError, match="bob"):
        pairs_from_folders(tmp_path / "gen", tmp_path / "refs")
    (tmp_path / "pairs.csv").write_text("generated,reference\ngen/ann/p00_s42.png,refs/ann.jpg\n")
    assert pairs_from_csv(tmp_path / "pairs.csv")[0].prompt is None
    (tmp_path / "bad.csv").write_text("image,reference\na,b\n")
    with pytest.raises(ValueError, match="generated"):
        pairs_from_csv(tmp_path / "bad.csv")


# ---------------------------------------------------------------------------- evaluate end to end (CLI)
def test_evaluate_cli_on_a_photo_vs_itself_and_its_mirror(tmp_path, astronaut):
    from click.testing import CliRunner
    from PIL import Image

    from facemakeup.cli import main

    Image.fromarray(astronaut).save(tmp_path / "ref.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(tmp_path / "mirror.png")
    Image.fromarray(astronaut).save(tmp_path / "same.png")
    (tmp_path / "pairs.csv").write_text("generated,reference,prompt\nsame.png,ref.png,an astronaut\nmirror.png,ref.png,an astronaut\n")
    res = CliRunner().invoke(main, ["evaluate", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out"),
                                    "--metrics", "CLIP-T,FaceSim,FID,LPIPS,Pose-RMSE,Light-RMSE,VLMScore"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert list(m) == ["CLIP-T", "VLMScore", "FaceSim", "FID", "LPIPS", "Pose-RMSE", "Light-RMSE", "FD-MobileNetV2"]
    for name, flag in [("CLIP-T", "--clip"), ("VLMScore", "--vlm"), ("FID", "--inception"), ("LPIPS", "--lpips")]:
        assert m[name]["status"] == "not computed" and flag in m[name]["reason"] and m[name]["value"] is None
    assert m["FaceSim"]["status"] == "computed" and m["FaceSim"]["no_face_rate"] == 0.0 and m["FaceSim"]["n"] == 2
    assert m["FaceSim"]["substitute"] and "w600k_mbf" in m["FaceSim"]["model"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))
    same, mirror = rows
    assert float(same["FaceSim"]) == pytest.approx(1.0, abs=1e-5) and 0.3 < float(mirror["FaceSim"]) < 1
    assert float(same["Pose-RMSE"]) == 0 and float(same["Light-RMSE"]) == 0
    assert float(mirror["Pose-RMSE"]) > 0 and float(mirror["Light-RMSE"]) > 0
    assert m["FD-MobileNetV2"]["status"] == "not computed"  # one reference image: no covariance
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| Face-MakeUp V2 | 23.36 | 84.21 | 5.9 | 0.771 |" in report and "n/c" in report
    assert all(h in report for h in PAPER_METRICS) and (tmp_path / "out" / "grid.png").is_file()
    res = CliRunner().invoke(main, ["evaluate", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o2"), "--metrics", "FooBar"])
    assert res.exit_code != 0 and "FooBar" in res.output


@pytest.mark.slow
def test_benchmark_tiny_end_to_end_and_resume(tmp_path, astronaut):
    from click.testing import CliRunner
    from PIL import Image

    from facemakeup.cli import main

    (tmp_path / "ids").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "ids" / "astronaut.png")
    (tmp_path / "prompts.txt").write_text("# two prompts\na person wearing a white shirt\na person smiling\n")
    args = ["benchmark", "--model", "tiny", "--identities", str(tmp_path / "ids"), "--out", str(tmp_path / "b"), "--prompts",
            str(tmp_path / "prompts.txt"), "--seeds", "2", "--steps", "2", "--metrics", "FaceSim,Attr,FID"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    images = sorted(p.name for p in (tmp_path / "b" / "astronaut").glob("*.png"))
    assert images == ["p00_s42.png", "p00_s43.png", "p01_s42.png", "p01_s43.png"]
    assert (tmp_path / "b" / "references" / "astronaut.png").is_file()
    with Image.open(tmp_path / "b" / "astronaut" / "p01_s43.png") as im:
        assert json.loads(im.info["facemakeup"])["prompt"] == "best quality, a person smiling"
    data = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert data["model"] == "tiny" and "noise" in data["note"] and "`tiny`" in (tmp_path / "b" / "report.md").read_text()
    assert data["metrics"]["FaceSim"]["status"] in ("computed", "not computed")  # noise: usually no face at all
    stamp = (tmp_path / "b" / "astronaut" / "p00_s42.png").stat().st_mtime_ns
    res = CliRunner().invoke(main, args)  # resume: nothing regenerated
    assert res.exit_code == 0 and "0 to generate" in res.output
    assert (tmp_path / "b" / "astronaut" / "p00_s42.png").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_benchmark_and_evaluate_take_the_sdxl_tiny_model(tmp_path, astronaut):
    from click.testing import CliRunner
    from PIL import Image

    from facemakeup.cli import main

    (tmp_path / "ids").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "ids" / "astronaut.png")
    (tmp_path / "prompts.txt").write_text("a person smiling\n")
    res = CliRunner().invoke(main, ["benchmark", "--model", "tiny-xl", "--identities", str(tmp_path / "ids"), "--out", str(tmp_path / "b"),
                                    "--prompts", str(tmp_path / "prompts.txt"), "--steps", "1", "--metrics", "FaceSim,Attr"])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "b" / "astronaut" / "p00_s42.png") as im:
        assert im.size == (64, 64) and json.loads(im.info["facemakeup"])["model"] == "tiny-xl"
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["model"] == "tiny-xl"
    res = CliRunner().invoke(main, ["evaluate", "--generated", str(tmp_path / "b"), "--references", str(tmp_path / "b" / "references"),
                                    "--out", str(tmp_path / "e"), "--metrics", "FaceSim,Attr"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert data["model"] == "tiny-xl" and "noise" in data["note"]


def test_vlm_score_on_a_tiny_saved_llava(tmp_path, astronaut):
    """A tiny random LLaVA (CLIP vision tower + Llama) with a word-level tokenizer and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    from facemakeup.eval.vlm import QUESTION, VLMScore, VLMScorer

    words = ["<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"] + [str(i) for i in range(101)] + QUESTION.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    wordlevel = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wordlevel.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=wordlevel, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                  extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                                     image_size=32, patch_size=8),
                      text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                              num_hidden_layers=2, num_key_value_heads=4),
                      image_token_index=vocab["<image>"])
    LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path)
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}"
                "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")
    LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok,
                   patch_size=8, vision_feature_select_strategy="default", chat_template=template,
                   num_additional_image_tokens=1).save_pretrained(tmp_path)
    scorer = VLMScorer.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(scorer.model).__name__ == "LlavaForConditionalGeneration"
    answers = scorer.answers([astronaut, astronaut[:200]])
    assert answers[0] == scorer.answers([astronaut])[0]  # greedy: deterministic
    metric = VLMScore(scorer)
    metric.update([astronaut, astronaut[:200]])
    np.testing.assert_array_equal(metric.per_image(), [parse_score(a) for a in answers])
    assert metric.unparsed_rate == np.mean([np.isnan(parse_score(a)) for a in answers])
