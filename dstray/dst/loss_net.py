"""Frozen VGG-19 feature extractor: the loss network φ of DST (paper §3.1, eq. 3-4).

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
