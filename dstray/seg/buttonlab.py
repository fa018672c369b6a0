"""Buttonlab: the defect segmentation network of Wei et al., §3.2 (Figure 4, Algorithm 3).

DeepLab v3+ without ASPP, plus a *branch net* that extracts local features at 1/2
resolution::

    x (N,C,H,W) ──► backbone (whole image) ──► low-level  (1/4)
                                           └─► high-level (1/16; 1/32 for ResNet-18/34)
    x[crop] ─────► branch (stem s2 + first stage) (1/2 of the crop) = local
    decoder: high ──(1x1 proj, "no ASPP")──▲x4──⊕ low ─conv─▲x2── crop ─⊕ local ─conv─ logits ─▲x2──► out

The three upsampling steps (×4 to 1/4, ×2 to 1/2, ×2 to full size) are the paper's
"restore the resolution gradually by three times of sampling".

Backbones (:mod:`dstray.seg.encoders`):

- **EfficientNet-Lite0** (default; ImageNet weights installed with dstray): timm's
  ``features_only`` model at output stride 16; low-level = the stride-4 stage (24 ch),
  high-level = the last stage (320 ch, dilated); branch = a copy of ``conv_stem`` + ``bn1`` +
  ``blocks[0]`` (16 ch at 1/2).
- **ResNet-18/34/50** (the paper's is ResNet-50): low-level = ``layer1``, high-level =
  ``layer4``; branch = ``conv1``/``bn1``/``layer1`` (no max-pool).

Choices the paper leaves open (documented here, tested in ``tests/seg/test_buttonlab.py``):

- **Dilation.** For ResNet-50 the last stage is dilated (``replace_stride_with_dilation
  =[False, False, True]``, output stride 16), as torchvision's DeepLab does. ResNet-18/34
  use torchvision's BasicBlock, which has no dilation, so their high-level features
  are at stride 32.
- **Grayscale.** A 1-channel input is repeated to 3 channels (equivalent to summing an
  ImageNet ``conv1`` over RGB), so the backbone keeps torchvision's layout and ImageNet
  weights load strictly. The input is then ImageNet-normalised on a copy, for every
  weights choice.
- **Branch weights.** The branch is the stem and first stage of a second network of the
  same family: freshly (seeded) initialised for ``weights="random"``, a copy of the
  backbone's loaded weights otherwise.
- **Crop alignment (partial-image input, Figure 5).** The branch runs on
  ``x[..., top:top+h, left:left+w]``. The global path is computed on the whole image
  exactly as in ``crop=None`` mode up to the 1/2-resolution grid of the whole image
  (``ceil(H/2) x ceil(W/2)``); the crop's cells of that grid,
  ``[top/2 : top/2 + h/2, left/2 : left/2 + w/2]``, are sliced out and merged with the
  branch features. ``top``, ``left``, ``h`` and ``w`` must therefore be even: then the
  branch's stride-2 grid on the crop coincides with its grid on the whole image, and
  the global features a crop pixel sees are bit-identical to the ones it sees at test
  time (only the branch's zero padding at the crop border differs).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import ResNet
from torchvision.models._utils import IntermediateLayerGetter

from dstray.seg.encoders import LITE0, Lite0Stem, Lite0Taps, check_backbone, resnet, to_rgb_normalised

HIGH_CHANNELS = 256  # 1x1 projection of layer4 in place of ASPP (DeepLab v3+ ASPP output width)
LOW_CHANNELS = 48  # low-level projection width, "proposed by authors" of DeepLab v3+
LOCAL_CHANNELS = 48  # branch projection width: we treat local features like low-level ones
DECODER_CHANNELS = (128, 64)  # widths of the 1/4 and 1/2 decoder stages (ours: (256, 128) was ~1.5x slower on CPU)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, BN, ReLU: the DeepLab v3+ decoder convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class BranchNet(nn.Sequential):
    """Local features (paper §3.2): 7x7 conv stride 2 + the first residual stage of a ResNet.

    (N,3,h,w) -> (N,C1,ceil(h/2),ceil(w/2)); C1 = 64 (ResNet-18/34) or 256 (ResNet-50). No max-pool.
    """

    def __init__(self, net: ResNet) -> None:
        super().__init__(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, layer1=net.layer1))


class Buttonlab(nn.Module):
    """Backbone (global) + branch (local) + three-step decoder; see the module docstring.

    ``forward(x (N,C,H,W), crop=None) -> {"out": (N, num_classes, H, W)}``;
    with ``crop=(top, left, h, w)`` (all even) ``"out"`` is ``(N, num_classes, h, w)``
    and covers the crop only.
    """

    def __init__(self, backbone: nn.Module, branch: nn.Module, channels: tuple[int, int, int],
                 num_classes: int = 2, in_channels: int = 3, stride: int = 16) -> None:
        super().__init__()
        low_ch, high_ch, local_ch = channels
        self.in_channels = in_channels
        self.stride = stride  # total downsampling of the backbone: inputs padded to a multiple of it at inference
        self.backbone = backbone  # x (N,3,H,W) -> {"low", "high"}
        self.branch = branch
        self.high_proj = ConvBNReLU(high_ch, HIGH_CHANNELS)
        self.low_proj = ConvBNReLU(low_ch, LOW_CHANNELS)
        self.local_proj = ConvBNReLU(local_ch, LOCAL_CHANNELS)
        self.fuse_low = SeparableConvBNReLU(HIGH_CHANNELS + LOW_CHANNELS, DECODER_CHANNELS[0])
        self.fuse_local = SeparableConvBNReLU(DECODER_CHANNELS[0] + LOCAL_CHANNELS, DECODER_CHANNELS[1])
        self.classifier = nn.Conv2d(DECODER_CHANNELS[1], num_classes, 1)

    def forward(self, x: torch.Tensor, crop: tuple[int, int, int, int] | None = None) -> dict[str, torch.Tensor]:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Buttonlab was built for {self.in_channels} input channels, got {x.shape[1]}")
        height, width = x.shape[-2:]
        top, left, h, w = crop if crop is not None else (0, 0, height, width)
        if crop is not None:
            _check_crop(crop, height, width)
        x = to_rgb_normalised(x)
        feats = self.backbone(x)
        low = self.low_proj(feats["low"])
        high = _up(self.high_proj(feats["high"]), low.shape[-2:])  # step 1: to 1/4
        y = self.fuse_low(torch.cat([high, low], 1))
        y = _up(y, (-(-height // 2), -(-width // 2)))  # step 2: to the whole image's 1/2 grid
        local = self.local_proj(self.branch(x[..., top:top + h, left:left + w]))
        y = y[..., top // 2:top // 2 + local.shape[-2], left // 2:left // 2 + local.shape[-1]]
        y = self.fuse_local(torch.cat([y, local], 1))
        return {"out": _up(self.classifier(y), (h, w))}  # step 3: to full (crop) size


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_crop(crop, height: int, width: int) -> None:
    top, left, h, w = crop
    if any(int(v) % 2 for v in crop) or h <= 0 or w <= 0 or top < 0 or left < 0 \
            or top + h > height or left + w > width:
        raise ValueError(f"crop (top, left, h, w)={tuple(crop)} must be even, non-empty and inside the "
                         f"{height}x{width} image; draw it on the 1/2 grid, e.g. top = 2 * randint(...)")


def buttonlab(*, backbone: str = LITE0, weights: str = "imagenet", num_classes: int = 2,
              in_channels: int = 3, output_stride: int = 16) -> Buttonlab:
    """Build Buttonlab on ``backbone`` (default EfficientNet-Lite0; the paper's is ResNet-50).

    Args:
        backbone: ``efficientnet_lite0`` | ``resnet18`` | ``resnet34`` | ``resnet50``.
        weights: ``"imagenet"``, ``"random"`` or a path to a state dict of that backbone
            (timm/lukemelas Lite0, torchvision ResNet); applied to the backbone and the branch.
        num_classes: output channels of the logits (2: background, defect).
        in_channels: 1 (grayscale, repeated to 3) or 3.
        output_stride: Lite0 only: 16 (the last stages dilated, as DeepLab v3+) or 32 (not dilated:
            the last stages run on a quarter of the pixels).
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    check_backbone(backbone)
    if backbone == LITE0:
        if output_stride not in (16, 32):
            raise ValueError(f"--output-stride must be 16 or 32; got {output_stride}")
        body = Lite0Taps(weights, output_stride=output_stride)
        branch = Lite0Stem(weights)
        channels = (body.channels[0], body.channels[1], Lite0Stem.out_channels)
        return Buttonlab(body, branch, channels, num_classes=num_classes, in_channels=in_channels,
                         stride=output_stride)
    dilate = backbone == "resnet50"  # BasicBlock (resnet18/34) does not support dilation
    net = resnet(backbone, weights, dilate=dilate)
    twin = resnet(backbone, "random")
    if weights != "random":
        twin.load_state_dict(net.state_dict())  # same shapes: dilation changes no parameter
    low_ch = _out_channels(net.layer1)  # the branch's layer1 has the same width
    channels = (low_ch, _out_channels(net.layer4), low_ch)
    body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "high"})
    return Buttonlab(body, BranchNet(twin), channels, num_classes=num_classes, in_channels=in_channels,
                     stride=16 if dilate else 32)


def _out_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels
