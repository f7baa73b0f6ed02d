"""Reading user images into one canonical form: ``HxWx3 uint8 RGB`` numpy arrays.

Photos arrive as JPEG/PNG/WebP/TIFF files, PIL images or arrays, in grayscale, palette, CMYK,
16-bit or with an EXIF orientation tag. Everything downstream (detection, alignment, CLIP crops)
expects upright RGB uint8, so the conversion happens once, here, and failures name the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

ImageInput = Union[str, os.PathLike, bytes, io.BufferedIOBase, Image.Image, np.ndarray]

#: Images above this many pixels are refused (PIL's own decompression-bomb error threshold).
MAX_PIXELS = 2 * 89_478_485


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, rescaling 16/32-bit integer modes instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data (PNG/TIFF) spans 0..65535; PIL's own convert("RGB") would clip it at 255.
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.round(arr / top * 255), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def load_image(image: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load a photo as an upright ``HxWx3`` ``uint8`` RGB array.

    Args:
        image: a file path, the file's bytes or a binary file object, a ``PIL.Image.Image`` or a
            numpy array (``HxW`` gray or ``HxWx3`` RGB / ``HxWx4`` RGBA, ``uint8``; ``uint16`` is
            rescaled by 255/65535).
        max_pixels: refuse images with more pixels than this (default: PIL's decompression-bomb
            limit, about 179 megapixels).

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, RGB, rotated as its EXIF
        orientation tag says (the tag is then dropped). Grayscale, palette, CMYK, 16-bit and
        alpha images are converted (alpha composited over white).

    Raises:
        ImageReadError: the file does not exist, is not an image, is truncated or corrupt, or is
            larger than ``max_pixels``; the message names the file.
        TypeError: ``image`` is none of the accepted types.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
    if isinstance(image, (bytes, bytearray)):
        image = io.BytesIO(image)
    if hasattr(image, "read"):
        path, source = getattr(image, "name", "<bytes>"), image
    elif isinstance(image, (str, os.PathLike)):
        path = source = Path(image)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
    else:
        raise TypeError(f"image must be a path, bytes, a file object, a PIL image or a numpy array, got {type(image).__name__}")
    try:
        with Image.open(source) as img:
            if img.width * img.height > max_pixels:
                raise ImageReadError(
                    f"{path}: image is {img.width}x{img.height} = {img.width * img.height} pixels, more than "
                    f"the limit of {max_pixels}; downscale it first"
                )
            img.load()  # decodes now, so truncation surfaces here rather than later
            rgb = _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: image too large ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"{path}: truncated or corrupt image ({err})") from None
    return np.asarray(rgb)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageReadError(f"array image must be uint8 (or uint16), got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.asarray(_to_rgb(Image.fromarray(arr, mode="RGBA")))
    raise ImageReadError(f"array image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
