"""The base classes of the tasks.

`TaskModule`: what every task needs on GPUs and under DDP — the speed options (channels_last, torch.compile of the
backbone), the DDP wrapper kept in step with the trainable set, a random stream per process and the dataset
positions of validation samples for de-duplicated metrics. The GAN builds on it directly: its trunk stays frozen.

`BaseTask`: a `TaskModule` that fine-tunes a pretrained backbone — optimiser and schedule, and the transfer-learning
controls (freeze, unfreeze, backbone lr, layer decay, BatchNorm kept in eval while frozen, L1 on the head).
Tasks hold the model parts as attributes; whatever lives under ``self.backbone`` is the pretrained trunk,
everything else is new.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvsuite.config import ConfigError
from cvsuite.optim import build_optimizer, param_groups, progress_scheduler
from cvsuite.schedule import cached_epochs, shares


class TaskModule(L.LightningModule):
    backbone: nn.Module

    # DDP must look for parameters without gradients in every backward (the GAN: two optimisers, each step trains
    # one network). Other tasks keep it off; the freeze schedule re-wraps instead (see `_sync_ddp`).
    ddp_find_unused_parameters = False

    def __init__(self, optim: dict[str, Any], channels_last: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.optim_cfg = dict(optim)
        self.channels_last = channels_last
        self.compile_backbone = compile
        # The full metric dict (per-class values, matrices) of the last validation epoch; eval.py reads it.
        self.last_metrics: dict[str, Any] = {}
        self._ddp_trainable: tuple[bool, ...] | None = None

    # ---- speed options -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """model.channels_last: NHWC weights (and inputs, see `to_memory_format`), faster convolutions with
        tensor cores under 16-mixed/bf16-mixed. model.compile: torch.compile of the backbone in place
        (``nn.Module.compile``), so parameter names and checkpoints stay those of the eager model."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_backbone and stage == "fit" and len(list(self.backbone.parameters())):
            self.backbone.compile()

    # model.tta (classification, segmentation): eval and predict average the image and its horizontal mirror.
    tta = False

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """The forward of validation, eval and predict: with ``model.tta``, the mean of the outputs for the images
        and for their horizontal mirrors (dense outputs mirrored back first); training never uses it."""
        if not self.tta or self.training:
            return self(images)
        return mirror_mean(self, images)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HWC uint8 RGB -> (3, h, w) normalised float: the checkpoint's eval preprocessing, the one every path
        (validation, eval, predict, the API, the export check) applies."""
        key = id(getattr(self, "data_contract", None))  # rebuilt when load_run attaches the checkpoint's contract
        if getattr(self, "_preprocess", (None, None))[0] != key:
            self._preprocess = (key, self.eval_pipeline())
        return self._call_pipeline(self._preprocess[1], image)

    def _call_pipeline(self, pipeline: Any, image: np.ndarray) -> torch.Tensor:
        return pipeline(image=image)["image"]

    def to_memory_format(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and isinstance(images, torch.Tensor) and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _sync_ddp(self) -> None:
        """Re-wrap the model in DDP when the set of trainable parameters changed (the freeze phase starting or
        ending).

        DDP registers the parameters that require grad when it wraps the model, and Lightning wraps before
        ``on_fit_start``; a frozen backbone would then never send gradients and DDP fails at the next step
        ("... parameters that were not used in producing the loss"). Re-wrapping through the strategy's own
        ``configure_ddp`` (same kwargs, comm hooks) registers exactly the trainable set, so
        ``find_unused_parameters`` stays off. Every process runs this at the same epoch boundary; the new wrapper
        broadcasts rank 0's weights, which all ranks already share."""
        if self._trainer is None:
            return
        strategy = self.trainer.strategy
        if not isinstance(getattr(strategy, "model", None), DistributedDataParallel):
            return
        trainable = tuple(p.requires_grad for p in self.parameters())
        wanted = bool(self.ddp_find_unused_parameters)
        if trainable == self._ddp_trainable and strategy._ddp_kwargs.get("find_unused_parameters", False) == wanted:
            return
        if wanted:
            strategy._ddp_kwargs["find_unused_parameters"] = True
        strategy.model = self
        strategy.configure_ddp()
        self._ddp_trainable = trainable

    # ---- validation samples ------------------------------------------------------------------------------
    def sample_indices(self, batch: dict[str, Any], batch_idx: int, n: int) -> torch.Tensor:
        """Dataset positions of the `n` samples of a validation batch, for metrics that must count each sample
        once across processes.

        The batch's own ``index`` when the dataset provides one; else derived from the sampler Lightning uses for
        a validation loader without shuffling (one process: sequential; DDP: ``DistributedSampler``, rank r takes
        positions r, r + W, ... of the split padded to a multiple of W, so a position past the end is a padded copy
        of ``position - len``)."""
        if "index" in batch:
            return torch.as_tensor(batch["index"]).long().reshape(-1).cpu()
        positions, size = self._positions(batch_idx, n)
        return positions if size is None else positions % size

    def padded_samples(self, batch: dict[str, Any], batch_idx: int, n: int) -> torch.Tensor:
        """(n,) bool: the samples of a validation batch that are a distributed sampler's padded copies (metrics
        that sum, like a confusion matrix, skip them; so does the validation loss)."""
        sampler = self._val_sampler()
        if getattr(sampler, "copies", False):  # `EvalSampler`: a rank left without samples scores a copy
            return torch.ones(n, dtype=torch.bool)
        if "index" in batch:
            return torch.zeros(n, dtype=torch.bool)
        positions, size = self._positions(batch_idx, n)
        return positions >= size if size is not None else torch.zeros(n, dtype=torch.bool)

    def _val_loader(self):
        loaders = self.trainer.val_dataloaders if self._trainer is not None else None
        return loaders[0] if isinstance(loaders, (list, tuple)) else loaders

    def _val_sampler(self):
        return getattr(self._val_loader(), "sampler", None)

    def _positions(self, batch_idx: int, n: int) -> tuple[torch.Tensor, int | None]:
        loader = self._val_loader()
        size = getattr(loader, "batch_size", None)
        if loader is None or size is None:
            return torch.full((n,), -1, dtype=torch.long), None
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return (batch_idx * size + torch.arange(n)) * world + rank, len(loader.dataset)

    def seed_per_rank(self, epoch: int) -> None:
        """Under DDP, each process its own random stream (dropout, mixup, GAN noise, DiffAugment), as timm's train
        script seeds seed + rank; the weights stay identical (DDP broadcasts rank 0's). Derived from (run seed,
        rank, epoch) at every epoch start, so a resumed run continues every rank's stream as the uninterrupted run
        did (a checkpoint holds rank 0's generators only)."""
        if self.trainer.world_size <= 1:
            return
        run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        seed = (run_seed * 1_000_003 + self.trainer.global_rank * 7_919 + epoch) % 2**32
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def on_fit_start(self) -> None:
        self._sync_ddp()

    def on_train_epoch_start(self) -> None:
        self.seed_per_rank(self.current_epoch)


def mirror_mean(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the mean of `forward` on the images and on their horizontal mirrors (dense
    (N, C, H, W) outputs mirrored back first). Eval, predict, the API and exported files all use this."""
    out = forward(images)
    mirrored = forward(images.flip(-1))
    return (out + (mirrored.flip(-1) if mirrored.ndim == 4 else mirrored)) / 2


class Inference(nn.Module):
    """What an exported file computes: `net` on normalised images, mirrored-mean with ``tta`` (`mirror_mean`, as
    `TaskModule.infer`), then `post` (softmax, sigmoid, target units...)."""

    def __init__(self, net: nn.Module, tta: bool = False, post: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.net, self.tta, self.post = net, bool(tta), post

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = mirror_mean(self.net, images) if self.tta else self.net(images)
        return self.post(out) if self.post is not None else out


class BaseTask(TaskModule):
    # Whether the head can train on pooled backbone features computed once (finetune.cache_features).
    caches_features = False

    def __init__(
        self, optim: dict[str, Any], finetune: dict[str, Any], channels_last: bool = False, compile: bool = False
    ) -> None:
        super().__init__(optim, channels_last, compile)
        self.finetune_cfg = dict(finetune)
        if self.finetune_cfg.get("cache_features"):
            if not self.caches_features:
                # Measured (bench/dense_frozen_share.py): for dense heads the frozen backbone's forward pass is a
                # third to 60 % of a frozen step, at most 2-6 % of a recipe run, and a cache of every feature
                # level would drop the crop/scale augmentation those heads learn from.
                raise ConfigError(
                    "finetune.cache_features: only classification trains its head on cached features; for "
                    "detection and segmentation it would save at most a few percent of a run (BENCHMARKS.md, "
                    "'cached features for the dense heads'), so drop the key"
                )
            ft = self.finetune_cfg
            if not (ft.get("freeze_epochs") or ft.get("freeze_share") or ft.get("freeze_backbone")):
                raise ConfigError(
                    "finetune.cache_features applies to frozen epochs, and this recipe has none: set "
                    "finetune.freeze_share (or freeze_epochs, freeze_backbone), or drop cache_features"
                )

    # ---- transfer learning -------------------------------------------------------------------------------
    # Under run.budget the clock (`cvsuite.budget.BudgetClock`) attaches itself here: progress is then its share of
    # the training time, not the optimiser step over the total.
    clock = None
    _frozen_now: bool | None = None
    _recipe_epochs: int | None = None
    _total_steps: int | None = None

    def schedule_epochs(self) -> int:
        """The epochs the recipe's epoch keys count in: ``trainer.max_epochs`` of the recipe (a budget run's Trainer
        counts epochs by the clock)."""
        if self.clock is not None:
            return self.clock.recipe_epochs
        if self._recipe_epochs is None and self._trainer is not None:
            self._recipe_epochs = max(1, int(self.trainer.max_epochs or 1))
        return self._recipe_epochs or 1

    def schedule_progress(self) -> float:
        """The share of the schedule done: the clock's share of the training time under run.budget, else the
        optimiser step over the total steps (exact across a resume: both are restored from the checkpoint)."""
        if self.clock is not None:
            return self.clock.progress
        if self._total_steps is None:
            self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        return min(1.0, self.global_step / self._total_steps)

    def frozen_epochs(self) -> int | None:
        """Whole frozen epochs where the switch must fall on an epoch boundary: with ``finetune.cache_features`` (the
        frozen epochs' loader holds cached features; the phase is kept whole, at least one epoch) and for the epoch
        key ``freeze_epochs`` of an epoch-based run. None when the freeze is a share switched at any step."""
        ft = self.finetune_cfg
        if ft.get("cache_features"):
            return cached_epochs(ft, self.schedule_epochs())
        if ft.get("freeze_epochs") and self.clock is None:
            return int(ft["freeze_epochs"])
        return None

    def backbone_frozen(self, epoch: int | None = None) -> bool:
        """Whether the backbone is frozen now (or in `epoch`): for the whole run, for whole epochs
        (`frozen_epochs`), or while progress is below ``finetune.freeze_share`` (``freeze_epochs`` over
        ``trainer.max_epochs`` under run.budget)."""
        ft = self.finetune_cfg
        if ft.get("freeze_backbone"):
            return True
        whole = self.frozen_epochs()
        if whole is not None:
            return (self.current_epoch if epoch is None else epoch) < whole
        freeze = shares(self.optim_cfg, ft, self.schedule_epochs()).freeze
        progress = self.schedule_progress() if epoch is None else epoch / self.schedule_epochs()
        return freeze > 0 and progress < freeze

    def apply_freeze(self) -> None:
        """Set requires_grad (and BatchNorm mode) of the backbone for the current step.

        It depends only on the progress (or the epoch), which a checkpoint restores, so a resumed run freezes and
        unfreezes exactly where the uninterrupted run would.
        """
        frozen = self.backbone_frozen()
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self._frozen_now = frozen
        self.train(self.training)
        self._sync_ddp()

    def train(self, mode: bool = True) -> BaseTask:
        super().train(mode)
        if mode and self.finetune_cfg.get("bn_eval_when_frozen", True) and self._trunk_frozen():
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _trunk_frozen(self) -> bool:
        params = list(self.backbone.parameters()) if hasattr(self, "backbone") else []
        return bool(params) and not any(p.requires_grad for p in params)

    def on_fit_start(self) -> None:
        self.apply_freeze()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.apply_freeze()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A freeze share ends at a step, not an epoch end. Switched between whole accumulated steps only; under DDP
        # every rank switches at the same step (progress is the same on all: steps, or rank 0's clock).
        if batch_idx % self.trainer.accumulate_grad_batches == 0 and self.backbone_frozen() != self._frozen_now:
            self.apply_freeze()

    def head_parameters(self) -> list[nn.Parameter]:
        """Weights (not biases) of everything outside the backbone, for the optional L1 penalty."""
        trunk = {id(p) for p in self.backbone.parameters()}
        return [p for n, p in self.named_parameters() if id(p) not in trunk and p.ndim > 1]

    def l1_penalty(self):
        weight = float(self.optim_cfg.get("l1_head", 0.0))
        if weight <= 0:
            return 0.0
        return weight * sum(p.abs().sum() for p in self.head_parameters())

    # ---- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = param_groups(
            self,
            self.backbone,
            lr=self.optim_cfg["lr"],
            weight_decay=self.optim_cfg["weight_decay"],
            no_decay_norm_bias=self.optim_cfg.get("no_decay_norm_bias", True),
            backbone_lr_mult=self.finetune_cfg.get("backbone_lr_mult", 1.0),
            layer_decay=self.finetune_cfg.get("layer_decay"),
        )
        optimizer = build_optimizer(groups, self.optim_cfg)
        epochs = self.schedule_epochs()
        warmup = shares(self.optim_cfg, self.finetune_cfg, epochs).warmup
        clock = self.clock
        if clock is not None:  # run.budget: the rate follows the share of the training time spent
            scheduler = progress_scheduler(optimizer, self.optim_cfg, lambda _: clock.lr_progress(), warmup, epochs)
        else:
            self._total_steps = total = max(1, int(self.trainer.estimated_stepping_batches))
            by_step = lambda step: step / total  # noqa: E731
            scheduler = progress_scheduler(optimizer, self.optim_cfg, by_step, warmup, epochs, 1 / total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
