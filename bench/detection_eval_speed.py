"""COCO box evaluation time: pycocotools against faster-coco-eval on the same detections.

Both run through `cvsuite.metrics.detection.run_coco_eval` (the code validation and tools/eval.py use), on a
generated COCO-like set: `--images` images, `--classes` classes, 1-15 objects per image of every COCO size,
and `--dets` detections per image (jittered true boxes plus false positives, random scores). The 12 COCO
numbers of both backends are checked to be equal before any time is reported.

    python bench/detection_eval_speed.py [--images 500 2000] [--classes 20] [--dets 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from cvsuite.metrics.detection import BACKENDS, STAT_KEYS, run_coco_eval


def make_case(n_images: int, n_classes: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for iid in range(1, n_images + 1):
        images.append({"id": iid, "width": 640, "height": 480})
        n = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(8), np.log(400), (n, 2)))  # small, medium and large objects
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh)
        cats = rng.integers(1, n_classes + 1, n)
        for (x, y), (w, h), c in zip(xy, wh, cats):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": int(c),
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        k = min(n, dets_per_image)
        jitter = rng.normal(0, 0.1, (k, 4)) * np.concatenate([wh[:k], wh[:k]], 1)
        true = np.concatenate([xy[:k], wh[:k]], 1) + jitter
        m = dets_per_image - k
        fp_wh = np.exp(rng.uniform(np.log(8), np.log(300), (m, 2)))
        fp = np.concatenate([rng.uniform(0, 1, (m, 2)) * (np.array([640, 480]) - fp_wh), fp_wh], 1)
        boxes = np.concatenate([true, fp])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        labels = np.concatenate([cats[:k], rng.integers(1, n_classes + 1, m)])
        # True detections tend to score higher than false ones, as a trained detector's do.
        scores = np.concatenate([rng.uniform(0.3, 1.0, k), rng.uniform(0.0, 0.7, m)])
        for box, c, s in zip(boxes, labels, scores):
            dets.append({"image_id": iid, "category_id": int(c), "bbox": box.tolist(), "score": float(s)})
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_classes + 1)],
    }
    return gt, dets


def timed(gt: dict, dets: list[dict], backend: str, repeat: int) -> tuple[float, np.ndarray]:
    best, stats = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        stats, _ = run_coco_eval(gt, dets, backend)
        best = min(best, time.perf_counter() - start)
    return best, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend; the fastest is reported")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| images | GT boxes | detections | pycocotools (s) | faster-coco-eval (s) | speed-up | mAP (both) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.images:
        gt, dets = make_case(n, args.classes, args.dets)
        times, stats = {}, {}
        for backend in BACKENDS:
            times[backend], stats[backend] = timed(gt, dets, backend, args.repeat)
        a, b = stats["pycocotools"], stats["faster_coco_eval"]
        if not np.allclose(a, b, atol=1e-9):
            diff = {k: (x, y) for k, x, y in zip(STAT_KEYS, a, b) if abs(x - y) > 1e-9}
            raise SystemExit(f"backends disagree on {n} images: {diff}")
        slow, fast = times["pycocotools"], times["faster_coco_eval"]
        print(
            f"| {n} | {len(gt['annotations'])} | {len(dets)} | {slow:.2f} | {fast:.2f} | {slow / fast:.1f}x "
            f"| {a[0]:.4f} |"
        )


if __name__ == "__main__":
    main()
