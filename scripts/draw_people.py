"""Draw what a two-person layout gives the generator: docs/people_layout.png.

    python scripts/draw_people.py [--out docs/people_layout.png] [--side 512]

The layout photo is scikit-image's astronaut and matplotlib's Grace Hopper side by side (both public
domain). Its two faces, taken left to right, become person 1 and person 2 (``faces.layout``). Panels:
the layout photo with each person's face; both people's masks (face box grown to the head) on the shading
map; the shading map with both faces under their own lighting; the same faces under one light from the
left (``--light-dir -1,0,1``); the keypoint map (Face-MakeUp V1's ControlNet input) with both faces;
the parsed head regions (``--mask parsing``). Maps are at the output size ``generate`` picks for this layout
(its aspect ratio, ``--side`` pixels wide).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.cbook
import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from facemakeup.faces import FaceAnalyzer, sh_from_direction
from facemakeup.faces.layout import layout_from_photo, layout_size
from facemakeup.viz import PERSON_COLOURS, people_panel


def pair_photo() -> np.ndarray:
    """The astronaut (left) and Grace Hopper (right) in one 1024x600 RGB photo."""
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((512, 600))
    pair = Image.new("RGB", (1024, 600))
    pair.paste(Image.fromarray(skimage.data.astronaut()), (0, 44))
    pair.paste(hopper, (512, 0))
    return np.asarray(pair)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "people_layout.png")
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    photo = pair_photo()
    faces = FaceAnalyzer(threads=1, fitter="mediapipe").get(photo)
    height, width = layout_size(*photo.shape[:2], args.side)
    lay = layout_from_photo(faces, 2, height, width)
    parsed = layout_from_photo(faces, 2, height, width, mask="parsing")
    shading = lay.condition_map("shading")
    relit = lay.condition_map("shading", sh=sh_from_direction([-1.0, 0.0, 1.0]))
    keypoints = lay.condition_map("keypoints")

    drawn = Image.fromarray(photo).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(drawn)
    scale = width / photo.shape[1]
    for p, face in enumerate(lay.faces):
        draw.rectangle([float(v) * scale for v in face.bbox], outline=PERSON_COLOURS[p], width=2)
    panels = [("layout photo: person 1 = leftmost face", drawn), ("person masks (face box grown to the head)", people_panel(lay, shading, height)),
              ("shading map: each face under its own light", Image.fromarray(shading)),
              ("one chosen light (--light-dir -1,0,1)", Image.fromarray(relit)),
              ("keypoint map (Face-MakeUp V1)", Image.fromarray(keypoints)), ("--mask parsing: parsed head regions", people_panel(parsed, None, height))]
    cols = 2
    sheet = Image.new("RGB", (cols * width + (cols - 1) * 8, 3 * height + 2 * 8), (32, 32, 32))
    for i, (label, tile) in enumerate(panels):
        tile = tile.convert("RGB")
        ImageDraw.Draw(tile).text((6, height - 16), label, fill=(255, 255, 0))
        sheet.paste(tile, ((i % cols) * (width + 8), (i // cols) * (height + 8)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
