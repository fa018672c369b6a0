"""TransferNet: the feed-forward defect harmonisation network of DST (paper §3.1, Fig. 2).

A U-Net-shaped variant of Johnson et al.'s fast style transfer network (the
``transformer_net.py`` of pytorch/examples ``fast_neural_style``):

============  =======================================  ===========
block         layers                                   channels
============  =======================================  ===========
conv1         9x9 conv, stride 1, IN, ReLU  (skip ->)  C -> 32
conv2         3x3 conv, stride 2, IN, ReLU             32 -> 64
conv3         3x3 conv, stride 2, IN, ReLU             64 -> 128
res1..res4    residual blocks (two 3x3 convs)          128
up1           nearest x2 upsample, 3x3 conv, IN, ReLU  128 -> 64
up2           nearest x2 upsample, 3x3 conv, IN, ReLU  64 -> 32
skip          concat(up2, conv1)                       32+32 = 64
conv4         3x3 conv, IN, ReLU                       64 -> 32
conv5         9x9 conv, tanh: a correction r of y'     32 -> 1
============  =======================================  ===========

Every convolution is preceded by reflection padding (paper: "the input feature is
expanded with reflection padding"); instance normalisation (affine) and ReLU follow
every convolution except the last (paper: "Instance Normalization after each
convolution, followed by a ReLU"). Fig. 2 is not in our text copy, so the kernel of the
two post-skip convolutions (3x3, then 9x9 mirroring the 9x9 input block as in Johnson's
network) is our choice.

Two departures from the paper, both so that DST can only improve on its first step:

- **Identity at init (residual output).** The paper's last layer outputs the image
  (tanh). Ours outputs a correction: T(y') = clamp(y' + tanh(conv5(...)), 0, 1) with conv5
  zero-initialised, so an unfitted TransferNet returns y' exactly and the fit starts from
  the histogram-matched image instead of spending its steps learning to reproduce it
  (from random init, 60-100 steps ended worse than y' on their own objective).
- **One correction channel.** conv5 predicts one channel, added to every colour channel:
  DST changes lightness and texture, never hue; the colour comes from the per-channel
  histogram matching (with 3 free channels a short fit on a grey reference turned road
  cracks teal or red).

The output is fused into the background S with a soft mask (paper: "use a gaussian mask to
fuse the specific defect with the background"): see :func:`blend_weight` for the rule that
keeps the label honest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvLayer(nn.Sequential):
    """Reflection padding + convolution (no normalisation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        pad = nn.ReflectionPad2d(kernel_size // 2)
        super().__init__(pad, nn.Conv2d(in_channels, out_channels, kernel_size, stride))


class UpsampleConvLayer(nn.Sequential):
    """Nearest x2 upsampling + :class:`ConvLayer`.

    Upsample + conv gives better results than ConvTranspose2d (no checkerboard
    artefacts; pytorch/examples fast_neural_style, after distill.pub/2016/deconv-checkerboard).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(in_channels, out_channels, kernel_size))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + IN layers with an identity shortcut (He et al. 2016; Johnson et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class TransferNet(nn.Module):
    """The DST transfer network T (paper Fig. 2) with the Gaussian-mask fusion.

    Args:
        in_channels: image channels C (1 for grayscale such as Magnetic Tile, 3 for RGB;
            the paper's Fig. 2 shows 3).
        blend_sigma: std in pixels of the Gaussian that feathers L into the blend
            weight (``DSTConfig.blend_sigma``); 0 gives a hard paste.
    """

    multiple = 4  # two stride-2 blocks: H, W must be multiples of 4 (inputs are padded otherwise)

    def __init__(self, in_channels: int = 3, blend_sigma: float = 2.0):
        super().__init__()
        self.in_channels = in_channels
        self.blend_sigma = float(blend_sigma)
        # encoder (paper Fig. 2: "3, 32, K9, S1", then two stride-2 blocks)
        self.conv1 = ConvLayer(in_channels, 32, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        # four residual blocks (paper §3.1)
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        # decoder: two upsampling blocks
        self.up1 = UpsampleConvLayer(128, 64)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.up2 = UpsampleConvLayer(64, 32)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        # skip connection from conv1, "twice convolved and then passed through the activation layer"
        self.conv4 = ConvLayer(64, 32, kernel_size=3)
        self.in6 = nn.InstanceNorm2d(32, affine=True)
        self.conv5 = ConvLayer(32, 1, kernel_size=9)  # one correction channel, zero at init: T(y') = y'
        nn.init.zeros_(self.conv5[1].weight)
        nn.init.zeros_(self.conv5[1].bias)
        self.relu = nn.ReLU()

    def transform(self, x: Tensor) -> Tensor:
        """T(x) = clamp(x + r(x), 0, 1): (N,C,H,W) in [0,1] -> (N,C,H,W), no blending; r is one channel.

        Pads H, W to multiples of 4 internally (reflection)."""
        h, w = x.shape[-2:]
        e1 = self.relu(self.in1(self.conv1(_pad_to_multiple(x, self.multiple))))
        y = self.relu(self.in2(self.conv2(e1)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.relu(self.in4(self.up1(y)))
        y = self.relu(self.in5(self.up2(y)))
        y = torch.cat([y, e1], dim=1)
        y = self.relu(self.in6(self.conv4(y)))
        correction = torch.tanh(self.conv5(y))[..., :h, :w]  # (N,1,H,W) in (-1, 1)
        return (x + correction).clamp(0, 1)

    def forward(self, x: Tensor, background: Tensor, area: Tensor) -> Tensor:
        """ŷ = S outside L, g·T(y') + (1-g)·S inside L (g: :func:`blend_weight`).

        Args:
            x: the histogram-matched image y' (N,C,H,W) in [0, 1].
            background: the defect-free image S (N,C,H,W) in [0, 1].
            area: the target area L (N,1,H,W), values 0/1.
        Returns:
            ŷ (N,C,H,W) in [0, 1]; bit-identical to ``background`` outside L.
        """
        return soft_paste(self.transform(x), background, area, self.blend_sigma)


def blend_weight(area: Tensor, sigma: float) -> Tensor:
    """The fusion weight g of a generated defect, (N,1,H,W) 0/1 -> (N,1,H,W) in [0, 1].

    g = min(1, 1/2 + d / (2 sigma)) inside L and 0 outside, d the chessboard distance (px) from
    a pixel of L to the nearest pixel outside L (d >= 1 in L). The generated content fades
    into S over the outer ``2 sigma`` px of L, but **every labelled pixel is at least
    1/2 + 1/(2 sigma) generated** (0.75 at the default sigma = 2): a thin crack is not left
    mostly background, as with the paper-style Gaussian-blurred mask (mean weight 0.63 on
    Magnetic Tile cracks, 46 % of their pixels below 0.6). ``sigma = 0``: a hard paste.
    """
    inside = (area > 0.5).to(area.dtype if area.is_floating_point() else torch.float32)
    if sigma <= 0:
        return inside
    d, layer = inside.clone(), inside
    for _ in range(math.ceil(2 * sigma)):  # d = number of 3x3 erosions a pixel survives, + 1
        layer = -F.max_pool2d(-layer, 3, stride=1, padding=1)
        d = d + layer
    return torch.where(inside > 0, (0.5 + d / (2 * sigma)).clamp(max=1.0), torch.zeros_like(inside))


def soft_paste(generated: Tensor, background: Tensor, area: Tensor, sigma: float) -> Tensor:
    """``g·generated + (1-g)·background`` inside ``area``, ``background`` bit for bit outside (g: :func:`blend_weight`).

    generated, background (N,C,H,W); area (N,1,H,W) 0/1.
    """
    g = blend_weight(area.to(generated.dtype), sigma)
    return torch.where(area > 0.5, g * generated + (1 - g) * background, background)


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad the bottom/right of (N,C,H,W) so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if h > ph and w > pw else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
