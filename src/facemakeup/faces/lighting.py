"""Second-order spherical-harmonics (SH) lighting: basis, estimation and synthetic lights.

Convention (as DECA's ``add_SHlight``, Feng et al. 2021, after Ramamoorthi & Hanrahan 2001,
"An Efficient Representation for Irradiance Environment Maps"):

* normals live in the camera frame: **x to the image's right, y up, z toward the viewer**;
* the 9 basis functions, in this order (``SH_BASIS``): ``1, x, y, z, xy, xz, yz, x2-y2, 3z2-1``,
  each the real SH ``Y_lm`` times its Lambertian (clamped-cosine) factor ``A_l`` (pi, 2pi/3, pi/4).
  So ``irradiance(n) = sh_basis(n) @ sh`` for a 9x3 (RGB) coefficient matrix ``sh`` whose entries are
  the SH coefficients of the incoming radiance;
* Lambertian surface with **constant albedo 1**: the estimated ``sh`` absorbs the skin's colour, so
  ``pixel / 255 = sh_basis(n) @ sh`` (sRGB values used as they are, no gamma removal, as DECA).
"""

from __future__ import annotations

import numpy as np

#: Names of the 9 SH basis functions, in row order of every ``sh`` matrix (DECA's order).
SH_BASIS = ("1", "x", "y", "z", "xy", "xz", "yz", "x2-y2", "3z2-1")
#: Real-SH normalisation constants c_lm of each basis polynomial (Y_lm = c_lm * poly).
_Y = np.array([
    1 / np.sqrt(4 * np.pi),
    np.sqrt(3 / (4 * np.pi)), np.sqrt(3 / (4 * np.pi)), np.sqrt(3 / (4 * np.pi)),
    np.sqrt(15 / (4 * np.pi)), np.sqrt(15 / (4 * np.pi)), np.sqrt(15 / (4 * np.pi)),
    np.sqrt(15 / (16 * np.pi)), np.sqrt(5 / (16 * np.pi)),
])
#: Lambertian convolution factors A_l per basis function (l = 0, 1, 1, 1, 2, ...).
_A = np.array([np.pi, 2 * np.pi / 3, 2 * np.pi / 3, 2 * np.pi / 3, np.pi / 4, np.pi / 4, np.pi / 4, np.pi / 4, np.pi / 4])
#: Basis functions that change sign when x -> -x (image mirroring): x, xy, xz.
ODD_IN_X = np.array([name in ("x", "xy", "xz") for name in SH_BASIS])


def _polys(normals: np.ndarray) -> np.ndarray:
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    # stacked as planes, returned as a (..., 9) view: each plane is written contiguously
    return np.moveaxis(np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]), 0, -1)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """Irradiance SH basis at unit normals.

    Args:
        normals: ``(..., 3)`` unit normals, camera frame (x right, y up, z toward the viewer).

    Returns:
        ``(..., 9)`` float64, columns in ``SH_BASIS`` order, each ``A_l * Y_lm(n)``.
    """
    out = _polys(np.asarray(normals, dtype=np.float64))
    out *= _A * _Y
    return out  # (..., 9), planes contiguous


def shade(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """Lambertian shading (albedo 1): ``sh_basis(normals) @ sh``.

    Args:
        normals: ``(..., 3)`` unit normals. sh: ``(9, 3)`` RGB or ``(9,)`` grey coefficients.

    Returns:
        ``(..., 3)`` (or ``(...,)``) irradiance, same units as the image values ``sh`` was fit to ([0, 1]).
    """
    return sh_basis(normals) @ np.asarray(sh, dtype=np.float64)


def estimate_sh(normals: np.ndarray, colours: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Least-squares SH lighting from surface normals and observed colours (constant albedo 1).

    Solves ``min_L ||B L - colours||^2 + ridge * trace(B^T B) / 9 * ||L||^2`` per channel, where
    ``B = sh_basis(normals)``. The tiny ridge keeps the coefficients that one visible hemisphere
    constrains weakly (mainly ``3z2-1`` vs ``1``) from running away.

    Args:
        normals: ``(N, 3)`` unit normals of visible skin points, camera frame.
        colours: ``(N, 3)`` RGB values in [0, 1] observed there (or ``(N,)`` grey).
        ridge: relative Tikhonov weight.

    Returns:
        ``(9, 3)`` (or ``(9,)``) float64 SH coefficients, rows in ``SH_BASIS`` order.

    Raises:
        ValueError: fewer than 9 points.
    """
    normals = np.asarray(normals, dtype=np.float64)
    if len(normals) < 9:
        raise ValueError(f"need at least 9 visible points to estimate 9 SH coefficients, got {len(normals)}")
    basis = sh_basis(normals)  # (N, 9)
    gram = basis.T @ basis
    gram += ridge * np.trace(gram) / 9 * np.eye(9)
    return np.linalg.solve(gram, basis.T @ np.asarray(colours, dtype=np.float64))


def sh_from_direction(direction, strength: float = 0.7, ambient: float = 0.15, colour=(1.0, 1.0, 1.0)) -> np.ndarray:
    """SH coefficients of one distant light plus a uniform ambient term.

    The radiance ``strength * delta(w - d) + ambient / pi`` projected on the 9 SH functions: a
    surface facing ``d`` gets about ``strength + ambient``, one facing away about ``ambient``
    (with the ringing of an order-2 approximation).

    Args:
        direction: ``(3,)`` direction *towards* the light, camera frame (x right, y up, z toward
            the viewer); normalised here. ``(-1, 0, 1)``: from the image's left and the front.
        strength: irradiance of the light on a surface facing it.
        ambient: irradiance from the uniform part.
        colour: RGB multiplier.

    Returns:
        ``(9, 3)`` SH coefficients.

    Raises:
        ValueError: ``direction`` is zero or not 3 numbers.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(-1)
    if d.shape != (3,) or not np.isfinite(d).all() or np.linalg.norm(d) == 0:
        raise ValueError(f"light direction must be 3 finite numbers, not all zero; got {direction!r}")
    d = d / np.linalg.norm(d)
    grey = strength * _Y * _polys(d)  # radiance SH of a delta light
    grey[0] += ambient / (_A[0] * _Y[0])  # uniform radiance ambient/pi gives irradiance `ambient` everywhere
    return grey[:, None] * np.asarray(colour, dtype=np.float64)[None, :]


def mirror_sh(sh: np.ndarray) -> np.ndarray:
    """The lighting of the mirrored image (x -> -x): the coefficients odd in x change sign."""
    out = np.array(sh, dtype=np.float64, copy=True)
    out[ODD_IN_X] *= -1
    return out
