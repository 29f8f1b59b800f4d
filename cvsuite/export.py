"""Export a trained checkpoint to a TorchScript file that runs without cvsuite, plus a JSON sidecar with what
a deployment needs (class names, input size, normalisation, the serialised preprocessing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cvsuite.config import ConfigError
from cvsuite.run import load_checkpoint


def export_torchscript(
    ckpt: str | Path, output: str | Path, config: str | None = None, overrides: list[str] | None = None
) -> Path:
    """Trace the checkpoint's tensor-in / tensor-out forward, check it reproduces the module, write
    ``<output>.pt`` and ``<output>.json``. Returns the ``.pt`` path.

    The task module provides ``export_module()``: its network as a plain ``nn.Module`` mapping a normalised
    (N, 3, H, W) batch to a tensor. Tasks without one (detection's lists of dicts) raise ValueError.
    """
    module, cfg, _ = load_checkpoint(ckpt, config, overrides)
    if not hasattr(module, "export_module"):
        raise ConfigError(f"{cfg.task} checkpoints cannot be exported to TorchScript yet")
    net = module.export_module().eval()
    hp = module.hparams
    size = int(hp.get("image_size") or getattr(cfg.data, "image_size", 224))
    example = torch.randn(1, 3, size, size)
    with torch.no_grad():
        try:
            reference = net(example)
            traced = torch.jit.trace(net, example, check_trace=False)
        except Exception as err:
            raise ConfigError(f"{cfg.task} checkpoints cannot be traced to TorchScript: {err}") from err
        if not isinstance(reference, torch.Tensor):
            raise ConfigError(f"{cfg.task}: forward returns {type(reference).__name__}, not a tensor; not exportable")
        probe = torch.randn(2, 3, size, size)
        if not torch.allclose(traced(probe), net(probe), atol=1e-4):
            raise ValueError("the traced model does not reproduce the checkpoint's outputs")
    output = Path(output).with_suffix("")
    output.parent.mkdir(parents=True, exist_ok=True)
    pt = output.with_suffix(".pt")
    traced.save(str(pt))
    meta: dict[str, Any] = {
        "task": cfg.task,
        "checkpoint": str(ckpt),
        "input": {"shape": [None, 3, size, size], "layout": "NCHW float32, RGB, normalised"},
        "class_names": list(hp.get("class_names") or []),
        "multilabel": bool(hp.get("multilabel", False)),
        "preprocessing": hp.get("eval_pipeline"),
    }
    output.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return pt
