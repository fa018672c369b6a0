"""Freezing the first stages of a segmenter's pretrained encoder (``SegConfig.freeze_stages``).

With five real images a fully fine-tuned ImageNet encoder overfits, and on a CPU its backward
pass is most of a step's cost (depthwise convolutions are slow backward). Freezing the first
``N`` encoder stages keeps their ImageNet weights *and* their ImageNet batch-norm statistics
(timm's :func:`timm.utils.model.freeze` turns their batch norms into ``FrozenBatchNorm2d``, so
``model.train()`` cannot update them); autograd then stops at the first trainable layer.

Stages, in input order (:func:`encoder_stages`):

- EfficientNet-Lite0 (timm): ``[stem (conv_stem + bn1), blocks.0, ..., blocks.6]`` (8 stages);
- ResNet (torchvision): ``[stem (conv1 + bn1), layer1, ..., layer4]`` (5 stages).

``freeze_stages = N`` freezes the first N (``-1``: all of them, i.e. the whole encoder); the
decoder, the heads and anything after the encoder always train. Buttonlab's branch is a copy
of the encoder's first stages (stem + first stage): those of its stages that are among the
first N are frozen too. A frozen model is built the same way when a checkpoint is read back
(``FrozenBatchNorm2d`` has no ``num_batches_tracked``: the state dicts match).
"""

from __future__ import annotations

from torch import nn


def _stages_of(body: nn.Module) -> list[list[str]]:
    """Stage names of an encoder body, relative to it: ``[[stem names], [stage 1], ...]``."""
    names = dict(body.named_children())
    if "conv_stem" in names:  # timm EfficientNet (Lite0), or Buttonlab's Lite0 branch
        rest = [[f"blocks.{i}"] for i in range(len(body.blocks))] if "blocks" in names else []
        if "block0" in names:  # Buttonlab's Lite0 branch: stem + the first block
            rest = [["block0"]]
        return [["conv_stem", "bn1"], *rest]
    if "conv1" in names:  # torchvision ResNet (or its IntermediateLayerGetter / Buttonlab's ResNet branch)
        return [["conv1", "bn1"], *[[f"layer{i}"] for i in range(1, 5) if f"layer{i}" in names]]
    raise ValueError(f"cannot find the encoder stages of a {type(body).__name__}")


def encoder_bodies(model: nn.Module) -> list[nn.Module]:
    """The pretrained encoder bodies of a dstray segmenter (Buttonlab: backbone and branch; smp: the encoder)."""
    if hasattr(model, "branch") and hasattr(model, "backbone"):  # Buttonlab
        backbone = model.backbone
        return [getattr(backbone, "body", backbone), model.branch]
    encoder = model.model.encoder  # SmpSegmenter
    return [getattr(encoder, "model", encoder)]


def encoder_stages(model: nn.Module) -> int:
    """How many stages the (main) encoder of ``model`` has (Lite0: 8, ResNet: 5)."""
    return len(_stages_of(encoder_bodies(model)[0]))


def freeze_stages(model: nn.Module, n: int) -> nn.Module:
    """Freeze the first ``n`` encoder stages of ``model`` in place (``-1``: all; ``0``: none); returns ``model``.

    Frozen: ``requires_grad=False`` and batch norm in inference form with the loaded statistics.
    """
    if n == 0:
        return model
    from timm.utils.model import freeze  # timm is a dependency of the Lite0 encoders anyway

    total = encoder_stages(model)
    if n < -1 or n > total:
        raise ValueError(f"--freeze-stages must be in [-1, {total}] for this encoder ({total} stages; -1 = all); "
                         f"got {n}")
    n = total if n == -1 else n
    for body in encoder_bodies(model):
        names = [name for stage in _stages_of(body)[:n] for name in stage]
        if names:
            freeze(body, names)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser updates."""
    return [p for p in model.parameters() if p.requires_grad]
