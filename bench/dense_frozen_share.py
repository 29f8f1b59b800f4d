"""Would cached backbone features pay for the dense heads? What share of a frozen training step the backbone's
forward pass is, for the segmentation and detection recipes on real data (../shared/data), and what caching it
could save of a whole recipe run at most.

While the backbone is frozen, classification trains its head on pooled features computed once
(`finetune.cache_features`, see BENCHMARKS.md). For a dense head the cache would hold every feature level of every
crop, and the only saving is the backbone's forward pass in the frozen steps (no backward runs through a frozen
backbone). This measures that pass inside real frozen steps (forward hooks on the backbone, the Trainer and the
recipe's own loaders), next to the whole step, in one process:

    python bench/dense_frozen_share.py [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from probe import _probe_trainer, _StepTimer, measure
from recipes import build_data
from train_tool import REPO

from cvsuite.config import load_config
from cvsuite.tasks import get_spec

SHARED = REPO.parent / "shared" / "data"
RECIPES = {"segmentation": "configs/segmentation/finetune.yaml", "detection": "configs/detection/finetune.yaml"}


class StepAndBackbone(_StepTimer):
    """The planner's per-step timer, plus the backbone's forward time inside each timed step."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone: list[float] = []
        self._in_backbone = self._tb = 0.0
        backbone.register_forward_pre_hook(self._pre)
        backbone.register_forward_hook(self._post)

    def _pre(self, *_) -> None:
        self._tb = time.perf_counter()

    def _post(self, *_) -> None:
        self._in_backbone += time.perf_counter() - self._tb

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._in_backbone = 0.0
        super().on_train_batch_start(trainer, module, batch, batch_idx)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if batch_idx > 0:
            self.backbone.append(self._in_backbone)


def frozen_share(recipe: str, root: Path, steps: int) -> dict[str, float]:
    cfg = load_config(str(REPO / recipe), ["--data.root", str(root)])
    spec = get_spec(cfg.task)
    dm = spec.build_datamodule(cfg, None)
    dm.setup("fit")
    module = spec.build_module(cfg, dm)
    step_s, frozen_s, _, batches = measure(module, dm, cfg.trainer)  # on copies of `module`
    module.finetune_cfg = {**module.finetune_cfg, "freeze_backbone": True, "freeze_epochs": 0}
    timer = StepAndBackbone(module.backbone)
    trainer = _probe_trainer(cfg.trainer, max_steps=steps + 1, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    share = statistics.median(b / s for b, s in zip(timer.backbone, timer.times))
    epochs, freeze = int(cfg.trainer["max_epochs"]), cfg.finetune.freeze_epochs
    frozen_part = freeze * frozen_s / (freeze * frozen_s + (epochs - freeze) * step_s)
    return {
        "step_s": step_s,
        "frozen_step_s": frozen_s,
        "backbone_share": share,
        "frozen_part": frozen_part,
        "run_saving": share * frozen_part,
        "epochs": epochs,
        "freeze": freeze,
        "batches": batches,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cvsuite-dense-share-"))
    print(
        "| task | s/step (trained) | s/step (frozen) | backbone forward / frozen step | frozen share of recipe "
        "| caching saves at most |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for task, recipe in RECIPES.items():
        r = frozen_share(recipe, build_data(task, work, SHARED / "raccoon", SHARED / "membrane"), args.steps)
        print(
            f"| {task} ({recipe}, {r['freeze']} of {r['epochs']} epochs frozen) | {r['step_s']:.3f} | "
            f"{r['frozen_step_s']:.3f} | {r['backbone_share']:.0%} | {r['frozen_part']:.1%} | {r['run_saving']:.1%} |"
        )


if __name__ == "__main__":
    main()
