"""The evaluation's outputs: ``metrics.json``, ``per_image.csv``, ``report.md`` and ``grid.png``.

``report.md`` puts this run's row under the published rows of Face-MakeUpV2's table (docs/sources.md,
FaceCaption test set), in the paper's column order; substitutes are marked and explained, metrics
that were not computed say why.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Sequence

from .results import PAPER_METRICS, PEOPLE_METRICS, MetricResult

#: Face-MakeUpV2's table (docs/sources.md, "Reported results"), columns in ``PAPER_METRICS`` order.
PUBLISHED = {
    "IP-Adapter-FaceID": (25.19, 86.43, 3.91, 0.644, 0.565, 0.604, 122.9, 0.679, 0.197, 0.218),
    "InstantID": (25.61, 47.00, 3.54, 0.511, 0.419, 0.450, 126.4, 0.665, 0.121, 0.295),
    "PhotoMaker": (25.92, 72.35, 3.69, 0.570, 0.458, 0.181, 114.6, 0.689, 0.231, 0.288),
    "Face-MakeUp V1": (24.03, 88.37, 4.40, 0.751, 0.722, 0.736, 100.0, 0.616, 0.095, 0.144),
    "Face-MakeUp V2": (23.36, 84.21, 5.90, 0.771, 0.786, 0.757, 90.03, 0.563, 0.091, 0.118),
}
#: Lower is better for these.
LOWER_IS_BETTER = ("FID", "LPIPS", "Pose-RMSE", "Light-RMSE")


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def write_metrics_json(path: str | os.PathLike, results: dict[str, MetricResult], info: dict) -> None:
    """``{"metrics": {NAME: record}, **info}`` (``info``: model label, inputs, provenance)."""
    Path(path).write_text(json.dumps({"metrics": {k: v.to_json() for k, v in results.items()}, **info}, indent=2, allow_nan=False,
                                     default=lambda o: None))


def write_per_image_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """One row per generated image; empty cells where an image has no value."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})


def report_markdown(results: dict[str, MetricResult], model: str, n_images: int, n_identities: int, grid: str | None = None,
                    note: str | None = None) -> str:
    """The report's Markdown: the table beside the published rows, then every metric's details."""
    lines = [f"# Evaluation of `{model}`", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"{n_images} generated images of {n_identities} identities. Published rows: Face-MakeUpV2 (arXiv 2510.21775), "
              "FaceCaption test set; arrows give the better direction. `*` = computed with a substitute model (below): "
              "comparable between runs of this package, not with the published rows. `n/c` = not computed (reason below).", ""]
    header = [f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in PAPER_METRICS]
    lines += ["| model | " + " | ".join(header) + " |", "|---" * (len(PAPER_METRICS) + 1) + "|"]
    for name, row in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:g}" for v in row) + " |")
    cells = []
    for m in PAPER_METRICS:
        r = results.get(m)
        if r is None:
            cells.append("-")
        elif r.status != "computed":
            cells.append("n/c")
        else:
            cells.append(_fmt(r.value, 3 if abs(r.value) < 10 else 2) + ("*" if r.substitute else ""))
    lines += [f"| **this run: `{model}`** | " + " | ".join(cells) + " |", ""]
    extra = [k for k in results if k not in PAPER_METRICS and k not in PEOPLE_METRICS]
    people = [results[k] for k in PEOPLE_METRICS if k in results]
    if people and all(r.status == "computed" for r in people):
        own, leak = people
        cross = (leak.extra or {}).get("reference_cross_similarity")
        lines += [f"Several people per image: **FaceSim-people = {_fmt(own.value)}** (each face vs its own reference; ci95 "
                  f"{_fmt(own.ci95[0]) if own.ci95 else ''}-{_fmt(own.ci95[1]) if own.ci95 else ''}, n = {own.n} faces) beside "
                  f"**ID-leakage = {_fmt(leak.value)}** ↓ (each face vs the other people's references"
                  + (f"; the references themselves: {_fmt(cross)}" if cross is not None else "") + ").", ""]
    for k in extra:
        r = results[k]
        if r.status == "computed":
            lines += [f"Instead of FID: **{k} = {_fmt(r.value, 2)}** (ci95 {_fmt(r.ci95[0], 2)}-{_fmt(r.ci95[1], 2)}); {r.substitute}.", ""]
    lines += ["## Every metric", "", "| metric | status | value | ci95 | n | model | substitute / reason |", "|---|---|---|---|---|---|---|"]
    for k, r in results.items():
        ci = f"{_fmt(r.ci95[0])} - {_fmt(r.ci95[1])}" if r.ci95 else ""
        why = r.substitute if r.status == "computed" else r.reason
        if r.extra:
            why = (why or "") + " (" + ", ".join(f"{a} {_fmt(b) if isinstance(b, float) else b}" for a, b in r.extra.items()) + ")"
        lines.append(f"| {k} | {r.status} | {_fmt(r.value)} | {ci} | {r.n} | {r.model or ''} | {(why or '').replace('|', '/')} |")
    lines += ["", "ci95: percentile bootstrap over images (1000 resamples; Frechet distances: 50, both sets resampled, shifted by the bootstrap's bias estimate)."]
    if grid:
        lines += ["", "## Images", "", "Each row: the reference, then one image per prompt (first seed).", "", f"![grid]({grid})"]
    return "\n".join(lines) + "\n"


def write_grid(path: str | os.PathLike, groups: dict[str, tuple[Path, list[Path]]], thumb: int = 96, max_rows: int = 8,
               max_cols: int = 20) -> None:
    """A grid image: per identity (up to ``max_rows``) the reference, a gap, then up to ``max_cols`` generations.

    Args:
        path: output PNG.
        groups: ``{identity: (reference, generated images in prompt order)}``.
        thumb: thumbnail side in pixels.
    """
    from PIL import Image, ImageDraw, ImageOps

    rows = list(groups.items())[:max_rows]
    cols = min(max_cols, max(len(g) for _, (_, g) in rows))
    gap = thumb // 8
    sheet = Image.new("RGB", (thumb * (cols + 1) + gap, thumb * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, (ref, gens)) in enumerate(rows):
        for c, p in enumerate([ref] + list(gens[:cols])):
            with Image.open(p) as im:
                tile = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (thumb, thumb))
            sheet.paste(tile, (c * thumb + (gap if c else 0), r * thumb))
        draw.text((2, r * thumb + 2), name[:14], fill="yellow")
    sheet.save(path)


def write_outputs(out_dir: str | os.PathLike, pairs: Sequence, results: dict[str, MetricResult], rows: Sequence[dict], model: str,
                  note: str | None = None, info: dict | None = None) -> None:
    """Write ``metrics.json``, ``per_image.csv``, ``grid.png`` and ``report.md`` into ``out_dir``.

    Args:
        pairs: the evaluated ``benchmark.Pair`` records (for the grid: first image per prompt and identity).
        results, rows: from ``benchmark.evaluate``.
        model: the label the report names (e.g. ``tiny`` or a checkpoint path).
        note: a line the report shows in bold (e.g. that ``tiny`` makes noise).
        info: extra top-level fields of ``metrics.json`` (inputs, provenance).
    """
    from ..provenance import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identities = list(dict.fromkeys(p.identity for p in pairs))
    write_metrics_json(out / "metrics.json", results, {"model": model, "note": note, "images": len(pairs),
                                                        "identities": len(identities), **(info or {}), **environment()})
    write_per_image_csv(out / "per_image.csv", rows)
    groups: dict = {}
    for p in pairs:
        ref, gens = groups.setdefault(p.identity, (p.reference, []))
        if p.prompt is None or p.prompt not in [q for q, _ in gens]:
            gens.append((p.prompt, p.generated))
    write_grid(out / "grid.png", {k: (ref, [g for _, g in gens]) for k, (ref, gens) in groups.items()})
    (out / "report.md").write_text(report_markdown(results, model, len(pairs), len(identities), grid="grid.png", note=note))
