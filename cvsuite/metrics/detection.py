"""COCO box metrics, one code path for validation and tools/eval.py.

The numbers come from pycocotools' ``COCOeval`` (or, with ``backend="faster_coco_eval"``, from the C++
re-implementation in faster-coco-eval, which gives the same numbers faster); nothing here re-implements matching.
Boxes are xyxy pixels in the original image; ``ignore`` ground truth (VOC ``difficult``, COCO ``iscrowd``) is
passed to COCO as ``iscrowd=1``: a detection on it is neither a true nor a false positive.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cvsuite.config import ConfigError

BACKENDS = ("pycocotools", "faster_coco_eval")
# COCOeval.stats order for iouType="bbox".
STAT_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def _as_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _backend(name: str):
    """(COCO class, COCOeval class) of a backend; the import is lazy so the faster one stays optional."""
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if name == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as err:
            raise ConfigError(
                "model.eval_backend: faster_coco_eval is not installed; pip install faster-coco-eval "
                "(or cvsuite[extras]), or use pycocotools"
            ) from err
        return COCO, COCOeval_faster
    raise ConfigError(f"model.eval_backend: unknown '{name}'. Choose one of {', '.join(BACKENDS)}")


def _coco_object(cls, dataset: dict[str, Any]):
    """A COCO api object from an in-memory dict (both backends accept this; loadRes fails on an empty list)."""
    obj = cls()
    obj.dataset = dataset
    obj.createIndex()
    return obj


def run_coco_eval(
    gt: dict[str, Any], detections: list[dict[str, Any]], backend: str = "pycocotools"
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval (bbox) of COCO-format ground truth against COCO results.

    Args:
        gt: ``{"images": [...], "annotations": [...], "categories": [...]}``; annotations need ``area`` and
            ``iscrowd``.
        detections: COCO results ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    Returns:
        (stats (12,) as in ``COCOeval.stats``, precision (T=10, R=101, K, A=4, M=3) as in ``COCOeval.eval``).
    """
    coco_cls, eval_cls = _backend(backend)
    results = []
    for i, det in enumerate(detections):
        x, y, w, h = (float(v) for v in det["bbox"])
        results.append({**det, "bbox": [x, y, w, h], "area": w * h, "id": i + 1, "iscrowd": 0})
    # pycocotools prints progress; eval.py's last stdout line must stay the JSON object.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_object(coco_cls, gt)
        coco_dt = _coco_object(
            coco_cls, {"images": gt["images"], "categories": gt["categories"], "annotations": results}
        )
        evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=float), np.asarray(evaluator.eval["precision"])


def _mean_valid(x: np.ndarray) -> float:
    """COCO's convention: -1 marks 'no ground truth here'; the mean of nothing is -1."""
    x = x[x > -1]
    return float(x.mean()) if x.size else -1.0


class DetectionEvaluator:
    """Accumulates per-image predictions and ground truth; `compute` gives the JSON metric dict.

    Keys: map, map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100, mar_small, mar_medium,
    mar_large (COCO's own definitions; -1 where no ground truth falls in that size range), ap_per_class and
    ap50_per_class ``{name: AP}``, class_names, num_images, num_detections, backend.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        backend: str = "pycocotools",
        category_ids: Sequence[int] | None = None,
    ) -> None:
        """Args:
        category_ids: the COCO category id of each class index, used in `coco_results` (default 1..K).
        """
        _backend(backend)  # fail at construction, not after an epoch
        self.class_names = list(class_names)
        self.backend = backend
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.precision: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.gt: list[dict[str, np.ndarray]] = []
        self.preds: list[dict[str, np.ndarray]] = []

    def update(
        self,
        preds: Sequence[dict[str, Any]],
        targets: Sequence[dict[str, Any]],
        image_ids: Sequence[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            preds: per image ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` (N,) class indices.
            targets: per image ``boxes`` (M, 4) xyxy pixels, ``labels`` (M,), optional ``ignore`` (M,) bool and
                ``area`` (M,) (COCO segmentation areas; default: box areas).
            image_ids: ids for `coco_results` (default: running index).
            sizes: (height, width) per image (only stored in the COCO ``images`` entries).
        """
        for i, (pred, target) in enumerate(zip(preds, targets)):
            boxes = _as_numpy(target["boxes"]).reshape(-1, 4)
            ignore = target.get("ignore")
            ignore = np.zeros(len(boxes), bool) if ignore is None else _as_numpy(ignore, bool).reshape(-1)
            entry = {"boxes": boxes, "labels": _as_numpy(target["labels"], np.int64).reshape(-1), "ignore": ignore}
            if target.get("area") is not None:
                entry["area"] = _as_numpy(target["area"]).reshape(-1)
            self.gt.append(entry)
            self.preds.append(
                {
                    "boxes": _as_numpy(pred["boxes"]).reshape(-1, 4),
                    "scores": _as_numpy(pred["scores"]).reshape(-1),
                    "labels": _as_numpy(pred["labels"], np.int64).reshape(-1),
                }
            )
            image_id = int(image_ids[i]) if image_ids is not None else len(self.images) + 1
            h, w = sizes[i] if sizes is not None else (0, 0)
            self.images.append({"id": image_id, "height": int(h), "width": int(w)})

    # ---- COCO format ---------------------------------------------------------------------------------------
    def _internal_ids(self) -> list[int]:
        # Evaluation uses its own unique ids: user image ids may repeat across train/ and val/ files.
        return list(range(1, len(self.images) + 1))

    def coco_ground_truth(self) -> dict[str, Any]:
        images, annotations = [], []
        for iid, image, gt in zip(self._internal_ids(), self.images, self.gt):
            images.append({"id": iid, "height": image["height"], "width": image["width"]})
            boxes = _xywh(gt["boxes"])
            # The data's own object areas (COCO segmentation) when given, as the official COCO evaluation uses.
            areas = gt.get("area", boxes[:, 2] * boxes[:, 3])
            for box, label, ignore, area in zip(boxes, gt["labels"], gt["ignore"], areas):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": iid,
                        "category_id": int(label) + 1,
                        "bbox": box.tolist(),
                        "area": float(area),
                        "iscrowd": int(ignore),
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _results(self, image_ids: list[int], category_ids: list[int]) -> list[dict[str, Any]]:
        out = []
        for iid, pred in zip(image_ids, self.preds):
            for box, score, label in zip(_xywh(pred["boxes"]), pred["scores"], pred["labels"]):
                out.append(
                    {
                        "image_id": iid,
                        "category_id": category_ids[int(label)],
                        "bbox": [round(float(v), 3) for v in box],
                        "score": round(float(score), 5),
                    }
                )
        return out

    def coco_results(self) -> list[dict[str, Any]]:
        """The detections as a COCO results list, with the data's own image and category ids."""
        return self._results([im["id"] for im in self.images], self.category_ids)

    # ---- metrics -------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        if not self.images:
            return {}
        internal = list(range(1, len(self.class_names) + 1))
        stats, precision = run_coco_eval(
            self.coco_ground_truth(), self._results(self._internal_ids(), internal), self.backend
        )
        self.precision = precision
        out: dict[str, Any] = {k: float(v) for k, v in zip(STAT_KEYS, stats)}
        # precision[iou, recall, class, area=all, maxDets=100]
        out["ap_per_class"] = {n: _mean_valid(precision[:, :, k, 0, -1]) for k, n in enumerate(self.class_names)}
        out["ap50_per_class"] = {n: _mean_valid(precision[0, :, k, 0, -1]) for k, n in enumerate(self.class_names)}
        out["class_names"] = list(self.class_names)
        out["num_images"] = len(self.images)
        out["num_detections"] = int(sum(len(p["scores"]) for p in self.preds))
        out["backend"] = self.backend
        return out

    def pr_curves(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, precision (101,), recall (101,)) per class at IoU 0.5, all areas, 100 detections; classes
        without ground truth are left out."""
        if self.precision is None:
            return []
        recall = np.linspace(0, 1, 101)
        out = []
        for k, name in enumerate(self.class_names):
            p = self.precision[0, :, k, 0, -1]
            if (p > -1).any():
                out.append((name, np.clip(p, 0, None), recall))
        return out
