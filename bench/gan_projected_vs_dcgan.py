"""FID/KID after the same wall-clock budget: the projected discriminator (frozen pretrained backbone) against
from-scratch discriminators, on the same folder of images.

    python bench/gan_projected_vs_dcgan.py [--data FOLDER] --minutes 10 --out runs/bench_gan

Without --data it writes the 100 face crops of scikit-image's LFW subset (25x25 grey photos) to <out>/faces.

Variants (one training each, run one after the other so they do not compete for the CPU):
    projected        configs/generation/fewshot.yaml as shipped
    projected-learned the same with the 1x1 projections trained (the recipe keeps them fixed, as the paper does)
    fastgan+dcgan-D  the same generator with the from-scratch DCGAN discriminator (isolates the discriminator)
    dcgan            configs/generation/dcgan.yaml: plain DCGAN generator and discriminator

Every run gets the same ``run.budget`` (the planner sizes its epochs and validation cadence to end within it);
FID/KID are those of its best checkpoint, scored by the run's final evaluation (EMA generator, as many generated as
real images) in the recipe's metric network, FID's Inception-v3, with FID in the projected discriminator's own
feature space (tf_efficientnet_lite0) beside it. Prints a Markdown table and writes results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvsuite.config import load_config  # noqa: E402
from cvsuite.run import train  # noqa: E402

VARIANTS = {
    "projected": ("fewshot.yaml", []),
    "projected-learned": ("fewshot.yaml", ["--model.projection", "learned"]),
    "fastgan+dcgan-D": ("fewshot.yaml", ["--model.discriminator", "dcgan", "--model.d_channels", "32"]),
    "dcgan": ("dcgan.yaml", []),
}


def write_lfw_faces(folder: Path) -> Path:
    """The 100 faces of ``skimage.data.lfw_subset()`` as PNGs: a real few-shot photo set that ships offline."""
    import numpy as np
    from PIL import Image
    from skimage.data import lfw_subset

    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(lfw_subset()[:100]):  # the first 100 are faces, the rest non-faces
        Image.fromarray((face * 255).round().astype(np.uint8)).save(folder / f"face_{i:03d}.png")
    return folder


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(name: str, data: str, minutes: float, out: Path, extra: list[str]) -> dict:
    recipe, overrides = VARIANTS[name]
    overrides = overrides + [
        "--data.root", data,
        "--run.budget", f"{round(minutes * 60)}s",
        "--trainer.default_root_dir", str(out / name),
        "--trainer.enable_progress_bar", "false",
        "--run.plots", "true",
    ] + extra  # fmt: skip
    cfg = load_config(ROOT / "configs" / "generation" / recipe, overrides)
    start, cpu = time.time(), _cpu_seconds()
    run_dir = train(cfg)
    wall, cpu = time.time() - start, _cpu_seconds() - cpu
    with (run_dir / "metrics.csv").open() as fh:
        epochs = len(list(csv.DictReader(fh)))
    best = json.loads((run_dir / "metrics.json").read_text())
    return {
        "variant": name,
        "epochs": epochs,
        "images_seen": epochs * cfg.data.images_per_epoch,
        "fid": best["fid"],
        "kid": best["kid"],
        "fid_lite0": best.get("fid_tf_efficientnet_lite0", float("nan")),
        "wall_s": round(wall),
        "cpu_s": round(cpu),
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder of real images (default: the LFW faces, written to <out>/faces)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per variant")
    parser.add_argument("--out", default="runs/bench_gan")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    data = args.data or str(write_lfw_faces(out / "faces"))
    results = [run_variant(v, data, args.minutes, out, extra) for v in args.variants]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"budget: {args.minutes} min wall-clock per variant, data: {data}")
    print("| variant | epochs | images seen | FID (Inception) | KID (Inception) | FID (lite0) | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['epochs']} | {r['images_seen']} | {r['fid']:.1f} | {r['kid']:.4f} | "
            f"{r['fid_lite0']:.1f} | {r['wall_s']} | {r['cpu_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
