"""Does the model ever wait on data? Images per second of the classification data pipeline (decode +
albumentations, default workers, no model) against images per second of the model's training step
(forward + backward + AdamW on ready tensors), measured in one run. A ratio data/model above 1 means the
loader keeps up.

    python bench/data_vs_model.py [--image-size 224] [--batch-size 32] [--backbone tf_efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cvsuite.config import from_dict
from cvsuite.data.common import default_workers
from cvsuite.demo_data import write_raccoon_crops
from cvsuite.tasks.classification import SPEC

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--batches", type=int, default=6)
    args = p.parse_args()
    # Full-size photo crops (not pre-shrunk), so decoding and resizing cost what they cost on user data.
    root = write_raccoon_crops(args.raccoon, Path(tempfile.mkdtemp()) / "data", size=320)
    cfg = from_dict(
        {
            "task": "classification",
            "data": {"root": str(root), "image_size": args.image_size, "batch_size": args.batch_size},
            "model": {"backbone": args.backbone},
        }
    )
    dm = SPEC.build_datamodule(cfg, None)
    dm.setup("fit")
    module = SPEC.build_module(cfg, dm)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # start the workers
    start, n = time.perf_counter(), 0
    for _ in range(args.batches):
        try:
            n += len(next(it)["image"])
        except StopIteration:
            it = iter(loader)
    data_ips = n / (time.perf_counter() - start)
    del it, loader  # stop the workers: they must not compete with the model measurement
    dm.train_set = None

    module.train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 2, (args.batch_size,))
    module.criterion(module(x), y).backward()  # warm-up
    start = time.perf_counter()
    for _ in range(args.batches):
        opt.zero_grad()
        module.criterion(module(x), y).backward()
        opt.step()
    model_ips = args.batches * args.batch_size / (time.perf_counter() - start)
    print(
        f"workers {default_workers(cfg.data.num_workers)}, {args.image_size}px, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"data pipeline: {data_ips:.1f} img/s   model train step: {model_ips:.1f} img/s   "
        f"ratio data/model = {data_ips / model_ips:.2f}"
    )


if __name__ == "__main__":
    main()
