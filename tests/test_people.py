"""Several people in one image: parity with diffusers' masked IP-Adapter path (SD 1.5 and SDXL), each
person's ID attention confined to its mask (hooks on the processors), per-person reference mixing,
layouts (a two-face photo, side by side, given masks), their maps, and the people's input checks."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from PIL import Image

from facemakeup import FaceMakeUpPipeline, FaceMakeUpXLPipeline
from facemakeup.errors import FaceMakeUpInputError
from facemakeup.faces.conditions import crop_transform, keypoint_map, keypoint_map_faces
from facemakeup.faces.layout import layout_from_photo, side_by_side, split_overlaps
from facemakeup.faces.render import shading_map, shading_map_faces
from facemakeup.model.tiny import random_faceid_plusv2_state_dict, tiny_components, tiny_xl_components

P, SIDE, CLIP = 2, 64, 32  # people; tiny output side (pixels); tiny CLIP width


def two_masks(height=SIDE, width=SIDE) -> torch.Tensor:
    """(2, H, W): person 0 on the left 3/8, person 1 on the right 3/8, nobody in the middle quarter."""
    m = torch.zeros(P, height, width)
    m[0, :, : 3 * width // 8] = 1
    m[1, :, 5 * width // 8:] = 1
    return m


@pytest.fixture(scope="module")
def parts():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def faceid_file(parts, tmp_path_factory):
    """A random IP-Adapter-FaceID-PlusV2 checkpoint file for the tiny UNet."""
    path = tmp_path_factory.mktemp("ckpt") / "ip-adapter-faceid-plusv2_tiny.bin"
    torch.save(random_faceid_plusv2_state_dict(parts["unet"], CLIP), path)
    return path


@pytest.fixture(scope="module")
def loaded(parts, faceid_file):
    """The tiny pipeline with the random FaceID-PlusV2 file loaded (for input checks: nothing runs)."""
    pipe = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
    pipe.load_face_adapter(faceid_file)
    return pipe


@pytest.fixture(scope="module")
def pair_photo(tmp_path_factory):
    """Scikit-image's astronaut (left) and matplotlib's Grace Hopper (right) in one 1024x600 photo (public domain)."""
    import matplotlib.cbook
    import skimage.data

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((512, 600))
    pair = Image.new("RGB", (1024, 600))
    pair.paste(Image.fromarray(skimage.data.astronaut()), (0, 44))
    pair.paste(hopper, (512, 0))
    path = tmp_path_factory.mktemp("layout") / "pair.png"
    pair.save(path)
    return path


@pytest.fixture(scope="module")
def pair_faces(pair_photo, analyzer):
    return analyzer.get(pair_photo)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    id_embeds = F.normalize(torch.randn(P, 512, generator=g), dim=-1)  # (P, 512)
    clip = torch.randn(P, 65, CLIP, generator=g)  # (P, N, D)
    uncond = torch.randn(1, 65, CLIP, generator=g)
    latents = torch.randn(1, 4, SIDE // 2, SIDE // 2, generator=g)
    return id_embeds, clip, uncond, latents


def diffusers_masked_call(ref, prompt, id_embeds, clip, uncond, masks, scale, **kw):
    """diffusers' documented masked IP-Adapter call: FaceID-PlusV2's CLIP features on the projection (rows
    [uncond x P, clip_0 .. clip_P-1]), the ID embeddings as ip_adapter_image_embeds (2, P, 512) (negative =
    zeros), and the masks from IPAdapterMaskProcessor as cross_attention_kwargs["ip_adapter_masks"]."""
    ref.set_ip_adapter_scale(scale)
    proj = ref.unet.encoder_hid_proj.image_projection_layers[0]
    proj.clip_embeds = torch.cat([uncond.expand(len(clip), -1, -1), clip])[:, None]  # (2P, 1, N, D)
    proj.shortcut, proj.shortcut_scale = True, 1.0
    height, width = masks.shape[1:]
    processed = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)  # (P, 1, H, W)
    embeds = torch.stack([torch.zeros_like(id_embeds), id_embeds])  # (2, P, 512)
    return ref(prompt, ip_adapter_image_embeds=[embeds], cross_attention_kwargs={"ip_adapter_masks": [processed.reshape(1, P, height, width)]},
               **kw).images


def test_two_people_match_diffusers_masked_ip_adapter(parts, faceid_file):
    ours = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
    ours.load_face_adapter(faceid_file)
    ours.set_progress_bar_config(disable=True)
    theirs = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ref = StableDiffusionPipeline(**theirs, safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    ref.load_ip_adapter(torch.load(faceid_file, weights_only=True), subfolder="", weight_name="", image_encoder_folder=None)
    ref.set_progress_bar_config(disable=True)
    id_embeds, clip, uncond, latents = inputs()
    masks = two_masks()
    kw = dict(num_inference_steps=2, guidance_scale=7.5, latents=latents, output_type="latent")
    mine = ours("two people", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, face_masks=masks, ip_scale=0.8, **kw)
    theirs = diffusers_masked_call(ref, "two people", id_embeds, clip, uncond, masks, 0.8, **kw)
    assert (mine.images - theirs).abs().max().item() < 1e-4
    assert mine.id_tokens.shape == (P, 4, 32) and mine.face_masks.shape == (P, SIDE, SIDE) and mine.reference_people == [0, 1]
    # PIL masks are the same masks
    pil = [Image.fromarray((m.numpy() * 255).astype(np.uint8)) for m in masks]
    again = ours("two people", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, face_masks=pil, ip_scale=0.8, **kw)
    torch.testing.assert_close(again.images, mine.images, rtol=0, atol=0)
    # the masks act: swapped masks (each identity on the other side) and no masks give other latents
    swapped = ours("two people", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, face_masks=masks.flip(0), ip_scale=0.8, **kw)
    assert (swapped.images - mine.images).abs().max() > 1e-2
    one = ours("two people", id_embeds=id_embeds[:1], clip_embeds=clip[:1], uncond_clip_embeds=uncond, ip_scale=0.8, **kw)
    assert (one.images - mine.images).abs().max() > 1e-2


def test_two_people_match_diffusers_sdxl(tmp_path):
    parts = tiny_xl_components(seed=0)
    state = random_faceid_plusv2_state_dict(parts["unet"], CLIP, seed=4)
    torch.save(state, tmp_path / "faceid-plusv2-xl.bin")
    ours = FaceMakeUpXLPipeline(face_adapter=None, **copy.deepcopy(parts))
    ours.load_face_adapter(tmp_path / "faceid-plusv2-xl.bin")
    ours.set_progress_bar_config(disable=True)
    theirs = {k: copy.deepcopy(v) for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")}
    ref = StableDiffusionXLPipeline(**theirs, image_encoder=None, feature_extractor=None)
    ref.load_ip_adapter(copy.deepcopy(state), subfolder="", weight_name="", image_encoder_folder=None)
    ref.set_progress_bar_config(disable=True)
    id_embeds, clip, uncond, latents = inputs(seed=1)
    masks = two_masks()
    kw = dict(num_inference_steps=2, guidance_scale=5.0, latents=latents, output_type="latent")
    mine = ours("two people", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, face_masks=masks, ip_scale=0.7, **kw).images
    theirs = diffusers_masked_call(ref, "two people", id_embeds, clip, uncond, masks, 0.7, **kw)
    assert (mine - theirs).abs().max().item() < 1e-4


class Probe:
    """Stands in for one IP-Adapter processor and records each person's ID-attention output: the layer's
    output minus its output with that person's tokens zeroed (zero keys and values: no contribution)."""

    def __init__(self, proc, records):
        self.proc, self.records = proc, records

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, scale=1.0, ip_adapter_masks=None):
        text, (ip,) = encoder_hidden_states  # ip: (rows, P, T, D)
        out = self.proc(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks)
        for p in range(ip.shape[1]):
            blank = ip.clone()
            blank[:, p] = 0
            without = self.proc(attn, hidden_states, (text, [blank]), attention_mask, temb, scale, ip_adapter_masks)
            self.records.append((p, out - without, ip_adapter_masks[0][0, p]))  # (rows, HW, C), (H, W)
        return out


def test_each_persons_id_attention_is_zero_outside_its_mask(parts, faceid_file):
    pipe = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
    pipe.load_face_adapter(faceid_file)
    pipe.set_face_adapter_scale(1.0)
    pipe.set_progress_bar_config(disable=True)
    id_embeds, clip, uncond, latents = inputs(seed=2)
    records = []
    saved = dict(pipe.unet.attn_processors)
    assert sum(isinstance(v, IPAdapterAttnProcessor2_0) for v in saved.values()) >= 2
    pipe.unet.set_attn_processor({k: Probe(v, records) if isinstance(v, IPAdapterAttnProcessor2_0) else v for k, v in saved.items()})
    try:
        pipe("two people", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, face_masks=two_masks(), latents=latents,
             num_inference_steps=1, guidance_scale=7.5, output_type="latent")
    finally:
        pipe.unet.set_attn_processor(saved)
    assert len(records) >= 2 * P
    for p, contribution, mask in records:
        rows, queries, channels = contribution.shape
        down = IPAdapterMaskProcessor.downsample(mask[None], rows, queries, channels)  # what diffusers multiplies by
        assert torch.all(contribution[down == 0] == 0), p  # exactly zero where the mask is zero
        side = int(round(queries ** 0.5))
        near = F.max_pool2d(F.interpolate(mask[None, None], size=(side, side), mode="nearest"), 5, 1, 2)[0, 0]  # mask grown 2 cells
        far = (near == 0).reshape(-1)  # beyond bicubic's reach
        assert far.sum() >= queries // 8
        assert contribution[:, far].abs().max() == 0, p
        inside = (down[0, :, 0] >= 0.5)
        assert contribution[:, inside].abs().max() > 1e-4, p  # and it does act inside


def test_each_person_mixes_its_own_references(parts, faceid_file):
    pipe = FaceMakeUpPipeline(face_adapter=None, **copy.deepcopy(parts))
    pipe.load_face_adapter(faceid_file)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    ids, clips = F.normalize(torch.randn(3, 512, generator=g), dim=-1), torch.randn(3, 65, CLIP, generator=g)
    uncond = torch.randn(1, 65, CLIP, generator=g)
    kw = dict(uncond_clip_embeds=uncond, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
              latents=torch.randn(1, 4, 32, 32, generator=g))
    both = pipe("x", id_embeds=ids, clip_embeds=clips, reference_people=[0, 1, 1], reference_weights=[5, 3, 1], face_masks=two_masks(), **kw)
    assert both.reference_weights == pytest.approx([1.0, 0.75, 0.25])  # normalised per person
    second = pipe("x", id_embeds=ids[1:], clip_embeds=clips[1:], reference_weights=[3, 1], **kw)  # person 1 alone
    first = pipe("x", id_embeds=ids[:1], clip_embeds=clips[:1], **kw)
    torch.testing.assert_close(both.id_tokens, torch.cat([first.id_tokens, second.id_tokens]))


def test_shading_and_keypoint_maps_of_one_face_equal_the_one_face_maps(astronaut, analyzer):
    face = analyzer.get_face(astronaut)
    scale, cx, cy = crop_transform(face.kps, 5.0, 48, 64)
    np.testing.assert_array_equal(shading_map_faces([face.fit], [(scale, cx, cy, 32, 24)], [face.fit.sh], 48, 64),
                                  shading_map(face.fit, face.kps, height=48, width=64))
    kps = np.stack([(face.kps[:, 0] - cx) * scale + 32, (face.kps[:, 1] - cy) * scale + 24], axis=1)
    np.testing.assert_array_equal(keypoint_map_faces([kps], 48, 64), keypoint_map(face.kps, 5.0, 48, 64))


def test_layout_photo_gives_two_masks_and_a_two_face_shading_map(pair_faces):
    assert len(pair_faces) == 2
    lay = layout_from_photo(pair_faces, 2, 256, 512)
    assert lay.layout_faces == [0, 1] and lay.faces[0].bbox[0] < 512 < lay.faces[1].bbox[0]  # left to right: astronaut, Hopper
    assert lay.masks.shape == (2, 256, 512) and lay.masks.dtype == np.float32 and not (lay.masks.sum(0) > 1).any()
    smap = lay.condition_map("shading")
    lit = smap[..., 0] > 0
    for (x0, y0, x1, y1), mask in zip(lay.boxes.round().astype(int), lay.masks):
        assert lit[y0:y1, x0:x1].sum() > 0.15 * (x1 - x0) * (y1 - y0)  # a rendered face in each person's box
        assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)  # the mask is the box (no overlap here)
    assert lit[lay.masks.sum(0) == 0].mean() < 0.01  # and nothing outside them
    kmap = lay.condition_map("keypoints")
    for (x0, y0, x1, y1) in lay.boxes.round().astype(int):
        assert (kmap[y0:y1, x0:x1, 0] == 255).any()  # each face's red left-eye dot
    relit = lay.condition_map("shading", sh=pair_faces[0].fit.sh)
    assert (relit != smap).any() and np.array_equal(relit[..., 0] > 0, lit)  # one chosen light: same faces, other shading
    swapped = layout_from_photo(pair_faces, 2, 256, 512, assignment=[1, 0])
    np.testing.assert_array_equal(swapped.masks, lay.masks[::-1])
    parsed = layout_from_photo(pair_faces, 2, 256, 512, mask="parsing")
    for m, box in zip(parsed.masks, lay.masks):
        assert 0.3 * box.sum() < m.sum() < 1.5 * box.sum() and (m * box).sum() > 0.6 * m.sum()  # the head, about where the box is
    with pytest.raises(FaceMakeUpInputError, match=r"2 face\(s\) but 3 people were given"):
        layout_from_photo(pair_faces, 3, 256, 512)
    with pytest.raises(FaceMakeUpInputError, match="different face"):
        layout_from_photo(pair_faces, 2, 256, 512, assignment=[0, 0])


def test_side_by_side_and_overlaps():
    lay = side_by_side(3, 40, 64)
    assert lay.boxes.tolist() == [[0, 0, 21, 40], [21, 0, 43, 40], [43, 0, 64, 40]]
    np.testing.assert_array_equal(lay.masks.sum(0), np.ones((40, 64)))
    a = np.zeros((2, 10, 20), bool)
    a[0, :, :12], a[1, :, 8:] = True, True  # overlap in columns 8..11
    split = split_overlaps(a, np.array([[0, 0, 12, 10], [8, 0, 20, 10]]))
    assert not (split.sum(0) > 1).any() and split[0, :, :10].all() and split[1, :, 10:].all()


def test_layout_image_through_the_pipeline(pair_photo):
    from facemakeup.pipeline import load_pipeline

    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    import skimage.data

    astronaut = skimage.data.astronaut()
    hopper = np.asarray(Image.open(pair_photo).convert("RGB"))[:, 512:]
    kw = dict(num_inference_steps=1, seed=0, output_type="latent", height=32, width=64)
    out = pipe("two people", reference_image=[astronaut, hopper], layout_image=pair_photo, **kw)
    assert out.face_masks.shape == (2, 32, 64) and out.layout.source == "layout" and out.reference_people == [0, 1]
    lit = out.shading_image[..., 0] > 0
    for (x0, y0, x1, y1) in out.layout.boxes.round().astype(int):
        assert lit[y0:y1, x0:x1].any()  # both faces in the map
    side = pipe("two people", reference_image=[astronaut, hopper], reference_people=[0, 1], **kw)  # no layout: side by side
    assert side.layout.source == "side by side" and side.face_masks[0, :, :32].all() and not side.face_masks[0, :, 32:].any()
    with pytest.raises(FaceMakeUpInputError, match=r"2 face\(s\) but 1 person was given"):
        pipe("one", reference_image=astronaut, layout_image=pair_photo, **kw)


@pytest.mark.parametrize("kwargs, words", [
    ({"face_masks": torch.ones(2, 64)}, "(P, H, W) float tensor"),
    ({"face_masks": torch.full((2, 64, 64), float("nan"))}, "finite values in [0, 1]"),
    ({"face_masks": two_masks() * 2}, "finite values in [0, 1]"),
    ({"face_masks": torch.stack([two_masks()[0], torch.zeros(64, 64)])}, "`face_masks[1]` is empty"),
    ({"face_masks": two_masks(64, 32)}, "aspect ratio"),
    ({"face_masks": two_masks()[:1]}, "1 `face_masks` for 2 references"),
    ({"face_masks": two_masks(), "reference_people": [0, 0]}, "2 `face_masks` for 1 person(s)"),
    ({"reference_people": [0, 2]}, "leaves person(s) [1] without a reference"),
    ({"reference_people": [0]}, "for each of the 2 references"),
    ({"layout_assignment": [0, 1]}, "pass a layout image too"),
    ({"face_masks": two_masks(), "layout_image": np.zeros((8, 8, 3), np.uint8)}, "not both"),
    ({"face_masks": two_masks(), "reference_weights": [1, 0]}, "person 1 sum to 0"),
    ({"face_masks": two_masks(), "layout_mask": "ellipse"}, "`layout_mask` must be one of"),
])
def test_people_bad_input(loaded, kwargs, words):
    pipe = loaded
    id_embeds, clip, uncond, latents = inputs()
    with pytest.raises(ValueError) as info:
        pipe("x", id_embeds=id_embeds, clip_embeds=clip, uncond_clip_embeds=uncond, num_inference_steps=1, **kwargs)
    assert words in str(info.value)


# ------------------------------------------------------------------------------------------------ CLI, provenance, evaluation
def cli(*args):
    from click.testing import CliRunner

    from facemakeup.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture(scope="module")
def portraits(tmp_path_factory):
    import matplotlib.cbook
    import skimage.data

    d = tmp_path_factory.mktemp("people")
    Image.fromarray(skimage.data.astronaut()).save(d / "astronaut.png")
    (d / "hopper.jpg").write_bytes(matplotlib.cbook.get_sample_data("grace_hopper.jpg").read())
    return d / "astronaut.png", d / "hopper.jpg"


@pytest.fixture(scope="module")
def two_people_run(tmp_path_factory, portraits, pair_photo):
    """`facemakeup generate --person A --person B --layout PAIR.jpg --model tiny`, once."""
    out = tmp_path_factory.mktemp("run") / "out"
    res = cli("generate", "--person", portraits[0], "--person", portraits[1], "--layout", pair_photo, "--model", "tiny",
              "--prompt", "two people", "--steps", 2, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_generate_two_people_with_a_layout(two_people_run, portraits, pair_photo):
    import hashlib
    import json

    out = two_people_run
    assert sorted(p.name for p in out.iterdir()) == ["conditions.png", "image_00.png", "mask_00.png", "mask_01.png", "provenance.json", "shading.png"]
    assert Image.open(out / "image_00.png").size == (64, 40)  # the layout's aspect ratio (1024 x 600), the model's side
    rec = json.loads((out / "provenance.json").read_text())
    people = rec["people"]
    assert [p["person"] for p in people] == [0, 1] and [p["layout_face"] for p in people] == [0, 1]
    for person, photo in zip(people, portraits):
        assert person["references"][0]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        mask = np.asarray(Image.open(out / person["mask"])) > 0
        x0, y0, x1, y1 = np.round(person["box"]).astype(int)
        assert mask[y0:y1, x0:x1].mean() > 0.9 and mask.sum() <= (x1 - x0) * (y1 - y0) + 2 * (x1 - x0 + y1 - y0)
        assert person["source"] == "layout" and len(person["sh"]) == 9  # each face under its own light
    assert people[0]["layout_bbox"][0] < 512 < people[1]["layout_bbox"][0]  # astronaut left, Hopper right
    assert rec["inputs"]["layout"]["sha256"] == hashlib.sha256(pair_photo.read_bytes()).hexdigest()
    assert [r["person"] for r in rec["inputs"]["references"]] == [0, 1]
    smap = np.asarray(Image.open(out / "shading.png"))[..., 0] > 0
    for person in people:
        x0, y0, x1, y1 = np.round(person["box"]).astype(int)
        assert smap[y0:y1, x0:x1].any()  # both faces rendered in one map
    sheet = Image.open(out / "conditions.png")
    assert sheet.height == 4 * 384 + 3 * 8  # two reference rows, the layout photo, the map with the masks


def test_generate_people_side_by_side_with_weights_and_layout_faces(tmp_path, portraits, pair_photo):
    import json

    out = tmp_path / "side"
    res = cli("generate", "--person", portraits[0], "--person", f"{portraits[1]},{portraits[0]}", "--weight", 1, "--weight", 3, "--weight", 1,
              "--model", "tiny", "--prompt", "two people", "--steps", 1, "--out", out)
    assert res.exit_code == 0, res.output
    people = json.loads((out / "provenance.json").read_text())["people"]
    assert [p["box"] for p in people] == [[0, 0, 32, 64], [32, 0, 64, 64]] and people[1]["weights"] == pytest.approx([0.75, 0.25])
    assert [len(p["references"]) for p in people] == [1, 2] and people[0]["source"] == "side by side"


@pytest.mark.parametrize("args, words", [
    (["--person", "{a}", "--layout", "{pair}"], ["--layout", "2 face(s) but 1 person was given", "--layout-faces"]),
    (["--person", "{a}", "--person", "{b}", "--layout", "{pair}", "--layout-faces", "0,0"], ["--layout-faces", "different face"]),
    (["--person", "{a}", "--reference", "{b}"], ["--reference", "--person", "not both"]),
    (["--person", "{a}", "--layout-faces", "0"], ["--layout-faces", "pass --layout"]),
    (["--person", "{a}", "--mask", "parsing"], ["--mask", "pass --layout"]),
    (["--person", "{a}", "--person", "{b}", "--shading-from", "{a}"], ["--shading-from", "--layout"]),
    (["--person", "{a}", "--person", "{b}", "--weight", "1"], ["1 --weight value(s) for 2 --person photo(s)"]),
    (["--person", "{a}", "--person", "{b}", "--weight", "0", "--weight", "1"], ["--person #1 sum to 0"]),
    (["--person", "{a},", "--person", "{b}"], ["--person", "PHOTO1,PHOTO2"]),
    (["--person", "{a}", "--person", "{b}", "--face-index", "all"], ["--face-index all", "--person"]),
    (["--prompt", "x"], ["--reference PHOTO", "--person PHOTO"]),
])
def test_generate_people_bad_input(tmp_path, portraits, pair_photo, args, words):
    files = {"a": portraits[0], "b": portraits[1], "pair": pair_photo}
    out = tmp_path / "out"
    args = [a.format(**files) for a in args]
    res = cli("generate", *(["--prompt", "x"] if "--prompt" not in args else []), "--model", "tiny", "--steps", 1, "--out", out, *args)
    assert res.exit_code == 2, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and all(w in line[0] for w in words), res.output
    assert not out.exists()


def test_people_evaluation_on_composites_and_runs(tmp_path, portraits, pair_photo, two_people_run):
    """The pair photo stands in for a generated image of (astronaut, Hopper): right boxes give each face its
    own identity and no leakage; the people swapped give the reverse. A tiny run (noise) has no faces."""
    from facemakeup.eval.benchmark import evaluate, group_pairs_from_runs, pairs_from_csv

    (tmp_path / "pairs.csv").write_text(
        "generated,reference,prompt,boxes\n"
        f"{pair_photo},{portraits[0]};{portraits[1]},two,120 20 380 330;600 0 950 400\n"
        f"{pair_photo},{portraits[1]};{portraits[0]},swapped,120 20 380 330;600 0 950 400\n")
    pairs = pairs_from_csv(tmp_path / "pairs.csv")
    results, rows = evaluate(pairs, metrics=["FaceSim"], progress=False)
    own = [r["FaceSim-people"] for r in rows]
    leak = [r["ID-leakage"] for r in rows]
    assert min(own[:2]) > 0.9 and max(leak[:2]) < 0.2  # right people: their own identity, no leakage
    assert max(own[2:]) < 0.2 and min(leak[2:]) > 0.9  # swapped
    assert results["FaceSim-people"].n == 4 and results["ID-leakage"].extra["lower_is_better"]
    assert abs(results["ID-leakage"].extra["reference_cross_similarity"] - rows[0]["reference_cross"]) < 1e-9
    runs = group_pairs_from_runs([two_people_run])
    assert len(runs) == 1 and runs[0].references == portraits and len(runs[0].boxes) == 2
    noise, _ = evaluate(runs, metrics=["FaceSim"], progress=False)
    assert noise["FaceSim-people"].status == "not computed" and "no face found" in noise["FaceSim-people"].reason
    (tmp_path / "bad.csv").write_text(f"generated,reference,boxes\n{pair_photo},{portraits[0]};{portraits[1]},1 2 3 4\n")
    with pytest.raises(ValueError, match="one 'x0 y0 x1 y1' per reference"):
        pairs_from_csv(tmp_path / "bad.csv")


def test_demo_group_photo_takes_one_reference_per_face(tmp_path, analyzer, pair_photo, portraits):
    import json
    import zipfile

    from facemakeup.demo import DemoBackend, DemoRequest
    from facemakeup.pipeline import load_pipeline

    backend = DemoBackend(load_pipeline("tiny"), tmp_path / "demo", analyzer=analyzer, model_info={"pipeline": "tiny"})
    req = DemoRequest(group=str(pair_photo), people=[str(portraits[0])], prompt="two women", width=64, height=40, steps=1)
    with pytest.raises(ValueError, match=r"has 2 face\(s\): upload a reference photo for face\(s\) \[2\]"):
        backend.preview(req)
    with pytest.raises(ValueError, match="remove the reference photos"):
        backend.preview(DemoRequest(references=[str(portraits[0])], group=str(pair_photo), people=[str(p) for p in portraits]))
    req.people = [str(p) for p in portraits]
    items, counts, message = backend.preview(req)
    assert counts == [2] and "2 people" in message
    assert [c.split(":")[0] for _, c in items[1:3]] == ["person 1", "person 2"] and "mask" in items[-1][1]
    paths, zip_path, _ = backend.generate(req)
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n.split("/")[-1] for n in zf.namelist())
        rec = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("provenance.json"))))
    assert names == ["conditions.png", "image_00.png", "mask_00.png", "mask_01.png", "provenance.json", "shading.png"]
    assert [p["references"][0]["name"] for p in rec["people"]] == ["person 1 (astronaut.png)", "person 2 (hopper.jpg)"]
    assert rec["inputs"]["layout"]["name"] == "group photo (pair.png)" and rec["people"][0]["layout_face"] == 0


@pytest.mark.slow
def test_benchmark_with_a_two_person_set(tmp_path, portraits):
    import json

    ids = tmp_path / "ids"
    ids.mkdir()
    Image.open(portraits[0]).save(ids / "astronaut.png")
    Image.open(portraits[1]).save(ids / "hopper.png")
    (tmp_path / "prompts.txt").write_text("a person smiling\n")
    args = ["benchmark", "--model", "tiny", "--identities", ids, "--out", tmp_path / "b", "--prompts", tmp_path / "prompts.txt",
            "--steps", 1, "--metrics", "FaceSim", "--people", 1]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    done = json.loads((tmp_path / "b" / "people" / "astronaut+hopper" / "done.json").read_text())
    assert done["images"] == ["p00_s42.png"] and done["boxes"] == [[0, 0, 32, 64], [32, 0, 64, 64]]
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert {"FaceSim", "FaceSim-people", "ID-leakage"} <= set(metrics)  # beside each other
    assert "FaceSim-people" in res.output and "0 to generate" in cli(*args).output  # resume: nothing regenerated
    res = cli("benchmark", *args[1:-2], "--people", 2)
    assert res.exit_code == 2 and "need 4 identities" in res.output
