"""The DST losses, all restricted to the target area (paper §3.1, eq. 3-6).

With φ_j the VGG-19 activation at layer j (:class:`dstray.dst.loss_net.VGGFeatures`) and
m_j the area mask brought to that layer's size (:func:`feature_mask`):

- content (eq. 3, Gatys/Johnson): mean over L of (φ_j(ŷ) − φ_j(y'))², y' the
  histogram-matched image;
- style (eq. 3): ||G_j(ŷ; L) − G_j(S; L)||² / C_j², G the Gram matrix of the features
  inside the mask normalised by the number of masked positions, S the defect-free image;
- histogram (eq. 4, Risser et al. 2017): mean over L of (φ_j(ŷ) − R_j)², R_j = φ_j(ŷ)
  inside L histogram-matched per channel to φ_j(H) inside M (detached), H, M the
  reference defect and its mask. The matching is :func:`dstray.dst.histmatch.match_to_sorted`,
  the same quantile mapping as the image-level histogram matching;
- total variation (eq. 5): mean over L of squared horizontal and vertical differences
  of ŷ, counting the pairs that cross L's border with the outside pixel detached (S),
  so the border transition is smoothed while nothing outside L gets a gradient.

Paper normalisations differ from ours ("1/(C_j H_j W_j)" over the whole map, sums
instead of means); :class:`DSTLoss` documents how we map the paper's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstray.config import DSTConfig
from dstray.dst.histmatch import SortedReference, match_features, sort_reference
from dstray.dst.loss_net import LAYERS, loss_network


def feature_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A 0/1 mask (N,1,H,W) brought to a feature map's ``size`` (h, w) -> (N,1,h,w) in {0, 1}.

    A cell is inside when L covers at least half of it (area interpolation >= 0.5); when
    no cell of an image reaches one half (a tiny area at a deep layer) the cells of
    largest coverage are used, so a non-empty L never vanishes.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return (mask > 0.5).to(mask.dtype)
    cover = F.interpolate(mask, size=size, mode="area")
    peak = cover.amax(dim=(1, 2, 3), keepdim=True)
    inside = (cover >= 0.5) | ((cover >= peak) & (peak > 0))
    return inside.to(mask.dtype)


def _masked_mean_sq(diff: Tensor, mask: Tensor) -> Tensor:
    """Per image Σ m·diff² / (C·Σ m), averaged over the batch; diff (N,C,h,w), mask (N,1,h,w)."""
    per_image = (diff.pow(2) * mask).sum(dim=(1, 2, 3))
    count = mask.sum(dim=(1, 2, 3)) * diff.shape[1]
    return (per_image / count.clamp_min(1)).mean()


def gram(features: Tensor, mask: Tensor) -> Tensor:
    """Masked Gram matrix: (N,C,h,w), (N,1,h,w) -> (N,C,C), G = Σ_p m_p f_p f_pᵀ / Σ_p m_p."""
    f = (features * mask).flatten(2)
    return f @ features.flatten(2).transpose(1, 2) / mask.flatten(1).sum(1).clamp_min(1)[:, None, None]


def content_loss(features: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared feature difference inside ``mask`` (feature-sized, 0/1)."""
    return _masked_mean_sq(features - target, mask)


def style_loss(features: Tensor, style_features: Tensor, mask: Tensor, style_mask: Tensor) -> Tensor:
    """||G(features; mask) − G(style; style_mask)||² / C², averaged over the batch."""
    c = features.shape[1]
    return (gram(features, mask) - gram(style_features, style_mask)).pow(2).sum(dim=(1, 2)).mean() / c**2


def hist_loss(features: Tensor, mask: Tensor, reference: SortedReference) -> Tensor:
    """Risser's histogram loss (eq. 4) inside ``mask``: mean of (φ − R)², R = φ matched to ``reference``.

    features (N,C,h,w); mask (N,1,h,w) 0/1; reference: φ_j(H) inside M per channel, from
    :func:`dstray.dst.histmatch.sort_reference`. R is detached (a target), outside the mask R = φ.
    """
    return _masked_mean_sq(features - match_features(features, mask, reference), mask)


def tv_loss(image: Tensor, mask: Tensor) -> Tensor:
    """Total variation (eq. 5) of (N,C,H,W) inside the 0/1 ``mask`` (N,1,H,W).

    Squared differences of vertical and horizontal neighbours, over the pairs with at
    least one pixel in L; pixels outside L are detached, so their gradient is zero.
    Normalised per image by C·|L|, averaged over the batch.
    """
    inside = mask > 0.5
    y = torch.where(inside, image, image.detach())
    dv = (y[..., 1:, :] - y[..., :-1, :]).pow(2) * (inside[..., 1:, :] | inside[..., :-1, :])
    dh = (y[..., :, 1:] - y[..., :, :-1]).pow(2) * (inside[..., :, 1:] | inside[..., :, :-1])
    per_image = dv.sum(dim=(1, 2, 3)) + dh.sum(dim=(1, 2, 3))
    return (per_image / (mask.sum(dim=(1, 2, 3)) * image.shape[1]).clamp_min(1)).mean()


class DSTLoss(nn.Module):
    """The weighted DST objective (eq. 6): w_c·content + w_s·style + w_h·hist + w_tv·tv, all inside L.

    Layers: ``cfg.content_layers`` etc., or the loss network's defaults
    (:data:`dstray.dst.loss_net.LAYERS`): for VGG-19 content relu4_1 (Luan et al. 2018, whose
    two-step method DST follows), style relu1_1..relu4_1 (Gatys et al. 2016 without relu5_1),
    histogram relu1_1 + relu4_1 (Risser et al. 2017); the same depths for EfficientNet-Lite0.

    Style target (``cfg.style_target``): ``background`` compares the Grams of ŷ in L with those
    of S in L (the paper: "the defect-free image S is taken as the style image"); ``reference``
    with those of H in M (the reference defect's texture).

    Weights and normalisation. The paper (§4) prints, garbled by text extraction,
    "c 1e5w = , s 2.5 4w e= − , h tv.1 10 w w= =", which we read as w_c = 1e5,
    w_s = 2.5e-4, w_h = 1 and w_tv = 10 (the "." before "1" may also make w_h = 0.1). Those
    numbers belong to the authors' normalisation (eq. 4 divides by C_j·H_j·W_j over the whole
    map; content and style presumably as in Johnson's code, on 0-255 images, unnormalised
    Grams), which the paper does not fully state, and raw term magnitudes differ by four
    orders between loss networks (Lite0's style term at y' is ~3000, random VGG-19's ~3) and
    by 5x between defect types. So each term is divided by a scale measured once at the start
    of a fit (:meth:`calibrate`): style, hist and tv by their value at ŷ = y' (the first step's
    output, where TransferNet starts), content by the energy of y''s content features inside L
    (so 1 means "features changed by as much as they are large"). At the start of a fit the
    normalised style, hist and tv terms are then 1 each and content 0, and the weights are
    relative importances. Uncalibrated (``norm`` all 1) the weights apply to the raw terms.

    Args:
        cfg: weights, layers, loss network and style target.
        net: the loss network; built from ``cfg.loss_net`` / ``cfg.loss_weights`` when None.
    """

    TERMS = ("content", "style", "hist", "tv")

    def __init__(self, cfg: DSTConfig, net: nn.Module | None = None, *, vgg: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        defaults = LAYERS[cfg.loss_net]
        self.content_layers = list(cfg.content_layers if cfg.content_layers is not None else defaults["content"])
        self.style_layers = list(cfg.style_layers if cfg.style_layers is not None else defaults["style"])
        self.hist_layers = list(cfg.hist_layers if cfg.hist_layers is not None else defaults["hist"])
        layers = self.content_layers + self.style_layers + self.hist_layers
        net = net if net is not None else vgg
        self.net = net if net is not None else loss_network(cfg.loss_net, cfg.loss_weights, layers)
        self.ref_sorted: dict[str, SortedReference] = {}
        self.ref_grams: dict[str, Tensor] = {}
        self.norm = {k: 1.0 for k in self.TERMS}

    @property
    def vgg(self) -> nn.Module:  # the name the first version used for the loss network
        return self.net

    @torch.no_grad()
    def set_reference(self, image: Tensor, mask: Tensor) -> None:
        """Cache the reference H inside M: per-channel feature distributions (hist) and Grams (style target
        ``reference``). image (1,C,H,W), mask (1,1,H,W)."""
        feats = self.net(image)
        masks = {j: feature_mask(mask, f.shape[-2:]) for j, f in feats.items()}
        self.ref_sorted = {j: sort_reference(feats[j], masks[j]) for j in self.hist_layers}
        self.ref_grams = {j: gram(feats[j], masks[j]) for j in self.style_layers}

    def _reference(self, layer: str, device: torch.device) -> SortedReference:
        ref = self.ref_sorted[layer]
        if ref.values.device != device:
            ref = self.ref_sorted[layer] = SortedReference(*(t.to(device) for t in ref))
        return ref

    def raw(self, output: Tensor, content: Tensor, style: Tensor, area: Tensor) -> dict[str, Tensor]:
        """The unweighted, unnormalised terms (scalars): content, style, hist, tv."""
        if self.hist_layers and not self.ref_sorted:
            raise RuntimeError("DSTLoss.set_reference(H, M) must be called before computing the histogram loss")
        with torch.no_grad():
            targets = self.net(torch.cat([content, style]))
        feats = self.net(output)
        n = output.shape[0]
        masks = {j: feature_mask(area, f.shape[-2:]) for j, f in feats.items()}
        zero = output.new_zeros(())
        if self.cfg.style_target == "reference":
            style_terms = (_gram_distance(gram(feats[j], masks[j]), self.ref_grams[j].to(output.device))
                           for j in self.style_layers)
        else:
            style_terms = (style_loss(feats[j], targets[j][n:], masks[j], masks[j]) for j in self.style_layers)
        return {
            "content": sum((content_loss(feats[j], targets[j][:n], masks[j]) for j in self.content_layers), zero),
            "style": sum(style_terms, zero),
            "hist": sum((hist_loss(feats[j], masks[j], self._reference(j, output.device)) for j in self.hist_layers),
                        zero),
            "tv": tv_loss(output, area),
        }

    @torch.no_grad()
    def calibrate(self, batches: list[tuple[Tensor, Tensor, Tensor]]) -> dict[str, float]:
        """Measure :attr:`norm` on ``batches`` of (y' (N,C,H,W), S (N,C,H,W), L (N,1,H,W)); returns it.

        style / hist / tv: their mean raw value at ŷ = y'; content: the mean energy of y''s
        content-layer features inside L. Each at least 1e-8.
        """
        acc = {k: 0.0 for k in self.TERMS}
        for y, s, area in batches:
            raw = self.raw(y, y, s, area)
            for k in ("style", "hist", "tv"):
                acc[k] += float(raw[k]) / len(batches)
            feats = self.net(y)
            for j in self.content_layers:
                m = feature_mask(area, feats[j].shape[-2:])
                energy = (feats[j].pow(2) * m).sum() / (m.sum() * feats[j].shape[1]).clamp_min(1)
                acc["content"] += float(energy) / len(batches)
        self.norm = {k: max(v, 1e-8) for k, v in acc.items()}
        return dict(self.norm)

    def forward(self, output: Tensor, content: Tensor, style: Tensor, area: Tensor) -> dict[str, Tensor]:
        """Loss terms for a batch.

        Args:
            output: ŷ (N,C,H,W), with grad. content: y' (N,C,H,W). style: S (N,C,H,W).
            area: L (N,1,H,W) 0/1.
        Returns:
            {"content", "style", "hist", "tv", "total"}: weighted, normalised scalar terms (total = their sum).
        """
        cfg = self.cfg
        weights = {"content": cfg.content_weight, "style": cfg.style_weight, "hist": cfg.hist_weight,
                   "tv": cfg.tv_weight}
        out = {k: weights[k] * v / self.norm[k] for k, v in self.raw(output, content, style, area).items()}
        out["total"] = sum(out.values(), output.new_zeros(()))
        return out


def _gram_distance(g: Tensor, target: Tensor) -> Tensor:
    """||G - G_target||² / C², averaged over the batch; g (N,C,C), target (1,C,C)."""
    return (g - target).pow(2).sum(dim=(1, 2)).mean() / g.shape[1] ** 2
