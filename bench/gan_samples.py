"""Sample quality on the varied few-shot sets: the few-shot recipe against changes aimed at whole objects and no
tiling artefacts, each at the same wall-clock budget, one after the other, scored in the recipe's metric network
(FID's Inception-v3; the discriminator's own lite0 space beside it).

    python bench/gan_samples.py --set raccoon|sunrise [--budget 10min | --images 4800]
                                [--variants nearest bilinear fixed d128] [--data ../shared/data] [--out FOLDER]

``--budget``: the same wall-clock budget for each (the planner sizes epochs and validations). ``--images N``: the
same number of training images for each instead (epochs of 1,600 images, validated after the last one only): the
fair comparison on a machine whose speed other jobs change from minute to minute.

Sets: ``raccoon`` is every annotated raccoon of ``raccoon/`` cropped to a square around its box at 64 px (217
crops); ``sunrise`` is the 200 photos of ``sunrise_gan/images`` (centre-cropped to 64 px by the data module).

Variants (``configs/generation/fewshot.yaml`` plus; ``bilinear+d128`` combines two):
    recipe     nothing
    nearest    --model.g_upsample nearest (FastGAN's upsampling)
    bilinear   --model.g_upsample bilinear
    fixed      --model.ada_target null: DiffAugment on every image instead of ADA's adaptive probability
    d128       --model.d_input_size 128: the discriminator's backbone sees the images at 128 px, where its stride-32
               features form a 4x4 map of object-sized receptive fields (2x2 at 64 px)

Prints one row per variant (the best checkpoint's final evaluation: FID, KID, FID in lite0, epochs, wall time) and
the path of each run's ``samples.png`` (the fixed-noise grid of that checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from train_tool import REPO, metrics, train_tool, write_gan_crops

RECIPE = "configs/generation/fewshot.yaml"
VARIANTS = {
    "recipe": [],
    "nearest": ["--model.g_upsample", "nearest"],
    "bilinear": ["--model.g_upsample", "bilinear"],
    "fixed": ["--model.ada_target", "null"],
    "d128": ["--model.d_input_size", "128"],
}
EPOCH_IMAGES = 1600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=["raccoon", "sunrise"], required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    length = p.add_mutually_exclusive_group()
    length.add_argument("--budget", default="10min")
    length.add_argument("--images", type=int, help="training images per variant (a multiple of 1600)")
    p.add_argument("--variants", nargs="+", default=["nearest", "bilinear"], help=f"{', '.join(VARIANTS)}; a+b: both")
    p.add_argument("--seed", type=int, default=None, help="run.seed (the recipe's: 42)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix=f"cvsuite-gan-{args.set}-"))
    data = Path(args.data)
    if args.set == "raccoon":
        root = write_gan_crops(data / "raccoon", out / "crops")
    else:
        root = data / "sunrise_gan" / "images"
    if args.images:
        epochs = str(max(1, args.images // EPOCH_IMAGES))
        length = ["--data.images_per_epoch", str(EPOCH_IMAGES), "--trainer.max_epochs", epochs,
                  "--trainer.check_val_every_n_epoch", epochs]  # fmt: skip
        what = f"{int(epochs) * EPOCH_IMAGES} training images"
    else:
        length, what = ["--run.budget", args.budget], f"budget {args.budget}"
    print(f"data: {root} ({len(list(root.iterdir()))} images); {what} per variant", flush=True)
    rows = []
    for name in args.variants:
        overrides = [arg for part in name.split("+") for arg in VARIANTS[part]]
        overrides += ["--run.seed", str(args.seed)] if args.seed is not None else []
        seconds, run_dir, _ = train_tool(RECIPE, root, out / name, *length, *overrides)
        m = metrics(run_dir)
        with (run_dir / "metrics.csv").open() as fh:
            epochs = len(list(csv.DictReader(fh)))
        rows.append((name, m, epochs, seconds, run_dir))
        print(f"{name}: fid {m['fid']:.1f} kid {m['kid']:.4f} fid_lite0 {m['fid_tf_efficientnet_lite0']:.1f} "
              f"epochs {epochs} wall {seconds:.0f}s samples {run_dir / 'samples.png'}", flush=True)  # fmt: skip
    print(f"\n| {args.set} variant | FID (Inception) | KID (Inception) | FID (lite0) | epochs | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m, epochs, seconds, _ in rows:
        print(
            f"| {name} | {m['fid']:.1f} | {m['kid']:.4f} | {m['fid_tf_efficientnet_lite0']:.1f} | {epochs} | "
            f"{seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
