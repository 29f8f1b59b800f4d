"""COCO metrics: hand-computed values on made-up cases, equality with pycocotools used directly, and the same
numbers from faster-coco-eval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from cvsuite.metrics.detection import STAT_KEYS, DetectionEvaluator, run_coco_eval
from tests.conftest import gather_like_ddp

NAMES = ["cat", "dog"]
SIZE = (200, 300)  # (height, width) of every made-up image


def _gt(boxes, labels, ignore=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float).reshape(-1, 4), "labels": torch.tensor(labels)}
    if ignore is not None:
        out["ignore"] = torch.tensor(ignore)
    return out


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float),
        "labels": torch.tensor(labels),
    }


def _evaluate(preds, gts, backend="pycocotools") -> dict:
    ev = DetectionEvaluator(NAMES, backend)
    ev.update(preds, gts, sizes=[SIZE] * len(gts))
    return ev.compute()


def _pycocotools_directly(preds, gts) -> np.ndarray:
    """The reference: pycocotools' own loadRes / COCOeval path, written the way its README does it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts), start=1):
        images.append({"id": i, "height": SIZE[0], "width": SIZE[1]})
        ignore = g.get("ignore", torch.zeros(len(g["labels"]), dtype=torch.bool))
        for (x1, y1, x2, y2), k, ign in zip(g["boxes"].tolist(), g["labels"].tolist(), ignore.tolist()):
            w, h = x2 - x1, y2 - y1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": k + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(ign),
                }
            )
        for (x1, y1, x2, y2), s, k in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            dets.append({"image_id": i, "category_id": k + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


BOX_A = [20, 30, 100, 110]  # 80 x 80 = 6400 px: COCO "medium" (32^2 to 96^2)
BOX_B = [150, 40, 250, 190]  # 100 x 150: "large"
# Shifted right by 12: IoU = 68 * 80 / (92 * 80) = 0.739 -> a match at IoU 0.50..0.70, a miss from 0.75 up.
SHIFTED_A = [32, 30, 112, 110]

CASES = {
    # name: (preds, gts, expected map, expected map_50)
    "perfect": ([_pred([BOX_A, BOX_B], [0.9, 0.8], [0, 1])], [_gt([BOX_A, BOX_B], [0, 1])], 1.0, 1.0),
    # Five of ten IoU thresholds (0.50-0.70) match.
    "shifted": ([_pred([SHIFTED_A], [0.9], [0])], [_gt([BOX_A], [0])], 0.5, 1.0),
    # One of two cats found: recall stops at 0.5, so 51 of COCO's 101 recall points have precision 1.
    "missed": ([_pred([BOX_A], [0.9], [0])], [_gt([BOX_A, BOX_B], [0, 0])], 51 / 101, 51 / 101),
    # A false positive ranked above the true one: precision 0.5 at every recall point.
    "false positive first": ([_pred([BOX_B, BOX_A], [0.9, 0.8], [0, 0])], [_gt([BOX_A], [0])], 0.5, 0.5),
    # Ranked below it, it costs nothing: the interpolated precision at recall 1 is still 1.
    "false positive last": ([_pred([BOX_A, BOX_B], [0.9, 0.8], [0, 0])], [_gt([BOX_A], [0])], 1.0, 1.0),
    # Right box, wrong class: the cat is missed (AP 0) and the dog class has no ground truth (left out).
    "wrong class": ([_pred([BOX_A], [0.9], [1])], [_gt([BOX_A], [0])], 0.0, 0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_made_cases(case):
    preds, gts, expected_map, expected_map50 = CASES[case]
    m = _evaluate(preds, gts)
    assert m["map"] == pytest.approx(expected_map, abs=1e-6)
    assert m["map_50"] == pytest.approx(expected_map50, abs=1e-6)
    np.testing.assert_allclose([m[k] for k in STAT_KEYS], _pycocotools_directly(preds, gts), atol=1e-9)


def test_per_class_ap_and_size_ranges():
    # cat: perfect; dog: found at IoU 0.739 only -> AP 0.5; COCO's map is their mean.
    preds = [_pred([BOX_A], [0.9], [0]), _pred([SHIFTED_A], [0.7], [1])]
    gts = [_gt([BOX_A], [0]), _gt([BOX_A], [1])]
    m = _evaluate(preds, gts)
    assert m["ap_per_class"] == pytest.approx({"cat": 1.0, "dog": 0.5})
    assert m["ap50_per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert m["map"] == pytest.approx(0.75)
    assert m["map_medium"] == pytest.approx(0.75)
    assert m["map_small"] == -1.0 and m["map_large"] == -1.0  # no ground truth of those sizes
    assert m["num_images"] == 2 and m["num_detections"] == 2
    np.testing.assert_allclose([m[k] for k in STAT_KEYS], _pycocotools_directly(preds, gts), atol=1e-9)
    # A dog false positive ranked first halves the precision of the dog class: AP 0.5 -> 0.25.
    preds[0] = _pred([BOX_A, BOX_B], [0.9, 0.9], [0, 1])
    assert _evaluate(preds, gts)["ap_per_class"]["dog"] == pytest.approx(0.25)


def test_ignored_ground_truth_is_neither_found_nor_missed():
    # A 'difficult' dog that is not detected does not lower recall, and a detection on it is not a false positive.
    gts = [_gt([BOX_A, BOX_B], [0, 0], ignore=[False, True])]
    missed = _evaluate([_pred([BOX_A], [0.9], [0])], gts)
    hit = _evaluate([_pred([BOX_B, BOX_A], [0.95, 0.9], [0, 0])], gts)
    assert missed["map"] == pytest.approx(1.0) and hit["map"] == pytest.approx(1.0)
    counted = _evaluate([_pred([BOX_A], [0.9], [0])], [_gt([BOX_A, BOX_B], [0, 0])])
    assert counted["map"] == pytest.approx(51 / 101)


def test_no_detections_at_all():
    # pycocotools' loadRes cannot take an empty list; the evaluator must still report 0, not crash.
    m = _evaluate([_pred([], [], [])], [_gt([BOX_A], [0])])
    assert m["map"] == 0.0 and m["mar_100"] == 0.0 and m["num_detections"] == 0


def _random_case(seed: int, n_images: int = 30):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 150, (n, 2))
        wh = rng.uniform(5, 120, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, n)
        gts.append(_gt(boxes.tolist(), labels.tolist(), ignore=(rng.random(n) < 0.1).tolist()))
        keep = rng.random(n) < 0.8
        noisy = boxes[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        extra = rng.uniform(0, 250, (int(rng.integers(0, 4)), 2))
        fp = np.concatenate([extra, extra + rng.uniform(5, 60, extra.shape)], 1)
        all_boxes = np.concatenate([noisy, fp])
        preds.append(
            _pred(
                all_boxes.tolist(),
                rng.random(len(all_boxes)).tolist(),
                np.concatenate([labels[keep], rng.integers(0, 2, len(fp))]).tolist(),
            )
        )
    return preds, gts


def test_matches_pycocotools_on_random_detections():
    preds, gts = _random_case(0)
    m = _evaluate(preds, gts)
    assert 0.1 < m["map"] < 0.9  # a case with real partial matches, not a trivial one
    np.testing.assert_allclose([m[k] for k in STAT_KEYS], _pycocotools_directly(preds, gts), atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_gives_the_same_numbers(seed):
    preds, gts = _random_case(seed)
    slow, fast = _evaluate(preds, gts), _evaluate(preds, gts, backend="faster_coco_eval")
    assert fast["backend"] == "faster_coco_eval"
    for key in STAT_KEYS:
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key
    assert fast["ap_per_class"] == pytest.approx(slow["ap_per_class"], abs=1e-9)


def test_coco_results_keep_the_data_ids():
    ev = DetectionEvaluator(NAMES, category_ids=[7, 3])
    ev.update([_pred([BOX_A], [0.5], [1])], [_gt([BOX_A], [1])], image_ids=[42], sizes=[SIZE])
    assert ev.coco_results() == [{"image_id": 42, "category_id": 3, "bbox": [20.0, 30.0, 80.0, 80.0], "score": 0.5}]


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="model.eval_backend: unknown 'torchmetrics'"):
        DetectionEvaluator(NAMES, "torchmetrics")
    with pytest.raises(ValueError, match="Choose one of pycocotools, faster_coco_eval"):
        run_coco_eval({"images": [], "annotations": [], "categories": []}, [], "nope")


def test_states_gathered_from_two_processes_give_the_one_process_numbers():
    """A 3-image split on two 'ranks', padded to 4 (the sampler repeats image 0): merged states, scored once,
    equal one process; the padded copy is not counted."""
    gts = [_gt([[10, 10, 60, 60]], [0]), _gt([[20, 30, 120, 90], [150, 20, 200, 80]], [1, 0]), _gt([], [])]
    preds = [
        _pred([[12, 8, 58, 61]], [0.9], [0]),
        _pred([[20, 30, 110, 90], [0, 0, 30, 30]], [0.8, 0.7], [1, 0]),
        _pred([[5, 5, 40, 40]], [0.6], [1]),
    ]
    single = DetectionEvaluator(NAMES)
    single.update(preds, gts, image_ids=[7, 8, 9], sizes=[SIZE] * 3, indices=[0, 1, 2])
    expected = single.compute()
    rank0, rank1 = DetectionEvaluator(NAMES), DetectionEvaluator(NAMES)
    rank0.update([preds[0], preds[2]], [gts[0], gts[2]], image_ids=[7, 9], sizes=[SIZE] * 2, indices=[0, 2])
    rank1.update([preds[1], preds[0]], [gts[1], gts[0]], image_ids=[8, 7], sizes=[SIZE] * 2, indices=[1, 0])
    gather_like_ddp(rank0, rank1)
    got = rank0.compute()
    assert got["num_images"] == 3 and got["num_detections"] == 4
    assert got == expected
    assert [d["image_id"] for d in rank0.coco_results()] == [7, 8, 8, 9]
