"""SegCounts against hand-computed values (paper eq. 8) and the 0/0 edge cases."""

import numpy as np
import pytest
import torch

from dstray.seg.metrics import SegCounts
from tests.helpers import f1_table


def test_counts_and_scores_by_hand():
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    label = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    c = SegCounts.from_masks(pred, label)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 2, 4)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 4)
    assert c.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # eq. (8)
    assert c.iou == pytest.approx(2 / 5)


def test_valid_area_and_torch_input():
    pred = torch.tensor([[1, 1], [0, 1]])
    label = torch.tensor([[1, 0], [1, 1]])
    valid = torch.tensor([[1, 1], [0, 0]])  # bottom row is padding
    c = SegCounts.from_masks(pred, label, valid)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 0, 0)


def test_sums_are_micro_averages():
    a = SegCounts.from_masks(np.array([1, 0]), np.array([1, 0]))  # perfect, F1 1
    b = SegCounts.from_masks(np.array([0, 0, 0, 0]), np.array([1, 1, 1, 0]))  # F1 0
    total = a + b
    assert (total.tp, total.fp, total.fn, total.tn) == (1, 0, 3, 2)
    assert total.f1 == pytest.approx(2 / 5)  # not (1 + 0) / 2
    assert (a.tp, a.fn) == (1, 0)  # __add__ does not modify its operands


def test_edge_cases():
    empty = SegCounts.from_masks(np.zeros(4), np.zeros(4))
    assert (empty.precision, empty.recall, empty.f1, empty.iou) == (1.0, 1.0, 1.0, 1.0)
    no_pred = SegCounts.from_masks(np.zeros(4), np.array([1, 0, 0, 0]))
    assert (no_pred.precision, no_pred.recall, no_pred.f1, no_pred.iou) == (0.0, 0.0, 0.0, 0.0)
    no_label = SegCounts.from_masks(np.array([1, 0, 0, 0]), np.zeros(4))
    assert (no_label.precision, no_label.recall, no_label.f1, no_label.iou) == (0.0, 0.0, 0.0, 0.0)


def test_f1_table():
    rows = f1_table({"all": SegCounts(tp=3, fp=1, fn=0, tn=5)})
    assert rows[0]["name"] == "all" and rows[0]["f1"] == pytest.approx(6 / 7) and rows[0]["tn"] == 5


def test_roc_auc_against_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from dstray.seg.metrics import roc_auc

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        scores = rng.integers(0, 6, 30) / 5  # many ties
        if labels.min() == labels.max():
            continue
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_macro_is_the_unweighted_mean_over_types():
    from dstray.seg.metrics import macro

    big = SegCounts(tp=900, fp=100, fn=100)  # F1 0.9
    small = SegCounts(tp=0, fp=0, fn=10)  # F1 0: missed entirely
    assert macro({"uneven": big, "crack": small})["f1"] == pytest.approx(0.45)
    assert (big + small).f1 > 0.89  # the micro F1 hides the missed type
    assert np.isnan(macro({})["f1"])
