"""The ResNet encoders of the segmenters and their pretrained weights.

Buttonlab's backbone and branch, and the smp DeepLab v3+ / U-Net encoders, are torchvision
ResNets; ``weights`` is ``"imagenet"`` (torchvision's V1 set, the one its DeepLab uses), a
state-dict file or ``"random"`` (:func:`dstray.weights.load_weights`). Inputs are images in
[0, 1]; :func:`to_rgb_normalised` makes the 3-channel ImageNet-normalised copy every encoder
takes (a grayscale image is repeated to 3 channels).
"""

from __future__ import annotations

import torch
from torchvision import models

from dstray.weights import IMAGENET_MEAN, IMAGENET_STD, load_weights

BACKBONES = ("resnet18", "resnet34", "resnet50")
_IMAGENET_WEIGHTS = {  # torchvision's ImageNet weights, the same V1 set torchvision's DeepLab uses
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
}


def to_rgb_normalised(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) in [0,1], C in {1,3} -> (N,3,H,W) ImageNet-normalised copy."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 input channels, got {x.shape[1]}")
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resnet(backbone: str, weights: str = "random", *, dilate: bool = False) -> models.ResNet:
    """A torchvision ResNet with ``weights`` (``imagenet`` / state-dict path / ``random``) loaded."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    net = getattr(models, backbone)(weights=None, replace_stride_with_dilation=[False, False, dilate])
    return load_weights(net, weights, enum=_IMAGENET_WEIGHTS[backbone], what=f"Buttonlab {backbone} backbone")
