"""Does a `--run.budget` run end on time, use its budget and finish its schedule? `tools/train.py` with each task's
default recipe on real sets of ../shared/data (weather4 classification, raccoon detection, membrane segmentation),
for each budget, once on an idle machine and once with two CPU-bound processes started 30 s in.

Each case is one whole process timed from outside; its result is kept in ``WORK/results/<set>-<budget>-<load>.json``
and a case already there is skipped, so the benchmark can be run in parts (``--budgets 90s`` now, the rest later).
The table is printed from every result file found. A case passes when the process ends within budget + 5 %, uses at
least 85 % of it (idle), writes metrics.json, and ends with the learning rate at its floor.

    python bench/budget.py [--sets weather4 raccoon membrane] [--budgets 90s 3min 10min] [--loads idle load]
                           [--work /tmp/cvsuite-budget]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_data import SHARED, write_detection_split, write_segmentation_split
from train_tool import REPO, metrics

from cvsuite.budget import parse_duration

SETS = {  # name -> (recipe, headline metric)
    "weather4": ("configs/classification/finetune.yaml", "accuracy"),
    "raccoon": ("configs/detection/finetune.yaml", "map_50"),
    "membrane": ("configs/segmentation/finetune.yaml", "miou"),
}
LOAD_AFTER_S = 30  # the two CPU-bound neighbours start this long after the run
BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def data_root(name: str, work: Path, shared: Path) -> Path:
    if name == "weather4":
        return shared / "weather4"
    root = work / "data" / name
    if not root.exists():
        if name == "raccoon":
            write_detection_split(shared / "raccoon", root)
        else:
            write_segmentation_split(shared / "membrane", root)
    return root


def run_case(name: str, budget: str, load: str, work: Path, shared: Path) -> dict:
    recipe, metric = SETS[name]
    out = work / "runs" / f"{name}-{budget}-{load}"
    cmd = [sys.executable, "tools/train.py", "--config", recipe, "--data.root", str(data_root(name, work, shared)),
           "--trainer.default_root_dir", str(out), "--quiet", "--run.budget", budget]  # fmt: skip
    budget_s = parse_duration(budget)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    burners = []
    if load == "load":
        try:
            proc.wait(timeout=LOAD_AFTER_S)
        except subprocess.TimeoutExpired:
            burners = [subprocess.Popen([sys.executable, "-c", BURN.format(s=budget_s * 2)]) for _ in range(2)]
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    for burner in burners:
        burner.kill()
    lines = stderr.splitlines()
    plan = next((line.split("cvsuite: ", 1)[-1] for line in lines if "budget plan" in line), "?")
    end = next((line.split("cvsuite: ", 1)[-1] for line in lines if ": trained " in line), "?")
    run_dir = Path(stdout.strip().splitlines()[-1].split("run folder: ", 1)[-1]) if stdout.strip() else out
    result = {
        "set": name,
        "budget": budget,
        "load": load,
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "wall_over_budget": round(wall / budget_s, 3),
        "metrics_json": (run_dir / "metrics.json").is_file(),
        "lr_at_floor": "lr at floor" in end,
        "plan": plan,
        "end": end,
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }
    if result["metrics_json"]:
        m = metrics(run_dir)
        result.update(metric=metric, value=m.get(metric), stopped_by=m.get("stopped_by"), epochs=m.get("epochs_done"))
    if proc.returncode:
        result["stderr_tail"] = stderr[-2000:]
    limit_ok = wall <= budget_s * 1.05
    used_ok = load == "load" or wall >= budget_s * 0.85
    result["pass"] = bool(limit_ok and used_ok and result["metrics_json"] and result["lr_at_floor"])
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| set | budget | load | wall s | wall / budget | metric | epochs | lr at floor | load avg (1 min) | pass |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        value = f"{r['metric']} {r['value']:.3f}" if r.get("value") is not None else "no metrics.json"
        rows.append(
            f"| {r['set']} | {r['budget']} | {r['load']} | {r['wall_s']} | {r['wall_over_budget']:.2f} | {value} | "
            f"{r.get('epochs', '-')} | {'yes' if r['lr_at_floor'] else 'no'} | "
            f"{r['loadavg_before']} -> {r['loadavg_after']} | {'yes' if r['pass'] else 'NO'} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--budgets", nargs="+", default=["90s", "3min", "10min"])
    p.add_argument("--loads", nargs="+", default=["idle", "load"], choices=["idle", "load"])
    p.add_argument("--work", default="/tmp/cvsuite-budget", help="data splits, runs and results/ (kept)")
    p.add_argument("--shared", default=str(SHARED), help="the real sets (default: ../shared/data)")
    args = p.parse_args()
    work = Path(args.work)
    results_dir = work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for budget in args.budgets:
        for load in args.loads:
            for name in args.sets:
                path = results_dir / f"{name}-{budget}-{load}.json"
                if path.exists():
                    print(f"{path.name}: done before, kept", file=sys.stderr)
                    continue
                result = run_case(name, budget, load, work, Path(args.shared))
                print(f"{path.name}: {result['wall_s']} s, pass {result['pass']}  {result['end']}", file=sys.stderr)
                if result["returncode"]:  # a crash is not a result: shown, not kept, so the case runs again
                    print(result["stderr_tail"], file=sys.stderr)
                    continue
                path.write_text(json.dumps(result, indent=1))
    results = [json.loads(f.read_text()) for f in sorted(results_dir.glob("*.json"))]
    order = {b: i for i, b in enumerate(["90s", "3min", "10min"])}
    results.sort(key=lambda r: (order.get(r["budget"], 9), r["load"], list(SETS).index(r["set"])))
    print(table(results))


if __name__ == "__main__":
    main()
