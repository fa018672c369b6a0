"""The segmenters of the paper's Table 1 behind one builder: Buttonlab, DeepLab v3+, U-Net.

DeepLab v3+ (Chen et al. 2018) and U-Net (Ronneberger et al. 2015) come from
segmentation_models_pytorch, always built with ``encoder_weights=None`` so that smp
never downloads anything; the weights are then loaded by dstray:

- ``efficientnet_lite0``: smp's ``tu-efficientnet_lite0`` encoder (timm's ``features_only``
  model, output stride 16 for DeepLab v3+) takes the Lite0 weights
  (:func:`dstray.weights.load_efficientnet_lite0`: ImageNet from the installed package, or a file);
- ``resnet18/34/50``: a torchvision ResNet is loaded through :func:`dstray.seg.encoders.resnet`
  and its state dict (minus ``fc``) is loaded strictly into the smp encoder, a torchvision
  ``ResNet`` subclass with the same parameter names.

DeepLab v3+ has batch norm after global pooling (ASPP): in training mode it needs batches of
at least 2.

Every model returned here maps ``(N, C, H, W)`` in [0, 1] to ``{"out": (N, K, H, W)}``
logits. Like Buttonlab, the smp wrappers repeat a 1-channel input to 3 channels and
ImageNet-normalise a copy; they pad H and W up to a multiple of 32 (smp's requirement)
with zeros (in normalised units) and crop the logits back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dstray.config import ARCHS, SegConfig
from dstray.seg.buttonlab import buttonlab
from dstray.seg.encoders import LITE0, check_backbone, resnet, to_rgb_normalised
from dstray.seg.freeze import freeze_stages
from dstray.weights import load_efficientnet_lite0

_SMP_STRIDE = 32  # smp encoders downsample 5 times


class SmpSegmenter(nn.Module):
    """An smp model behind the dstray contract ``forward(x) -> {"out": logits}``."""

    def __init__(self, model: nn.Module, in_channels: int = 3) -> None:
        super().__init__()
        self.model = model
        self.in_channels = in_channels
        self.stride = _SMP_STRIDE  # inputs are padded to a multiple of it (here and at inference)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"this segmenter was built for {self.in_channels} input channels, got {x.shape[1]}")
        height, width = x.shape[-2:]
        x = to_rgb_normalised(x)
        x = F.pad(x, (0, -width % _SMP_STRIDE, 0, -height % _SMP_STRIDE))
        return {"out": self.model(x)[..., :height, :width]}


def smp_segmenter(arch: str, *, backbone: str = LITE0, weights: str = "imagenet", num_classes: int = 2,
                  in_channels: int = 3) -> SmpSegmenter:
    """DeepLab v3+ (``arch="deeplabv3plus"``) or U-Net (``"unet"``) on an EfficientNet-Lite0 or ResNet encoder."""
    import segmentation_models_pytorch as smp  # slow import (~5 s): only when a baseline is built

    check_backbone(backbone)
    cls = {"deeplabv3plus": smp.DeepLabV3Plus, "unet": smp.Unet}[arch]
    encoder = "tu-efficientnet_lite0" if backbone == LITE0 else backbone
    model = cls(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes)
    if backbone == LITE0:
        load_efficientnet_lite0(model.encoder.model, weights, what=f"{arch} EfficientNet-Lite0 encoder")
    elif weights != "random":
        state = resnet(backbone, weights).state_dict()
        model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    return SmpSegmenter(model, in_channels)


def build_segmenter(cfg: SegConfig, *, in_channels: int = 3, num_classes: int = 2) -> nn.Module:
    """The network named by ``cfg.arch`` with ``cfg.backbone`` and ``cfg.weights``, its first ``cfg.freeze_stages``
    encoder stages frozen (:mod:`dstray.seg.freeze`; not with ``weights="random"``: frozen random features are
    noise), in NHWC memory format when ``cfg.channels_last``."""
    kwargs = dict(backbone=cfg.backbone, weights=cfg.weights, num_classes=num_classes, in_channels=in_channels)
    if cfg.arch == "buttonlab":
        model = buttonlab(**kwargs, output_stride=cfg.output_stride)
    elif cfg.arch in ARCHS:
        model = smp_segmenter(cfg.arch, **kwargs)
    else:
        raise ValueError(f"unknown segmenter arch {cfg.arch!r}; choose one of {ARCHS}")
    if cfg.weights != "random":  # frozen random features would only be noise: --weights random trains everything
        freeze_stages(model, cfg.freeze_stages)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model
