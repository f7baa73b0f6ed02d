"""Peak memory of refusing an over-large image from its header, against decoding it.

    python benchmarks/bad_input_memory.py

Writes a real, complete 16-bit grayscale PNG of 13312 x 13312 = 177 megapixels (344 KB: black
compresses ~1000:1; the case of issue 15, which took 5.2 GB before anything was checked) and one of
8192 x 8192 = 64 megapixels (the limit, ``faces.image.MAX_PIXELS``). Each case runs in a fresh
Python process and reports its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``):
the imports alone; ``load_image`` refusing the 177 MP file; ``probe_image`` (header only) on it;
PIL decoding it (what any decode costs, our limit lifted); ``load_image`` of the 64 MP file (the
worst accepted case). Writes benchmarks/results/bad_input_memory.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import ROOT, write_result  # noqa: E402

CASE = r"""
import json, resource, sys, time
from PIL import Image
from facemakeup.errors import ImageReadError
from facemakeup.faces.image import load_image, probe_image
case, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
outcome = "ok"
try:
    if case == "load_image":
        outcome = "decoded %s" % (load_image(path).shape,)
    elif case == "probe_image":
        probe_image(path)
    elif case == "pil_decode":
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            im.load()
            outcome = "decoded, mode %s" % im.mode
except ImageReadError as err:
    outcome = "refused: " + str(err)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.perf_counter() - t0,
                  "outcome": outcome}))
"""


def measure(case: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", CASE, case, str(path)], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    from test_bad_input import write_big_png

    with tempfile.TemporaryDirectory() as tmp:
        big, limit = Path(tmp) / "177mp_16bit.png", Path(tmp) / "64mp_16bit.png"
        write_big_png(big, 13312, 16)
        write_big_png(limit, 8192, 16)
        cases = {
            "imports_only": measure("none", big),
            "load_image_refuses_177mp_16bit": measure("load_image", big),
            "probe_image_refuses_177mp_16bit": measure("probe_image", big),
            "pil_decode_177mp_16bit_no_limit": measure("pil_decode", big),
            "load_image_64mp_16bit_at_the_limit": measure("load_image", limit),
        }
        sizes = {"177mp_16bit_png_bytes": big.stat().st_size, "64mp_16bit_png_bytes": limit.stat().st_size}
    base = cases["imports_only"]["peak_mb"]
    for c in cases.values():
        c["above_imports_mb"] = round(c["peak_mb"] - base, 1)
        c["peak_mb"] = round(c["peak_mb"], 1)
        c["seconds"] = round(c["seconds"], 3)
    result = {"files": sizes, "max_pixels": 8192 * 8192, "cases": cases, "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))
    write_result("bad_input_memory", result)


if __name__ == "__main__":
    main()
