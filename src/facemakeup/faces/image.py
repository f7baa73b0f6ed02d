"""Reading user images into one canonical form: ``HxWx3 uint8 RGB`` numpy arrays.

Photos arrive as JPEG/PNG/WebP/TIFF files, PIL images or arrays, in grayscale, palette, CMYK,
16-bit or with an EXIF orientation tag. Everything downstream (detection, alignment, CLIP crops)
expects upright RGB uint8, so the conversion happens once, here, and failures name the file.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

ImageInput = Union[str, os.PathLike, bytes, io.BufferedIOBase, Image.Image, np.ndarray]

#: Images above this many pixels are refused, from the file's header, before decoding: 64 megapixels
#: (8192 x 8192). A face needs far fewer, and decoding costs ~10 bytes per pixel at its peak (16-bit
#: and palette images are widened to 8-bit RGB): a 64 MP 16-bit PNG peaks ~0.76 GB above the imports
#: (benchmarks/bad_input_memory.py). Phone photos are 12-50 MP; downscale larger scans first.
MAX_PIXELS = 8192 * 8192


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, rescaling 16/32-bit integer modes instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        # 16-bit data (PNG/TIFF) spans 0..65535; PIL's own convert("RGB") would clip it at 255.
        # round(x * 255 / top) through a lookup table: no float or widened copies of the image.
        top = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        lut = ((np.arange(top + 1, dtype=np.uint32) * 255 + top // 2) // top).astype(np.uint8)
        gray = lut[arr if arr.dtype == np.uint16 and top == 65535 else np.clip(arr, 0, top)]
        return Image.fromarray(gray, mode="L").convert("RGB")
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
        max_pixels: refuse images with more pixels than this (default ``MAX_PIXELS``, 64 megapixels).
            For files the size comes from the header, before anything is decoded.

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, RGB, rotated as its EXIF
        orientation tag says (the tag is then dropped). Grayscale, palette, CMYK, 16-bit and
        alpha images are converted (alpha composited over white).

    Raises:
        ImageReadError: the file does not exist, cannot be read (permission denied, a folder, a
            symbolic link loop), is empty, is not an image, is truncated or corrupt, or has more
            than ``max_pixels`` pixels; an array or PIL image is empty (0 pixels) or not an image.
            Each reason has its own message, which names the file.
        TypeError: ``image`` is none of the accepted types.
    """
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ImageReadError(f"<array>: an image must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        _check_pixels(f"<array of shape {image.shape}>", image.shape[1], image.shape[0], max_pixels)
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        _check_pixels(f"<PIL {image.mode} image>", image.width, image.height, max_pixels)
        return np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageReadError("<bytes>: empty (0 bytes), not an image")
        image = io.BytesIO(image)
    if hasattr(image, "read"):
        path, source = getattr(image, "name", "<bytes>"), image
        return _decode(path, source, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        with _open_file(path) as source:
            return _decode(path, source, max_pixels)
    raise TypeError(f"image must be a path, bytes, a file object, a PIL image or a numpy array, got {type(image).__name__}")


def probe_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Check that a file is a readable image of at most ``max_pixels`` pixels, from its header only.

    Cheap (nothing is decoded): a preflight before any work. Truncation deeper in the file is found
    only by ``load_image``.

    Returns:
        ``(width, height)`` as stored (before EXIF rotation).

    Raises:
        ImageReadError: as ``load_image``, for every reason found without decoding.
    """
    path = Path(path)
    with _open_file(path) as source:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(source) as img:
                    size = img.size
        except (UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise _format_error(path, err) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageReadError(f"{path}: corrupt image header ({err}); re-download or re-export it") from None
    _check_pixels(path, size[0], size[1], max_pixels)
    return size


def _open_file(path: Path):
    """Open ``path`` for reading, with one message per reason it cannot be read."""
    try:
        st = path.stat()  # follows links: ELOOP and dangling links surface here
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise ImageReadError(f"{path}: no such file{dangling}; check the path") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied on a folder of its path; check the folders' permissions") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageReadError(f"{path}: symbolic link loop (the link points back to itself); fix or remove the link") from None
        raise ImageReadError(f"{path}: cannot be read ({err.strerror}); check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(f"{path}: is a folder, not an image file; pass the image files in it")
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(f"{path}: not a regular file (a device, pipe or socket); pass an image file")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes), not an image; re-export or re-download it")
    try:
        return open(path, "rb")
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied: this user may not read the file; check its permissions (e.g. chmod a+r)") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot be read ({err.strerror})") from None


def _check_pixels(name, width: int, height: int, max_pixels: int) -> None:
    if width * height == 0:
        raise ImageReadError(f"{name}: image is empty ({width}x{height} pixels); pass an image with pixels")
    if width * height > max_pixels:
        raise ImageReadError(
            f"{name}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (max_pixels); downscale it first (a face needs far fewer pixels)"
        )


def _decode(path, source, max_pixels: int) -> np.ndarray:
    """Header check, then decode, EXIF rotation and RGB conversion of an open binary file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies below
            img = Image.open(source)  # reads the header only
        with img:
            _check_pixels(path, img.width, img.height, max_pixels)
            img.load()  # decodes now, so truncation surfaces here rather than later
            ImageOps.exif_transpose(img, in_place=True)  # our own image: no copy
            rgb = _to_rgb(img)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise _format_error(path, err) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if "truncated" in str(err).lower():
            raise ImageReadError(f"{path}: truncated image (the file ends early: {err}); re-download or re-export it") from None
        raise ImageReadError(f"{path}: corrupt image data ({err}); re-download or re-export it") from None
    return np.asarray(rgb)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257): 65535 -> 255
    if arr.dtype != np.uint8:
        raise ImageReadError(f"array image must be uint8 (or uint16), got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.asarray(_to_rgb(Image.fromarray(arr, mode="RGBA")))
    raise ImageReadError(f"array image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")


def _format_error(path, err: Exception) -> ImageReadError:
    """The ``ImageReadError`` for PIL's "no format recognises this file" and decompression-bomb errors."""
    if isinstance(err, UnidentifiedImageError):
        return ImageReadError(f"{path}: not an image (no format PIL reads recognises its contents); pass a JPEG, PNG, WebP, BMP or TIFF file")
    return ImageReadError(f"{path}: image too large ({err}); downscale it first")
