"""The schedule of a DST fit, apart from its loop: held-out backgrounds, the held-out check, warm-up, stopping.

Never worse than its input, and how long. ``heldout`` backgrounds (a seeded choice, :func:`hold_out`)
are kept out of the fit. At step 0 (TransferNet is the identity there), every ``heldout_every``
steps and at the last step, the total loss of DST is measured on fixed batches drawn from them
(:class:`HeldoutCheck`), beside the loss of y' itself (ŷ = y', what histmatch alone gives); the
weights with the lowest held-out loss so far are kept, and they are the fitted model. The fit
stops when that best loss has not improved by ``plateau_tol`` (relative) for ``plateau_patience``
steps (never before ``min_steps``, never after ``steps``): early stopping on backgrounds the fit
never saw (:func:`plateaued`). With too few backgrounds to hold some out (fewer than 4 x
``heldout``) the smoothed training loss (an exponential moving average, weight
:data:`PLATEAU_EMA` a step) plays that role and the last weights are kept.

Pure functions of the config and the recorded histories, so a resumed fit stops where an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dstray.config import DSTConfig
from dstray.seeds import derive_seed

PLATEAU_EMA = 0.05  # weight of the newest step in the smoothed loss of the plateau rule
HELDOUT_BATCHES = 4  # batches drawn from the held-out backgrounds for each check


def hold_out(backgrounds: list, n: int, seed: int) -> tuple[list, list]:
    """(held out, the rest): ``n`` backgrounds chosen with ``seed`` (none when fewer than 4n are given)."""
    if n <= 0 or len(backgrounds) < 4 * n:
        return [], list(backgrounds)
    g = torch.Generator().manual_seed(derive_seed(seed, "dst-heldout-choice"))
    order = torch.randperm(len(backgrounds), generator=g).tolist()
    held = set(order[:n])
    return ([b for i, b in enumerate(backgrounds) if i in held],
            [b for i, b in enumerate(backgrounds) if i not in held])


def warmup_lr(cfg: DSTConfig, step: int) -> float:
    """The learning rate of step ``step + 1``: linear warm-up over ``cfg.warmup_steps`` (a function of
    the step, so a resumed fit continues exactly)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def plateaued(cfg: DSTConfig, step: int, history: list[dict], heldout_history: list[dict], heldout: bool) -> bool:
    """True when the fit stopped improving (see the module docstring).

    ``history``: one row per step with ``total``; ``heldout_history``: the held-out checks
    ({"step", "dst", ...}); ``heldout``: whether the fit has held-out backgrounds.
    """
    if cfg.plateau_patience <= 0 or step < cfg.min_steps:
        return False
    if heldout:  # early stopping: the best held-out loss is older than the patience
        if not heldout_history:
            return False
        best = min(h["dst"] for h in heldout_history)
        for h in heldout_history:  # the first check that came within tol of the best
            if h["dst"] <= best * (1 + cfg.plateau_tol):
                return step - h["step"] >= cfg.plateau_patience
    if len(history) < cfg.plateau_patience + 1:
        return False
    ema, smoothed = None, []
    for h in history:
        ema = h["total"] if ema is None else (1 - PLATEAU_EMA) * ema + PLATEAU_EMA * h["total"]
        smoothed.append(ema)
    before, now = smoothed[-1 - cfg.plateau_patience], smoothed[-1]
    return before - now < cfg.plateau_tol * abs(before)


class HeldoutCheck:
    """The held-out check of one fit: the losses of DST and of y' on fixed held-out batches, and the best weights.

    Args:
        batches: builds the fixed batches of (y', S, L) once, on first use (the fitter's
            ``_fixed_batches`` on the held-out backgrounds).
    """

    def __init__(self, batches: Callable[[], list[tuple[Tensor, Tensor, Tensor]]]):
        self._make_batches = batches
        self._batches: list[tuple[Tensor, Tensor, Tensor]] | None = None
        self.best: dict[str, float] = {}  # {"step", "dst", "yprime"} of the best weights so far
        self.history: list[dict[str, float]] = []  # every check: {"step", "dst", "yprime"}
        self.best_state: dict[str, Tensor] | None = None

    @torch.no_grad()
    def __call__(self, net: torch.nn.Module, loss: torch.nn.Module, step: int) -> dict[str, float]:
        """Mean total loss of ``net`` (``dst``) and of y' itself (``yprime``) at ``step``; recorded, and the
        weights kept when they are the best so far. ``net`` is left in training mode."""
        if self._batches is None:
            self._batches = self._make_batches()
        batches = self._batches
        net.eval()
        dst = sum(float(loss(net(y, s, a), y, s, a)["total"]) for y, s, a in batches) / len(batches)
        yprime = sum(float(loss(y, y, s, a)["total"]) for y, s, a in batches) / len(batches)
        net.train()
        row = {"step": step, "dst": round(dst, 5), "yprime": round(yprime, 5)}
        self.history.append(row)
        if not self.best or dst < self.best["dst"]:
            self.best = dict(row)
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return dict(row)

    def state_dict(self) -> dict:
        return {"heldout_losses": dict(self.best), "heldout_history": [dict(h) for h in self.history],
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best = dict(state.get("heldout_losses", {}))
        self.history = [dict(h) for h in state.get("heldout_history", [])]
        self.best_state = state.get("best_state")


def final_terms(history: list[dict[str, float]], best: dict[str, float]) -> dict[str, float]:
    """The last step's loss terms plus the best held-out check (``heldout_dst``, ``heldout_yprime``,
    ``heldout_step``: the step of the weights kept)."""
    last = {k: v for k, v in history[-1].items() if k != "step"}
    return {**last, **{f"heldout_{k}": v for k, v in best.items()}}
