"""Export a trained checkpoint to ONNX (``DIR/model.onnx``) or TorchScript (``DIR/model.pt``) with a JSON sidecar
(``DIR/model.json``: task, the input contract, mean/std, class names, outputs), then run the exported file and
PyTorch on the same real images and compare.

What each exported file computes is the task's own ``TaskSpec.export`` network (the forward eval and predict run,
``model.tta`` included); the input is float32 NCHW RGB, preprocessed as the sidecar's ``preprocessing`` says
(normalised with its mean/std):
    classification: ``scores`` (N, C), softmax (sigmoid when multi-label).
    segmentation:   ``logits`` (N, C, H, W) at the input size, any H, W (padded inside to a multiple of 32 and
                    cropped back); argmax gives the mask.
    regression:     ``values`` (N, T), one column per target.
    detection:      batch of one image, longest side image_size -> ``boxes`` (K, 4) xyxy pixels of that input,
                    ``scores`` (K,), ``labels`` (K,) 0..C-1: torchvision's post-processing (score threshold,
                    NMS, top-k) is inside the file. Scale boxes by original/input size per axis.

The parity check runs the validation images and two odd-sized, non-square resizes of the first one (100x75 and
361x479 pixels, w x h), so the file is checked on the shapes users feed it, not only on the validation set's.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and exports
torchvision's NMS, which the torch.export-based one cannot trace as data-dependent control flow.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvsuite.errors import ConfigError, ExportMismatch, Failed
from cvsuite.outputs import atomic_path, write_json

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
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (h, w) of each checked image, before preprocessing

    def summary(self) -> str:
        shapes = sorted({f"{w}x{h}" for h, w in self.sizes})
        return (
            f"max |difference| {self.max_diff:.2e} on {self.num_images} images ({', '.join(shapes)} pixels), "
            f"tolerance {self.tolerance:g}"
        )


# Odd sizes (w x h) the parity check adds, resized from the first image: non-square, not multiples of 32.
SYNTHETIC_SIZES = ((100, 75), (361, 479))
# How every path reads an image file before the preprocessing (`cvsuite.data.common.image_to_rgb`).
READING = "RGB uint8 as stored: 16-bit values / 257, grey repeated to RGB, alpha dropped, EXIF orientation not applied"


def _network(module: Any, task: str, cfg: Any = None):
    """The task's `cvsuite.tasks.Exported` (network, outputs, contract), or a ConfigError for a task without one."""
    from cvsuite.tasks import get_spec

    spec = get_spec(task)
    if spec.export is None:
        raise ConfigError(
            f"--format: {task} checkpoints cannot be exported (classification, segmentation, regression and "
            "detection can)"
        )
    return spec.export(module, cfg)


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
def _parity_inputs(
    module: Any, cfg: Any, images: str | Path | None, state: dict | None
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Preprocessed real images, (1, 3, H, W) each, and the (height, width) of the images they came from: `images`
    (a file or folder), else the validation split, plus the `SYNTHETIC_SIZES` resizes of the first."""
    import cv2

    from cvsuite.data.common import list_images, read_image

    if images:
        root = Path(images)
        if not root.exists():
            raise ConfigError(f"--images {root}: no such file or folder")
        paths = list_images(root)[:PARITY_IMAGES] if root.is_dir() else [root]
        if not paths:
            raise ConfigError(f"--images {root}: the folder holds no images")
    else:
        paths = _validation_images(cfg, state)
    if not paths:
        raise ConfigError("no images for the parity check: pass --images FILE_OR_FOLDER")
    originals = [read_image(p) for p in paths]
    originals += [cv2.resize(originals[0], size, interpolation=cv2.INTER_AREA) for size in SYNTHETIC_SIZES]
    return [module.preprocess(image)[None] for image in originals], [tuple(im.shape[:2]) for im in originals]


def _validation_images(cfg: Any, state: dict | None) -> list[Path]:
    """The checkpoint's stored validation files (its data contract), under the training root or under data.root
    (a copied data set), where they exist; else images found under data.root."""
    from cvsuite.data.common import IMAGE_EXTENSIONS, list_images

    rels = [rel for rel, _ in (state or {}).get("val_files", [])]
    for base in ((state or {}).get("root"), cfg.data.root):
        stored = [Path(base).expanduser() / rel for rel in rels] if base else []
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


def _difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    if any(a.shape != b.shape for a, b in zip(ours, theirs)):
        return float("inf")
    return float(max((np.abs(a - b).max() if a.size else 0.0) for a, b in zip(ours, theirs)))


def check_parity(
    net: nn.Module, path: Path, fmt: str, inputs: list[torch.Tensor], tolerance: float, compare=None
) -> float:
    """Largest difference between the exported file and PyTorch over `inputs` (`compare`, default |a - b|;
    detection: the same boxes one for one); raises ExportMismatch above `tolerance`."""
    compare = compare or _difference
    run = _runner(path, fmt)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = net(x)
            ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
            worst = max(worst, compare(ref, run(x)))
    if not worst <= tolerance:
        raise ExportMismatch(
            f"{path}: the exported model differs from PyTorch by {worst:.3g} (tolerance {tolerance:g}) on "
            f"{len(inputs)} images ({_sizes(inputs)}); the file is kept for inspection, do not deploy it"
        )
    return worst


def _sizes(inputs: list[torch.Tensor]) -> str:
    return ", ".join(f"{x.shape[-1]}x{x.shape[-2]}" for x in inputs)


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
    from cvsuite.checkpoint import resolve
    from cvsuite.run import load_run

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    ckpt = resolve(ckpt)
    module, cfg, _, state = load_run(ckpt, config, overrides)  # eval settings (tta, thresholds) applied
    exported = _network(module.eval(), cfg.task, cfg)
    net = exported.network.eval()
    inputs, originals = _parity_inputs(module, cfg, images, state)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("model.onnx" if fmt == "onnx" else "model.pt")
    with torch.no_grad():
        try:
            with atomic_path(path) as tmp:  # a failed export leaves the previous file (or none), never half of one
                if fmt == "onnx":
                    _write_onnx(net, inputs[0], tmp, list(exported.outputs), exported.batch)
                else:
                    _write_torchscript(net, inputs[0], tmp)
        except ConfigError:
            raise
        except Exception as err:
            raise Failed(f"{cfg.task} checkpoint could not be exported to {fmt}: {err}") from err
    sidecar = write_sidecar(module, cfg, ckpt, path, fmt, exported, inputs, originals)
    tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    diff = check_parity(net, path, fmt, inputs, tol, exported.compare)
    return ExportResult(path, sidecar, diff, tol, len(inputs), originals)


def _normalisation(pipeline: Any) -> tuple[list[float] | None, list[float] | None]:
    norm = next((t for t in pipeline.transforms if type(t).__name__ == "Normalize"), None)
    return (list(map(float, norm.mean)), list(map(float, norm.std))) if norm is not None else (None, None)


def write_sidecar(
    module, cfg, ckpt, path: Path, fmt: str, exported, inputs: list[torch.Tensor], originals: list[tuple[int, int]]
) -> Path:
    """``model.json``: what a runtime needs besides the file: the input contract (how to read and preprocess an
    image, which sizes the file takes, what it pads), the outputs and the task's facts."""
    import albumentations as A

    pipeline = module.eval_pipeline()
    mean, std = _normalisation(pipeline)
    contract = dict(exported.contract)
    meta: dict[str, Any] = {
        "task": cfg.task,
        "format": fmt,
        "file": path.name,
        "checkpoint": str(ckpt),
        "input": {
            "name": "images",
            "shape": ["N" if exported.batch else 1, 3, "H", "W"],
            "dtype": "float32",
            "reading": READING,
            "preprocessing": "the 'preprocessing' pipeline below (albumentations), i.e. resize as it says, then "
            "pixels / 255, minus mean, divided by std, per RGB channel, as NCHW",
            **contract.pop("input", {}),
            # What the parity check ran: images of these (height, width), preprocessed to inputs of these.
            "checked_images": [[int(h), int(w)] for h, w in originals],
            "checked_sizes": [[int(x.shape[-2]), int(x.shape[-1])] for x in inputs],
        },
        "mean": mean,
        "std": std,
        "outputs": list(exported.outputs),
        "output": contract.pop("output", {}),
        "class_names": list(module.hparams.get("class_names") or []),
        "preprocessing": A.to_dict(pipeline),
        **contract,
    }
    return write_json(path.with_suffix(".json"), meta)  # atomic: never a half-written model.json


def export_torchscript(
    ckpt: str | Path, output: str | Path, config: str | None = None, overrides: list[str] | None = None
) -> Path:
    """Kept for callers of the earlier API: TorchScript into the folder `output`; returns the ``.pt`` path."""
    return export(ckpt, output, "torchscript", config, overrides).path
