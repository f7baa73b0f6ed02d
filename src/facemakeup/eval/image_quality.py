"""FID, LPIPS and Frechet distances on other feature extractors.

- FID (Heusel et al. 2017): Frechet distance of InceptionV3 pool3 (2048-D) features of the generated
  and reference sets, as pytorch-fid computes it: images resized to 256 (the recipe), then to 299
  bilinearly, scaled to [-1, 1], through the TF-ported "FID Inception" (its average pools exclude
  padding, the last block max-pools). ``InceptionV3FID`` rebuilds that network with pytorch-fid's
  parameter names, so ``pt_inception-2015-12-05-6726825d.pth`` loads strictly; the distance itself
  is torchmetrics' ``FrechetInceptionDistance`` with this network as its ``feature`` module.
- ``FrechetDistance`` takes any extractor; on ``MobileNetV2Features`` (torchvision's ImageNet
  MobileNetV2, global-average 1280-D, a wheel-borne file) it is reported as ``FD-MobileNetV2``, a
  different number from FID.
- LPIPS (Zhang et al. 2018, v0.1, AlexNet): per layer, channel-normalised features, squared
  difference, a learned 1x1 projection, spatial mean; summed over the 5 layers. The linear layers
  ship in the ``lpips`` wheel (``weights.fetch("lpips_alex")``); the AlexNet ImageNet backbone is
  torchvision's ``alexnet-owt-7be5be79.pth``, given by the user.

All extractors take ``(N, 3, H, W)`` float32 RGB in [0, 1].

Example:
    >>> fd = FrechetDistance(MobileNetV2Features().load())
    >>> fd.update(images_to_tensor(real_paths), real=True); fd.update(images_to_tensor(fake_paths), real=False)
    >>> fd.result(model="mobilenet_v2").value
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from ..faces.image import load_image
from .results import MetricResult, PerImageMetric

#: Image side before the extractors (the recipe resizes to 256).
EVAL_SIZE = 256


def images_to_tensor(images: Sequence, size: int = EVAL_SIZE) -> torch.Tensor:
    """Images (paths, PIL, ``(H, W, 3)`` uint8 RGB arrays) -> ``(N, 3, size, size)`` float32 in [0, 1],
    resized bilinearly with antialiasing (non-square images are squashed, as pytorch-fid's resize)."""
    out = []
    for im in images:
        x = torch.from_numpy(np.array(load_image(im))).permute(2, 0, 1)[None].float() / 255.0  # a writable copy
        out.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


# ---------------------------------------------------------------------------- InceptionV3 (FID)
class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU, torchvision/pytorch-fid names ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # TF's 3x3 average pool: padding not counted
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the FID network's last block max-pools (a quirk of the TF graph)
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class InceptionV3FID(nn.Module):
    """The FID InceptionV3 up to pool3, pytorch-fid's parameter names (its ``fc`` is not built).

    ``forward(x)``: ``(N, 3, H, W)`` float32 RGB in [0, 1] -> ``(N, 2048)`` pool3 features.
    """

    num_features = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1  # (N, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))  # (N, 2048) pool3

    @classmethod
    def from_file(cls, path) -> "InceptionV3FID":
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the ``fc.*`` keys are ignored).

        Raises:
            ModelNotFoundError: no file at ``path``.
            RuntimeError: the state dict does not match (lists missing and unexpected keys).
        """
        net = cls()
        _load_strict(net, path, "Inception", drop=("fc.",))
        return net.eval()


# ---------------------------------------------------------------------------- LPIPS (AlexNet)
class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet ``features`` (names ``features.0`` ... ``features.10``), returning the 5
    ReLU outputs LPIPS compares (64, 192, 384, 256, 256 channels)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                outs.append(x)
        return outs


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone.

    ``forward(a, b)``: two ``(N, 3, H, W)`` float32 RGB batches in [0, 1] -> ``(N,)`` distances (0 for
    identical images). Load weights with ``from_files``.
    """

    #: LPIPS's input scaling layer (applied to [-1, 1] inputs).
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS])
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net(((a * 2 - 1) - self.shift) / self.scale)
        fb = self.net(((b * 2 - 1) - self.shift) / self.scale)
        total = 0
        for lin, x, y in zip(self.lins, fa, fb):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((x - y) ** 2).mean((2, 3))  # (N, 1)
        return total[:, 0]

    @classmethod
    def from_files(cls, alexnet, lins=None) -> "LPIPSAlex":
        """Load the AlexNet backbone (torchvision ``alexnet-owt-7be5be79.pth``; its ``classifier.*`` is
        ignored) and LPIPS's linear layers (``lin0.model.1.weight`` ... from the lpips wheel's
        ``weights/v0.1/alex.pth``; ``None`` = fetched from PyPI and cached).

        Raises:
            ModelNotFoundError: a file is missing / cannot be fetched.
            RuntimeError: a state dict does not match.
        """
        from ..weights import fetch

        m = cls()
        _load_strict(m.net, alexnet, "AlexNet", drop=("classifier.",))
        state = torch.load(fetch("lpips_alex", lins), map_location="cpu", weights_only=True)
        m.lins.load_state_dict({f"{i}.weight": state[f"lin{i}.model.1.weight"] for i in range(5)}, strict=True)
        return m.eval()


# ---------------------------------------------------------------------------- other extractors
class MobileNetV2Features(nn.Module):
    """torchvision's ImageNet MobileNetV2, global-average features: ``(N, 3, H, W)`` float32 RGB in
    [0, 1] -> ``(N, 1280)``. Images are resized to 224. For ``FD-MobileNetV2``, not FID."""

    num_features = 1280

    def __init__(self):
        super().__init__()
        from ..faces.backbone import MobileNetV2

        self.backbone = MobileNetV2(taps=(18,))

    def load(self, path=None) -> "MobileNetV2Features":
        """Load the ImageNet weights (``weights.fetch("mobilenet_v2", path)``); returns self in eval mode."""
        self.backbone.load_imagenet(path)
        return self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..faces.backbone import imagenet_normalize

        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone(imagenet_normalize(x))[0].mean((2, 3))


def _load_strict(module: nn.Module, path, what: str, drop: tuple[str, ...] = ()) -> None:
    from pathlib import Path

    from ..errors import ModelNotFoundError

    if path is None or not Path(path).is_file():
        raise ModelNotFoundError(f"{what} weights: no file at {path}")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path} is not a {what} state dict: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


# ---------------------------------------------------------------------------- metrics
class _Recorder(nn.Module):
    """Wraps an extractor and keeps its last output, so the per-image features can be stored."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.num_features
        self.last = None

    def forward(self, x):
        self.last = self.extractor(x)
        return self.last


class FrechetDistance(FrechetInceptionDistance):
    """Frechet distance between the feature Gaussians of reference ("real") and generated images.

    torchmetrics' ``FrechetInceptionDistance`` with ``extractor`` as its ``feature`` module (so with
    ``InceptionV3FID`` it is FID); it also keeps each image's features for a bootstrap interval.

    Args:
        extractor: module ``(N, 3, H, W)`` float in [0, 1] -> ``(N, D)``, with ``num_features = D``.

    ``update(images, real)``: ``(N, 3, H, W)`` float32 in [0, 1] (see ``images_to_tensor``).
    """

    def __init__(self, extractor: nn.Module, **kwargs):
        super().__init__(feature=_Recorder(extractor), normalize=True, **kwargs)
        self.add_state("real_list", default=[], dist_reduce_fx="cat")
        self.add_state("fake_list", default=[], dist_reduce_fx="cat")

    def update(self, imgs: torch.Tensor, real: bool) -> None:
        with torch.no_grad():
            super().update(imgs, real)
        (self.real_list if real else self.fake_list).append(self.inception.last.detach().double().cpu())

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N_real, D)`` and ``(N_fake, D)`` float64 features so far."""
        def cat(x):
            return torch.cat(x).numpy() if isinstance(x, list) and x else (x.numpy() if isinstance(x, torch.Tensor) else np.zeros((0, self.inception.num_features)))
        return cat(self.real_list), cat(self.fake_list)

    def result(self, model: str, substitute: str | None = None, n_boot: int = 50) -> MetricResult:
        """The distance with a bias-corrected bootstrap interval (both sets resampled, ``n_boot`` times; the
        percentile interval shifted by ``mean(bootstrap) - value``), ``n`` = generated images.

        Fewer than 2 images in either set -> "not computed".
        """
        from .results import not_computed

        real, fake = self.features()
        if len(real) < 2 or len(fake) < 2:
            return not_computed(f"needs at least 2 reference and 2 generated images, got {len(real)} and {len(fake)}", model=model, substitute=substitute)
        value = float(self.compute())
        n_real = len(real)
        both = np.concatenate([real, fake])

        def stat(idx):
            r = both[idx[idx < n_real]]
            f = both[idx[idx >= n_real]]
            return frechet_distance(r, f) if len(r) > 1 and len(f) > 1 else np.nan

        rng = np.random.default_rng(0)
        stats = [stat(np.concatenate([rng.integers(0, n_real, n_real), n_real + rng.integers(0, len(fake), len(fake))]))
                 for _ in range(n_boot)]
        # Resampling with replacement duplicates images, which inflates a Frechet distance: the plain
        # percentile interval sits above the estimate. Shift it by the bootstrap's bias estimate.
        bias = float(np.nanmean(stats)) - value
        ci = [float(np.nanquantile(stats, 0.025)) - bias, float(np.nanquantile(stats, 0.975)) - bias]
        return MetricResult(status="computed", value=value, ci95=ci, n=len(fake), model=model, substitute=substitute,
                            extra={"n_reference": n_real, "bootstrap_resamples": n_boot})


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of the Gaussians fitted to two feature sets, ``(N, D)`` and ``(M, D)`` (N, M >= 2).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with unbiased covariances, float64.
    With ``S_a = A A^T``, ``S_b = B B^T`` (A, B the centred features / sqrt(N - 1)), the eigenvalues of
    ``S_a S_b`` are the squared singular values of ``A^T B``, so ``tr((S_a S_b)^(1/2))`` is the nuclear
    norm of the ``(N, M)`` matrix ``A^T B``: exact, and cheaper than a D x D matrix square root.
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N>=2, D) and (M>=2, D) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    ca = (a - a.mean(0)) / (len(a) - 1) ** 0.5  # (N, D)
    cb = (b - b.mean(0)) / (len(b) - 1) ** 0.5  # (M, D)
    cross = torch.linalg.svdvals(ca @ cb.T).sum()  # tr((S_a S_b)^(1/2))
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + ca.pow(2).sum() + cb.pow(2).sum() - 2 * cross)


class LPIPS(PerImageMetric):
    """LPIPS accumulator: per (generated, reference) pair, the LPIPS distance (lower = more alike).

    Args:
        net: ``LPIPSAlex`` with weights.
        size: both images are resized to ``size`` x ``size`` first.

    ``update(generated, references)``: equal-length images (paths, PIL, uint8 RGB arrays) or
    ``(N, 3, H, W)`` float tensors in [0, 1].
    """

    name = "LPIPS"

    def __init__(self, net: nn.Module, size: int = EVAL_SIZE, batch_size: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.net, self.size, self.batch_size = net, size, batch_size

    @torch.no_grad()
    def update(self, generated, references) -> None:
        if len(generated) != len(references):
            raise ValueError(f"{len(generated)} generated images but {len(references)} references")
        for i in range(0, len(generated), self.batch_size):
            g, r = generated[i:i + self.batch_size], references[i:i + self.batch_size]
            g = g if isinstance(g, torch.Tensor) else images_to_tensor(g, self.size)
            r = r if isinstance(r, torch.Tensor) else images_to_tensor(r, self.size)
            self._append(self.net(g, r).double().numpy())
