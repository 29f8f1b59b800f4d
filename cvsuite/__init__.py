"""cvsuite: classification, detection, segmentation, regression and GAN generation on shared timm backbones.

``cvsuite.load(ckpt)`` and ``cvsuite.train(recipe)`` are imported on first use, so ``import cvsuite`` stays fast
(no torch until a model is needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvsuite.api import load, train

__all__ = ["load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cvsuite import api

        return getattr(api, name)
    raise AttributeError(f"module 'cvsuite' has no attribute {name!r}")
