"""What a run prints: one line per epoch, the best epoch at the end, readable metric tables, and filters for the
third-party messages that say nothing a user can act on.

Each filter names one message of one library (a ``warnings`` filter on its text, or a ``logging.Filter`` on its
logger), so new or different warnings still show.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from cvsuite.errors import CheckFailed  # noqa: F401  (importable from here too)

# (category name, message regex) of warnings that are noise for a cvsuite run, with why.
WARNING_FILTERS = (
    # Lightning's own pytree helper calling a torch API that torch deprecated; nothing for a user to change.
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", None),
    # cvsuite keeps a frozen backbone's BatchNorm in eval mode on purpose (finetune.bn_eval_when_frozen).
    (r"Found \d+ module\(s\) in eval mode at the start of training.*", None),
    # Small data sets: the epoch's metrics are still logged (on_epoch=True), only the step curve is sparse.
    (r"The number of training batches \(\d+\) is smaller than the logging interval.*", None),
    # torch deprecating TorchScript: `--format torchscript` asks for exactly that file; ONNX is the default.
    (r".*torch\.jit\.(trace|script|save|load).* (is|are) deprecated.*", None),
)
# Lightning INFO lines that advertise or state the obvious ("GPU available: False, used: False" on a CPU machine).
LIGHTNING_NOISE = re.compile(
    r"litlogger|^TPU available|^HPU available|to estimate number of stepping batches|^GPU available: False, used: False"
)
# Lightning INFO lines about the devices, which every Trainer of a command repeats (the budget's probe, training, the
# final evaluation): shown once per process.
DEVICE_LINES = re.compile(r"^GPU available|CUDA_VISIBLE_DEVICES")
# timm loading a classifier's weights into a features-only trunk: the classifier's own head is left out by design.
HEAD_KEY = re.compile(r"^(conv_head|bn2|classifier|head|fc|norm_head)\.")


class _DropLines(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


class _Once(logging.Filter):
    """Lets each message through once per process: the lines matching `pattern` (or all, without one)."""

    def __init__(self, pattern: re.Pattern[str] | None = None) -> None:
        super().__init__()
        self.pattern, self.seen = pattern, set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.pattern is not None and not self.pattern.search(message):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class _DropHeadKeys(logging.Filter):
    """timm's "Unexpected keys (...)" when every key belongs to the classifier head a dense task leaves out."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = re.match(r"Unexpected keys \((.*)\) found while loading", record.getMessage())
        return not (m and all(HEAD_KEY.match(k.strip()) for k in m.group(1).split(",")))


def setup(verbose: bool = True) -> None:
    """Install the filters (idempotent); with ``verbose=False`` also Lightning's INFO lines and timm's "Loading
    pretrained weights" go. Lightning's device lines and cvsuite's own warnings show once per process (a command
    that builds its data twice, e.g. eval with --predictions, says "has no train/ folder" once)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for message, _ in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message)
    # The `lightning` package's own handler prints what also reaches the root handler: each line twice.
    logging.getLogger("lightning").propagate = False
    _add_filter("lightning.pytorch.utilities.rank_zero", _DropLines, LIGHTNING_NOISE)
    _add_filter("lightning.fabric.utilities.rank_zero", _DropLines, LIGHTNING_NOISE)
    _add_filter("timm.models._builder", _DropHeadKeys)
    for name, pattern in ONCE:
        _add_filter(name, _Once, pattern)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("timm").setLevel(logging.INFO if verbose else logging.WARNING)


# Loggers whose lines show once per command (all of them, or those matching the pattern).
ONCE = (("lightning.pytorch.utilities.rank_zero", DEVICE_LINES), ("cvsuite", None))


def end_command() -> None:
    """Remove the once-per-command filters `setup` installed, so the next command (or, in one Python process,
    library code) shows its lines again."""
    for name, _ in ONCE:
        target = logging.getLogger(name)
        for f in [f for f in target.filters if isinstance(f, _Once)]:
            target.removeFilter(f)


def _add_filter(logger: str, kind: type[logging.Filter], *args: Any) -> None:
    target = logging.getLogger(logger)
    if not any(type(f) is kind and getattr(f, "pattern", None) == (args[0] if args else None) for f in target.filters):
        target.addFilter(kind(*args))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


class ValidatedEpoch:
    """Which epoch last validated. Lightning keeps the last ``val_*`` values in ``callback_metrics`` through epochs
    that skip validation (``check_val_every_n_epoch`` > 1); per-epoch reports must not show them as new."""

    def __init__(self) -> None:
        self.epoch = -1

    def record(self, trainer: L.Trainer) -> None:
        if not trainer.sanity_checking:
            self.epoch = trainer.current_epoch

    def metrics(self, trainer: L.Trainer) -> dict[str, Any]:
        """``callback_metrics`` without the ``val_*`` values when this epoch did not validate."""
        fresh = self.epoch == trainer.current_epoch
        return {k: v for k, v in trainer.callback_metrics.items() if fresh or not k.startswith("val_")}


class EpochLine(Callback):
    """One line per epoch on stderr: epoch, time, train loss, val loss, the monitored metric and the best so far.

    Also silences torchmetrics' "No positive samples" warnings during the sanity check only: two batches often
    hold no example of a class, which says nothing about the data.
    """

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.validated = ValidatedEpoch()
        self._start = 0.0
        self._sanity: warnings.catch_warnings | None = None

    def on_sanity_check_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sanity = warnings.catch_warnings()
        self._sanity.__enter__()
        warnings.filterwarnings("ignore", message=r".*No positive samples.*")

    def on_sanity_check_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._sanity is not None:
            self._sanity.__exit__(None, None, None)
            self._sanity = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.validated.record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        current = self.validated.metrics(trainer)
        m = {k: float(v) for k, v in current.items() if getattr(v, "numel", lambda: 1)() == 1}
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"{time.monotonic() - self._start:.1f}s"]
        for key in ("train_loss_epoch", "train_loss", "val_loss"):
            if key in m and not (key == "train_loss" and "train_loss_epoch" in m):
                parts.append(f"{key.removesuffix('_epoch')} {_fmt(m[key])}")
        value = m.get(self.monitor)
        if value is not None and not math.isnan(value):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best
            parts += [f"{self.monitor} {_fmt(value)}", f"best {_fmt(self.best)}" + (" *" if better else "")]
        line = "  ".join(parts)
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            bar.print(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting epochs from 1 of N like the epoch lines, metrics.csv and "best ... at
    epoch N" (Lightning's own counts from 0)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


def best_epoch(metrics_csv: Path, monitor: str, mode: str) -> dict[str, Any] | None:
    """The metrics.csv row with the best `monitor` value (first one on ties), as numbers; None without one."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(monitor) not in (None, "", "nan")]
    if not rows:
        return None
    pick = max if mode == "max" else min
    row = pick(rows, key=lambda r: float(r[monitor]))
    return {k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v not in ("", None)}


def print_best(run_dir: Path, cfg: Any) -> None:
    """ "best val_accuracy 0.875 at epoch 3 (val_loss 0.41, ...)" on stderr from the run's metrics.csv."""
    from cvsuite.tasks import get_spec

    spec = get_spec(cfg.task)
    monitor, mode = cfg.run.monitor or spec.monitor, cfg.run.mode or spec.mode
    row = best_epoch(Path(run_dir) / "metrics.csv", monitor, mode)
    if row is None:
        return
    others = [f"{k} {_fmt(v)}" for k, v in row.items() if k.startswith("val_") and k != monitor][:6]
    extra = f" ({', '.join(others)})" if others else ""
    print(f"best {monitor} {_fmt(row[monitor])} at epoch {row['epoch']}{extra}", file=sys.stderr)  # 1-based, as the CSV


COCO_LINES = (
    ("map", "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"),
    ("map_50", "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]"),
    ("map_75", "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]"),
    ("map_small", "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]"),
    ("map_medium", "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]"),
    ("map_large", "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"),
    ("mar_100", "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"),
)


def _per_class_columns(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """column name -> class name -> value, from ``{class: {metric: v}}`` and ``{class: v}`` entries."""
    names = [str(n) for n in metrics.get("class_names") or []]
    columns: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if not isinstance(value, dict) or not value or (names and not set(map(str, value)) <= set(names)):
            continue
        inner = list(value.values())
        if all(isinstance(x, dict) for x in inner):
            for cls, row in value.items():
                for metric, v in row.items():
                    columns.setdefault(metric, {})[str(cls)] = v
        elif all(isinstance(x, (int, float)) or x is None for x in inner):
            columns[key] = {str(k): v for k, v in value.items()}
    return columns


def metrics_table(metrics: dict[str, Any]) -> str:
    """Readable eval output: the COCO summary (detection) or the scalar metrics, then one row per class."""
    lines = []
    if all(k in metrics for k, _ in COCO_LINES):
        lines += [f" {text} = {metrics[k]:.3f}" for k, text in COCO_LINES]
    else:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines += ["metrics:"] + [f"  {k:<22} {_fmt(v)}" for k, v in scalars.items()]
    columns = _per_class_columns(metrics)
    if columns:
        names = list(dict.fromkeys(n for col in columns.values() for n in col))
        width = max(8, *(len(n) for n in names))
        lines += ["", f"  {'class':<{width}} " + " ".join(f"{c:>17}" for c in columns)]
        for n in names:
            cells = [columns[c].get(n) for c in columns]
            lines.append(f"  {n:<{width}} " + " ".join(f"{'-' if v is None else _fmt(v):>17}" for v in cells))
    return "\n".join(lines)


class TensorBoardSamples(Callback):
    """A few sample predictions in TensorBoard each validation epoch: the GAN's fixed-noise grid, and for
    segmentation the first validation images' truth and prediction side by side (class colours)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = trainer.logger
        if trainer.sanity_checking or not isinstance(logger, TensorBoardLogger) or trainer.global_rank != 0:
            return
        step = trainer.current_epoch
        if hasattr(module, "sample_grid"):
            from torchvision.utils import make_grid

            logger.experiment.add_image("samples", make_grid(module.sample_grid().cpu(), nrow=4), step)
        elif getattr(module, "examples", None):
            import numpy as np

            from cvsuite.plots import colorize, palette

            colours = palette(len(module.hparams.class_names))
            ignore = module.hparams.ignore_index
            for i, (_, truth, pred) in enumerate(module.examples[:4]):
                pair = np.concatenate([colorize(truth, colours, ignore), colorize(pred, colours)], axis=1)
                logger.experiment.add_image(f"val_example_{i}/truth_prediction", pair, step, dataformats="HWC")
