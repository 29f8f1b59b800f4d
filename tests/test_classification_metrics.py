"""Classification metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from cvsuite.metrics.classification import ClassificationMetrics
from tests.conftest import gather_like_ddp


def test_multiclass_hand_computed():
    # argmax predictions [0, 1, 1, 1, 2, 0] against truth [0, 0, 1, 1, 2, 2]
    probs = torch.tensor(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
    )
    m = ClassificationMetrics(["a", "b", "c"])
    m.update(probs[:4], torch.tensor([0, 0, 1, 1]))
    m.update(probs[4:], torch.tensor([2, 2]))
    out = m.compute()
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert out["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert out["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert out["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "average_precision": 1.0, "support": 2}
    )
    assert set(out) >= {"accuracy", "precision", "recall", "f1", "auroc", "average_precision", "per_class"}


def test_ranking_metrics_hand_computed():
    # class-1 scores 0.9, 0.8, 0.7, 0.6 for truth 1, 0, 1, 0:
    # AUROC = 3 of 4 positive/negative pairs ordered right = 0.75; AP = 0.5 * 1 + 0.5 * 2/3.
    p1 = torch.tensor([0.9, 0.8, 0.7, 0.6])
    m = ClassificationMetrics(["neg", "pos"])
    m.update(torch.stack([1 - p1, p1], 1), torch.tensor([1, 0, 1, 0]))
    out = m.compute()
    assert out["auroc"] == pytest.approx(0.75)
    assert out["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out["per_class"]["pos"]["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_class_absent_from_split_is_null_not_zero():
    m = ClassificationMetrics(["a", "b", "c"])
    m.update(torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), torch.tensor([0, 1]))
    out = m.compute()
    assert out["per_class"]["c"]["average_precision"] is None
    assert out["auroc"] == pytest.approx(1.0)


def test_multilabel():
    m = ClassificationMetrics(["x", "y"], multilabel=True)
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6], [0.3, 0.4]])
    target = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 1]])
    m.update(probs, target)
    out = m.compute()
    # threshold 0.5: x all right (4/4); y right on rows 0, 1, 2, wrong on row 3 -> per-label accuracy 1 and 0.75
    assert out["accuracy"] == pytest.approx((1.0 + 0.75) / 2)
    assert out["per_class"]["y"]["recall"] == pytest.approx(2 / 3)
    assert torch.tensor(out["confusion_matrix"]).shape == (2, 2, 2)


def test_absent_classes_are_null_and_left_out_of_macro_means():
    # 4 classes, the split holds only a and b: b is recalled 1 of 2 times, a 2 of 2.
    # recall a = 1, b = 0.5 -> macro 0.75 over the present classes (0.375 if c, d counted as 0).
    probs = torch.tensor([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0], [0.1, 0.9, 0, 0], [0.6, 0.4, 0, 0]])
    m = ClassificationMetrics(["a", "b", "c", "d"])
    m.update(probs, torch.tensor([0, 0, 1, 1]))
    out = m.compute()
    assert out["recall"] == pytest.approx(0.75)
    # f1 a = 2 * (2/3 * 1) / (2/3 + 1) = 0.8; f1 b = 2 * (1 * 0.5) / 1.5 = 2/3
    assert out["f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert out["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["auroc"] == pytest.approx(1.0)  # scores rank every pair of a and b right
    for name in ("c", "d"):
        assert out["per_class"][name] == {
            "precision": None,
            "recall": None,
            "f1": None,
            "average_precision": None,
            "support": 0,
        }
    import json

    json.dumps(out)  # nulls, not NaN, in the JSON


def test_padded_duplicates_are_counted_once_and_order_does_not_matter():
    """Two 'ranks' of a 5-sample split padded to 6 (DistributedSampler repeats sample 0): merged states give the
    numbers of one process."""
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    target = torch.tensor([0, 1, 1, 1, 0])
    single = ClassificationMetrics(["a", "b"])
    single.update(probs, target, torch.arange(5))
    expected = single.compute()
    rank0, rank1 = ClassificationMetrics(["a", "b"]), ClassificationMetrics(["a", "b"])
    rank0.update(probs[[0, 2, 4]], target[[0, 2, 4]], torch.tensor([0, 2, 4]))
    rank1.update(probs[[1, 3, 0]], target[[1, 3, 0]], torch.tensor([1, 3, 0]))  # the pad: sample 0 again
    gather_like_ddp(rank0, rank1)
    got = rank0.compute()
    assert got["num_samples"] == 5
    assert got == expected
    # Without indices the duplicate would count: the guard is the index, not luck.
    naive = ClassificationMetrics(["a", "b"])
    naive.update(torch.cat([probs, probs[:1]]), torch.cat([target, target[:1]]))
    assert naive.compute()["num_samples"] == 6
