"""Time around the training: a short classification run of cvsuite, whole process, against a plain PyTorch/timm
script (bench/plain_classification.py --max-steps) making the same optimiser steps on the same data, with the phases
of each.

Both sides: tf_efficientnet_lite0 with the offline ImageNet weights, batch 16 (the recipe's), one DataLoader
worker (cvsuite's default on 2 cores), `--image-size` px, `--steps` optimiser steps, then an evaluation of the
whole validation split. Ours is ``tools/train.py --config configs/classification/finetune.yaml`` as users run it
(progress bar, validation each epoch, checkpoints, metrics.json, plots); its phases are metrics.json's ``timings``
(seconds from the process start). The plain script prints its own. Each side runs `--repeats` times, alternating;
the exit is timed from outside (launch to exit of the process). cvsuite's bytecode is compiled first, as an installed
package has it.

Ratios are speeds, plain / ours (1.0 = as fast as the plain script): of the whole process, and of the whole process
less the final evaluation on each side. Also printed: the time to the first step of a ``--run.budget 3min`` run of
ours (stopped by one SIGINT right after its first step; it still evaluates and writes metrics.json).

    python bench/overhead.py --work /tmp/overhead --lock /tmp/cvsuite-cpu.lock     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_data import SHARED
from generalise import cpu_lock
from train_tool import REPO

RECIPE = "configs/classification/finetune.yaml"
BATCH = 16  # the recipe's data.batch_size
# Rows of the table: (name in the timings, what it is). Ours' marks, in order; the plain script has no check or plots.
PHASES = (
    ("imports", "imports done"),
    ("check", "dataset check done"),
    ("data", "data ready (scan, splits, loaders)"),
    ("model", "model built"),
    ("first_step", "first step done"),
    ("training", "all steps done"),
    ("final_evaluation", "final evaluation done"),
    ("plots", "plots done"),
    ("exit", "process exit (timed outside)"),
)


def run_ours(root: Path, out: Path, steps: int, size: int, *extra: str, stop_after_first_step: bool = False) -> dict:
    """One ``tools/train.py`` process; its metrics.json timings plus ``exit`` (seconds from launch)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "tools/train.py", "--config", RECIPE, "--data.root", str(root),
           "--data.image_size", str(size), "--trainer.default_root_dir", str(out), *extra]  # fmt: skip
    if steps:
        cmd += ["--trainer.max_steps", str(steps)]
    log = out.with_suffix(".log")
    start = time.time()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
        if stop_after_first_step:  # the plan line is logged as training starts; the first step follows at once
            while proc.poll() is None and "budget plan:" not in log.read_text():
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)  # stops after the step in progress, then evaluates
        code = proc.wait()
    exit_s = time.time() - start
    if code not in (0, 130):
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{log.read_text()[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics["timings"], "exit": exit_s, "steps": metrics["steps_done"], "accuracy": metrics["accuracy"]}


def run_plain(root: Path, out: Path, steps: int, size: int) -> dict:
    """One bench/plain_classification.py process; its timings plus ``exit`` (seconds from launch)."""
    cmd = [sys.executable, "bench/plain_classification.py", "--root", str(root), "--max-steps", str(steps),
           "--image-size", str(size), "--batch-size", str(BATCH), "--out", str(out)]  # fmt: skip
    start = time.time()
    proc = subprocess.run([*cmd, "--started", repr(start)], cwd=REPO, capture_output=True, text=True)
    exit_s = time.time() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {**result["timings"], "exit": exit_s, "steps": result["steps"], "accuracy": result["accuracy"]}


def derived(t: dict) -> dict:
    """Per-step time, the final evaluation, and the time outside training, from one run's phase times."""
    steps = t["steps"]
    per_step = (t["training"] - t["first_step"]) / max(1, steps - 1)
    evaluation = t["final_evaluation"] - t["training"]
    training = t["training"] - t["first_step"] + per_step  # the first step counts as one step
    return {
        "per_step": per_step,
        "evaluation": evaluation,
        "outside": t["exit"] - training,
        "outside_less_eval": t["exit"] - training - evaluation,
        "whole": t["exit"],
        "whole_less_eval": t["exit"] - evaluation,
        "before_first_step": t["first_step"] - per_step,
    }


def _cells(runs: list[dict], key: str) -> str:
    values = [r.get(key) for r in runs]
    if any(v is None for v in values):
        return " ".join(f"{'-':>6}" for _ in values) + f" {'-':>7}"
    return " ".join(f"{v:6.2f}" for v in values) + f" {statistics.median(values):7.2f}"


def table(ours: list[dict], plain: list[dict]) -> str:
    n = len(ours)
    head = " ".join(f"{'run' + str(i + 1):>6}" for i in range(n))
    lines = [f"{'seconds from process start':<36} | ours {head} {'median':>7} | plain {head} {'median':>7}"]
    for key, text in PHASES:
        lines.append(f"{text:<36} |      {_cells(ours, key)} |       {_cells(plain, key)}")
    d_ours, d_plain = [derived(r) for r in ours], [derived(r) for r in plain]
    lines.append("")
    for key, text in (
        ("per_step", "per step (s)"),
        ("before_first_step", "before the first step"),
        ("evaluation", "final evaluation"),
        ("outside", "outside training (all but the steps)"),
        ("outside_less_eval", "outside training, less the evaluation"),
        ("whole", "whole process"),
        ("whole_less_eval", "whole process less the evaluation"),
    ):
        lines.append(f"{text:<36} |      {_cells(d_ours, key)} |       {_cells(d_plain, key)}")
    med = {k: (statistics.median(d[k] for d in d_ours), statistics.median(d[k] for d in d_plain)) for k in d_ours[0]}
    lines += [
        "",
        f"speed, plain / ours, whole process:       {med['whole'][1] / med['whole'][0]:.2f}x "
        f"(medians {med['whole'][1]:.1f} s / {med['whole'][0]:.1f} s)",
        f"speed, plain / ours, less the evaluation: {med['whole_less_eval'][1] / med['whole_less_eval'][0]:.2f}x "
        f"(medians {med['whole_less_eval'][1]:.1f} s / {med['whole_less_eval'][0]:.1f} s)",
        f"per step: ours {med['per_step'][0]:.3f} s, plain {med['per_step'][1]:.3f} s (ours' include its validation "
        "after each epoch and the checkpoint writes)",
        f"accuracy after the steps: ours {[round(r['accuracy'], 3) for r in ours]}, "
        f"plain {[round(r['accuracy'], 3) for r in plain]}",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the runs (replaced)")
    p.add_argument("--root", type=Path, default=SHARED / "weather4", help="classification set (default weather4)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (0: only the --run.budget check)")
    p.add_argument("--lock", type=Path, default=None, help="flock this file around each process (a shared CPU)")
    p.add_argument("--no-budget", action="store_true", help="skip the --run.budget 3min first-step check")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # Bytecode as an installed package has it (pip compiles at install), whatever PYTHONDONTWRITEBYTECODE says:
    # neither side should pay for compiling cvsuite's sources in every process.
    for folder in ("cvsuite", "bench"):
        compileall.compile_dir(REPO / folder, quiet=1)
    ours, plain = [], []
    for i in range(args.repeats):
        with cpu_lock(args.lock):
            ours.append(run_ours(args.root, args.work / f"ours-{i}", args.steps, args.image_size))
        print(f"ours {i + 1}: {json.dumps({k: round(v, 2) for k, v in ours[-1].items()})}", flush=True)
        with cpu_lock(args.lock):
            plain.append(run_plain(args.root, args.work / f"plain-{i}.json", args.steps, args.image_size))
        print(f"plain {i + 1}: {json.dumps({k: round(v, 2) for k, v in plain[-1].items()})}", flush=True)
    if args.repeats:
        print(f"\n{args.steps} steps, batch {BATCH}, {args.image_size} px, {args.root}; {args.repeats} runs each\n")
        print(table(ours, plain))
    if not args.no_budget:
        with cpu_lock(args.lock):
            budget = run_ours(
                args.root, args.work / "ours-budget", 0, args.image_size, "--run.budget", "3min",
                stop_after_first_step=True,
            )  # fmt: skip
        print(
            f"\n--run.budget 3min: first step done {budget['first_step']:.1f} s after the process start "
            f"(imports {budget['imports']:.1f} s, check {budget['check']:.1f} s, data {budget['data']:.1f} s, "
            f"model {budget['model']:.1f} s)"
        )


if __name__ == "__main__":
    main()
