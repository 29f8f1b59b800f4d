"""A data set's own split, used as given: the lists a data set ships with decide what is train, val and test.

Two kinds are read (the tasks decide which apply to them and in what order):

- a YOLO ``data.yaml`` (Ultralytics, Roboflow exports; detection): ``train:``, ``val:`` and ``test:`` are each a
  folder of images, a ``.txt`` file listing image paths, or a list of those. They are resolved against the file's
  ``path:`` key (itself relative to the yaml's folder) or the yaml's folder, and a leading ``../`` that leads
  nowhere is dropped, as Ultralytics does (Roboflow writes ``train: ../train/images``). ``names:`` (a list or an
  ``{id: name}`` mapping) gives the classes. Labels are found the Ultralytics way (`yolo_label_path`).
- id lists: ``splits/{train,val,test}.txt``, or Pascal VOC's ``ImageSets/Main/`` (``ImageSets/Segmentation/`` for
  segmentation), one image id per line: the file name without its suffix (or with it), relative to the images
  folder. VOC's ``trainval.txt`` stands for train when there is no ``train.txt`` (less the ``val.txt`` images).

A split named by no list is absent: no val list means a seeded ``data.val_fraction`` of train is held out; the test
split is never trained on and is what ``eval --split test`` scores. An image in two lists, or a line naming no
image, is a `DatasetError` naming the list file and the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from cvsuite.data.common import IMAGE_EXTENSIONS, DatasetError, list_images

SPLIT_NAMES = ("train", "val", "test")
DATA_YAMLS = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
LIST_DIRS = ("splits", "ImageSets/Main")


@dataclass
class SplitLists:
    """The image files of each split a data set declares (train always; val and test when listed)."""

    source: str  # for people: "data.yaml", "splits/{train,val,test}.txt"
    files: dict[str, list[Path]]  # split -> image files, in list order, each once
    class_names: list[str] | None = None  # data.yaml's names
    unlisted: int = 0  # images beside the lists that no list names (not used)
    where: Path | None = None  # the yaml file or the folder of the lists

    def line(self, counts: dict[str, int] | None = None) -> str:
        """``splits from data.yaml: train 142, val 41, test 20`` (`counts` overrides the listed numbers)."""
        counts = counts if counts is not None else {s: len(f) for s, f in self.files.items()}
        text = f"splits from {self.source}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
        if "val" not in counts:
            text += " (no val list: a seeded data.val_fraction of train is held out)"
        if self.unlisted:
            text += f"; {self.unlisted} image(s) in no list, not used"
        return text


# ---- YOLO data.yaml -------------------------------------------------------------------------------------------
def find_data_yaml(root: Path, names_file: str | None = None) -> Path | None:
    """The data.yaml that declares splits (has a ``train:`` key): data.names_file when it is a yaml, else one of
    `DATA_YAMLS` in `root`. A yaml with ``names:`` only is a class-names file, not a split."""
    if names_file and Path(names_file).suffix in (".yaml", ".yml"):
        given = Path(names_file).expanduser()
        candidates = [given] if given.is_absolute() else [root / given, given]
    else:
        candidates = [root / name for name in DATA_YAMLS]
    for path in candidates:
        if path.is_file() and "train" in _load_yaml(path):
            return path
    return None


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML ({err})") from err
    return data if isinstance(data, dict) else {}


def yolo_names(data: dict, path: Path) -> list[str]:
    """``names:`` as a list in class-id order (a list, or an ``{id: name}`` mapping), checked against ``nc:``."""
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: expected a 'names:' list (or {{id: name}} mapping) of class names")
    if data.get("nc") is not None and data["nc"] != len(names):
        raise DatasetError(f"{path}: nc is {data['nc']} but names lists {len(names)} classes; make them agree")
    return [str(n) for n in names]


def read_data_yaml(path: Path) -> SplitLists:
    """The image files of each split a data.yaml declares, and its class names."""
    data = _load_yaml(path)
    base = path.parent
    if data.get("path"):
        declared = Path(str(data["path"])).expanduser()
        declared = declared if declared.is_absolute() else (path.parent / declared)
        # A data set copied from another machine keeps its old absolute path: its own folder is where it is now.
        base = declared if declared.is_dir() else path.parent
    if "val" not in data and data.get("valid"):
        data["val"] = data["valid"]
    files: dict[str, list[Path]] = {}
    for split in SPLIT_NAMES:
        value = data.get(split)
        if not value:
            continue
        entries = value if isinstance(value, list) else [value]
        images: list[Path] = []
        for entry in entries:
            images += _yaml_entry(path, split, str(entry), base)
        if not images:
            raise DatasetError(f"{path}: {split}: {value} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}...)")
        files[split] = _unique(images)
    _check_disjoint(files, {s: f"{path.name} {s}:" for s in files})
    return SplitLists(path.name, files, yolo_names(data, path), where=path)


def _yaml_entry(yaml_path: Path, split: str, entry: str, base: Path) -> list[Path]:
    """One ``train:``/``val:``/``test:`` entry: a folder of images (searched recursively) or a .txt list."""
    target = Path(entry).expanduser()
    if not target.is_absolute():
        target = base / target
        if not target.exists() and entry.startswith("../"):
            target = base / entry[3:]
    if target.is_dir():
        return list_images(target)
    if target.is_file() and target.suffix == ".txt":
        return _path_list(target, base)
    raise DatasetError(
        f"{yaml_path}: {split}: {entry} not found (looked for {target}). Paths are relative to the file's 'path:' "
        "key or, without one, to its own folder; fix the path or the 'path:' key."
    )


def _path_list(txt: Path, base: Path) -> list[Path]:
    """A .txt list of image paths, one per line: absolute, or relative to the list's folder (``./a.jpg``, as
    Ultralytics reads it) or to the data set folder."""
    out = []
    for lineno, line in _lines(txt):
        path = Path(line).expanduser()
        if not path.is_absolute():
            path = next((p for p in (txt.parent / line, base / line) if p.is_file()), txt.parent / line)
        if not path.is_file():
            raise DatasetError(
                f"{txt}:{lineno}: image '{line}' not found (looked for {path}). Add the image or delete the line."
            )
        out.append(path)
    return out


def yolo_label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the image path becomes ``/labels/``, the suffix ``.txt``
    (an image outside any images/ folder has its label beside it)."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if a in text:
        text = b.join(text.rsplit(a, 1))
    return Path(text).with_suffix(".txt")


# ---- id lists (splits/*.txt, ImageSets/Main/*.txt) ----------------------------------------------------------
def find_id_lists(root: Path, folders: tuple[str, ...] = LIST_DIRS) -> Path | None:
    """The first of `folders` under `root` that holds train.txt (or VOC's trainval.txt)."""
    for name in folders:
        folder = root / name
        if (folder / "train.txt").is_file() or (folder / "trainval.txt").is_file():
            return folder
    return None


def read_id_lists(folder: Path, images_dir: Path, root: Path) -> SplitLists:
    """The image files of each split named by the id lists in `folder`, found in `images_dir`."""
    by_key: dict[str, Path] = {}
    for p in list_images(images_dir):
        rel = p.relative_to(images_dir)
        by_key.setdefault(rel.with_suffix("").as_posix(), p)
        by_key.setdefault(rel.as_posix(), p)
    lists = {s: folder / f"{s}.txt" for s in SPLIT_NAMES if (folder / f"{s}.txt").is_file()}
    trainval = "train" not in lists
    if trainval:
        lists["train"] = folder / "trainval.txt"
    files: dict[str, list[Path]] = {}
    for split, txt in lists.items():
        found = []
        for lineno, line in _lines(txt):
            key = line.split()[0]  # VOC's per-class lists add " 1"/"-1"; the split lists hold the id alone
            path = by_key.get(key) or by_key.get(key.removeprefix("./"))
            if path is None:
                looked = ", ".join(f"{key}{e}" for e in IMAGE_EXTENSIONS[:3])
                raise DatasetError(
                    f"{txt}:{lineno}: '{key}' names no image in {images_dir} (looked for {key} and {looked}, ...). "
                    "Add the image, fix the id (the file name without its suffix) or delete the line."
                )
            found.append(path)
        files[split] = _unique(found)
    if trainval and "val" in files:  # VOC: trainval = train + val
        held = set(files["val"])
        files["train"] = [p for p in files["train"] if p not in held]
    files = {s: files[s] for s in SPLIT_NAMES if s in files}
    _check_disjoint(files, {s: str(lists[s]) for s in files})
    listed = {p for f in files.values() for p in f}
    unlisted = len({p for p in by_key.values()} - listed)
    rel = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder)
    names = ",".join(Path(lists[s]).stem for s in files)
    source = f"{rel}/{{{names}}}.txt" if len(files) > 1 else f"{rel}/{names}.txt"
    return SplitLists(source, files, unlisted=unlisted, where=folder)


# ---- shared -----------------------------------------------------------------------------------------------------
def _lines(txt: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty, non-comment lines of a list file."""
    try:
        text = txt.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{txt}: cannot read the list ({err})") from err
    return [(i, s) for i, line in enumerate(text.splitlines(), 1) if (s := line.strip()) and not s.startswith("#")]


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _check_disjoint(files: dict[str, list[Path]], where: dict[str, str]) -> None:
    """No image in two splits: a test image trained on, or a val image trained on, scores nothing honest."""
    seen: dict[Path, str] = {}
    for split, paths in files.items():
        for p in paths:
            key = p.resolve()
            if key in seen:
                raise DatasetError(
                    f"{p} is in the {seen[key]} split ({where[seen[key]]}) and in the {split} split ({where[split]}); "
                    "an image belongs to one split: remove it from one of the lists"
                )
            seen[key] = split
