"""The benchmark sets of ../shared/data in a layout both sides of a benchmark read: `cvsuite` (tools/train.py, as a
user points it at a folder) and the plain references (bench/plain_<task>.py).

cvsuite reads ``ROOT/train`` + ``ROOT/val`` in every task; it has no notion of a set's own split lists (bccd's and
dubai_aerial's ``splits/*.txt``, the ``images/{train,valid,test}`` folders of a YOLO export): pointed at such a set
it takes every image, test ones included, and draws its own seeded validation split. So the sets that ship a split
are written out as ``train/`` + ``val/`` with that split, and those that ship none get a seeded one (seed 0), the
same for both sides and every seed. Sets already in that layout (sign_digits, weather4) are read in place.

Each writer fills a new folder and returns it; `build` writes a set once under a work folder and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from train_tool import REPO, write_gan_crops

from cvsuite.demo_data import write_raccoon_crops

# ../shared/data beside the checkout (a worktree further down finds the one of an enclosing folder).
SHARED = next(
    (d / "shared" / "data" for d in REPO.parents if (d / "shared" / "data").is_dir()), REPO.parent / "shared" / "data"
)


def seeded_val(n: int, fraction: float, seed: int = 0) -> set[int]:
    order = np.random.default_rng(seed).permutation(n)
    return set(order[: int(round(n * fraction))].tolist())


def _copy(src: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / src.name)


def write_detection_split(src: Path, root: Path, val_fraction: float = 0.2) -> Path:
    """ROOT/{train,val}/{images,annotations} from a VOC folder, split by image (seed 0). Photos with the same bytes
    land in the same split (the raccoon set holds one pair under two names, which `cvsuite check` rejects)."""
    src, root = Path(src), Path(root)
    xmls = sorted((src / "annotations").glob("*.xml"))
    images = [src / "images" / ET.parse(xml).getroot().findtext("filename") for xml in xmls]
    digests = [hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest() for p in images]
    unique = sorted(set(digests))
    val_digests = {unique[i] for i in seeded_val(len(unique), val_fraction)}
    for xml, image, digest in zip(xmls, images, digests):
        split = root / ("val" if digest in val_digests else "train")
        _copy(xml, split / "annotations")
        _copy(image, split / "images")
    return root


def write_voc_lists(src: Path, root: Path, splits: dict[str, str]) -> Path:
    """ROOT/<split>/{images,annotations} from a VOC folder and its id lists: ``splits`` maps an output split to a
    file of image ids, one per line (bccd: ``{"train": "splits/train.txt", "val": "splits/val.txt"}``)."""
    src, root = Path(src), Path(root)
    for split, listing in splits.items():
        for stem in (src / listing).read_text().split():
            xml = src / "annotations" / f"{stem}.xml"
            _copy(xml, root / split / "annotations")
            _copy(src / "images" / ET.parse(xml).getroot().findtext("filename"), root / split / "images")
    return root


def write_yolo_splits(src: Path, root: Path, splits: dict[str, str]) -> Path:
    """ROOT/<split>/{images,labels} + ROOT/data.yaml (the class names) from a YOLO export laid out as
    ``images/<name>/`` + ``labels/<name>/`` (thermal_dogs_people: ``{"train": "train", "val": "valid"}``).
    Images without a label file keep none (no objects)."""
    src, root = Path(src), Path(root)
    names = yaml.safe_load((src / "data.yaml").read_text())["names"]
    for split, name in splits.items():
        for image in sorted((src / "images" / name).iterdir()):
            _copy(image, root / split / "images")
            label = src / "labels" / name / f"{image.stem}.txt"
            if label.is_file():
                _copy(label, root / split / "labels")
    folders = {split: f"{split}/images" for split in splits}
    (root / "data.yaml").write_text(yaml.safe_dump({**folders, "nc": len(names), "names": list(names)}))
    return root


def write_segmentation_split(src: Path, root: Path, val_fraction: float = 0.2) -> Path:
    """ROOT/{train,val}/{images,masks}/N.png from ``src/image/N.png`` + ``src/label/N.png`` (seed 0)."""
    src, root = Path(src), Path(root)
    images = sorted((src / "image").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    val = seeded_val(len(images), val_fraction)
    for i, image in enumerate(images):
        split = root / ("val" if i in val else "train")
        _copy(image, split / "images")
        _copy(src / "label" / image.name, split / "masks")
    return root


def write_mask_lists(src: Path, root: Path, splits: dict[str, str]) -> Path:
    """ROOT/<split>/{images,masks} from ``src/images/<id>.*`` + ``src/masks/<id>.png`` and id lists per split
    (dubai_aerial: ``{"train": "splits/train.txt", "val": "splits/val.txt"}``)."""
    src, root = Path(src), Path(root)
    for split, listing in splits.items():
        for stem in (src / listing).read_text().split():
            (image,) = (src / "images").glob(f"{stem}.*")
            _copy(image, root / split / "images")
            _copy(src / "masks" / f"{stem}.png", root / split / "masks")
    return root


def write_gan_squares(src: Path, folder: Path, size: int = 64) -> Path:
    """Every image of ``src`` (any depth) as a ``size`` px PNG: shorter side to `size`, then the centre square, as
    cvsuite's GAN data reads a photo. Written once, so both sides train on and measure FID against the same pixels
    (the plain reference would otherwise squash a non-square photo to a square)."""
    src, folder = Path(src), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.LANCZOS)
        left, top = (w - size) // 2, (h - size) // 2
        image.crop((left, top, left + size, top + size)).save(folder / f"{path.stem}.png")
    return folder


def class_names(src: Path) -> list[str]:
    """The named classes of a ``classes.json`` (``{"classes": [{"index", "name"}, ...]}``), void (255) left out."""
    classes = json.loads((Path(src) / "classes.json").read_text())["classes"]
    return [c["name"] for c in sorted(classes, key=lambda c: c["index"]) if c["index"] != 255]


LISTS = {"train": "splits/train.txt", "val": "splits/val.txt"}  # bccd's and dubai_aerial's own split
Writer = Callable[[Path, Path, int], Path]  # (source, new root, image size) -> root


@dataclass(frozen=True)
class BenchSet:
    """One benchmark set: its task, its folder under ../shared/data, how it is written for both sides (None: read
    in place; the size is that of the images the writer resizes), and whether both sides are given the class names
    of its classes.json (as a user would name them; otherwise the recipe's default names)."""

    task: str
    source: str
    write: Writer | None = None
    named_classes: bool = False


SETS = {
    "sign_digits": BenchSet("classification", "sign_digits"),
    "weather4": BenchSet("classification", "weather4"),
    "raccoon_crops": BenchSet("classification", "raccoon", lambda s, r, n: write_raccoon_crops(s, r, size=n)),
    "raccoon": BenchSet("detection", "raccoon", lambda s, r, n: write_detection_split(s, r)),
    "bccd": BenchSet("detection", "bccd", lambda s, r, n: write_voc_lists(s, r, LISTS)),
    "thermal_dogs_people": BenchSet(
        "detection", "thermal_dogs_people", lambda s, r, n: write_yolo_splits(s, r, {"train": "train", "val": "valid"})
    ),
    "membrane": BenchSet("segmentation", "membrane", lambda s, r, n: write_segmentation_split(s, r)),
    "dubai_aerial": BenchSet("segmentation", "dubai_aerial", lambda s, r, n: write_mask_lists(s, r, LISTS), True),
    "raccoon_gan": BenchSet("generation", "raccoon", lambda s, r, n: write_gan_crops(s, r, size=n)),
    "sunrise_gan": BenchSet("generation", "sunrise_gan", lambda s, r, n: write_gan_squares(s, r, size=n)),
}


def build(name: str, folder: Path, size: int | None = None, shared: Path = SHARED) -> Path:
    """The data root of set `name`: the shared folder itself, or written once as ``folder/<name>[-<size>]`` and
    reused (a root a stopped run left half-written is written again). `size`: the side of the images the writer
    resizes (raccoon crops, GAN images); None for the sets copied as they are."""
    spec = SETS[name]
    src = Path(shared) / spec.source
    if not src.is_dir():
        raise SystemExit(f"{src}: no such folder (the real sets live in ../shared/data; give --shared)")
    if spec.write is None:
        return src
    root = Path(folder) / (f"{name}-{size}" if size else name)
    done = root.with_name(root.name + ".complete")  # beside the root: nothing extra inside a folder of images
    if done.is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    spec.write(src, root, size)
    done.touch()
    return root
