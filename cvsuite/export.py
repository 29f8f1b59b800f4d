"""Export a trained checkpoint to ONNX (``DIR/model.onnx``) or TorchScript (``DIR/model.pt``) with a JSON sidecar
(``DIR/model.json``: task, input size, mean/std, class names, outputs), then run the exported file and PyTorch on
the same real images and compare.

What each exported model computes (input: float32 NCHW RGB, already normalised with the sidecar's mean/std):
    classification: ``scores`` (N, C), softmax (sigmoid when multi-label).
    segmentation:   ``logits`` (N, C, H, W) at the input size (H, W multiples of 32); argmax gives the mask.
    regression:     ``values`` (N, T), one column per target.
    detection:      batch of one image of the trained size -> ``boxes`` (K, 4) xyxy pixels of that input,
                    ``scores`` (K,), ``labels`` (K,) 0..C-1: torchvision's post-processing (score threshold,
                    NMS, top-k) is inside the file. Scale boxes by original/input size per axis.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and exports
torchvision's NMS, which the torch.export-based one cannot trace as data-dependent control flow.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvsuite.errors import ConfigError, ExportMismatch, Failed

FORMATS = ("onnx", "torchscript")
DEFAULT_TOLERANCE = 1e-3
PARITY_IMAGES = 8


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    max_diff: float
    tolerance: float
    num_images: int

    def summary(self) -> str:
        return f"max |difference| {self.max_diff:.2e} on {self.num_images} images, tolerance {self.tolerance:g}"


# ---- per-task adapters: a tensor-in / tensor-out network and what the sidecar says about it ---------------------
class _Scores(nn.Module):
    def __init__(self, module: nn.Module, multilabel: bool) -> None:
        super().__init__()
        self.net, self.multilabel = nn.Sequential(module.backbone, module.head), multilabel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)


class _Detect(nn.Module):
    """One image, post-processing included: (1, 3, S, S) -> boxes, scores, labels."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([images[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def _network(module: Any, task: str) -> tuple[nn.Module, list[str], bool]:
    """(network, output names, whether the batch size may vary)."""
    if task == "classification":
        return _Scores(module, bool(module.hparams.get("multilabel"))), ["scores"], True
    if task == "segmentation":
        return module.net, ["logits"], True
    if task == "regression":
        return module.export_module(), ["values"], True
    if task == "detection":
        return _Detect(module.detector), ["boxes", "scores", "labels"], False
    raise ConfigError(f"--format: {task} checkpoints cannot be exported (classification, segmentation, "
                     "regression and detection can)")  # fmt: skip


# ---- writing --------------------------------------------------------------------------------------------------
def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], dynamic: bool) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install 'cvsuite[onnx]'") from err
    # Detection: one image of any size (boxes come per image); the other tasks: any batch and size.
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{o: {0: "batch"} for o in outputs}}
    if not dynamic:
        axes = {"images": {2: "height", 3: "width"}, **{o: {0: "detections"} for o in outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, input_names=["images"], output_names=outputs,
            dynamic_axes=axes, opset_version=17,
        )  # fmt: skip


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(str(path))


def _runner(path: Path, fmt: str):
    """A function (NCHW float32 tensor) -> list of numpy outputs, running the exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ConfigError("checking an ONNX export needs onnxruntime: pip install 'cvsuite[onnx]'") from err
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})
    loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> list[np.ndarray]:
        out = loaded(x)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return run


# ---- the parity check ---------------------------------------------------------------------------------------
def _parity_inputs(module: Any, cfg: Any, images: str | Path | None, state: dict | None) -> list[torch.Tensor]:
    """Preprocessed real images, (1, 3, H, W) each: `images` (a file or folder), else the validation split."""
    from cvsuite.data.common import list_images, read_image

    if images:
        root = Path(images)
        if not root.exists():
            raise ConfigError(f"--images {root}: no such file or folder")
        paths = list_images(root)[:PARITY_IMAGES] if root.is_dir() else [root]
    else:
        paths = _validation_images(cfg, state)
    if not paths:
        raise ConfigError("no images for the parity check: pass --images FILE_OR_FOLDER")
    pipeline = module.eval_pipeline()
    extra = {"bboxes": np.zeros((0, 4)), "labels": []} if cfg.task == "detection" else {}
    return [pipeline(image=read_image(p), **extra)["image"][None] for p in paths]


def _validation_images(cfg: Any, state: dict | None) -> list[Path]:
    """The checkpoint's stored validation files (its data contract) where they still exist, else images found
    under data.root."""
    from cvsuite.data.common import IMAGE_EXTENSIONS, list_images

    stored_root = (state or {}).get("root")
    stored = [Path(stored_root) / rel for rel, _ in (state or {}).get("val_files", [])] if stored_root else []
    stored = [p for p in stored if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if stored:
        return stored[:PARITY_IMAGES]
    root = Path(cfg.data.root or ".")
    for folder in (root / "val", root / "valid", root / "validation", root):
        if folder.is_dir():
            found = list_images(folder)
            if found:
                return found[:PARITY_IMAGES]
    return []


def _difference(task: str, ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    if task == "detection":
        # Same detections in the same order (both sort by score), else the export is wrong whatever the values.
        if ours[0].shape != theirs[0].shape or not np.array_equal(ours[2], theirs[2]):
            return float("inf")
        if ours[0].size == 0:
            return 0.0
        return float(max(np.abs(ours[0] - theirs[0]).max() / 100, np.abs(ours[1] - theirs[1]).max()))
    return float(max(np.abs(a - b).max() for a, b in zip(ours, theirs)))


def check_parity(
    net: nn.Module, path: Path, fmt: str, task: str, inputs: list[torch.Tensor], tolerance: float
) -> float:
    """Largest |exported - PyTorch| over `inputs`; raises ExportMismatch above `tolerance` (detection: boxes
    count in hundredths of a pixel, so 0.1 px weighs like a score difference of 1e-3)."""
    run = _runner(path, fmt)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = net(x)
            ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
            worst = max(worst, _difference(task, ref, run(x)))
    if not worst <= tolerance:
        raise ExportMismatch(
            f"{path}: the exported model differs from PyTorch by {worst:.3g} (tolerance {tolerance:g}) on "
            f"{len(inputs)} images; the file is kept for inspection, do not deploy it"
        )
    return worst


def export(
    ckpt: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    config: str | None = None,
    overrides: list[str] | None = None,
    images: str | Path | None = None,
    tolerance: float | None = None,
) -> ExportResult:
    """Write ``output/model.onnx`` (or ``model.pt``) and ``output/model.json``, then check them; see the module
    docstring for what the file computes."""
    from cvsuite.run import load_run

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    from cvsuite.checkpoint import resolve

    ckpt = resolve(ckpt)
    module, cfg, _, state = load_run(ckpt, config, overrides)  # detection: the eval thresholds applied
    net, outputs, dynamic = _network(module.eval(), cfg.task)
    net = net.eval()
    inputs = _parity_inputs(module, cfg, images, state)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("model.onnx" if fmt == "onnx" else "model.pt")
    with torch.no_grad():
        try:
            if fmt == "onnx":
                _write_onnx(net, inputs[0], path, outputs, dynamic)
            else:
                _write_torchscript(net, inputs[0], path)
        except ConfigError:
            raise
        except Exception as err:
            raise Failed(f"{cfg.task} checkpoint could not be exported to {fmt}: {err}") from err
    sidecar = write_sidecar(module, cfg, ckpt, path, fmt, outputs, inputs[0].shape, dynamic)
    tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    diff = check_parity(net, path, fmt, cfg.task, inputs, tol)
    return ExportResult(path, sidecar, diff, tol, len(inputs))


def _normalisation(pipeline: Any) -> tuple[list[float] | None, list[float] | None]:
    norm = next((t for t in pipeline.transforms if type(t).__name__ == "Normalize"), None)
    return (list(map(float, norm.mean)), list(map(float, norm.std))) if norm is not None else (None, None)


def write_sidecar(module, cfg, ckpt, path: Path, fmt: str, outputs, shape, dynamic: bool) -> Path:
    """``model.json``: what a runtime needs besides the file."""
    import albumentations as A

    pipeline = module.eval_pipeline()
    mean, std = _normalisation(pipeline)
    hp = module.hparams
    meta: dict[str, Any] = {
        "task": cfg.task,
        "format": fmt,
        "file": path.name,
        "checkpoint": str(ckpt),
        "input": {
            "name": "images",
            "shape": ["N" if dynamic else 1, 3, "H", "W"],
            "example_size": [int(shape[2]), int(shape[3])],
            "layout": "NCHW float32 RGB: pixels / 255, minus mean, divided by std",
        },
        "mean": mean,
        "std": std,
        "outputs": outputs,
        "class_names": list(hp.get("class_names") or []),
        "preprocessing": A.to_dict(pipeline),
    }
    if cfg.task == "classification":
        meta["multilabel"] = bool(hp.get("multilabel", False))
    if cfg.task == "regression":
        meta["target_names"] = list(hp.target_names)
    if cfg.task == "detection":
        meta["postprocess"] = {
            "score_thresh": cfg.model.score_thresh,
            "nms_iou": cfg.model.nms_iou,
            "max_detections": cfg.model.max_detections,
            "boxes": "xyxy pixels of the model input; multiply x by original_width / input_width, y likewise",
        }
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2))
    return sidecar


def export_torchscript(
    ckpt: str | Path, output: str | Path, config: str | None = None, overrides: list[str] | None = None
) -> Path:
    """Kept for callers of the earlier API: TorchScript into the folder `output`; returns the ``.pt`` path."""
    return export(ckpt, output, "torchscript", config, overrides).path
