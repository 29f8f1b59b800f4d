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
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cvsuite.config import ConfigError
from cvsuite.metrics.classification import dedup_order

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


def _tensor(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=dtype).to(device)


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


class DetectionEvaluator(Metric):
    """Accumulates per-image predictions and ground truth; `compute` gives the JSON metric dict.

    Keys: map, map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100, mar_small, mar_medium,
    mar_large (COCO's own definitions; -1 where no ground truth falls in that size range), ap_per_class and
    ap50_per_class ``{name: AP}``, class_names, num_images, num_detections, backend.

    A torchmetrics `Metric`: under DDP every process's images are gathered (boxes, scores and labels as flat
    tensors plus per-image counts), images seen twice (a distributed sampler's padding; same dataset index, or the
    same image id when no index is given) are dropped, and COCOeval scores the whole split once, in dataset order.
    """

    full_state_update = False

    def __init__(
        self,
        class_names: Sequence[str],
        backend: str = "pycocotools",
        category_ids: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        """Args:
        category_ids: the COCO category id of each class index, used in `coco_results` (default 1..K).
        """
        super().__init__(**kwargs)
        _backend(backend)  # fail at construction, not after an epoch
        self.class_names = list(class_names)
        self.backend = backend
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.precision: np.ndarray | None = None
        # Per image: dataset index (-1 = unknown), image id, height, width, number of gt and predicted boxes.
        self.add_state("image_info", default=[], dist_reduce_fx="cat")
        for name in ("gt_boxes", "gt_labels", "gt_ignore", "gt_area", "pred_boxes", "pred_scores", "pred_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._records: tuple[list, list, list] | None = None

    def reset(self) -> None:
        super().reset()
        self._records = None

    def update(
        self,
        preds: Sequence[dict[str, Any]],
        targets: Sequence[dict[str, Any]],
        image_ids: Sequence[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        """Add a batch.

        Args:
            preds: per image ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` (N,) class indices.
            targets: per image ``boxes`` (M, 4) xyxy pixels, ``labels`` (M,), optional ``ignore`` (M,) bool and
                ``area`` (M,) (COCO segmentation areas; default: box areas).
            image_ids: ids for `coco_results` (default: running index).
            sizes: (height, width) per image (only stored in the COCO ``images`` entries).
            indices: dataset position of each image, to drop duplicates and keep dataset order across processes.
        """
        dev = self.device
        seen = sum(len(x) for x in self.image_info)
        for i, (pred, target) in enumerate(zip(preds, targets)):
            boxes = _tensor(target["boxes"], torch.float64, dev).reshape(-1, 4)
            ignore = target.get("ignore")
            ignore = torch.zeros(len(boxes)) if ignore is None else ignore
            pboxes = _tensor(pred["boxes"], torch.float64, dev).reshape(-1, 4)
            image_id = int(image_ids[i]) if image_ids is not None else seen + i + 1
            index = int(indices[i]) if indices is not None else -1
            h, w = sizes[i] if sizes is not None else (0, 0)
            info = [index, image_id, int(h), int(w), len(boxes), len(pboxes)]
            self.image_info.append(torch.tensor([info], dtype=torch.long, device=dev))
            self.gt_boxes.append(boxes)
            self.gt_labels.append(_tensor(target["labels"], torch.long, dev).reshape(-1))
            self.gt_ignore.append(_tensor(ignore, torch.long, dev).reshape(-1))
            # The data's own object areas (COCO segmentation) when given, as the official COCO evaluation uses.
            area = target.get("area")
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if area is None else area
            self.gt_area.append(_tensor(area, torch.float64, dev).reshape(-1))
            self.pred_boxes.append(pboxes)
            self.pred_scores.append(_tensor(pred["scores"], torch.float64, dev).reshape(-1))
            self.pred_labels.append(_tensor(pred["labels"], torch.long, dev).reshape(-1))

    def records(self) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """(images, ground truth, predictions) per unique image in dataset order: those of the last `compute`
        (all processes), else this process's own."""
        return self._records if self._records is not None else self._collect()

    def _collect(self) -> tuple[list, list, list]:
        def cat(x, shape=(-1,)):
            x = dim_zero_cat(x) if not (isinstance(x, list) and not x) else torch.zeros(0)
            return x.detach().cpu().numpy().reshape(*shape)

        info = cat(self.image_info, (-1, 6))
        gt_boxes, pred_boxes = cat(self.gt_boxes, (-1, 4)), cat(self.pred_boxes, (-1, 4))
        gt_labels, gt_ignore = cat(self.gt_labels).astype(np.int64), cat(self.gt_ignore).astype(bool)
        gt_area = cat(self.gt_area)
        pred_scores, pred_labels = cat(self.pred_scores), cat(self.pred_labels).astype(np.int64)
        gt_end, pred_end = np.cumsum(info[:, 4]), np.cumsum(info[:, 5])
        images, gts, preds = [], [], []
        for i in dedup_order(torch.from_numpy(info[:, 0].astype(np.int64))).tolist():
            g = slice(gt_end[i] - info[i, 4], gt_end[i])
            p = slice(pred_end[i] - info[i, 5], pred_end[i])
            images.append({"id": int(info[i, 1]), "height": int(info[i, 2]), "width": int(info[i, 3])})
            gts.append({"boxes": gt_boxes[g], "labels": gt_labels[g], "ignore": gt_ignore[g], "area": gt_area[g]})
            preds.append({"boxes": pred_boxes[p], "scores": pred_scores[p], "labels": pred_labels[p]})
        return images, gts, preds

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.records()[0]

    # ---- COCO format ---------------------------------------------------------------------------------------
    def coco_ground_truth(self) -> dict[str, Any]:
        images, annotations = [], []
        # Evaluation uses its own unique ids: user image ids may repeat across train/ and val/ files.
        records, gts, _ = self.records()
        for iid, image, gt in zip(range(1, len(records) + 1), records, gts):
            images.append({"id": iid, "height": image["height"], "width": image["width"]})
            boxes = _xywh(gt["boxes"])
            for box, label, ignore, area in zip(boxes, gt["labels"], gt["ignore"], gt["area"]):
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
        for iid, pred in zip(image_ids, self.records()[2]):
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
        self._records = None
        self._records = self._collect()
        if not self._records[0]:
            return {}
        internal = list(range(1, len(self.class_names) + 1))
        stats, precision = run_coco_eval(
            self.coco_ground_truth(), self._results(list(range(1, len(self.images) + 1)), internal), self.backend
        )
        self.precision = precision
        out: dict[str, Any] = {k: float(v) for k, v in zip(STAT_KEYS, stats)}
        # precision[iou, recall, class, area=all, maxDets=100]
        out["ap_per_class"] = {n: _mean_valid(precision[:, :, k, 0, -1]) for k, n in enumerate(self.class_names)}
        out["ap50_per_class"] = {n: _mean_valid(precision[0, :, k, 0, -1]) for k, n in enumerate(self.class_names)}
        out["class_names"] = list(self.class_names)
        out["num_images"] = len(self.images)
        out["num_detections"] = int(sum(len(p["scores"]) for p in self._records[2]))
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
