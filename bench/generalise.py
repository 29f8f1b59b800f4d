"""Each task's default recipe against its plain PyTorch reference on every real set of ../shared/data for that task,
at the same wall-clock budget, over several seeds: does the recipe generalise beyond the set it was tuned on?

A case is (task, set, side, seed). Each case is one whole process, timed from outside, one after the other:

- ours: ``tools/train.py --config <recipe> --data.root ROOT --run.budget B --run.seed S`` as a user runs it; its
  quality is the run's metrics.json (the best checkpoint evaluated on the whole validation split);
- plain: ``bench/plain_<task>.py --root ROOT --budget-s B --seed S``, given the same budget for its whole process,
  the same backbone, data split and image size (read from the recipe), scored by the same cvsuite metric code.

Sets (bench/bench_data.py writes those that need it under --work/data, once):

- classification (3 min): sign_digits, weather4 (their train/val folders), raccoon_crops (raccoon vs background
  crops of the raccoon photos, split by photo);
- detection (6 min): raccoon (VOC, seeded 80/20 split), bccd (VOC, its train/val lists), thermal_dogs_people (YOLO,
  its train/valid folders);
- segmentation (6 min): membrane (seeded 24/6 split), dubai_aerial (palette masks, 255 = void, its train/val lists,
  the class names of its classes.json given to both sides);
- generation (6 min): raccoon_gan (every annotated raccoon, a square about its box), sunrise_gan (each photo's
  centre square); both at the recipe's image size, FID/KID against every image.

Every case writes ``--work/results/<set>/<side>-seed<S>-<budget>s.json``; a case whose file holds a result is
skipped, so a stopped run continues where it left off (a failed case runs again). The final table compares, per set
and metric, the mean over seeds of each side with its spread (half the range: mean ± spread covers every seed);
"ahead beyond spread" means the margin exceeds both spreads together, i.e. every seed of ours beats every seed of
plain.

    python bench/generalise.py --work /tmp/generalise --lock /tmp/cvsuite-cpu.lock   # 40 cases, ~4 h on 2 cores
    python bench/generalise.py --work /tmp/gen-smoke --budget-scale 0.15 --seeds 42  # smoke run, ~20 min (idle CPU)

A loaded CPU makes both sides refuse short budgets (start-up and evaluation alone exceed them); a smoke check of the
paths can then cut ours' training instead: ``--ours-args "--run.budget null --trainer.max_epochs 2
--trainer.limit_train_batches 2"`` (results with extra flags are stored under a name of their own).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from bench_data import SETS, SHARED, build, class_names
from train_tool import REPO, metrics, train_tool

TASKS = ("classification", "detection", "segmentation", "generation")
SIDES = ("ours", "plain")
RECIPES = {
    "classification": "configs/classification/finetune.yaml",
    "detection": "configs/detection/finetune.yaml",
    "segmentation": "configs/segmentation/finetune.yaml",
    "generation": "configs/generation/fewshot.yaml",
}
BUDGET_S = {"classification": 180.0, "detection": 360.0, "segmentation": 360.0, "generation": 360.0}
# (key, label, higher is better) per task, the headline first. Generation's keys are read in the feature space the
# two sides share (`scores`); segmentation's lowest per-class IoU is derived from per_class_iou.
METRICS = {
    "classification": (("accuracy", "accuracy", True), ("auroc", "AUROC", True)),
    "detection": (("map_50", "mAP@.5", True), ("map", "mAP@[.5:.95]", True), ("map_75", "mAP@.75", True)),
    "segmentation": (("miou", "mIoU", True), ("min_class_iou", "lowest class IoU", True)),
    "generation": (("fid", "FID", False), ("kid", "KID", False)),
}


@dataclass(frozen=True)
class Case:
    task: str
    set: str
    side: str
    seed: int
    budget_s: float
    extra: tuple[str, ...] = ()  # flags appended to the side's command (smoke checks); they name the result apart

    @property
    def name(self) -> str:
        tag = "-x" + hashlib.sha1(" ".join(self.extra).encode()).hexdigest()[:6] if self.extra else ""
        return f"{self.side}-seed{self.seed}-{self.budget_s:g}s{tag}"

    @property
    def timeout_s(self) -> float:
        """A side still running this long is stopped and recorded as failed (a hung process must not stall the
        hours of cases behind it; a loaded CPU can take minutes before training starts)."""
        return 2 * self.budget_s + 600

    def result_path(self, work: Path) -> Path:
        return work / "results" / self.set / f"{self.name}.json"

    def run_dir(self, work: Path) -> Path:
        return work / "runs" / self.set / self.name


# ---- the two sides -------------------------------------------------------------------------------------------------
def recipe_data(task: str) -> dict:
    """The ``data`` section of the task's recipe: the image size both sides use."""
    return yaml.safe_load((REPO / RECIPES[task]).read_text()).get("data") or {}


def data_size(task: str) -> int | None:
    """The image side the set writers resize to (classification crops, GAN images); None where they copy."""
    return recipe_data(task).get("image_size") if task in ("classification", "generation") else None


def plain_args(task: str, names: list[str] | None) -> list[str]:
    """The plain reference's flags that match the recipe's data (image size, crop size, class names)."""
    data = recipe_data(task)
    args = []
    if task == "segmentation":
        args += ["--crop-size", str(data.get("crop_size", 256))]
        if data.get("image_size"):
            args += ["--image-size", str(data["image_size"])]
        if names:
            args += ["--class-names", *names]
    elif data.get("image_size"):
        args += ["--image-size", str(data["image_size"])]
    return args


def last_line(text: str, default: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else default


def run_ours(case: Case, root: Path, out: Path, names: list[str] | None) -> dict:
    """The case's result: wall seconds, the run's metrics.json (or the error) and the plan it logged."""
    extra = ["--data.class_names", json.dumps(names)] if names else []
    budget = ["--run.budget", f"{case.budget_s:g}s", "--run.seed", str(case.seed)]
    t0 = time.perf_counter()
    try:
        seconds, run_dir, stderr = train_tool(
            RECIPES[case.task], root, out, *budget, *extra, *case.extra, timeout=case.timeout_s
        )
    except SystemExit as err:  # train_tool exits with the command and its stderr
        out.mkdir(parents=True, exist_ok=True)
        (out / "failed.txt").write_text(str(err))
        return {"wall_s": time.perf_counter() - t0, "metrics": {"error": last_line(str(err), "failed")}}
    (run_dir / "train_stderr.txt").write_text(stderr)
    plan = next((line.split("budget plan: ", 1)[-1] for line in stderr.splitlines() if "budget plan" in line), None)
    return {"wall_s": seconds, "metrics": metrics(run_dir), "plan": plan, "run_dir": str(run_dir)}


def run_plain(case: Case, root: Path, out: Path, names: list[str] | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "metrics.json"
    started = time.time()
    cmd = [sys.executable, f"bench/plain_{case.task}.py", "--root", str(root), "--budget-s", f"{case.budget_s:g}",
           "--started", repr(started), "--out", str(result), "--seed", str(case.seed),
           *plain_args(case.task, names), *case.extra]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=case.timeout_s)
    except subprocess.TimeoutExpired:
        error = f"timed out after {case.timeout_s:.0f} s"
        return {"wall_s": time.perf_counter() - t0, "metrics": {"error": error}, "command": cmd}
    seconds = time.perf_counter() - t0
    (out / "stderr.txt").write_text(proc.stderr)
    if proc.returncode:
        return {"wall_s": seconds, "metrics": {"error": last_line(proc.stderr, f"exit code {proc.returncode}")}}
    values = json.loads(result.read_text())
    extra = {k: values[k] for k in ("train_seconds", "steps", "epochs", "images") if k in values}
    return {"wall_s": seconds, "metrics": values, "plan": json.dumps(extra), "command": cmd}


def commit() -> str:
    """The checked-out commit, "+dirty" when the working tree has changes (results say what code made them)."""
    run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = run("status", "--porcelain", "--", "cvsuite", "configs", "bench", "tools")
    return run("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


@contextlib.contextmanager
def cpu_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (shared with other jobs on this machine) for one case; no-op without one."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_case(case: Case, work: Path, shared: Path, lock: Path | None, data: Path | None = None) -> dict:
    """Run one case (its set written first under `data`, default ``work/data``, if needed); store its result."""
    root = build(case.set, data or work / "data", data_size(case.task), shared)
    names = class_names(shared / SETS[case.set].source) if SETS[case.set].named_classes else None
    out = case.run_dir(work)
    if out.exists():
        shutil.rmtree(out)  # a stopped earlier attempt
    with cpu_lock(lock):
        result = (run_ours if case.side == "ours" else run_plain)(case, root, out, names)
    result = {**vars(case), "data_root": str(root), "commit": commit(), **result}
    path = case.result_path(work)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)  # whole or absent: a stopped run never leaves half a result
    return result


# ---- scores and the table ------------------------------------------------------------------------------------------
def scores(task: str, values: dict, space: str | None = None) -> dict[str, float]:
    """The task's METRICS keys of a metrics dict (missing ones left out). Generation: FID/KID in feature network
    `space` (its ``fid_<space>`` keys) when given and present, else the dict's own ``fid``/``kid``."""
    if "error" in values:
        return {}
    out = {k: values[k] for k, _, _ in METRICS[task] if isinstance(values.get(k), (int, float))}
    if task == "segmentation":
        ious = [v for v in (values.get("per_class_iou") or {}).values() if v is not None]
        if ious:
            out["min_class_iou"] = min(ious)
    if task == "generation" and space and f"fid_{space}" in values:
        out.update(fid=values[f"fid_{space}"], kid=values[f"kid_{space}"])
    return out


def case_line(case: Case, result: dict, note: str = "") -> str:
    values = result["metrics"]
    head = f"{case.task} {case.set} {case.side} seed {case.seed}: {result['wall_s']:.1f} s / {case.budget_s:g} s"
    if "error" in values:
        return f"{head}  FAILED: {values['error'][:300]}{note}"
    got = scores(case.task, values)
    shown = "  ".join(f"{label} {got[k]:.3f}" for k, label, _ in METRICS[case.task] if k in got)
    if case.task == "segmentation" and got.get("min_class_iou") is not None:
        worst = min((v, n) for n, v in values["per_class_iou"].items() if v is not None)[1]
        shown += f" ({worst})"
    if case.task == "generation":
        shown += f" (in {values.get('feature_network', '?')})"
    return f"{head}  {shown}{note}" + (f"; {result['plan']}" if result.get("plan") else "")


def compare(ours: Sequence[float], plain: Sequence[float], higher_is_better: bool) -> dict:
    """Means, spreads (half the range over seeds), the margin (ours - plain mean) and whether ours is ahead beyond
    the spread: its margin in the better direction exceeds both spreads together, so with these seeds every run of
    ours beats every run of plain."""
    spread = lambda v: (max(v) - min(v)) / 2  # noqa: E731
    margin = mean(ours) - mean(plain)
    better = margin if higher_is_better else -margin
    return {
        "ours": mean(ours),
        "ours_spread": spread(ours),
        "plain": mean(plain),
        "plain_spread": spread(plain),
        "margin": margin,
        "ahead": better > spread(ours) + spread(plain),
        "behind": -better > spread(ours) + spread(plain),
    }


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def set_rows(task: str, name: str, ours: list[dict], plain: list[dict]) -> list[str]:
    """The table rows of one set: one per metric, from the results that did not fail."""
    failed = sum("error" in r["metrics"] for r in ours + plain)
    ours = [r for r in ours if "error" not in r["metrics"]]
    plain = [r for r in plain if "error" not in r["metrics"]]
    if not ours or not plain:
        return [f"| {task} | {name} | - | {len(ours)} done | {len(plain)} done | - | - | {failed} failed | - |"]
    # Generation: both sides in the plain reference's feature network (ours keeps fid_<net> for other networks).
    space = next((r["metrics"].get("feature_network") for r in plain), None) if task == "generation" else None
    wall = f"{mean([r['wall_s'] for r in ours]):.0f} / {mean([r['wall_s'] for r in plain]):.0f}"
    rows = []
    for key, label, higher in METRICS[task]:
        o = [s[key] for s in (scores(task, r["metrics"], space) for r in ours) if key in s]
        p = [s[key] for s in (scores(task, r["metrics"], space) for r in plain) if key in s]
        if not o or not p:
            continue
        c = compare(o, p, higher)
        if min(len(o), len(p)) < 2:  # no spread to go beyond
            verdict = "one seed: " + ("ahead" if c["ahead"] else "behind" if c["behind"] else "tie")
        else:
            verdict = "**yes**" if c["ahead"] else ("no, behind" if c["behind"] else "no, within spread")
        label += ("" if higher else " (lower is better)") + (f" [{space}]" if space else "")
        first = not rows
        rows.append(
            f"| {task if first else ''} | {name if first else ''} | {label} | {c['ours']:.3f} ± {c['ours_spread']:.3f} "
            f"| {c['plain']:.3f} ± {c['plain_spread']:.3f} | {c['margin']:+.3f} | {verdict} | {len(o)} / {len(p)}"
            f"{f', {failed} failed' if failed else ''} | {wall if first else ''} |"
        )
    return rows


def table(results: list[dict]) -> str:
    """The markdown table of the cases: per set and metric, each side's mean ± spread over its seeds."""
    by_set: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in results:
        by_set.setdefault((r["task"], r["set"]), {"ours": [], "plain": []})[r["side"]].append(r)
    rows = ["| task | set | metric | ours | plain | margin | ours ahead beyond spread | seeds | wall s ours / plain |",
            "|---|---|---|---|---|---:|---|---|---|"]  # fmt: skip
    for (task, name), sides in sorted(by_set.items(), key=lambda kv: (TASKS.index(kv[0][0]), kv[0][1])):
        rows += set_rows(task, name, sides["ours"], sides["plain"])
    return "\n".join(rows)


# ---- the command ---------------------------------------------------------------------------------------------------
def cases(
    tasks: Sequence[str],
    sets: Sequence[str] | None,
    seeds: Sequence[int],
    sides: Sequence[str],
    scale: float,
    extra: dict[str, Sequence[str]] | None = None,
) -> list[Case]:
    """Every case asked for, set by set (both sides of a seed next to each other, so a stopped run has pairs);
    `extra`: flags appended to a side's command, by side."""
    chosen = [s for s, spec in SETS.items() if spec.task in tasks and (not sets or s in sets)]
    return [
        Case(SETS[s].task, s, side, seed, round(BUDGET_S[SETS[s].task] * scale, 1), tuple((extra or {}).get(side, ())))
        for s in chosen
        for seed in seeds
        for side in sides
    ]


def run_all(todo: list[Case], work: Path, shared: Path, lock: Path | None, data: Path | None = None) -> list[dict]:
    """Run the cases one after the other, each printed when done; those with a result already are only printed."""
    results = []
    for case in todo:
        path = case.result_path(work)
        stored = json.loads(path.read_text()) if path.is_file() else None
        if stored is not None and "error" not in stored["metrics"]:
            print(case_line(case, stored, "  (done before)"), flush=True)
        else:
            stored = run_case(case, work, shared, lock, data)
            print(case_line(case, stored), flush=True)
        results.append(stored)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=None, help="default: every set of the tasks")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43], help="42 is the recipes' own seed")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--budget-scale", type=float, default=1.0, help="x the budgets (3/6 min); 0.15: a smoke run")
    p.add_argument("--work", type=Path, default=Path("/tmp/generalise"), help="data, runs and results go here")
    p.add_argument("--shared", type=Path, default=SHARED, help="the real sets (../shared/data)")
    p.add_argument("--lock", type=Path, default=None, help="flock this file around each case (a shared CPU)")
    p.add_argument("--ours-args", default="", help="flags appended to tools/train.py (smoke checks only)")
    p.add_argument("--plain-args", default="", help="flags appended to bench/plain_<task>.py (smoke checks only)")
    args = p.parse_args()
    extra = {"ours": shlex.split(args.ours_args), "plain": shlex.split(args.plain_args)}
    todo = cases(args.tasks, args.sets, args.seeds, args.sides, args.budget_scale, extra)
    if not todo:
        p.error("no case: --sets names none of the --tasks")
    hours = sum(c.budget_s for c in todo) / 3600
    print(f"{len(todo)} cases, {hours:.1f} h of budgets, results in {args.work}/results, commit {commit()}", flush=True)
    results = run_all(todo, args.work, args.shared, args.lock)
    scale = f" x {args.budget_scale:g}" if args.budget_scale != 1 else ""
    print(f"\nbudget per side: classification 3 min, others 6 min{scale} (whole process, timed from outside); "
          f"seeds {' '.join(map(str, args.seeds))}\n")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
