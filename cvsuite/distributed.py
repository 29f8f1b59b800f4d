"""Up-front checks of the Trainer's device, strategy and precision settings, and the few facts about the process
group that the run folder needs (which rank may write, which folder every rank uses).

Everything distributed is Lightning's own engine (DDP/FSDP strategies, torchrun, SLURM); this module only turns
settings that cannot work on this machine into a named `ConfigError` before any run folder is made, instead of a
Lightning traceback after the data has loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cvsuite.config import Config, ConfigError

# Strategies that run on CPU processes (gloo). Everything else (fsdp, deepspeed, xla...) needs accelerators.
CPU_STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_true",
)
CUDA_ONLY_PRECISION = ("16-mixed", "16", "16-true", "transformer-engine", "transformer-engine-float16")
RUN_DIR_ENV = "CVSUITE_RUN_DIR"  # rank 0's run folder, inherited by the processes Lightning's launcher starts


def _on_cpu(accelerator: Any) -> bool:
    if accelerator in ("cpu",):
        return True
    return accelerator in ("auto", None) and not torch.cuda.is_available()


def device_count(devices: Any, on_cpu: bool) -> int:
    """How many processes per node `trainer.devices` asks for (-1 / "auto": all there are)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto" or text == "-1":
            return 1 if on_cpu else max(1, torch.cuda.device_count())
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.lstrip("-").isdigit() else 1
    if devices == -1:
        return 1 if on_cpu else max(1, torch.cuda.device_count())
    return int(devices or 1)


def check_trainer(cfg: Config) -> None:
    """Named errors for device/strategy/precision settings that cannot work here.

    Raises:
        ConfigError: 16-bit precision on a CPU; a GPU accelerator without CUDA or more GPUs than present; several
            CPU processes with a strategy that needs accelerators; sync_batchnorm on a CPU; FSDP with a freeze
            schedule.
    """
    t = cfg.trainer
    accelerator = t.get("accelerator", "auto")
    on_cpu = _on_cpu(accelerator)
    precision = str(t.get("precision", "32-true"))
    strategy = t.get("strategy", "auto")
    devices = device_count(t.get("devices", "auto"), on_cpu)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator {accelerator}: no CUDA GPU on this machine; use --trainer.accelerator cpu"
        )
    if not on_cpu and accelerator in ("gpu", "cuda", "auto") and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices {t.get('devices')}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    if on_cpu and precision in CUDA_ONLY_PRECISION:
        raise ConfigError(
            f"trainer.precision {precision} needs a CUDA GPU (float16 autocast and its gradient scaler); on a CPU "
            "use bf16-mixed or 32-true"
        )
    if on_cpu and t.get("sync_batchnorm"):
        raise ConfigError(
            "trainer.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); on CPU processes "
            "leave it false"
        )
    if isinstance(strategy, str):
        if on_cpu and devices > 1 and strategy not in CPU_STRATEGIES:
            raise ConfigError(
                f"trainer.strategy {strategy} cannot run {devices} CPU processes (it needs GPUs); use "
                "--trainer.strategy ddp"
            )
        ft = cfg.finetune
        if strategy.startswith("fsdp") and (int(ft.freeze_epochs or 0) > 0 or getattr(ft, "freeze_share", None)):
            raise ConfigError(
                "finetune.freeze_epochs / freeze_share with trainer.strategy fsdp: FSDP shards parameters once and "
                "cannot change which are trained mid-run; use strategy ddp, or finetune.freeze_backbone for the run"
            )
        if strategy == "ddp_notebook" and devices > 1:
            raise ConfigError("trainer.strategy ddp_notebook is for Jupyter; from tools/train.py use ddp")


def global_rank() -> int:
    """This process's rank as the launchers (Lightning's, torchrun, SLURM) announce it, before any process group
    exists; 0 in a single process."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return int(_get_rank() or 0)


def shared_run_dir(root: str, new_run_dir) -> Path:
    """The run folder, chosen once: rank 0 picks it with `new_run_dir` (``root``, or ``root-2`` when taken) and
    leaves it in the environment, which the processes Lightning's launcher starts for the other ranks inherit. A
    rank started by torchrun/SLURM without it writes nothing to the folder (only rank 0 does) and its checkpoint
    folder comes from rank 0 (``ModelCheckpoint`` broadcasts it), so it just names ``root``."""
    if global_rank() == 0:
        run_dir = new_run_dir(root)
        os.environ[RUN_DIR_ENV] = str(run_dir)
        return run_dir
    return Path(os.environ.get(RUN_DIR_ENV, root))


def end_process_group() -> None:
    """After a distributed fit: wait for every rank, then close the process group, so rank 0 evaluates the best
    checkpoint as a single process (metrics must not wait for ranks that have finished)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
