"""Mixed precision on a GPU, every task: fp32, 16-mixed, bf16-mixed and bf16-mixed + channels_last.

For each task, a few hundred training steps of the default backbone (tf_efficientnet_lite0, offline weights) on
generated images through the same Lightning Trainer as tools/train.py; prints images/s (after a warm-up),
peak GPU memory, whether every step's loss was finite, and the speed-up over fp32, as a Markdown table for
BENCHMARKS.md. Prepared for a lent device (15 minutes in all): the defaults take a few minutes on one GPU.

    python bench/gpu_check.py [--steps 200] [--tasks classification detection segmentation generation]
    python bench/gpu_check.py --cpu --steps 4   # smoke test of this script on a CPU (fp32/bf16 only)

Without CUDA (and without --cpu) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TASKS = ("classification", "detection", "segmentation", "generation")
MODES = {  # name -> (precision, channels_last)
    "fp32": ("32-true", False),
    "16-mixed": ("16-mixed", False),
    "bf16-mixed": ("bf16-mixed", False),
    "bf16+channels_last": ("bf16-mixed", True),
}
# image side, batch size per task (GPU; --cpu shrinks them)
SIZES = {"classification": (224, 64), "detection": (512, 16), "segmentation": (256, 16), "generation": (64, 32)}


def write_data(task: str, root: Path, side: int, n: int = 64) -> Path:
    """Generated shapes on noise in the layout the task reads (boxes and masks exact)."""
    from cvsuite.data.formats import write_split
    from cvsuite.testing import make_shapes

    records, names = make_shapes(root / "raw", n=n, size=(side, side), seed=0)
    if task == "detection":
        write_split(records[: n - 8], names, root / "data" / "train", "voc")
        write_split(records[n - 8 :], names, root / "data" / "val", "coco")
        return root / "data"
    for i, r in enumerate(records):
        split = "val" if i >= n - 8 else "train"
        image = np.asarray(Image.open(r.path).convert("RGB"))
        if task == "classification":
            label = names[i % len(names)]  # a throughput check: the label need not match the picture
            out = root / "data" / split / label / f"{i}.png"
        elif task == "segmentation":
            mask = np.zeros(image.shape[:2], np.uint8)
            for (x1, y1, x2, y2), k in zip(np.asarray(r.boxes).reshape(-1, 4).astype(int), r.labels):
                mask[y1:y2, x1:x2] = int(k) + 1
            (root / "data" / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "data" / split / "masks" / f"{i}.png")
            out = root / "data" / split / "images" / f"{i}.png"
        else:
            out = root / "data" / f"{i}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out)
    return root / "data"


def recipe(task: str, data: Path, side: int, batch: int, precision: str, channels_last: bool, cpu: bool) -> dict:
    data_cfg = {"root": str(data), "batch_size": batch}
    if task == "segmentation":
        data_cfg.update(crop_size=side, num_classes=4)
    elif task == "generation":
        data_cfg.update(image_size=side, images_per_epoch=batch * 50)
    else:
        data_cfg["image_size"] = side
    if cpu:
        data_cfg["num_workers"] = 0
    model = {"channels_last": channels_last}
    if task == "generation":
        model.update(feature_input_size=side)
    return {
        "task": task,
        "data": data_cfg,
        "model": model,
        "optim": {"lr": 1e-4, "scheduler": "none", **({"betas": [0.0, 0.99]} if task == "generation" else {})},
        "trainer": {"accelerator": "cpu" if cpu else "gpu", "devices": 1, "precision": precision},
    }


class Meter:
    """Times the steps after `warmup`, records peak memory and whether every logged step loss was finite."""

    def __init__(self, warmup: int, batch: int) -> None:
        import lightning as L

        meter = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer, module, batch_, idx):
                if trainer.global_step == warmup:
                    _sync()
                    meter.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch_, idx):
                for key, value in trainer.callback_metrics.items():
                    if key.endswith("loss_step") and not math.isfinite(float(value)):
                        meter.finite = False

        self.callback = _Callback()
        self.warmup, self.batch, self.t0, self.finite = warmup, batch, None, True


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(task: str, data: Path, mode: str, steps: int, cpu: bool) -> dict:
    import lightning as L

    from cvsuite.config import from_dict
    from cvsuite.distributed import check_trainer
    from cvsuite.tasks import get_spec

    side, batch = SIZES[task] if not cpu else (64, 4)
    precision, channels_last = MODES[mode]
    cfg = from_dict(recipe(task, data, side, batch, precision, channels_last, cpu))
    check_trainer(cfg)
    L.seed_everything(0, verbose=False)
    spec = get_spec(task)
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    warmup = min(20, steps // 4)
    meter = Meter(warmup, batch)
    trainer = L.Trainer(
        accelerator=cfg.trainer["accelerator"],
        devices=1,
        precision=precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[meter.callback],
    )
    if torch.cuda.is_available() and not cpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    _sync()
    seconds = time.perf_counter() - meter.t0
    done = trainer.global_step - warmup
    peak = torch.cuda.max_memory_allocated() / 2**30 if (torch.cuda.is_available() and not cpu) else float("nan")
    return {"img_s": done * batch / seconds, "peak_gib": peak, "finite": meter.finite, "steps": trainer.global_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--cpu", action="store_true", help="smoke-test on the CPU (16-mixed is skipped)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to measure (run it where a GPU is lent)")
        return 0
    device = "CPU" if args.cpu else torch.cuda.get_device_name(0)
    modes = [m for m in args.modes if not (args.cpu and m == "16-mixed")]
    print(f"device: {device}, torch {torch.__version__}, {args.steps} steps per run", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            side = SIZES[task][0] if not args.cpu else 64
            data = write_data(task, Path(tmp) / task, side, n=64 if not args.cpu else 16)
            base = None
            for mode in modes:
                r = measure(task, data, mode, args.steps, args.cpu)
                base = r["img_s"] if mode == "fp32" else base
                r["speedup"] = r["img_s"] / base if base else float("nan")
                rows.append((task, mode, r))
                print(f"  {task:14s} {mode:20s} {r['img_s']:8.1f} img/s  finite={r['finite']}", flush=True)
    print(f"\n| task | mode | img/s | speed-up vs fp32 | peak GiB | losses finite |  ({device})")
    print("|---|---|---:|---:|---:|---|")
    for task, mode, r in rows:
        print(
            f"| {task} | {mode} | {r['img_s']:.1f} | {r['speedup']:.2f}x | {r['peak_gib']:.2f} | "
            f"{'yes' if r['finite'] else 'NO'} |"
        )
    return 0 if all(r["finite"] for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
