"""The four tasks, as a plain dict from the recipe's ``task:`` name to what the run needs to know about it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """What `cvsuite.run` needs from a task; each task module defines one ``SPEC``.

    Attributes:
        data_config / model_config: dataclasses of the recipe's ``data:`` and ``model:`` sections.
        module_class: the LightningModule (a `BaseTask`, except the GAN's); ``load_from_checkpoint`` must rebuild it.
        build_datamodule: ``(cfg, stored=None, split="val") -> ContractDataModule``. `stored` is the datamodule
            state of a checkpoint (`cvsuite.data.base`): its class names, preprocessing and validation files win
            over the data.
        build_module: ``(cfg, datamodule) -> module`` with pretrained weights, after ``datamodule.setup("fit")``.
        predict: ``(module, inputs, output_dir, cfg) -> Path`` writes predictions for image files, returns the
            main output file.
        save_plots: ``(module, run_dir) -> list[Path]`` writes the task's evaluation figures from the state the
            last validation left on the module.
        monitor / mode: default metric for the best checkpoint and early stopping.
        eval_keys: ``section.key`` settings of this task that eval/predict may override besides the common ones
            (`cvsuite.run.EVAL_KEYS`): they change what is reported, not the trained model.
        apply_eval_settings: ``(module, cfg) -> None`` applies those settings to a loaded module.
        callbacks: ``(run_dir) -> list[Callback]``: the task's own training callbacks (the GAN's sample grid).
        predictor: ``(module, images, batch_size, **options) -> list[result]``: the Python API's typed results for
            HWC uint8 RGB arrays (`cvsuite.api`), through the module's own inference methods (those predict and
            eval use). None: the checkpoint takes no images (the GAN: ``generate``).
        export: ``(module, cfg) -> Exported``: the network an ONNX/TorchScript file holds and the input contract
            its ``model.json`` states. None: not exportable.
        read_dataset: ``(cfg, report) -> None`` fills a `cvsuite.doctor.Report` with the splits as training will
            read them (items, class names, warnings). None: every image under ``data.root``, one split.
    """

    data_config: type
    model_config: type
    module_class: type
    build_datamodule: Callable[..., Any]
    build_module: Callable[..., Any]
    predict: Callable[..., Path]
    save_plots: Callable[..., list[Path]]
    monitor: str
    mode: str
    eval_keys: tuple[str, ...] = ()
    apply_eval_settings: Callable[..., None] | None = None
    callbacks: Callable[..., list[Any]] | None = None
    predictor: Callable[..., list[Any]] | None = None
    export: Callable[..., Exported] | None = None
    read_dataset: Callable[..., None] | None = None


@dataclass(frozen=True)
class Exported:
    """What `cvsuite.export` writes for a task.

    Attributes:
        network: an ``nn.Module`` from normalised float32 NCHW images (the checkpoint's preprocessing applied) to
            the outputs; in eval mode, the same computation eval/predict/the API run.
        outputs: output names, in the order the network returns them.
        batch: whether the batch axis may vary (detection: one image per call).
        contract: what ``model.json`` says beyond the common keys: ``input`` (``sizes`` accepted, ``padding``),
            ``output`` (how to read each output), and task facts (multilabel, target names, post-processing).
        compare: ``(pytorch outputs, exported outputs) -> difference`` as numpy lists; None = largest |a - b|.
    """

    network: Any
    outputs: tuple[str, ...]
    batch: bool = True
    contract: dict[str, Any] = field(default_factory=dict)
    compare: Callable[[list[Any], list[Any]], float] | None = None


# The recipe's ``task:`` value -> module under cvsuite/tasks holding its SPEC. Imported on use, so a user of one
# task does not import the others' dependencies.
TASK_MODULES = {
    "classification": "cvsuite.tasks.classification",
    "detection": "cvsuite.tasks.detection",
    "segmentation": "cvsuite.tasks.segmentation",
    "generation": "cvsuite.tasks.generation",
    "regression": "cvsuite.tasks.regression",
}


def get_spec(task: str) -> TaskSpec:
    if task not in TASK_MODULES:
        raise KeyError(f"Unknown task {task!r}; choose one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task]).SPEC
