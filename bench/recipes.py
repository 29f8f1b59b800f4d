"""Each task's default recipe against a careful plain PyTorch/timm reference, at the same wall-clock budget, on real
development data (../shared/data). Per task and side one process, timed whole from outside, one after the other:

- ours: ``tools/train.py --config <recipe> --data.root ROOT --run.budget B`` as a user runs it; its quality is the
  run's metrics.json (the best checkpoint evaluated on the whole validation split);
- plain: ``bench/plain_<task>.py`` given the same budget for its whole process, the same backbone
  (tf_efficientnet_lite0, offline ImageNet weights), data split and image size, scored by the same cvsuite metric
  code on the same validation files.

Data, built once under --work/data and reused (never in the repository):

- classification: raccoon vs background crops at 224 px (`cvsuite.demo_data.write_raccoon_crops`, split by photo);
- detection: ../shared/data/raccoon (VOC) as an explicit seeded 80/20 train/val folder split (duplicates together);
- segmentation: ../shared/data/membrane (0 = membrane, 255 = cell) as an explicit seeded 24/6 folder split;
- generation: every annotated raccoon, cropped to a square around its box at 64 px (FID against all of them).

    python bench/recipes.py [--tasks classification detection segmentation generation] [--budget 3min]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from train_tool import REPO, metrics, train_tool, write_gan_crops

from cvsuite.budget import parse_duration
from cvsuite.demo_data import write_raccoon_crops

SHARED = REPO.parent / "shared" / "data"
TASKS = ("classification", "detection", "segmentation", "generation")


@dataclass(frozen=True)
class Task:
    recipe: str
    metric: str  # the headline key of metrics.json
    higher_is_better: bool
    extra: str | None = None  # a second key shown in the table


SPEC = {
    "classification": Task("configs/classification/finetune.yaml", "accuracy", True, "auroc"),
    "detection": Task("configs/detection/finetune.yaml", "map_50", True, "map"),
    "segmentation": Task("configs/segmentation/finetune.yaml", "miou", True),
    "generation": Task("configs/generation/fewshot.yaml", "fid", False, "kid"),
}


# ---- data ------------------------------------------------------------------------------------------------------
def seeded_val(n: int, fraction: float, seed: int = 0) -> set[int]:
    order = np.random.default_rng(seed).permutation(n)
    return set(order[: int(round(n * fraction))].tolist())


def write_detection_split(src: Path, root: Path, val_fraction: float = 0.2) -> Path:
    """ROOT/{train,val}/{images,annotations} from a VOC folder, split by image (seed 0). Photos with the same bytes
    land in the same split (the raccoon set holds one pair under two names, which `cvsuite check` rejects)."""
    xmls = sorted((src / "annotations").glob("*.xml"))
    images = [src / "images" / ET.parse(xml).getroot().findtext("filename") for xml in xmls]
    digests = [hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest() for p in images]
    unique = sorted(set(digests))
    val_digests = {unique[i] for i in seeded_val(len(unique), val_fraction)}
    for xml, image, digest in zip(xmls, images, digests):
        split = root / ("val" if digest in val_digests else "train")
        for sub in ("images", "annotations"):
            (split / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(xml, split / "annotations" / xml.name)
        shutil.copy(image, split / "images")
    return root


def write_segmentation_split(src: Path, root: Path, val_fraction: float = 0.2) -> Path:
    """ROOT/{train,val}/{images,masks}/N.png from ``src/image/N.png`` + ``src/label/N.png`` (seed 0)."""
    images = sorted((src / "image").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    val = seeded_val(len(images), val_fraction)
    for i, image in enumerate(images):
        split = root / ("val" if i in val else "train")
        for sub in ("images", "masks"):
            (split / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, split / "images" / image.name)
        shutil.copy(src / "label" / image.name, split / "masks" / image.name)
    return root


def build_data(task: str, work: Path, raccoon: Path, membrane: Path) -> Path:
    root = work / "data" / task
    if root.exists():
        return root
    if task == "classification":
        return write_raccoon_crops(raccoon, root, size=224)
    if task == "detection":
        return write_detection_split(raccoon, root)
    if task == "segmentation":
        return write_segmentation_split(membrane, root)
    return write_gan_crops(raccoon, root)


# ---- the two sides -------------------------------------------------------------------------------------------------
def run_ours(task: str, root: Path, out: Path, budget: str) -> tuple[float, dict, str]:
    """(wall seconds, metrics.json, the plan it logged); a failed run gives ``{"error": its last line}``."""
    t0 = time.perf_counter()
    try:
        seconds, run_dir, stderr = train_tool(SPEC[task].recipe, root, out, "--run.budget", budget)
    except SystemExit as err:  # train_tool exits with the command and its stderr
        return time.perf_counter() - t0, {"error": str(err).strip().splitlines()[-1]}, "-"
    (run_dir / "train_stderr.txt").write_text(stderr)
    plan = next((line.split("budget plan: ", 1)[-1] for line in stderr.splitlines() if "budget plan" in line), "?")
    return seconds, metrics(run_dir), plan


def run_plain(task: str, root: Path, out: Path, budget_s: float) -> tuple[float, dict]:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "metrics.json"
    started = time.time()
    cmd = [sys.executable, f"bench/plain_{task}.py", "--root", str(root), "--budget-s", str(budget_s),
           "--started", repr(started), "--out", str(result)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (out / "stderr.txt").write_text(proc.stderr)
    if proc.returncode:
        return seconds, {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return seconds, json.loads(result.read_text())


# ---- the table -----------------------------------------------------------------------------------------------------
def show(values: dict, task: Task) -> str:
    if "error" in values:
        return f"failed: {values['error'][:200]}"
    main = f"{task.metric} {values[task.metric]:.3f}"
    if task.extra and values.get(task.extra) is not None:
        main += f" ({task.extra} {values[task.extra]:.3f})"
    return main


def row(name: str, ours: tuple[float, dict], plain: tuple[float, dict]) -> str:
    task = SPEC[name]
    if "error" in ours[1] or "error" in plain[1]:
        cells = [name, show(ours[1], task), f"{ours[0]:.1f}", show(plain[1], task), f"{plain[0]:.1f}", "-"]
        return "| " + " | ".join(cells) + " |"
    margin = ours[1][task.metric] - plain[1][task.metric]
    wins = margin > 0 if task.higher_is_better else margin < 0
    note = "ours better" if wins else ("tie" if margin == 0 else "PLAIN BETTER")
    cells = [name, show(ours[1], task), f"{ours[0]:.1f}", show(plain[1], task), f"{plain[0]:.1f}",
             f"{margin:+.3f} ({note})"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--budget", default="3min", help="wall-clock budget of each side's whole process")
    p.add_argument("--raccoon", type=Path, default=SHARED / "raccoon")
    p.add_argument("--membrane", type=Path, default=SHARED / "membrane")
    p.add_argument("--work", type=Path, default=Path("/tmp/recipes"), help="data and run folders go here")
    p.add_argument("--sides", nargs="+", choices=("ours", "plain"), default=["ours", "plain"])
    args = p.parse_args()
    budget_s = parse_duration(args.budget)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    print(f"budget {args.budget} ({budget_s:.0f} s) per side, {stamp} UTC, runs under {args.work}/{stamp}", flush=True)
    rows = []
    for name in args.tasks:
        root = build_data(name, args.work, args.raccoon, args.membrane)
        runs = args.work / stamp / name
        runs.mkdir(parents=True, exist_ok=True)
        results = {}
        if "ours" in args.sides:
            seconds, values, plan = run_ours(name, root, runs / "ours", args.budget)
            results["ours"] = (seconds, values)
            print(f"{name} ours : {show(values, SPEC[name])} in {seconds:.1f} s; plan: {plan}", flush=True)
        if "plain" in args.sides:
            seconds, values = run_plain(name, root, runs / "plain", budget_s)
            results["plain"] = (seconds, values)
            extra = {k: values[k] for k in ("train_seconds", "steps", "epochs", "images") if k in values}
            print(f"{name} plain: {show(values, SPEC[name])} in {seconds:.1f} s; {extra}", flush=True)
        (runs / "results.json").write_text(json.dumps({k: {"seconds": v[0], **v[1]} for k, v in results.items()}))
        if len(results) == 2:
            rows.append(row(name, results["ours"], results["plain"]))
    if rows:
        print(f"\nbudget {args.budget} per side (whole process, timed from outside)")
        print("| task | ours | ours wall s | plain | plain wall s | margin (ours - plain) |")
        print("|---|---|---:|---|---:|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
