"""Shared fixtures: small generated data with known truth, and tiny recipes that train in seconds."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_BACKBONE = "test_efficientnet"  # timm's own test architecture: real code path, milliseconds per step


def stable_seed(*parts: object) -> int:
    """A seed from `parts` that is the same in every process (``hash`` of a string is salted per process, which made
    the generated images, and so the tiny trainings, differ from run to run)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def colour_image(colour: tuple[int, int, int], size: int = 32, seed: int = 0) -> Image.Image:
    """A noisy image whose dominant colour is the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


CLASSES = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def write_class_folders(root: Path, per_class: int = 12, splits=("train", "val")) -> Path:
    for split in splits:
        for c, (name, colour) in enumerate(CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour_image(colour, seed=stable_seed(split, c, i)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "colours")


def tiny_recipe(root: Path, out: Path, **sections) -> dict:
    """A complete classification recipe on the tiny backbone (random init: no weights needed)."""
    recipe = {
        "task": "classification",
        "data": {"root": str(root), "image_size": 32, "batch_size": 8, "num_workers": 0, "augment": "none"},
        "model": {"backbone": TINY_BACKBONE, "pretrained": False, "dropout": 0.0},
        "optim": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none"},
        "finetune": {},
        "run": {"plots": True},
        "trainer": {
            "max_epochs": 2,
            "default_root_dir": str(out),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
        },
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def gather_like_ddp(metric, other) -> None:
    """What torchmetrics' sync does across processes for concatenated states (``dist_reduce_fx="cat"``): `other`'s
    list states appended to `metric`'s (``Metric.merge_state`` only exists from torchmetrics 1.5)."""
    for name, default in metric._defaults.items():
        assert isinstance(default, list), f"{name}: only concatenated states are merged here"
        setattr(metric, name, getattr(metric, name) + getattr(other, name))
