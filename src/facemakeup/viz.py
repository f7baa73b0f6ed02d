"""Pictures of what the pipeline saw: faces drawn on photos, and the conditions sheet of a run."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

#: Keypoint colours: left eye, right eye, nose, left mouth corner, right mouth corner (as seen).
KPS_COLOURS = [(255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 0), (255, 0, 255)]


def draw_faces(image: np.ndarray, faces) -> Image.Image:
    """The photo with each face's box (green), keypoints (coloured dots) and CLIP-crop box (dashed, cyan).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: ``Face`` records (``bbox``, ``kps``, ``det_score``, ``clip_box``), pixels of ``image``.

    Returns:
        An RGB ``PIL.Image`` of the same size.
    """
    out = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = (float(v) for v in face.bbox)
        draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 0), width=width)
        draw.text((x0 + 2, max(y0 - 12, 0)), f"#{i} {face.det_score:.2f}", fill=(0, 255, 0))
        cx0, cy0, cx1, cy1 = (float(v) for v in face.clip_box)
        dash = 3 * width
        for a in np.arange(cx0, cx1, 2 * dash):  # dashed square: the CLIP crop
            draw.line([(a, cy0), (min(a + dash, cx1), cy0)], fill=(0, 255, 255), width=width)
            draw.line([(a, cy1), (min(a + dash, cx1), cy1)], fill=(0, 255, 255), width=width)
        for a in np.arange(cy0, cy1, 2 * dash):
            draw.line([(cx0, a), (cx0, min(a + dash, cy1))], fill=(0, 255, 255), width=width)
            draw.line([(cx1, a), (cx1, min(a + dash, cy1))], fill=(0, 255, 255), width=width)
        r = 1.5 * width
        for (x, y), colour in zip(face.kps, KPS_COLOURS):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return out


def conditions_sheet(photos: list[np.ndarray], faces: list, height: int = 384) -> Image.Image:
    """One row per reference: the photo with its face drawn, the 112 px ArcFace crop, the CLIP crop.

    Args:
        photos: reference photos, ``(H, W, 3)`` uint8 RGB.
        faces: the ``Face`` used from each photo.
        height: row height in pixels.

    Returns:
        An RGB ``PIL.Image``.
    """
    rows = []
    for photo, face in zip(photos, faces):
        drawn = draw_faces(photo, [face])
        drawn = drawn.resize((max(1, round(drawn.width * height / drawn.height)), height), Image.BICUBIC)
        aligned = Image.fromarray(face.aligned).resize((height // 2, height // 2), Image.NEAREST)
        clip = Image.fromarray(face.clip_image).resize((height, height), Image.BICUBIC)
        row = Image.new("RGB", (drawn.width + aligned.width + clip.width + 16, height), (32, 32, 32))
        row.paste(drawn, (0, 0))
        row.paste(aligned, (drawn.width + 8, 0))
        row.paste(clip, (drawn.width + aligned.width + 16, 0))
        ImageDraw.Draw(row).text((drawn.width + 10, height // 2 + 4), "ArcFace norm_crop 112", fill=(255, 255, 255))
        ImageDraw.Draw(row).text((drawn.width + aligned.width + 18, 4), "CLIP crop", fill=(255, 255, 255))
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * (len(rows) - 1)), (32, 32, 32))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 8
    return sheet
