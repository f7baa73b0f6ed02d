"""Pictures of what the pipeline saw: faces drawn on photos, and the conditions sheet of a run."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

#: Keypoint colours: left eye, right eye, nose, left mouth corner, right mouth corner (as seen).
KPS_COLOURS = [(255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 0), (255, 0, 255)]


def draw_faces(image: np.ndarray, faces, labels: list | None = None) -> Image.Image:
    """The photo with each face's box (green; the main face, label 0, yellow), keypoints (coloured
    dots) and CLIP-crop box (dashed, cyan; when known).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: ``Face`` records (``bbox``, ``kps``, ``det_score``, ``clip_box``; e.g. ``Face.from_json``
            of an ``analyze`` JSON), pixels of ``image``.
        labels: the number written on each face (default 0, 1, ...: the order of the face-choice rule).

    Returns:
        An RGB ``PIL.Image`` of the same size.
    """
    out = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for i, face in zip(labels if labels is not None else range(len(faces)), faces):
        x0, y0, x1, y1 = (float(v) for v in face.bbox)
        colour = (255, 255, 0) if i == 0 else (0, 255, 0)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        draw.text((x0 + 2, max(y0 - 12, 0)), f"#{i}{' main' if i == 0 else ''} {face.det_score:.2f}", fill=colour)
        if face.clip_box is not None:
            cx0, cy0, cx1, cy1 = (float(v) for v in face.clip_box)
            dash = 3 * width
            for a in np.arange(cx0, cx1, 2 * dash):  # dashed square: the CLIP crop
                draw.line([(a, cy0), (min(a + dash, cx1), cy0)], fill=(0, 255, 255), width=width)
                draw.line([(a, cy1), (min(a + dash, cx1), cy1)], fill=(0, 255, 255), width=width)
            for a in np.arange(cy0, cy1, 2 * dash):
                draw.line([(cx0, a), (cx0, min(a + dash, cy1))], fill=(0, 255, 255), width=width)
                draw.line([(cx1, a), (cx1, min(a + dash, cy1))], fill=(0, 255, 255), width=width)
        r = 1.5 * width
        for (x, y), kp_colour in zip(face.kps, KPS_COLOURS):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=kp_colour)
    return out


#: Colours of the people's masks and boxes, person 1 first (RGB).
PERSON_COLOURS = ((255, 80, 80), (80, 200, 255), (120, 255, 120), (255, 200, 40), (220, 120, 255), (255, 140, 200))


def people_panel(layout, shading: np.ndarray | None = None, height: int = 384) -> Image.Image:
    """The people's places drawn on the map: each mask tinted in its person's colour, its box outlined
    and labelled ``person p``.

    Args:
        layout: a ``faces.layout.Layout`` (``masks`` ``(P, h, w)``, ``boxes`` in its pixels).
        shading: ``(h, w, 3)`` uint8 map to draw on, or ``None`` (black).
        height: panel height in pixels.

    Returns:
        An RGB ``PIL.Image`` ``height`` pixels high, the map's aspect ratio.
    """
    h, w = layout.size
    base = np.zeros((h, w, 3), np.float32) if shading is None else shading.astype(np.float32)
    for p, mask in enumerate(layout.masks):
        colour = np.array(PERSON_COLOURS[p % len(PERSON_COLOURS)], np.float32)
        inside = mask > 0.5
        base[inside] = 0.6 * base[inside] + 0.4 * colour
    scale = height / h
    panel = Image.fromarray(base.round().astype(np.uint8)).resize((max(1, round(w * scale)), height), Image.NEAREST)
    draw = ImageDraw.Draw(panel)
    for p, box in enumerate(layout.boxes):
        colour = PERSON_COLOURS[p % len(PERSON_COLOURS)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        draw.text((x0 + 4, y0 + 4), f"person {p + 1}", fill=colour)
    return panel


def conditions_sheet(photos: list[np.ndarray], faces: list, shading: np.ndarray | None = None, height: int = 384, layout=None,
                     people: list[int] | None = None, layout_photo: np.ndarray | None = None) -> Image.Image:
    """One row per reference: the photo with its face drawn, the 112 px ArcFace crop, the CLIP crop;
    then the ShadingNet's shading map, if any; with several people, the layout photo with each person's
    face boxed and the map with every person's mask and box (``people_panel``).

    Args:
        photos: reference photos, ``(H, W, 3)`` uint8 RGB.
        faces: the ``Face`` used from each photo.
        shading: ``(h, w, 3)`` uint8 shading map or ``None``.
        height: row height in pixels.
        layout: the people's ``faces.layout.Layout``, or ``None``.
        people: the person (0-based) of each reference, written on its row, or ``None``.
        layout_photo: ``(H, W, 3)`` uint8 RGB layout photo (its faces are ``layout.faces``), or ``None``.

    Returns:
        An RGB ``PIL.Image``.
    """
    rows = []
    for k, (photo, face) in enumerate(zip(photos, faces)):
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
        if people is not None:
            ImageDraw.Draw(row).text((drawn.width + 10, 4), f"person {people[k] + 1}", fill=PERSON_COLOURS[people[k] % len(PERSON_COLOURS)])
        rows.append(row)
    if layout_photo is not None and layout is not None and layout.layout_faces is not None:
        drawn = Image.fromarray(layout_photo).convert("RGB")
        draw = ImageDraw.Draw(drawn)
        line = max(2, round(max(drawn.size) / 300))
        for p, face in enumerate(layout.faces):
            colour = PERSON_COLOURS[p % len(PERSON_COLOURS)]
            draw.rectangle([float(v) for v in face.bbox], outline=colour, width=line)
            draw.text((float(face.bbox[0]) + 2, max(float(face.bbox[1]) - 12, 0)), f"person {p + 1}", fill=colour)
        rows.append(drawn.resize((max(1, round(drawn.width * height / drawn.height)), height), Image.BICUBIC))
        ImageDraw.Draw(rows[-1]).text((4, 4), "layout photo", fill=(255, 255, 0))
    if layout is not None:
        rows.append(people_panel(layout, shading, height))
        ImageDraw.Draw(rows[-1]).text((4, height - 14), "map + person masks", fill=(255, 255, 0))
    elif shading is not None:
        smap = Image.fromarray(shading).resize((round(shading.shape[1] * height / shading.shape[0]), height), Image.BICUBIC)
        ImageDraw.Draw(smap).text((4, 4), "shading map (ShadingNet input)", fill=(255, 255, 0))
        rows.append(smap)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * (len(rows) - 1)), (32, 32, 32))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 8
    return sheet


def draw_pose_axes(draw: ImageDraw.ImageDraw, face, length: float | None = None, width: int = 3) -> None:
    """Draw the face's axes from the nose tip: x red (to the subject's left), y green (up), z blue (out of the face).

    The axes are the columns of ``face.fit.rotation`` (camera frame x right, y up, z toward the
    viewer), projected orthographically (image y = -camera y).
    """
    length = length or 0.6 * face.size
    ox, oy = (float(v) for v in face.kps[2])
    for axis, colour in zip(range(3), [(255, 0, 0), (0, 255, 0), (0, 128, 255)]):
        dx, dy = face.fit.rotation[0, axis], -face.fit.rotation[1, axis]
        draw.line([(ox, oy), (ox + length * dx, oy + length * dy)], fill=colour, width=width)


def analysis_overlay(image: np.ndarray, faces: list, shading_maps: list, height: int = 512, labels: list | None = None) -> Image.Image:
    """What ``facemakeup analyze`` found in a photo, as one picture.

    Left: the photo with boxes (the main face's yellow), keypoints, the 3D fit's visible landmarks
    (white dots), pose axes and pose in degrees. Right, per fitted face: its shading map and a sphere
    lit by its estimated SH lighting.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: ``Face`` records; those whose ``fit`` is ``None`` get their box only.
        shading_maps: per face an ``(s, s, 3)`` uint8 map, or ``None``.
        height: height of the picture in pixels.
        labels: the number of each face (see ``draw_faces``).

    Returns:
        An RGB ``PIL.Image``.
    """
    from .faces.render import render_sphere

    photo = draw_faces(image, faces, labels)
    draw = ImageDraw.Draw(photo)
    width = max(2, round(max(photo.size) / 250))
    for face in faces:
        if face.fit is None:
            continue
        if face.fit.has_mesh:
            for x, y in face.fit.vertices[face.fit.visible, :2]:  # the 3D fit's visible landmarks
                draw.point((float(x), float(y)), fill=(255, 255, 255))
        draw_pose_axes(draw, face, width=width)
        p = face.fit.pose
        label = f"yaw {np.degrees(p['yaw']):.0f} pitch {np.degrees(p['pitch']):.0f} roll {np.degrees(p['roll']):.0f}"
        draw.text((float(face.bbox[0]), float(face.bbox[3]) + 4), label, fill=(255, 255, 0))
    photo = photo.resize((max(1, round(photo.width * height / photo.height)), height), Image.BICUBIC)
    panels = [photo]
    half = height // 2
    for face, smap in zip(faces, shading_maps):
        if face.fit is None or smap is None:
            continue
        col = Image.new("RGB", (half, height))
        col.paste(Image.fromarray(smap).resize((half, half), Image.BICUBIC), (0, 0))
        col.paste(Image.fromarray((render_sphere(face.fit.sh, half) * 255).round().astype(np.uint8)), (0, half))
        ImageDraw.Draw(col).text((4, half + 4), "SH lighting", fill=(255, 255, 0))
        panels.append(col)
    out = Image.new("RGB", (sum(p.width for p in panels), height))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width
    return out


#: Overlay colours of phrase masks, in phrase order (RGB).
PHRASE_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def record_card(record, size: int = 256) -> Image.Image:
    """One FaceCaptionMask record drawn: the photo with its attribute-phrase masks tinted (one
    colour per phrase), and below it both captions with each phrase in its mask's colour.

    Args:
        record: a ``data.record.Record`` (its ``root`` resolves relative paths).
        size: side of the photo in the card (px).

    Returns:
        RGB ``PIL.Image`` of ``size`` x ``size + 64``.

    Raises:
        FileNotFoundError: the photo or a mask is missing (``Record.missing_files`` tells which).
    """
    with Image.open(record.path(record.image)) as im:
        arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).astype(np.float32)
    colours = {}  # attribute phrase -> its mask's colour
    for k, entry in enumerate(record.phrases["attribute"]):
        colours[entry["phrase"]] = PHRASE_COLOURS[k % len(PHRASE_COLOURS)]
        with Image.open(record.path(entry["mask"])) as m:
            mask = np.asarray(m.resize((size, size), Image.NEAREST)) > 127
        arr[mask] = 0.55 * arr[mask] + 0.45 * np.array(colours[entry["phrase"]], np.float32)
    card = Image.new("RGB", (size, size + 64), "white")
    card.paste(Image.fromarray(arr.astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(card)
    y = size + 2
    for text, caption_colours in ((record.face_attribute_caption, colours), (record.face_emotion_caption, {})):
        x = 2
        for word in text.replace(",", " ,").split():
            colour = next((c for p, c in caption_colours.items() if word.strip(",") in p.split()), (0, 0, 0))
            w = draw.textlength(word + " ")
            if x + w > size:
                x, y = 2, y + 11
            draw.text((x, y), word, fill=colour)
            x += w
        y += 14
    return card


def contact_sheet(records: list, columns: int = 4, size: int = 256) -> Image.Image:
    """A grid of ``record_card``s (``columns`` wide) of ``data.record.Record``s, for checking a built dataset by eye."""
    cards = [record_card(r, size) for r in records]
    rows = max(1, -(-len(cards) // columns))
    sheet = Image.new("RGB", (columns * size, rows * (size + 64)), "white")
    for k, card in enumerate(cards):
        sheet.paste(card, ((k % columns) * size, (k // columns) * (size + 64)))
    return sheet
