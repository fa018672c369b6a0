"""Fit the TransferNet of one defect type (paper §3.1, Alg. 2 and §4), pure torch.

Algorithm 2, per background S and area L:

1. y' = S[L'] + histmatch(S[L], H[M])  -- masked histogram matching, contrast-preserving by default
   (:func:`dstray.dst.histmatch.match_area`);
2. ŷ = S[L'] + TransferNet(y')[L]      -- identity at init, soft fusion (:mod:`dstray.dst.transfer_net`);
3. losses φ(ŷ[L], y'[L], S[L], H[M])   -- eq. 3-6 (:mod:`dstray.dst.losses`), Adam step (paper §4: lr 1e-3).

Never worse than its input, and how long: held-out backgrounds, the held-out check, the
warm-up and the stopping rule are :mod:`dstray.dst.schedule`. The loss terms are normalised at
the start of the fit (:meth:`dstray.dst.losses.DSTLoss.calibrate`, on ``calibration_batches``
seeded batches).

Two ways to present a background to the network:

- patch mode (``DSTConfig.patch_size``, the default): a square window containing L,
  at native resolution (:func:`dstray.dst.areas.crop_window`). Cheap, and the network sees
  the same scale at fit and at generation. Fitting always uses ``patch_size`` windows:
  an L too large for one (Magnetic Tile's uneven and fray areas span most of a tile) is
  seen through a window centred on a random pixel of L, which keeps a step's cost and
  memory those of a small defect (uneven with whole-L windows: ~370 px windows, 6.9 GB
  peak RSS and 33 s a step on one CPU thread). A window clipped by a smaller image is
  completed by replicate padding (S) / zeros (L). Stylizing grows the window to hold
  all of L (the network is fully convolutional).
- whole mode (``patch_size=None``, the paper's): the whole background, resized to
  ``whole_size`` x ``whole_size`` so a batch stacks; L is sampled on the resized image,
  so L's shape is not distorted (the background's aspect ratio is). At generation the
  network is fully convolutional and runs on the native size.

:func:`fit_loop` is the one fitting loop. :func:`fit_dst` (``dstray fit-dst``, in-process)
and the Ray Train worker (:mod:`dstray.distributed.fit`) are adapters around it that say
what a log line and a checkpoint are.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dstray import __version__, storage
from dstray.config import DSTConfig, resolve_device, to_dict
from dstray.data import DefectDataset, read_image, read_mask, to_channels
from dstray.dst.areas import AreaSampler, crop_window, cut_window
from dstray.dst.histmatch import SortedReference, match_area, ring_mean, sort_reference
from dstray.dst.losses import DSTLoss
from dstray.dst.schedule import HELDOUT_BATCHES, HeldoutCheck, final_terms, hold_out, plateaued, warmup_lr
from dstray.dst.stylize import CHECKPOINT_FORMAT, save_checkpoint
from dstray.dst.transfer_net import TransferNet
from dstray.seeds import derive_seed

log = logging.getLogger("dstray")

TERMS = ("content", "style", "hist", "tv", "total")  # the loss terms of a step, as logged and checkpointed


def fitted_types(dataset: DefectDataset) -> list[str]:
    """The defect types of ``dataset`` that DST can learn: those with a reference, sorted."""
    return sorted({s.defect_type for s in dataset.references()})


def resolve_defect_type(dataset: DefectDataset, defect_type: str | None) -> str:
    """``defect_type`` checked against ``dataset``; None means the dataset's only type.

    DataError for an unknown type (naming the known ones); ValueError when None is given
    and the dataset has several types.
    """
    if defect_type is not None:
        dataset.references(defect_type)  # DataError naming the known types
        return defect_type
    types = fitted_types(dataset)
    if len(types) != 1:
        raise ValueError(f"{dataset.root} has {len(types)} defect types with a reference ({', '.join(types)}); "
                         "choose one with --defect-type, or fit them all with --all (or --types a,b)")
    return types[0]


# --------------------------------------------------------------------------- fitting
class DSTFitter:
    """Fits the TransferNet of one defect type; resumable (:meth:`state_dict` / :meth:`load_state_dict`).

    Args:
        cfg: the fit settings (defect type, reference, steps, batch, patch/whole, loss weights).
        dataset: provides the reference H, M (``cfg.reference_id`` or the type's first
            reference) and the backgrounds S (split "background").
    Backgrounds are visited in a seeded order (a new permutation each pass); L is sampled
    with :class:`dstray.dst.areas.AreaSampler` from the type's reference masks with a
    ``torch.Generator`` seeded by ``cfg.seed``. Decoded backgrounds are cached as uint8
    (1 byte a pixel: 600 MT backgrounds take ~60 MB).
    """

    def __init__(self, cfg: DSTConfig, dataset: DefectDataset):
        cfg = replace(cfg, defect_type=resolve_defect_type(dataset, cfg.defect_type))
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        refs = dataset.references(cfg.defect_type)
        ref = dataset.get(cfg.reference_id) if cfg.reference_id else refs[0]
        if ref.defect_type != cfg.defect_type or ref.mask is None:
            raise ValueError(f"reference {ref.id!r} is a {ref.defect_type!r} sample with mask {ref.mask}; "
                             f"pick a reference of type {cfg.defect_type!r} with a mask")
        self.reference_id = ref.id
        self.reference_image = read_image(ref.image)  # H (C,H,W)
        self.reference_mask = read_mask(ref.mask, like=self.reference_image)  # M (1,H,W)
        self.in_channels = self.reference_image.shape[0]
        backgrounds = dataset.backgrounds()
        if not backgrounds:
            raise ValueError(f"dataset {dataset.root} has no background (defect-free) images to fit on")
        self.heldout, self.backgrounds = hold_out(backgrounds, cfg.heldout, cfg.seed)
        self.area_masks = [read_mask(r.mask) for r in refs if r.mask is not None]  # every M of the type
        self.sampler = AreaSampler(self.area_masks, cfg.area, name=cfg.defect_type)
        self._cache: dict[str, Tensor] = {}

        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            self.net = TransferNet(self.in_channels, cfg.blend_sigma)
            self.loss = DSTLoss(cfg)
        self.net.to(self.device)
        self.loss.to(self.device)
        h, m = self.reference_image[None].to(self.device), self.reference_mask[None].to(self.device)
        self.loss.set_reference(h, m)
        self.ref_sorted: SortedReference = sort_reference(h, m)
        self.ref_ring = ring_mean(h, m) if cfg.first_step == "relative" else None
        if cfg.first_step not in ("relative", "absolute"):
            raise ValueError(f"first_step must be 'relative' or 'absolute'; got {cfg.first_step!r}")
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step_count = 0
        self.draws = 0  # backgrounds drawn so far (position in the seeded visiting order)
        self.history: list[dict[str, float]] = []
        self.heldout_check = HeldoutCheck(lambda: self._fixed_batches(self.heldout, HELDOUT_BATCHES, "dst-heldout"))
        self._perm: tuple[int, Tensor] | None = None
        self.loss.calibrate(self._fixed_batches(self.backgrounds, cfg.calibration_batches, "dst-calibrate"))

    # ---- data
    def _background(self, sample) -> Tensor:
        if sample.id not in self._cache:
            img = to_channels(read_image(sample.image), self.in_channels)
            self._cache[sample.id] = img.mul(255).round().to(torch.uint8)  # lossless for 8-bit files
        return self._cache[sample.id].float() / 255

    def _next_index(self) -> int:
        n = len(self.backgrounds)
        epoch, pos = divmod(self.draws, n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "dst-backgrounds", epoch))
            self._perm = (epoch, torch.randperm(n, generator=g))
        self.draws += 1
        return int(self._perm[1][pos])

    def _draw(self, pick=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One (S, L) pair; whole mode resizes S first. Backgrounds too small for L are skipped.

        ``pick()`` gives the next background sample (default: the seeded training order),
        ``generator`` draws L (default: the fitter's)."""
        pick = pick or (lambda: self.backgrounds[self._next_index()])
        generator = generator or self.generator
        for _ in range(len(self.backgrounds) + len(self.heldout)):
            s = self._background(pick())
            if self.cfg.patch_size is None:
                size = self.cfg.whole_size
                s = F.interpolate(s[None], size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
            try:
                return s, self.sampler.sample(s.shape[1], s.shape[2], generator)
            except ValueError:
                continue
        raise ValueError(f"no background can take an area of type {self.cfg.defect_type!r} (all too small)")

    def _fit_window(self, area: Tensor, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """The training window (top, left, h, w) for L: ``crop_window`` when L fits in ``patch_size``,
        else a ``patch_size`` window centred on a random pixel of L (part of L, native scale)."""
        size = self.cfg.patch_size
        win = crop_window(area, size)
        if max(win[2:]) <= size:
            return win
        ys, xs = torch.nonzero(area[0] > 0.5, as_tuple=True)
        k = int(torch.randint(len(ys), (), generator=generator or self.generator))
        height, width = area.shape[-2:]
        h, w = min(size, height), min(size, width)
        top = min(max(int(ys[k]) - h // 2, 0), height - h)
        left = min(max(int(xs[k]) - w // 2, 0), width - w)
        return top, left, h, w

    def batch(self, pairs: list[tuple[Tensor, Tensor]] | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The next batch: S (B,C,h,w), L (B,1,h,w) on the fit device, h = w = patch_size (or whole_size).

        ``pairs``: (S, L) pairs to window instead of the next ``batch_size`` training draws."""
        pairs = pairs if pairs is not None else [self._draw() for _ in range(self.cfg.batch_size)]
        if self.cfg.patch_size is None:
            s, a = zip(*pairs)
        else:
            shape = (self.cfg.patch_size, self.cfg.patch_size)
            wins = [self._fit_window(a, generator) for _, a in pairs]
            s = [cut_window(s, w, shape) for (s, _), w in zip(pairs, wins)]
            a = [cut_window(a, w, shape, pad_mode="zeros") for (_, a), w in zip(pairs, wins)]
        return torch.stack(s).to(self.device), torch.stack(a).to(self.device)

    def first_step(self, s: Tensor, area: Tensor) -> Tensor:
        """y' of Alg. 2 for a batch: S (N,C,H,W), L (N,1,H,W) -> (N,C,H,W)."""
        return match_area(s, area, self.ref_sorted, self.ref_ring)

    def _fixed_batches(self, backgrounds: list, n: int, purpose: str) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``n`` batches of (y', S, L) drawn from ``backgrounds`` with a generator of their own: the same
        batches for the same seed, whatever the fit's position (calibration, the held-out check)."""
        if not backgrounds or n <= 0:
            return []
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, purpose))
        pick = lambda: backgrounds[int(torch.randint(len(backgrounds), (), generator=g))]  # noqa: E731
        out = []
        for _ in range(n):
            s, area = self.batch([self._draw(pick, g) for _ in range(self.cfg.batch_size)], generator=g)
            out.append((self.first_step(s, area), s, area))
        return out

    # ---- optimisation
    def step(self) -> dict[str, float]:
        """One Adam step on a fresh batch; returns the weighted loss terms and "total"."""
        self.net.train()
        s, area = self.batch()
        y_match = self.first_step(s, area)  # first step of Alg. 2
        out = self.net(y_match, s, area)  # second step
        terms = self.loss(out, y_match, s, area)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_lr(self.cfg, self.step_count)
        self.optimizer.step()
        self.step_count += 1
        record = {k: float(v.detach()) for k, v in terms.items()}
        self.history.append({"step": self.step_count, **record})
        return record

    @property
    def heldout_losses(self) -> dict[str, float]:
        """{"step", "dst", "yprime"} of the best held-out check so far ({} before any)."""
        return self.heldout_check.best

    @property
    def heldout_history(self) -> list[dict[str, float]]:
        """Every held-out check: {"step", "dst", "yprime"}."""
        return self.heldout_check.history

    def plateaued(self) -> bool:
        """True when the fit stopped improving (:func:`dstray.dst.schedule.plateaued`)."""
        return plateaued(self.cfg, self.step_count, self.history, self.heldout_history, bool(self.heldout))

    def done(self) -> bool:
        return self.step_count >= self.cfg.steps or self.plateaued()

    def check_heldout(self) -> dict[str, float]:
        """Mean total loss on fixed batches from the held-out backgrounds: of DST now (``dst``) and of y'
        itself (``yprime``: ŷ = y', the first step alone); the weights kept when they are the best so far
        (:class:`dstray.dst.schedule.HeldoutCheck`, :meth:`use_best`). {} without held-out backgrounds."""
        if not self.heldout:
            return {}
        return self.heldout_check(self.net, self.loss, self.step_count)

    def use_best(self) -> None:
        """Load the weights of the best held-out check into the network (a no-op without held-out backgrounds)."""
        if self.heldout_check.best_state is not None:
            self.net.load_state_dict(self.heldout_check.best_state)

    def state_dict(self) -> dict:
        """Everything to resume exactly: net, optimiser, step, draws, area RNG, loss history."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "draws": self.draws,
            "generator": self.generator.get_state(),
            "history": [dict(h) for h in self.history],
            "loss_norm": dict(self.loss.norm),
            **self.heldout_check.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.draws = int(state["draws"])
        self.generator.set_state(state["generator"].cpu())
        self.history = [dict(h) for h in state["history"]]
        self.loss.norm = dict(state.get("loss_norm", self.loss.norm))
        self.heldout_check.load_state_dict(state)

    def checkpoint(self) -> dict:
        """The model checkpoint (see :meth:`save`), plain tensors/containers only."""
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "config": to_dict(self.cfg),
            "reference": {"id": self.reference_id, "image": self.reference_image.clone(),
                          "mask": self.reference_mask.clone()},
            "defect_type": self.cfg.defect_type,
            "steps": self.step_count,
            "in_channels": self.in_channels,
            "dstray_version": __version__,
            "format": CHECKPOINT_FORMAT,
            "losses": [dict(h) for h in self.history],
            "area_masks": [m.clone() for m in self.area_masks],
            "loss_norm": dict(self.loss.norm),
            "heldout_losses": dict(self.heldout_losses),
            "heldout_history": [dict(h) for h in self.heldout_history],
            "stopped": "plateau" if self.step_count < self.cfg.steps else "step cap",
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`checkpoint` to ``path`` (:func:`dstray.dst.stylize.save_checkpoint`: atomic)."""
        return save_checkpoint(self.checkpoint(), path)


def write_losses_csv(history: list[dict[str, float]], location: str | Path) -> str:
    """The fit history (the checkpoint's ``losses``) as CSV, one row per step: step and :data:`TERMS`.

    ``location``: a local path or a pyarrow URI. Both the in-process fit and the Ray Train fit write it.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", *TERMS])
    writer.writeheader()
    writer.writerows(history)
    storage.write_bytes(str(location), buf.getvalue().encode())
    return str(location)


def fit_loop(fitter: DSTFitter, *, on_log: Callable[[int, dict[str, float]], None] | None = None,
             on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
             on_step: Callable[[int], None] | None = None) -> None:
    """The one DST fitting loop: step ``fitter`` until it is done (step cap or plateau), from wherever it stands.

    Held-out checks at step 0, every ``cfg.heldout_every`` steps and at the last step (so the last
    weights are judged too). After step k:
    ``on_checkpoint(k, terms)`` when k is a multiple of ``cfg.checkpoint_every``, otherwise
    ``on_log(k, terms)`` when k is a multiple of ``cfg.log_every``; then ``on_step(k)``. When the
    fit is done the best held-out weights are loaded (:meth:`DSTFitter.use_best`) and
    ``on_checkpoint`` gets the final terms (:func:`dstray.dst.schedule.final_terms`). A fitter restored with
    :meth:`DSTFitter.load_state_dict` continues where it was saved; one restored after it was done
    only repeats the final checkpoint.
    """
    cfg = fitter.cfg
    if fitter.step_count == 0 and not fitter.heldout_history:
        fitter.check_heldout()  # TransferNet is the identity here: the fit can only improve on it
    while not fitter.done():
        terms = fitter.step()
        step = fitter.step_count
        if cfg.heldout_every > 0 and step % cfg.heldout_every == 0:
            fitter.check_heldout()
        if fitter.done():
            break
        if step % cfg.checkpoint_every == 0:
            if on_checkpoint is not None:
                on_checkpoint(step, terms)
        elif step % cfg.log_every == 0 and on_log is not None:
            on_log(step, terms)
        if on_step is not None:
            on_step(step)
    if fitter.heldout_history and fitter.heldout_history[-1]["step"] != fitter.step_count:
        fitter.check_heldout()  # the last weights, when the fit ended between two checks
    fitter.use_best()
    if on_checkpoint is not None and fitter.history:
        on_checkpoint(fitter.step_count, final_terms(fitter.history, fitter.heldout_losses))


def fit_dst(cfg: DSTConfig, dataset: DefectDataset, out_dir: str | Path,
            on_log: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Fit (at most ``cfg.steps`` steps) in this process; write ``out_dir/model.pt`` and ``out_dir/losses.csv``.

    The local adapter of :func:`fit_loop`: the loss terms go to ``on_log(step, terms)`` (default:
    the "dstray" logger) every ``cfg.log_every`` steps and at every checkpoint; every
    ``cfg.checkpoint_every`` steps and at the last step both files are (re)written. Returns the
    model path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitter = DSTFitter(cfg, dataset)

    def log_terms(step: int, terms: dict[str, float]) -> None:
        if on_log is not None:
            on_log(step, terms)
        else:
            log.info("dst %s step %d/%d %s", fitter.cfg.defect_type, step, cfg.steps,
                     " ".join(f"{k}={v:.4g}" for k, v in terms.items()))

    def checkpoint(step: int, terms: dict[str, float]) -> None:
        log_terms(step, terms)
        fitter.save(out / "model.pt")
        write_losses_csv(fitter.history, out / "losses.csv")

    fit_loop(fitter, on_log=log_terms, on_checkpoint=checkpoint)
    return out / "model.pt"
