"""Draw the two ControlNet inputs for scikit-image's public-domain astronaut photo: docs/astronaut_conditions.png.

    python scripts/draw_conditions.py [--out docs/astronaut_conditions.png] [--size 384]

Panels, all in the same crop (the 5 keypoints' box x 5, as the V2 demo's shading crop): the photo,
Face-MakeUp V1's keypoint map (InstantID-style ``draw_kps``), Face-MakeUpV2's shading map (the
3D face fit rendered under the photo's own SH lighting).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from facemakeup.faces import FaceAnalyzer, landmark_box
from facemakeup.faces.align import crop_box
from facemakeup.faces.conditions import condition_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "astronaut_conditions.png")
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    photo = skimage.data.astronaut()  # public domain (NASA)
    face = FaceAnalyzer(threads=1, fitter="mediapipe").get_face(photo)
    crop = crop_box(photo, landmark_box(face.kps, 5.0), args.size)
    panels = [("photo (same crop)", crop), ("keypoints: Face-MakeUp V1", condition_map(face, "keypoints", 5.0, args.size, args.size)),
              ("shading: Face-MakeUpV2", condition_map(face, "shading", 5.0, args.size, args.size))]
    sheet = Image.new("RGB", (3 * args.size + 16, args.size), (32, 32, 32))
    for i, (label, image) in enumerate(panels):
        tile = Image.fromarray(np.ascontiguousarray(image))
        ImageDraw.Draw(tile).text((6, 6), label, fill=(255, 255, 255))
        sheet.paste(tile, (i * (args.size + 8), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
