"""Masked histogram matching, the first step of Defect Style Transfer.

Wei et al., §3.1 and Algorithm 2, first step: ``y <- S[L'] + histmatch(S[L], H[M])``.
Per channel, the pixels of the defect-free image S inside the target area L are mapped
so that their distribution matches the pixels of the reference defect H inside its mask
M; everything outside L is left untouched. The same mapping, applied to VGG feature maps,
gives the target of Risser et al.'s histogram loss (paper eq. 4), see :func:`match_features`.

The mapping is scikit-image's ``exposure.match_histograms`` (``_match_cumulative_cdf``):
each source value v gets its CDF quantile q = #{source <= v} / n, and q is linearly
interpolated (``np.interp``) in the reference's (quantile, unique value) pairs. Here it is
computed on sorted tensors, batched over samples and channels with masks of different
sizes: masked-out values are sorted as +inf and each row keeps its own count, so there is
no Python loop over samples or pixels. Quantiles are compared with integer arithmetic,
which reproduces skimage to float rounding (tests check 1/255 on real and random images).

Values must be finite (no NaN/inf). Works on any device; the only host sync is one
``.item()`` per reference (the longest masked row, and the empty-mask check).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class SortedReference(NamedTuple):
    """Per-row sorted reference values, precomputed once (the reference H is fixed).

    Shapes, with leading dims ``*`` (``(R, C)`` for images):
    ``values (*, M)`` ascending, valid entries first, then +inf padding;
    ``run_start``/``run_end (*, M)`` int64: for entry i, the index range [start, end)
    of the entries equal to it (so ``run_end / count`` is skimage's quantile of that value);
    ``count (*)``: number of valid entries per row.
    """

    values: Tensor
    run_start: Tensor
    run_end: Tensor
    count: Tensor


def _run_ends(s: Tensor) -> Tensor:
    """For ascending rows s (*, L): per entry, 1 + the last index of its run of equal values.

    For a valid entry this is #{row <= value}, skimage's (unnormalised) quantile. O(L):
    mark run ends, then a reversed cumulative minimum (int32, fast on CPU).
    """
    length = s.shape[-1]
    idx = torch.arange(1, length + 1, device=s.device, dtype=torch.int32).expand_as(s)
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[..., :-1] = s[..., :-1] != s[..., 1:]
    e = torch.where(is_end, idx, torch.full_like(idx, length))
    return torch.flip(torch.cummin(torch.flip(e, [-1]), -1).values, [-1]).long()


def _empty_reference_error() -> ValueError:
    return ValueError(
        "histogram matching: the reference mask is empty (no pixel to take the histogram "
        "from); pass a reference mask with at least one pixel set"
    )


def sorted_reference(values: Tensor, valid: Tensor | None = None) -> SortedReference:
    """Sort rows of ``values (*, M)``, keeping only ``valid (*, M)`` (bool) entries.

    Raises ValueError when a row has no valid entry.
    """
    if valid is not None:
        valid = valid.expand_as(values)
        values = torch.where(valid, values, torch.full_like(values, float("inf")))
        count = valid.sum(-1)
    else:
        count = torch.full(values.shape[:-1], values.shape[-1], device=values.device, dtype=torch.long)
    if count.numel() == 0 or bool((count == 0).any()):
        raise _empty_reference_error()
    return _from_padded(values, count)


def _from_padded(values: Tensor, count: Tensor) -> SortedReference:
    """values (*, M) with invalid entries already +inf; count (*) valid entries per row."""
    s = torch.sort(values, dim=-1).values[..., : int(count.max())].contiguous()
    end = _run_ends(s)
    # the run of entry i starts where the previous run ends: run_end of entry i-1, or 0
    start = torch.zeros_like(end)
    start[..., 1:] = torch.where(s[..., 1:] == s[..., :-1], start[..., 1:], end[..., :-1])
    start = torch.cummax(start, -1).values
    return SortedReference(values=s, run_start=start, run_end=end, count=count)


def _map_sorted(s: Tensor, n: Tensor, ref: SortedReference) -> Tensor:
    """The quantile mapping for ascending, +inf-padded rows.

    s (*, L) sorted source rows, n (*) their valid counts (>= 1), ref with leading dims
    broadcastable to ``*``. Returns (*, L), the mapped value of each sorted entry (entries
    past n are meaningless). Implements ``np.interp(q, ref_quantiles, ref_unique_values)``
    with q = c/n, c = #{source <= v}, comparing quantiles in exact integer arithmetic.
    """
    lead = s.shape[:-1]
    c = _run_ends(s)  # (*, L)
    n = n.reshape(*n.shape, 1).expand(*lead, 1).long()
    m = ref.count.reshape(*ref.count.shape, 1).expand(*lead, 1).to(s.device)
    # smallest reference index k with (k+1)/m >= q = c/n, in integers: ceil(c*m/n) - 1
    k = torch.minimum((c * m + n - 1).div(n, rounding_mode="floor") - 1, m - 1).clamp(min=0)

    def take(t: Tensor, index: Tensor) -> Tensor:
        return torch.gather(t.expand(*lead, t.shape[-1]), -1, index)

    # hi: the reference value whose quantile end/m is the first >= q; lo: the previous
    # unique value, at quantile start/m (np.interp's left and right points).
    hi, start, end = take(ref.values, k).to(s.dtype), take(ref.run_start, k), take(ref.run_end, k)
    lo = take(ref.values, (start - 1).clamp(min=0)).to(s.dtype)
    num = c * m - start * n  # (q - start/m) * n * m
    den = (end - start) * n  # (end/m - start/m) * n * m
    frac = num.to(s.dtype) / den.to(s.dtype)
    return torch.where((start == 0) | (num >= den), hi, lo + frac * (hi - lo))


def match_to_sorted(
    values: Tensor, ref: SortedReference | Tensor, valid: Tensor | None = None
) -> Tensor:
    """Core quantile mapping on flat value sets (skimage's ``_match_cumulative_cdf``).

    values (*, L) float; ``ref`` a :class:`SortedReference` whose leading dims broadcast to
    ``*`` (or a plain tensor (*, M), every entry used); valid (*, L) bool or None (all).
    Returns (*, L): each row's valid values mapped to the distribution of the same row of
    ``ref``; invalid values returned unchanged (``torch.where``). A row without valid values
    is returned unchanged. Not differentiable (it is a target); no grad is recorded.
    """
    if not isinstance(ref, SortedReference):
        ref = sorted_reference(ref)
    with torch.no_grad():
        if valid is None:
            n = torch.full(values.shape[:-1], values.shape[-1], device=values.device, dtype=torch.long)
            x = values
        else:
            valid = valid.expand_as(values)
            n = valid.sum(-1).clamp(min=1)
            x = torch.where(valid, values, torch.full_like(values, float("inf")))
        s, order = torch.sort(x, dim=-1)
        mapped = torch.empty_like(values).scatter_(-1, order, _map_sorted(s, n, ref))
        return mapped if valid is None else torch.where(valid, mapped, values)


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask > 0.5


def _compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gather the masked pixels of each sample into +inf-padded rows.

    x (B,C,P), mask (B,P) bool. Returns values (B,C,Lmax) (the masked pixels in raster
    order, then +inf), pix (B,Lmax) int64 their pixel index (P for padding), counts (B,).
    Sorting Lmax instead of P entries per row is most of the speed on small areas.
    """
    b, _, p = x.shape
    counts = mask.sum(-1)
    length = max(int(counts.max()), 1) if b else 1
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: increasing cols within a row
    pos = torch.arange(rows.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[rows]
    pix = torch.full((b, length), p, device=x.device, dtype=torch.long)
    pix[rows, pos] = cols
    vals = torch.full((b, x.shape[1], length), float("inf"), device=x.device, dtype=x.dtype)
    vals[rows, :, pos] = x[rows, :, cols]
    return vals, pix, counts


def sort_reference(reference: Tensor, reference_mask: Tensor) -> SortedReference:
    """Precompute the reference for :func:`histmatch` / :func:`match_features`.

    reference (R,C,Hr,Wr), reference_mask (R,1,Hr,Wr) bool or {0,1} float.
    Returns a :class:`SortedReference` with values (R,C,M) and count (R,1).
    """
    if reference.dim() != 4 or reference_mask.dim() != 4 or reference_mask.shape[1] != 1:
        raise ValueError(
            f"reference must be (R,C,H,W) and reference_mask (R,1,H,W); got "
            f"{tuple(reference.shape)} and {tuple(reference_mask.shape)}"
        )
    if reference_mask.shape[0] != reference.shape[0] or reference_mask.shape[2:] != reference.shape[2:]:
        raise ValueError(
            f"reference_mask {tuple(reference_mask.shape)} does not fit reference {tuple(reference.shape)}"
        )
    r, ch = reference.shape[:2]
    mask = _as_bool(reference_mask).to(reference.device).reshape(r, -1)
    vals, _, counts = _compact(reference.reshape(r, ch, -1), mask)
    if bool((counts == 0).any()):
        raise _empty_reference_error()
    return _from_padded(vals, counts[:, None])


def histmatch(
    source: Tensor,
    source_mask: Tensor,
    reference: Tensor | SortedReference,
    reference_mask: Tensor | None = None,
) -> Tensor:
    """Match the histogram of ``source`` inside ``source_mask`` to ``reference`` inside ``reference_mask``.

    source (N,C,H,W) float; source_mask (N,1,H,W) bool or {0,1} float; reference
    (N or 1,C,Hr,Wr); reference_mask (N or 1,1,Hr,Wr). ``reference`` may instead be a
    :class:`SortedReference` from :func:`sort_reference` (then ``reference_mask=None``).
    Returns (N,C,H,W), same dtype/device as ``source``: per sample and channel, the values
    inside the mask follow the reference distribution; outside the mask the values are
    bit-identical to ``source``. An empty source mask leaves that sample unchanged; an
    empty reference mask raises ValueError.
    """
    if source.dim() != 4 or source_mask.dim() != 4 or source_mask.shape[1] != 1:
        raise ValueError(
            f"source must be (N,C,H,W) and source_mask (N,1,H,W); got "
            f"{tuple(source.shape)} and {tuple(source_mask.shape)}"
        )
    n, ch, h, w = source.shape
    if source_mask.shape[0] != n or source_mask.shape[2:] != source.shape[2:]:
        raise ValueError(f"source_mask {tuple(source_mask.shape)} does not fit source {tuple(source.shape)}")
    if not isinstance(reference, SortedReference):
        if reference_mask is None:
            raise ValueError("reference_mask is required unless reference is a SortedReference")
        reference = sort_reference(reference.to(source.device), reference_mask)
    elif reference_mask is not None:
        raise ValueError("reference_mask must be None when reference is a SortedReference")
    r, rc = reference.values.shape[:2]
    if rc != ch or r not in (1, n):
        raise ValueError(
            f"reference has {r} samples x {rc} channels; source needs 1 or {n} samples x {ch} channels"
        )
    with torch.no_grad():
        x = source.reshape(n, ch, h * w)
        vals, pix, counts = _compact(x, _as_bool(source_mask).to(source.device).reshape(n, h * w))
        s, order = torch.sort(vals, dim=-1)
        mapped = _map_sorted(s, counts.clamp(min=1)[:, None].expand(n, ch), reference)
        # scatter back through a spare last column that receives the padding
        out = torch.cat([x, x[..., :1]], -1)
        out.scatter_(-1, torch.gather(pix[:, None].expand(n, ch, -1), -1, order), mapped)
        return out[..., : h * w].reshape(n, ch, h, w)


def match_features(
    feats: Tensor, mask: Tensor, ref_feats: Tensor | SortedReference, ref_mask: Tensor | None = None
) -> Tensor:
    """Histogram-matched feature target R(phi_j(y_hat)) of the histogram loss (paper eq. 4).

    feats (N,C,h,w) features of the generated image, mask (N,1,h,w) the area L at that
    resolution; ref_feats (1,C,hr,wr) features of the reference H with ref_mask (1,1,hr,wr)
    = M at that resolution, or a :class:`SortedReference` precomputed with
    :func:`sort_reference` (cheaper: H is fixed during a fit). Returns (N,C,h,w), detached;
    outside ``mask`` it equals ``feats``.
    """
    return histmatch(feats.detach(), mask, ref_feats, ref_mask)


def histmatch_np(
    source: np.ndarray, source_mask: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray
) -> np.ndarray:
    """Numpy front end of :func:`histmatch` for one image.

    source (H,W) or (H,W,C), source_mask (H,W) (bool or nonzero = inside), reference
    (Hr,Wr) or (Hr,Wr,C), reference_mask (Hr,Wr). Values are matched in the source's value
    range (no rescaling). Float input keeps its dtype; integer input returns float64, as
    skimage does.
    """
    src = np.asarray(source)
    if src.ndim not in (2, 3) or np.ndim(reference) != src.ndim:
        raise ValueError(
            f"source and reference must both be HxW or HxWxC; got {np.shape(source)} and {np.shape(reference)}"
        )
    dtype = src.dtype if src.dtype.kind == "f" else np.float64

    def to_nchw(a: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
        return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]

    def mask_t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(a) != 0)[None, None]

    out = histmatch(to_nchw(src), mask_t(source_mask), to_nchw(reference), mask_t(reference_mask))[0]
    out = out[0] if src.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy()
