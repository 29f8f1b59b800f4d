"""What other busy processes on the same cores do to a training step, per OpenMP setting, side by side in one run:
the few-shot GAN recipe's step (`bench/gan_cost.py`'s probe: its data module and Lightning loop) on an idle CPU and
next to `--busy` processes that each keep one core busy (a second training, a compile, a notebook's loop).

PyTorch runs one OpenMP thread per core. When another process takes a core, the thread there runs only part of the
time, and the other waits for it at every parallel region, spinning first (libgomp's default). The settings that
README's "CPU notes" give against that are compared here with the default:

    python bench/cpu_contention.py --images FOLDER [--busy 1] [--steps 8] [--rounds 2]

FOLDER: any folder of images (e.g. ``bench/generalise.py``'s ``WORK/data/raccoon_gan-64``). Each probe is its own
process (OpenMP reads its environment once, at start); the fastest of `--rounds` interleaved rounds is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SETTINGS = {
    "default (a thread per core)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}
BUSY_LOOP = "while True: pass"


def probe(images: Path, env: dict[str, str], steps: int) -> float:
    """Seconds per step of the GAN recipe in a fresh process with `env` added to this one's environment."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from gan_cost import step_seconds; "
        "print(step_seconds(Path(sys.argv[2]), [], int(sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BENCH), str(images), str(steps)],
        env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(images: Path, busy: int, steps: int) -> dict[str, float]:
    """Each setting's seconds per step with `busy` busy-looping processes running beside it."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        return {name: probe(images, env, steps) for name, env in SETTINGS.items()}
    finally:
        for p in loops:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the probe (default 1)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    best: dict[tuple[int, str], float] = {}
    for _ in range(args.rounds):
        for busy in (0, args.busy):
            for name, seconds in measure(args.images, busy, args.steps).items():
                best[busy, name] = min(best.get((busy, name), seconds), seconds)
    idle_default = best[0, next(iter(SETTINGS))]
    loaded_default = best[args.busy, next(iter(SETTINGS))]
    print(f"cores: {os.cpu_count()}; busy processes beside the probe: {args.busy}")
    print("| setting | idle s/step | busy s/step | busy vs idle | vs default idle | vs default busy |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in SETTINGS:
        idle, loaded = best[0, name], best[args.busy, name]
        print(
            f"| {name} | {idle:.3f} | {loaded:.3f} | {loaded / idle:.2f}x | {idle / idle_default:.2f}x "
            f"| {loaded / loaded_default:.2f}x |"
        )


if __name__ == "__main__":
    main()
