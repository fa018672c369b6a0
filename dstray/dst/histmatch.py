"""Masked histogram matching, the first step of Defect Style Transfer.

Wei et al., §3.1 and Algorithm 2, first step: ``y <- S[L'] + histmatch(S[L], H[M])``.
Per channel, the pixels of the defect-free image S inside the target area L are mapped
so that their distribution matches the pixels of the reference defect H inside its mask
M; everything outside L is left untouched. The same mapping, applied to VGG feature maps,
gives the target of Risser et al.'s histogram loss (paper eq. 4), see :func:`match_features`.

The mapping is scikit-image's ``exposure.match_histograms`` (``_match_cumulative_cdf``):
each source value v gets its CDF quantile q = #{source <= v} / n, and q is linearly
interpolated (``np.interp``) in the reference's (quantile, unique value) pairs. Here it is
computed on sorted tensors, batched over samples and channels: the masked pixels of each
sample are gathered into +inf-padded rows that carry their own count, sorted once, and
mapped through a per-reference table of interpolation segments (float64 quantiles), so
the result equals skimage to float rounding (tests check 1/255 on real and random
images). Samples are processed in passes by size class (area within a factor of two), so
one large area does not pad a whole batch; there is no loop over samples or pixels.

Values must be finite (no NaN/inf). Works on any device; each pass syncs once with the
host (the longest row).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dstray.labels import RING_WIDTH, ring  # noqa: F401 (re-exported: the ring around L sets the relative gain)


class SortedReference(NamedTuple):
    """A reference value set, precomputed once (the reference H is fixed during a fit).

    Shapes, with leading dims ``*`` (``(R, C)`` for images):
    ``values (*, M)`` ascending, then +inf padding past ``count``;
    ``table (*, M, 3)`` float64: for index k, the ``np.interp`` segment that ends at the
    run of ``values[k]``: (left value, left quantile, slope); the first run has slope 0;
    ``count (*)`` int64: valid entries per row.
    """

    values: Tensor
    table: Tensor
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
    return torch.flip(torch.cummin(torch.flip(e, [-1]), -1).values, [-1])


def _empty_reference_error() -> ValueError:
    return ValueError(
        "histogram matching: the reference mask is empty (no pixel to take the histogram "
        "from); pass a reference mask with at least one pixel set"
    )


def _reference(values: Tensor, count: Tensor) -> SortedReference:
    """values (*, M) with invalid entries already +inf; count (*) valid entries per row (>= 1)."""
    s = torch.sort(values, dim=-1).values[..., : int(count.max())].contiguous()
    end = _run_ends(s).long()
    # a run starts where the previous one ends: run end of entry i-1 at a value change
    start = torch.zeros_like(end)
    start[..., 1:] = torch.where(s[..., 1:] == s[..., :-1], 0, end[..., :-1])
    start = torch.cummax(start, -1).values
    m = count[..., None].double()
    hi = s.double()
    lo = torch.gather(hi, -1, (start - 1).clamp(min=0))
    first = start == 0  # np.interp returns the first value for q <= its quantile
    slope = torch.where(first, 0.0, (hi - lo) / ((end - start) / m))
    table = torch.stack([torch.where(first, hi, lo), start / m, slope], -1)
    return SortedReference(values=s, table=table, count=count)


def _flat_reference(values: Tensor, valid: Tensor | None = None) -> SortedReference:
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
    return _reference(values, count)


def _map_sorted(s: Tensor, n: Tensor, ref: SortedReference) -> Tensor:
    """The quantile mapping of ascending, +inf-padded rows.

    s (*, L) sorted source rows, n (*) their valid counts (>= 1), ref with leading dims
    broadcastable to ``*``. Returns (*, L) in s.dtype, the mapped value of each sorted
    entry (entries past n are meaningless): ``np.interp(c/n, ...)`` with c = #{row <= v}.
    """
    return _interp_quantiles(_run_ends(s).double() / n[..., None], ref).to(s.dtype)


def _interp_quantiles(q: Tensor, ref: SortedReference) -> Tensor:
    """``np.interp(q, ref quantiles, ref values)`` for quantiles q (*, L) float64 -> (*, L) float64."""
    lead, length = q.shape[:-1], q.shape[-1]
    m = ref.count[..., None]
    # the first reference index whose quantile (k+1)/m reaches q; its run's segment holds q
    k = torch.minimum(torch.ceil(q * m).long() - 1, m - 1).clamp_(min=0)
    table = ref.table.expand(*lead, *ref.table.shape[-2:])
    lo, q_lo, slope = torch.gather(table, -2, k[..., None].expand(*lead, length, 3)).unbind(-1)
    return lo + (q - q_lo) * slope


LEVELS = 256  # 8-bit images: every value decoded from a PNG/JPEG file is k/255


def _histmatch_8bit(x: Tensor, mask: Tensor, reference: SortedReference) -> Tensor | None:
    """Fast path of :func:`histmatch` when the masked values are all k/255 (decoded 8-bit images).

    x (N,C,P), mask (N,P) bool. With at most 256 distinct values the sorted-rows pass
    reduces to a histogram: a bincount per (sample, channel) over the masked pixels; its
    cumulative sum gives each level's quantile #{source <= v}/n (skimage's), mapped through
    the reference once per level into a lookup table. O(masked pixels), no sort.
    Returns None when the values are not 8-bit levels in [0, 1] (use the general path).
    """
    n, ch, _ = x.shape
    rows, cols = mask.nonzero(as_tuple=True)
    vals = x[rows, :, cols]  # (K, C)
    levels = (vals * (LEVELS - 1)).round()
    if not (bool((levels >= 0).all()) and bool((levels <= LEVELS - 1).all())
            and torch.equal(levels / (LEVELS - 1), vals)):
        return None
    slot = (rows[:, None] * ch + torch.arange(ch, device=x.device)) * LEVELS + levels.long()  # (K, C)
    hist = torch.bincount(slot.reshape(-1), minlength=n * ch * LEVELS).view(n, ch, LEVELS)
    count = torch.bincount(rows, minlength=n).clamp(min=1).view(n, 1, 1)
    lut = _interp_quantiles(hist.cumsum(-1).double() / count, reference).to(x.dtype)  # (N, C, 256)
    out = x.clone(memory_format=torch.contiguous_format)
    out[rows, :, cols] = lut.reshape(-1)[slot]
    return out


def match_to_sorted(
    values: Tensor, sorted_ref: SortedReference | Tensor, valid: Tensor | None = None
) -> Tensor:
    """Core quantile mapping on flat value sets (skimage's ``_match_cumulative_cdf``).

    values (*, L) float; ``sorted_ref`` a :class:`SortedReference` whose leading dims
    broadcast to ``*`` (or a plain tensor (*, M), every entry used, any order); valid
    (*, L) bool or None (all). Returns (*, L): each row's valid values mapped to the
    distribution of the same row of ``sorted_ref``; invalid values returned unchanged
    (``torch.where``). A row without valid values is returned unchanged. Not
    differentiable (it is a target); no grad is recorded.
    """
    if not isinstance(sorted_ref, SortedReference):
        sorted_ref = _flat_reference(sorted_ref)
    with torch.no_grad():
        if valid is None:
            n = torch.full(values.shape[:-1], values.shape[-1], device=values.device, dtype=torch.long)
            x = values
        else:
            valid = valid.expand_as(values)
            n = valid.sum(-1).clamp(min=1)
            x = torch.where(valid, values, torch.full_like(values, float("inf")))
        s, order = _sort_rows(x)
        mapped = torch.empty_like(values).scatter_(-1, order, _map_sorted(s, n, sorted_ref))
        return mapped if valid is None else torch.where(valid, mapped, values)


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask > 0.5


def _sort_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """torch.sort along the last dim; on CPU through numpy's SIMD argsort (about 1.5x faster)."""
    if v.device.type != "cpu" or v.dtype not in (torch.float32, torch.float64):
        return torch.sort(v, dim=-1)
    order = torch.from_numpy(np.argsort(v.detach().numpy(), axis=-1))
    return torch.gather(v, -1, order), order


def _masked_pixels(mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mask (B,P) bool -> rows, cols (K,) of its set pixels in raster order, pos (K,) the
    rank of each within its row, counts (B,)."""
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: increasing cols within a row
    counts = torch.bincount(rows, minlength=mask.shape[0])
    pos = torch.arange(rows.numel(), device=mask.device) - (torch.cumsum(counts, 0) - counts)[rows]
    return rows, cols, pos, counts


def _padded(x: Tensor, rows: Tensor, cols: Tensor, local: Tensor, pos: Tensor, b: int, length: int):
    """Scatter pixels x[rows, :, cols] of x (N,C,P) to slot ``pos`` of row ``local`` of
    +inf-padded rows (b,C,length); also returns pix (b,length), their pixel index (P = none)."""
    vals = torch.full((b, x.shape[1], length), float("inf"), device=x.device, dtype=x.dtype)
    vals[local, :, pos] = x[rows, :, cols]
    pix = torch.full((b, length), x.shape[-1], device=x.device, dtype=torch.long)
    pix[local, pos] = cols
    return vals, pix


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
    rows, cols, pos, counts = _masked_pixels(_as_bool(reference_mask).to(reference.device).reshape(r, -1))
    if bool((counts == 0).any()):
        raise _empty_reference_error()
    vals, _ = _padded(reference.reshape(r, ch, -1), rows, cols, rows, pos, r, int(counts.max()))
    return _reference(vals, counts[:, None])


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
    p, dev = h * w, source.device
    mask = _as_bool(source_mask).to(dev).reshape(n, p)
    with torch.no_grad():
        x = source.reshape(n, ch, p)
        if x.dtype in (torch.float32, torch.float64):  # decoded 8-bit images: histogram fast path
            fast = _histmatch_8bit(x, mask, reference)
            if fast is not None:
                return fast.reshape(n, ch, h, w)
        out = x.clone(memory_format=torch.contiguous_format)
        # one pass per size class (areas within a factor of two), so that a large area
        # does not pad every row of the batch; samples are ordered by class so that each
        # pass reads a contiguous slice of the masked pixels; empty masks are left as is
        sizes = mask.view(torch.uint8).sum(-1, dtype=torch.int32).tolist()
        size_class = [c.bit_length() for c in sizes]
        order_n = sorted((i for i in range(n) if sizes[i]), key=size_class.__getitem__)
        perm = torch.tensor(order_n, dtype=torch.long, device=dev)
        rows, cols, pos, counts = _masked_pixels(mask if order_n == list(range(n)) else mask[perm])
        bounds = np.cumsum([0] + [sizes[i] for i in order_n]).tolist()  # pixel slice per sample
        start = 0
        for _, group in itertools.groupby(order_n, key=size_class.__getitem__):
            stop = start + len(list(group))
            e = slice(bounds[start], bounds[stop])
            idx, length = perm[start:stop], max(sizes[i] for i in order_n[start:stop])
            vals, pix = _padded(x, perm[rows[e]], cols[e], rows[e] - start, pos[e], stop - start, length)
            s, order = _sort_rows(vals)
            ref = reference if r == 1 else SortedReference(*(t[idx] for t in reference))
            mapped = _map_sorted(s, counts[start:stop, None], ref)  # counts broadcast over channels
            valid = (torch.arange(length, device=dev) < counts[start:stop, None, None]).expand_as(s)
            row = idx[:, None, None] * ch + torch.arange(ch, device=dev)[:, None]
            target = row * p + torch.gather(pix[:, None].expand(-1, ch, -1), -1, order)
            out.view(-1)[target[valid]] = mapped[valid]
            start = stop
        return out.reshape(n, ch, h, w)


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


# --------------------------------------------------------------------------- the first step of DST
def ring_mean(image: Tensor, area: Tensor, width: int = RING_WIDTH) -> Tensor:
    """Mean of ``image`` (N,C,H,W) over the ring around ``area`` (N,1,H,W), per sample and channel: (N,C).

    The whole image's mean where the area leaves no ring (it covers the image)."""
    r = ring(area, width).to(image.dtype)
    empty = r.sum((2, 3)) == 0
    r = torch.where(empty[..., None, None], torch.ones_like(r), r)
    return (image * r).sum((2, 3)) / r.sum((2, 3))


def match_area(source: Tensor, area: Tensor, reference: SortedReference,
               reference_ring: Tensor | None = None) -> Tensor:
    """The first step of DST (Alg. 2): y' = S outside L, S[L] histogram-matched to H[M] inside.

    source S (N,C,H,W) in [0,1]; area L (N,1,H,W); ``reference`` from :func:`sort_reference`
    (H inside M). ``reference_ring`` (1 or N, C): :func:`ring_mean` of H around M turns on the
    **contrast-preserving** variant (beyond the paper): the matched values are multiplied by the
    gain ``ring_mean(S, L) / reference_ring`` (per channel, clamped to [0, 1]), i.e. the defect
    keeps its grey levels *relative to its surroundings*: a crack 20 % darker than the tile
    around it in H is 20 % darker than the tile around L in S, whatever S's own brightness
    (with plain matching it takes H's absolute levels and may come out brighter than a darker
    tile). Quantile matching commutes with a positive scale, so this equals matching S[L] to
    the reference values scaled by the gain. Outside L the result is bit-identical to S.
    """
    matched = histmatch(source, area, reference)
    if reference_ring is None:
        return matched
    gain = ring_mean(source, area) / reference_ring.to(source).clamp_min(1.0 / 255)
    return torch.where(_as_bool(area), (matched * gain[..., None, None]).clamp(0, 1), source)
