"""Segmenter training: the masked loss, SegTrainer, resumption, the in-process run (small sizes, CPU)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from dstray.seg.data import SegSource
from dstray.seg.train import HISTORY, HISTORY_FIELDS, SegTrainer, masked_cross_entropy, read_history, train_local
from tests.helpers import SMALL_SEG as SMALL


def test_masked_cross_entropy_matches_torch_where_everything_counts():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    ours = masked_cross_entropy(logits, target, torch.ones_like(target), defect_weight=3.0)
    ref = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(ours, ref)
    assert masked_cross_entropy(logits, target, torch.zeros_like(target)) == 0


def test_loss_falls_when_overfitting_a_fixed_batch():
    cfg = replace(SMALL, augment=False, batch_size=2, real_limit=2)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    fixed = trainer.source.batch(2, torch.Generator().manual_seed(0))
    trainer.source.batch = lambda n, g: fixed
    losses = [trainer.step()["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_resume_is_exact():
    src = SegSource.from_config(SMALL)
    straight = SegTrainer(SMALL, src)
    for _ in range(4):
        straight.step()
    first = SegTrainer(SMALL, src)
    for _ in range(2):
        first.step()
    state = {k: v for k, v in first.state_dict().items()}
    resumed = SegTrainer(replace(SMALL, seed=123), src)  # different init, overwritten by the state
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    assert resumed.steps == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_local_runs_and_resumes(tmp_path):
    cfg = replace(SMALL, steps=2, eval_every=1, eval_split="reference", real_splits=["train"])
    out = train_local(cfg, tmp_path)
    assert out["steps"] == 2 and len(out["history"]) == 2 and (tmp_path / "eval.png").exists()
    again = train_local(replace(cfg, steps=3), tmp_path)
    assert again["steps"] == 3 and len(again["history"]) == 1
    rows = read_history(tmp_path / HISTORY)  # the one history format, whole across the resumption
    assert [r["step"] for r in rows] == [1, 2, 3] and set(rows[0]) == set(HISTORY_FIELDS)
    with pytest.raises(ValueError, match="different config"):
        train_local(replace(cfg, steps=4, lr=1e-4), tmp_path)
